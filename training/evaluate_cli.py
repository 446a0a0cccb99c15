"""Resolve what `python -m training evaluate` is given into a backbone, an input spec and data."""
from __future__ import annotations

from .data import open_source
from .evaluate import finetune_eval, knn_evaluate, linear_eval, record
from .views import InputSpec, input_spec


def load_subject(model: str, domain):
    """(factory returning a fresh backbone, num_features, InputSpec) for an exported folder, a zoo name, or
    random:<arch> (random init on the data's domain geometry)."""
    import torch

    if model.startswith("random:"):
        from .models import build_backbone
        spec = input_spec(domain)

        def make():
            torch.manual_seed(0)
            return build_backbone(model.split(":", 1)[1], spec.channels).module
        return make, make().num_features, spec
    import zoo

    cfg = zoo.preprocessing(model)
    channels, height, _ = cfg["input_size"]
    spec = InputSpec(channels, height, tuple(cfg["mean"]), tuple(cfg["std"]), cfg.get("interpolation", "bilinear"),
                     float(cfg.get("crop_pct", 1.0)))

    def make():
        return zoo.load(model, num_classes=0)
    return make, make().num_features, spec


def run_evaluation(args) -> dict:
    record_ = _run(args)
    record_["command"] = getattr(args, "command_line", record_["command"])
    return record_


def _run(args) -> dict:
    train = open_source(args.data, "train", args.domain)
    test = open_source(args.data, "test", args.domain)
    make, features, spec = load_subject(args.model, train.domain)
    data = train.domain.name if train.domain else args.data
    _check_metric(train)
    if args.protocol == "knn":
        result = knn_evaluate(make(), train, test, spec, train_images=args.train_images, test_images=args.eval_images)
        return record("knn", data, "test", result.pop("metric"), result.pop("value"), **result, k=200, t=0.1,
                      model=args.model)
    val = open_source(args.data, "val", args.domain)
    options = {k: v for k, v in {"iterations": args.iterations, "lrs": args.lrs,
                                 "batch_size": args.batch_size}.items() if v}
    if args.protocol == "linear":
        return {**linear_eval(make(), train, val, test, spec, data, train_images=args.train_images,
                              eval_images=args.eval_images, **options),
                "model": args.model}
    labels = None if args.protocol == "finetune" else args.labels  # finetune: every training label
    return {**finetune_eval(make, features, train, val, test, spec, data, labels=labels,
                            eval_images=args.eval_images, **options), "model": args.model}


def _check_metric(train) -> None:
    """The registry decides the metric; data whose label structure disagrees with it is refused."""
    domain = train.domain
    if domain is not None and train.label_column is not None and domain.group != "offline":
        if (domain.task == "multi-label") != train.multi_label:
            raise ValueError(f"{domain.name} is {domain.task} in the registry (metric {domain.metric}) but the data "
                             f"at {train.spec} is {'multi' if train.multi_label else 'single'}-label")
