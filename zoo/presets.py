"""The preprocessing each upstream tool trained and evaluated its checkpoints with.

A conversion must record what the *source* expects, never timm's defaults for the architecture
(bicubic, crop 0.95): a MoCo backbone fed timm's ResNet-50 pipeline sees other pixels than the
ones it was evaluated on, and a SimCLR backbone fed ImageNet-normalised input sees values it
never saw in training. Each preset names where its numbers come from.

``hpt:<domain>`` is what the HPT authors' OpenSelfSup configs used for a target domain
(``OpenSelfSup/configs/hpt-pretrain/<domain>/base-<domain>-config.py``, ``img_norm_cfg``; test
pipeline ``Resize(256)`` + ``CenterCrop(224)``, torchvision's default bilinear resize, always 3
channels — grayscale X-rays were replicated). These are the configs' numbers, copied as written:
the xView config reuses RESISC-45's statistics, and a chain ``a -> b`` uses the target ``b``'s.
"""
from __future__ import annotations

from .errors import UnknownNameError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_HPT_CONFIGS = "cjrd/self-supervised-pretraining OpenSelfSup/configs/hpt-pretrain/<domain>/base-<domain>-config.py"

PRESETS: dict[str, dict] = {
    "torchvision": {
        "interpolation": "bilinear", "crop_pct": 0.875, "mean": IMAGENET_MEAN, "std": IMAGENET_STD,
        "source": "torchvision's ImageNet reference evaluation: Resize(256) bilinear, CenterCrop(224), "
                  "ImageNet mean/std",
    },
    "moco": {
        "interpolation": "bilinear", "crop_pct": 0.875, "mean": IMAGENET_MEAN, "std": IMAGENET_STD,
        "source": "facebookresearch/moco main_lincls.py validation transform: Resize(256) (bilinear), "
                  "CenterCrop(224), Normalize(ImageNet mean/std)",
    },
    "simclr": {
        "interpolation": "bicubic", "crop_pct": 0.875, "mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0),
        "source": "google-research/simclr data_util.py preprocess_for_eval: central crop of 87.5% then bicubic "
                  "resize to 224; pixels in [0, 1] with no mean/std normalisation (the TF models were trained "
                  "without it; tonylins/simclr-converter evaluates 'without normalization')",
    },
}

# domain -> (mean, std) exactly as in the HPT authors' base-<domain>-config.py
HPT_NORMALIZATION: dict[str, tuple[tuple, tuple]] = {
    "resisc": ((0.368, 0.381, 0.3436), (0.2035, 0.1854, 0.1849)),
    "ucmerced": ((0.4842, 0.4901, 0.4505), (0.2180, 0.2021, 0.1958)),
    "xview": ((0.368, 0.381, 0.3436), (0.2035, 0.1854, 0.1849)),  # as written: RESISC-45's numbers
    "bdd": ((0.2789, 0.2929, 0.2902), (0.2474, 0.2653, 0.2761)),
    "viper": ((0.3485, 0.3422, 0.3395), (0.2449, 0.2408, 0.2390)),
    "chexpert": ((0.5028, 0.5028, 0.5028), (0.2919, 0.2919, 0.2919)),
    "chest_xray_kids": ((0.4815, 0.4815, 0.4815), (0.2377, 0.2377, 0.2377)),
    "flowers": ((0.4355, 0.3777, 0.2880), (0.2970, 0.2459, 0.2705)),
    "coco_2014": ((0.4702, 0.4470, 0.4076), (0.2785, 0.2740, 0.2889)),
    "pascal": ((0.4511, 0.4292, 0.3967), (0.2764, 0.2729, 0.2849)),
    "domain_net_clipart": ((0.7362, 0.7167, 0.6834), (0.3642, 0.3654, 0.3887)),
    "domain_net_infograph": ((0.6888, 0.6970, 0.6648), (0.3331, 0.3094, 0.3281)),
    "domain_net_painting": ((0.5743, 0.5466, 0.5083), (0.3088, 0.3007, 0.3168)),
    "domain_net_quickdraw": ((0.9525, 0.9525, 0.9525), (0.2128, 0.2128, 0.2128)),
    "domain_net_real": ((0.6059, 0.5890, 0.5558), (0.3344, 0.3279, 0.3493)),
    "domain_net_sketch": ((0.8327, 0.8270, 0.8179), (0.2727, 0.2753, 0.2810)),
}


def preset_names() -> list[str]:
    return list(PRESETS) + [f"hpt:{domain}" for domain in HPT_NORMALIZATION]


def preset(name: str) -> dict:
    """The preprocessing record for a preset name ('moco', 'simclr', 'torchvision', 'hpt:<domain>')."""
    if name in PRESETS:
        return {**PRESETS[name], "preset": name}
    if name.startswith("hpt:"):
        from .domains import resolve_domain_name

        domain = resolve_domain_name(name[4:]) or name[4:]
        if domain in HPT_NORMALIZATION:
            mean, std = HPT_NORMALIZATION[domain]
            return {"interpolation": "bilinear", "crop_pct": 0.875, "mean": mean, "std": std, "preset": f"hpt:{domain}",
                    "source": f"HPT authors' config for {domain} ({_HPT_CONFIGS}): Resize(256), CenterCrop(224), "
                              f"img_norm_cfg mean {list(mean)} std {list(std)}, 3 channels"}
    raise UnknownNameError("preprocessing preset", name, preset_names(),
                           hint=f"Known: {', '.join(PRESETS)}, hpt:<domain> for {', '.join(HPT_NORMALIZATION)}.")


def pretrained_cfg_of(record: dict) -> dict:
    """The timm pretrained_cfg fields a preset sets (the rest comes from the architecture)."""
    return {"interpolation": record["interpolation"], "crop_pct": record["crop_pct"], "crop_mode": "center",
            "mean": tuple(record["mean"]), "std": tuple(record["std"]), "input_size": (3, 224, 224)}
