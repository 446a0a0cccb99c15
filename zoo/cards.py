"""Model cards, generated from zoo.json (what training or import recorded) — never written by hand."""
from __future__ import annotations

import json

from .domains import DOMAINS


def _yaml_list(key: str, values) -> list[str]:
    values = [v for v in values if v]
    return [f"{key}:"] + [f"- {v}" for v in values] if values else []


def _terms(meta: dict) -> list[str]:
    from .loader import data_terms

    return [f"- **{DOMAINS[name].title}** (`{name}`): {terms}" for name, terms in data_terms(meta).items()]


def render_card(meta: dict, config: dict) -> str:
    name = meta.get("name", "checkpoint")
    cfg = config.get("pretrained_cfg", {})
    header = ["---", f"license: {meta.get('license_id', 'other')}", "library_name: timm",
              *_yaml_list("tags", ["image-feature-extraction", "self-supervised", "hpt-zoo",
                                   meta.get("strategy"), meta.get("method")]),
              *_yaml_list("datasets", sorted({s.get("domain") for s in meta.get("lineage", []) if s.get("domain")})),
              "---", ""]
    body = [f"# {name}", "", meta.get("summary", ""), "",
            "## Use", "", "```python", "import zoo", f"model = zoo.load({name!r})  # backbone, eval mode",
            f"preprocess = zoo.transforms({name!r})", "```", "",
            "## Lineage", "", "| hop | role | checkpoint | domain | method | steps | sha256 |", "|---|---|---|---|---|---|---|"]
    for index, step in enumerate(meta.get("lineage", [])):
        body.append(f"| {index} | {step.get('role', '')} | {step.get('name', '')} | {step.get('domain', '')} | "
                    f"{step.get('method', '')} | {step.get('steps', '') or ''} | `{(step.get('sha256') or '')[:12]}` |")
    body += ["", "## Architecture and preprocessing", "",
             f"- timm architecture: `{config.get('architecture')}`"
             + (f" with {json.dumps(config['model_args'], sort_keys=True)}" if config.get("model_args") else ""),
             f"- features: {config.get('num_features')}, classifier classes in the file: {config.get('num_classes')}",
             f"- input size {cfg.get('input_size')}, mean {cfg.get('mean')}, std {cfg.get('std')}, "
             f"interpolation {cfg.get('interpolation')}, crop_pct {cfg.get('crop_pct')}", ""]
    if meta.get("hyperparameters"):
        body += ["## Training", "", "```json", json.dumps(meta["hyperparameters"], indent=2, sort_keys=True), "```", ""]
    if meta.get("bn_variants"):
        body += ["## BatchNorm-statistic variants", "",
                 "Same trunk, BN running statistics re-estimated on another domain "
                 "(`zoo.load(name, bn=...)`):", ""]
        body += [f"- `{variant}`" for variant in meta["bn_variants"]] + [""]
    body += ["## Evaluation", ""]
    evaluations = meta.get("evaluations", [])
    if evaluations:
        body += ["| protocol | data | split | metric | value |", "|---|---|---|---|---|"]
        body += [f"| {e.get('protocol')} | {e.get('data')} | {e.get('split')} | {e.get('metric')} | {e.get('value'):.4f} |"
                 for e in evaluations]
    else:
        body.append("No evaluation has been recorded for this checkpoint.")
    body += ["", "## Licence and data terms", "", f"Weights: {meta.get('license', 'see the source')}.", ""]
    body += _terms(meta) + [""]
    if meta.get("source"):
        body += ["## Source", "", meta["source"], ""]
    body += ["## Files", "", "| file | sha256 | bytes |", "|---|---|---|"]
    body += [f"| {f} | `{r['sha256']}` | {r['size']} |" for f, r in sorted(meta.get("weights", {}).items())]
    return "\n".join(header + body) + "\n"
