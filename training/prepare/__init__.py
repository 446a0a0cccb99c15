"""`python -m training prepare DOMAIN DOWNLOAD_DIR [--out DIR]`: an official download -> a prepared dataset.

One preparer per HPT target domain reads the dataset's official distribution layout (see the README's
domain table, or the error message, for what to download and where to extract it). The output is an
Arrow dataset with a manifest (training.prepare.core), opened by `--data DIR` or `$ZOO_DATA/<domain>`.
The registry (zoo.domains) must agree with what was prepared: number of classes, single/multi-label.
"""
from __future__ import annotations

import os
from pathlib import Path

from zoo.domains import get_domain

from .core import MANIFEST, PREPARER_VERSION, PartialDownloadWarning, PrepareError, read_manifest, write_prepared
from .multilabel import chexpert, coco_2014, pascal, viper, xview
from .scenes import bdd, chest_xray_kids, domainnet, flowers, resisc, ucmerced

PREPARERS = {
    "resisc": resisc, "ucmerced": ucmerced, "xview": xview, "bdd": bdd, "viper": viper, "chexpert": chexpert,
    "chest_xray_kids": chest_xray_kids, "flowers": flowers, "coco_2014": coco_2014, "pascal": pascal,
    **{f"domain_net_{style}": domainnet(style)
       for style in ("clipart", "infograph", "painting", "quickdraw", "real", "sketch")},
}

OPTIONS = {"chexpert": ("uncertain",), "xview": ("chip",)}  # per-domain settings beyond seed/on_bad/workers

__all__ = ["PREPARERS", "PREPARER_VERSION", "MANIFEST", "PrepareError", "PartialDownloadWarning", "prepare",
           "read_manifest", "default_out"]


def default_out(domain: str) -> Path:
    from ..hpt import data_root
    return data_root() / domain


def prepare(domain: str, download: str | os.PathLike, out: str | os.PathLike | None = None, *, seed: int = 0,
            on_bad: str = "skip", workers: int = 1, force: bool = False, **options) -> Path:
    """Prepare `domain` from its official download folder; returns the prepared folder.
    options: per-domain settings (chexpert: uncertain="zeros"|"ones"; xview: chip=512)."""
    info = get_domain(domain)
    if info.name not in PREPARERS:
        raise ValueError(f"no preparer for {info.name!r}; prepare one of: {', '.join(PREPARERS)}")
    unknown = sorted(set(options) - set(OPTIONS.get(info.name, ())))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for {info.name}; it takes "
                         f"{', '.join(OPTIONS.get(info.name, ())) or 'none'}")
    download = Path(download).expanduser().absolute()
    if not download.is_dir():
        raise PrepareError(f"download folder {download} does not exist. {info.obtain}")
    plan = PREPARERS[info.name](download, seed=seed, **options)
    if len(plan.label_names) != info.num_classes or plan.multi_label != (info.task == "multi-label"):
        raise PrepareError(f"{info.name}: the download yields {len(plan.label_names)} "
                           f"{'multi' if plan.multi_label else 'single'}-label classes but the registry "
                           f"(zoo/domains.py) says {info.num_classes} {info.task}")
    out = Path(out) if out else default_out(info.name)
    return write_prepared(plan, info, download, out, on_bad=on_bad, workers=workers, force=force,
                          options={"seed": seed, "on_bad": on_bad, **options})


def main(args) -> int:
    """The CLI's `prepare` subcommand."""
    import json
    import warnings

    options = dict(item.split("=", 1) for item in (args.option or []))
    if "chip" in options:
        options["chip"] = int(options["chip"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = prepare(args.domain, args.download, args.out, seed=args.seed, on_bad=args.on_bad,
                      workers=args.workers, force=args.force, **options)
    for warning in caught:
        print(f"warning: {warning.message}", flush=True)
    manifest = read_manifest(out)
    print(json.dumps({"out": str(out), "splits": {s: v["images"] for s, v in manifest["splits"].items()},
                      "labels": manifest["num_classes"], "skipped": len(manifest["skipped"])}))
    return 0
