"""torch.hub entry points: ``torch.hub.load("<owner>/<repo>", "sup_imagenet_mnv2")`` or the generic ``load``.

One entry per published catalog name ('-' becomes '_'), each a thin call to ``zoo.load`` so
torch.hub users get the same verified weights as ``zoo.load`` users.
"""
dependencies = ["torch", "timm", "huggingface_hub", "safetensors"]

import zoo as _zoo


def load(name, **kwargs):
    """Any zoo name or local checkpoint folder; kwargs as zoo.load (bn, revision, num_classes, device, dtype)."""
    return _zoo.load(name, **kwargs)


def _entry(name):
    def entry(**kwargs):
        return _zoo.load(name, **kwargs)

    entry.__name__ = name.replace("-", "_")
    entry.__doc__ = f"zoo.load({name!r}, **kwargs): see `zoo info {name}`."
    return entry


for _name in _zoo.list_models():
    globals()[_name.replace("-", "_")] = _entry(_name)
del _name
