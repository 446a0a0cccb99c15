"""Model cards, generated from zoo.json (what training or import recorded) — never written by hand.

The YAML header is the Hub's model-card metadata: library_name, pipeline_tag, license, tags
true to the method, ``datasets`` as Hub dataset ids (only where one exists), ``base_model`` and
``base_model_relation`` from the lineage (an overlay names its trunk, relation ``adapter``),
and ``model-index`` from the recorded evaluations. ``card_metadata`` is that header as a dict,
so tests can check every card against the catalog.
"""
from __future__ import annotations

import json

import yaml

from .domains import DOMAINS

# Hub dataset ids for our domains, only where a public one exists; other domains are named in
# the card body (their data is obtained from the owners, see `zoo info`).
HUB_DATASETS = {"imagenet": "ILSVRC/imagenet-1k", "fashion_mnist": "zalando-datasets/fashion_mnist"}
# Licences the Hub knows by id; anything else is "other" with its name.
HUB_LICENSES = {"apache-2.0", "mit", "bsd-3-clause", "bsd-2-clause", "cc-by-4.0", "cc-by-nc-4.0", "cc-by-sa-4.0",
                "cc-by-nc-sa-4.0", "cc0-1.0", "openrail", "gpl-3.0", "lgpl-3.0", "unlicense"}
METHOD_TAGS = {
    "supervised": ["supervised"],
    "moco": ["self-supervised", "contrastive-learning", "moco-v2"],
    "simclr": ["self-supervised", "contrastive-learning", "simclr-v2"],
    "pic": ["self-supervised", "parametric-instance-classification"],
    "selftrain": ["semi-supervised", "noisy-student"],
    "bn-recalibration": ["batchnorm-adaptation"],
}
STRATEGY_TAGS = {"hpt": ["hierarchical-pretraining"], "hptbn": ["hierarchical-pretraining", "batchnorm-only"],
                 "base": ["batchnorm-adaptation"], "target": ["from-scratch"]}
METRIC_TYPES = {"top1": "accuracy", "mean_auroc": "roc_auc"}


def data_terms(details: dict) -> dict:
    """Usage terms of every dataset in the checkpoint's lineage and BN variants (from the domain registry)."""
    names = [step.get("domain") for step in details.get("lineage", [])] + [details.get("domain")]
    names += list(details.get("bn_variants", []))
    return {name: DOMAINS[name].terms for name in dict.fromkeys(names) if name in DOMAINS}


def _base_model(meta: dict) -> tuple[str | None, str | None]:
    trunk = meta.get("trunk")
    if isinstance(trunk, dict):  # an overlay: the trunk repo + this BN file
        repo = trunk.get("repo_id")
        return (repo, "adapter") if repo else (None, None)
    base = None
    for step in meta.get("lineage", [])[:-1]:  # the last hop is this checkpoint; the one before is its parent
        base = step.get("repo_id") or base  # publish fills repo_id in from the catalog
    return (base, "finetune") if base else (None, None)


def _methods(meta: dict) -> list[str]:
    return [m for m in dict.fromkeys([meta.get("method")] + [s.get("method") for s in meta.get("lineage", [])]) if m]


def card_metadata(meta: dict, config: dict | None) -> dict:
    """The card's YAML header as a dict (see the module docstring)."""
    config = config or {}
    overlay = "trunk" in meta
    license_id = str(meta.get("license_id") or "").lower()
    data = {"library_name": "hpt-zoo" if overlay else "timm",
            "pipeline_tag": "image-classification" if int(config.get("num_classes") or 0) > 0
            else "image-feature-extraction"}
    if license_id in HUB_LICENSES:
        data["license"] = license_id
    else:
        data.update(license="other", license_name=(license_id or "see-card").replace(" ", "-")[:64])
    tags = ["hpt-zoo"] + ([] if overlay else ["timm"])
    for method in _methods(meta):
        tags += METHOD_TAGS.get(method, [method])
    tags += STRATEGY_TAGS.get(meta.get("strategy"), [])
    if meta.get("bn_variants") and not overlay:
        tags.append("bn-variants")
    data["tags"] = list(dict.fromkeys(tags))
    domains = [s.get("domain") for s in meta.get("lineage", [])] + [meta.get("domain")] + list(
        meta.get("bn_variants", []))
    datasets = [HUB_DATASETS[d] for d in dict.fromkeys(domains) if d in HUB_DATASETS]
    if datasets:
        data["datasets"] = datasets
    base, relation = _base_model(meta)
    if base:
        data.update(base_model=base, base_model_relation=relation)
    results = []
    for record in meta.get("evaluations", []):
        if not isinstance(record, dict) or not isinstance(record.get("value"), (int, float)):
            continue
        domain = record.get("data")
        results.append({
            "task": {"type": "image-classification", "name": f"{record.get('protocol')} evaluation"},
            "dataset": {"type": HUB_DATASETS.get(domain, str(domain)),
                        "name": DOMAINS[domain].title if domain in DOMAINS else str(domain),
                        "split": str(record.get("split", "test"))},
            "metrics": [{"type": METRIC_TYPES.get(record.get("metric"), str(record.get("metric"))),
                         "value": round(float(record["value"]), 6),
                         "name": f"{record.get('protocol')} {record.get('metric')}"}]})
    if results:
        data["model-index"] = [{"name": meta.get("name", "checkpoint"), "results": results}]
    return data


def _header(metadata: dict) -> list[str]:
    return ["---", yaml.safe_dump(metadata, sort_keys=False, default_flow_style=False).rstrip(), "---", ""]


def _terms(meta: dict) -> list[str]:
    return [f"- **{DOMAINS[name].title}** (`{name}`): {terms}" for name, terms in data_terms(meta).items()]


def _lineage_table(meta: dict) -> list[str]:
    rows = ["| hop | role | checkpoint | domain | method | steps | sha256 |", "|---|---|---|---|---|---|---|"]
    for index, step in enumerate(meta.get("lineage", [])):
        rows.append(f"| {index} | {step.get('role', '')} | {step.get('name', '')} | {step.get('domain', '')} | "
                    f"{step.get('method', '')} | {step.get('steps', '') or ''} | `{(step.get('sha256') or '')[:12]}` |")
    return rows


def _input_line(cfg: dict) -> str:
    return (f"input size {cfg.get('input_size')}, mean {cfg.get('mean')}, std {cfg.get('std')}, "
            f"interpolation {cfg.get('interpolation')}, crop_pct {cfg.get('crop_pct')}")


def _timm_section(meta: dict, config: dict, repo: str) -> list[str]:
    trunk_sha = meta.get("trunk_sha256", "")
    if "zoo_stem" in (config.get("model_args") or {}):
        return ["Plain timm cannot build this network: its 3x3 stride-1 stem without max-pool (`zoo_stem: "
                f"{config['model_args']['zoo_stem']}`) is not a timm option, so `timm.create_model(\"hf-hub:...\")` "
                "refuses it. Load it with `zoo.load` (it builds the timm ResNet and swaps the stem).", ""]
    if meta.get("variant_of"):
        variant = meta.get("domain")
        return ["timm has no notion of BN-statistic variants: it loads the trunk; apply this variant's file:", "",
                "```python", "import timm, zoo", "from huggingface_hub import hf_hub_download",
                f"model = timm.create_model(\"hf-hub:{repo}\", pretrained=True)",
                f"zoo.apply_bn(model, hf_hub_download(\"{repo}\", \"bn/{variant}.safetensors\"), \"{trunk_sha}\")",
                "```", ""]
    lines = ["```python", "import timm", f"model = timm.create_model(\"hf-hub:{repo}\", pretrained=True)"
             "  # the same outputs as zoo.load(name, num_classes=None)", "```", ""]
    if meta.get("bn_variants"):
        lines += ["timm has no notion of BN-statistic variants. Get one with `zoo.load(name, bn=DOMAIN)`, or on the "
                  "timm model:", "", "```python", "import zoo", "from huggingface_hub import hf_hub_download",
                  f"zoo.apply_bn(model, hf_hub_download(\"{repo}\", \"bn/DOMAIN.safetensors\"), "
                  f"\"{trunk_sha}\")", "```", ""]
    return lines


def render_card(meta: dict, config: dict, repo_id: str | None = None) -> str:
    name = meta.get("name", "checkpoint")
    repo = repo_id or "<this repo>"
    overlay = "trunk" in meta
    body = [f"# {name}", "", meta.get("summary", ""), "", "## Use", "", "```python", "import zoo",
            f"model = zoo.load({name!r})  # backbone, eval mode", f"preprocess = zoo.transforms({name!r})", "```", ""]
    if overlay:
        trunk = meta["trunk"]
        variant = (meta.get("bn_variants") or ["DOMAIN"])[0]
        kind = "BN running statistics and affine parameters" if meta.get("strategy") == "hptbn" else \
            "BN running statistics"
        body += [f"This repo holds only `bn/{variant}.safetensors`: the {kind} of `{trunk.get('name')}` "
                 f"(repo `{trunk.get('repo_id', '')}`, trunk sha256 `{trunk.get('sha256', '')[:12]}...`), applied "
                 "on that trunk. timm cannot load it on its own; on a timm model:", "", "```python",
                 "import timm, zoo", "from huggingface_hub import hf_hub_download",
                 f"model = timm.create_model(\"hf-hub:{trunk.get('repo_id', '<trunk repo>')}\", pretrained=True)",
                 f"zoo.apply_bn(model, hf_hub_download(\"{repo}\", \"bn/{variant}.safetensors\"), "
                 f"\"{trunk.get('sha256', '')}\")", "```", ""]
    else:
        body += ["With plain timm:", ""] + _timm_section(meta, config, repo)
    body += ["## Lineage", ""] + _lineage_table(meta) + [""]
    body += ["## Architecture and preprocessing", ""]
    if overlay:
        spec = meta.get("input") or {}
        body += [f"- timm architecture of the trunk: `{meta.get('timm_arch')}`",
                 f"- BN statistics computed at: {json.dumps(spec, sort_keys=True) if spec else 'the trunk input'}",
                 ""]
    else:
        cfg = config.get("pretrained_cfg", {})
        body += [f"- timm architecture: `{config.get('architecture')}`"
                 + (f" with {json.dumps(config['model_args'], sort_keys=True)}" if config.get("model_args") else ""),
                 f"- features: {config.get('num_features')}, classifier classes in the file: {config.get('num_classes')}",
                 f"- {_input_line(cfg)}", ""]
    if meta.get("hyperparameters"):
        body += ["## Training", "", "```json", json.dumps(meta["hyperparameters"], indent=2, sort_keys=True), "```", ""]
    if meta.get("bn_variants") and not overlay:
        body += ["## BatchNorm-statistic variants", "",
                 "Same trunk, BN running statistics re-estimated on another domain "
                 "(`zoo.load(name, bn=...)`; each has its own card, `bn/<domain>.md`):", ""]
        for variant in meta["bn_variants"]:
            cfg = meta.get("bn_variant_cfg", {}).get(variant)
            body.append(f"- `{variant}`" + (f": statistics computed at {_input_line(cfg)}" if cfg else ""))
        body.append("")
    body += ["## Evaluation", ""]
    evaluations = [e for e in meta.get("evaluations", []) if isinstance(e.get("value"), (int, float))]
    if evaluations:
        body += ["| protocol | data | split | metric | value |", "|---|---|---|---|---|"]
        body += [f"| {e.get('protocol')} | {e.get('data')} | {e.get('split')} | {e.get('metric')} | {e['value']:.4f} |"
                 for e in evaluations]
    else:
        body.append("No evaluation has been recorded for this checkpoint.")
    body += ["", "## Licence and data terms", "", f"Weights: {meta.get('license', 'see the source')}.", ""]
    body += _terms(meta) + [""]
    if meta.get("source"):
        body += ["## Source", "", meta["source"], ""]
    body += ["## Files", "", "| file | sha256 | bytes |", "|---|---|---|"]
    body += [f"| {f} | `{r['sha256']}` | {r['size']} |" for f, r in sorted(meta.get("weights", {}).items())]
    return "\n".join(_header(card_metadata(meta, config)) + body) + "\n"


def variant_name(meta: dict, variant: str) -> str:
    return f"base-{variant}-{meta.get('arch') or 'model'}"


def variant_meta(meta: dict, variant: str) -> dict:
    """zoo.json as it would read for the trunk with one attached BN variant (name base-<domain>-<arch>)."""
    name = variant_name(meta, variant)
    lineage = list(meta.get("lineage", [])) + [{"role": "target", "name": name, "domain": variant,
                                                "method": "bn-recalibration", "steps": None,
                                                "sha256": meta.get("weights", {}).get(f"bn/{variant}.safetensors",
                                                                                      {}).get("sha256")}]
    return {**{k: v for k, v in meta.items() if k not in ("bn_variants", "bn_variant_cfg", "evaluations")},
            "name": name, "strategy": "base", "method": "bn-recalibration", "domain": variant, "lineage": lineage,
            "evaluations": [], "variant_of": meta.get("name"),
            "summary": f"`{meta.get('name')}` with its BatchNorm running statistics re-estimated on {variant} "
                       f"(the HPT study's Base strategy). The file `bn/{variant}.safetensors` sits beside the trunk "
                       f"in this repo; `zoo.load({name!r})` = `zoo.load({meta.get('name')!r}, bn={variant!r})`."}


def render_variant_card(meta: dict, config: dict, variant: str, repo_id: str | None = None) -> str:
    """The card of an attached BN variant (``bn/<domain>.md`` in the trunk's repo)."""
    vmeta = variant_meta(meta, variant)
    cfg = {**config.get("pretrained_cfg", {}), **meta.get("bn_variant_cfg", {}).get(variant, {})}
    return render_card(vmeta, {**config, "pretrained_cfg": cfg}, repo_id)
