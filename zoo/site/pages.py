"""HTML pages of the web catalog: the index, one page per model, one page per domain.

All text from the mirror (names, cards, zoo.json fields) is untrusted: it is escaped with `esc`, cards go
through markdown-it with raw HTML disabled (its link validation drops javascript:/data: URLs), and every
page carries a Content-Security-Policy that allows only the site's own script and stylesheet, so even a
mistake here cannot run a card's script.
"""
from __future__ import annotations

import hashlib
import json
import re
import shlex
from dataclasses import dataclass

from .collect import Model, score_of
from .svg import bar_chart_svg, esc, lineage_svg

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
_SAFE_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}")
STRATEGY_ORDER = ["sup", "base", "target", "hpt", "hptbn", "moco", "simclr", "pic"]


def safe_part(text: str) -> str:
    """A path component made from an untrusted string: itself when harmless, otherwise a digest."""
    if _SAFE_PART.fullmatch(text) and not text.endswith(".") and ".." not in text:
        return text
    return "_" + hashlib.sha256(text.encode("utf-8", errors="replace")).hexdigest()[:16]


def model_path(model: Model) -> str:
    org, _, name = model.repo_id.partition("/")
    return f"models/{safe_part(org)}/{safe_part(name)}.html"


def domain_path(domain: str) -> str:
    return f"domains/{safe_part(domain)}.html"


def _markdown():
    from markdown_it import MarkdownIt

    # commonmark with raw HTML off: `<script>` in a card becomes visible text, never markup
    return MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False}).enable(
        ["table", "strikethrough"])


def split_front_matter(card: str) -> tuple[str | None, str]:
    if card.startswith("---\n"):
        end = card.find("\n---\n", 4)
        if end != -1:
            return card[4:end], card[end + 5:]
    return None, card


def _header_value(value) -> str:
    if isinstance(value, list) and all(isinstance(v, (str, int, float)) for v in value):
        return esc(", ".join(map(str, value)))
    if isinstance(value, (dict, list)):  # model-index and the like: nested, shown as JSON
        return f'<code class="json">{esc(json.dumps(value, default=str))}</code>'
    return esc(value)


def render_card(card: str) -> tuple[str, str]:
    """(metadata table HTML, body HTML) of a model card."""
    header, body = split_front_matter(card)
    table = ""
    if header is not None:
        import yaml

        try:
            data = yaml.safe_load(header)
        except yaml.YAMLError:
            data = None
        if isinstance(data, dict):
            rows = "".join(f"<tr><th>{esc(k)}</th><td>{_header_value(v)}</td></tr>" for k, v in data.items())
            table = f'<table class="meta">{rows}</table>'
        else:
            table = f"<pre>{esc(header)}</pre>"
    return table, _markdown().render(body)


@dataclass
class Site:
    """What pages need to link to each other."""
    models: list[Model]
    endpoint: str | None = None
    torch_hub_repo: str = "<owner>/<repo>"

    def __post_init__(self):
        self.by_name = {}
        self.by_sha = {}
        for model in self.models:
            for name in filter(None, [model.name, model.catalog_name]):
                self.by_name.setdefault(name, model)
            if model.trunk_sha256:
                self.by_sha.setdefault(model.trunk_sha256, model)

    def link(self, from_depth: int, path: str) -> str:
        return "../" * from_depth + path

    def find_hop(self, hop: dict) -> Model | None:
        return self.by_sha.get(str(hop.get("sha256") or "")) or self.by_name.get(str(hop.get("name") or ""))

    def domains(self) -> list[str]:
        found = set()
        for model in self.models:
            found.update(str(e.get("data")) for e in model.evaluations if e.get("data"))
        return sorted(found)


def page(title: str, body: str, depth: int) -> str:
    up = "../" * depth
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<meta name="color-scheme" content="light dark">'
            f'<title>{esc(title)}</title><link rel="stylesheet" href="{up}static/style.css">'
            f'<link rel="icon" type="image/svg+xml" href="{up}static/icon.svg">'
            f'<script src="{up}static/app.js" defer></script></head><body>'
            f'<header class="top"><a class="brand" href="{up}index.html">hpt-zoo</a>'
            f'<nav><a href="{up}index.html">Models</a> <a href="{up}domains/index.html">Domains</a></nav></header>'
            f'<main>{body}</main><footer>Generated from the mirror\'s repos and the zoo catalog; '
            f'works offline.</footer></body></html>\n')


def _headline_text(evaluation: dict | None) -> str:
    if not evaluation:
        return "—"
    return f"{evaluation.get('protocol')} {evaluation.get('metric')} on {evaluation.get('data')}: " \
           f"{score_of(evaluation):.4f}"


def _options(label: str, key: str, values: list[str]) -> str:
    items = "".join(f'<option value="{esc(v)}">{esc(v)}</option>' for v in values)
    return (f'<label>{esc(label)} <select data-filter="{key}"><option value="">all</option>{items}</select>'
            f'</label>')


def index_page(site: Site, problems: list[tuple[str, str]]) -> str:
    models = site.models
    rows = []
    for model in models:
        headline = model.headline
        score = score_of(headline) if headline else None
        variants = ", ".join(model.bn_variants) or "—"
        cells = [f'<td data-label="name"><a href="{esc(model_path(model))}">{esc(model.name)}</a>'
                 f'<div class="sub">{esc(model.repo_id)}</div></td>',
                 *(f'<td data-label="{k}">{esc(model.text(k)) or "—"}</td>'
                   for k in ("strategy", "method", "domain", "arch", "steps")),
                 f'<td data-label="BN variants">{esc(variants)}</td>',
                 f'<td data-label="headline" class="num">{esc(_headline_text(headline))}</td>']
        rows.append(f'<tr class="model" data-name="{esc(model.name.lower())} {esc(model.repo_id.lower())}" '
                    f'data-strategy="{esc(model.text("strategy"))}" data-domain="{esc(model.text("domain"))}" '
                    f'data-arch="{esc(model.text("arch"))}" data-score="{"" if score is None else score}">'
                    + "".join(cells) + "</tr>")

    def values(key):
        return sorted({model.text(key) for model in models if model.text(key)})
    controls = ('<form class="controls" role="search">'
                '<label>search <input type="search" id="search" placeholder="name or repo" autocomplete="off">'
                '</label>' + _options("domain", "domain", values("domain")) + _options("strategy", "strategy",
                                                                                     values("strategy"))
                + _options("arch", "arch", values("arch"))
                + '<label>sort <select id="sort"><option value="name">name</option>'
                  '<option value="score-desc">score, best first</option>'
                  '<option value="score-asc">score, worst first</option></select></label></form>')
    problem_html = ""
    if problems:
        items = "".join(f"<li><code>{esc(repo)}</code>: {esc(reason)}</li>" for repo, reason in problems)
        problem_html = f'<section class="problems"><h2>Repos that could not be read</h2><ul>{items}</ul></section>'
    body = (f'<h1>Models</h1><p class="lead">Every checkpoint this mirror serves: <span id="count">{len(models)}'
            f'</span> of {len(models)} shown.</p>{controls}'
            '<div class="scroll"><table id="models" class="models"><thead><tr><th>name</th><th>strategy</th>'
            '<th>method</th><th>domain</th><th>arch</th><th>steps</th><th>BN variants</th>'
            '<th><button type="button" id="sort-score" class="linkish">headline evaluation ↕</button></th>'
            f'</tr></thead><tbody>{"".join(rows)}</tbody></table></div>'
            '<p id="empty" class="empty" hidden>No model matches.</p>' + problem_html)
    return page("hpt-zoo models", body, 0)


def _snippets(model: Model, site: Site) -> list[tuple[str, str]]:
    endpoint = site.endpoint or "http://<mirror host>:<port>"
    env = f"# export HF_ENDPOINT={endpoint} HF_HUB_DISABLE_XET=1\n"
    name = model.catalog_name
    if name:
        load = f"import zoo\nmodel = zoo.load({json.dumps(name)})  # backbone, eval mode, sha256-verified\n" \
               f"preprocess = zoo.transforms({json.dumps(name)})"
        for variant in model.bn_variants:
            load += f"\nmodel_{re.sub(r'[^0-9A-Za-z_]', '_', variant)} = zoo.load({json.dumps(name)}, " \
                    f"bn={json.dumps(variant)})"
    else:  # not in any catalog: a snapshot folder loads, its own zoo.json verifies the weights
        load = (f"import zoo\nfrom huggingface_hub import snapshot_download\n"
                f"folder = snapshot_download({json.dumps(model.repo_id)}, revision={json.dumps(model.commit)})\n"
                f"model = zoo.load(folder)")
    snippets = [("zoo", env + load)]
    if not model.is_overlay:
        snippets.append(("timm", env + f"import timm\nmodel = timm.create_model("
                                       f"{json.dumps('hf-hub:' + model.repo_id)}, pretrained=True, num_classes=0)"))
    hub_name = name or model.name
    snippets.append(("torch.hub", env + f"import torch\nmodel = torch.hub.load({json.dumps(site.torch_hub_repo)}, "
                                        f"\"load\", {json.dumps(hub_name)})"))
    snippets.append(("command line", f"HF_ENDPOINT={shlex.quote(endpoint)} HF_HUB_DISABLE_XET=1 zoo info "
                                      f"{shlex.quote(hub_name)}"))
    return snippets


def _evaluation_rows(model: Model) -> str:
    if not model.evaluations:
        return "<p>No evaluation has been recorded for this checkpoint.</p>"
    known = {"protocol", "data", "split", "metric", "value", "command"}
    rows = []
    for record in model.evaluations:
        score = score_of(record)
        extra = {k: v for k, v in record.items() if k not in known}
        rows.append(f'<tr><td data-label="protocol">{esc(record.get("protocol"))}</td>'
                    f'<td data-label="data">{esc(record.get("data"))}</td>'
                    f'<td data-label="split">{esc(record.get("split"))}</td>'
                    f'<td data-label="metric">{esc(record.get("metric"))}</td>'
                    f'<td data-label="value" class="num">{"—" if score is None else f"{score:.4f}"}</td>'
                    f'<td data-label="settings">{esc(json.dumps(extra, sort_keys=True, default=str)) if extra else ""}'
                    f'</td></tr><tr class="command"><td colspan="6"><span class="label">command</span> '
                    f'<code>{esc(record.get("command") or "not recorded")}</code></td></tr>')
    return ('<div class="scroll"><table class="evaluations"><thead><tr><th>protocol</th><th>data</th><th>split</th>'
            f'<th>metric</th><th>value</th><th>settings</th></tr></thead><tbody>{"".join(rows)}</tbody></table></div>')


def _human_size(size: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return str(size)


def model_page(model: Model, site: Site) -> str:
    depth = 2
    hops = []
    for hop in model.lineage:
        target = site.find_hop(hop)
        current = target is model or (hop.get("role") == "target" and str(hop.get("name")) == model.name)
        href = None
        if target is not None and not current:
            href = site.link(depth, model_path(target))
        elif isinstance(hop.get("url"), str) and hop["url"].startswith(("https://", "http://")):
            href = hop["url"]
        hops.append({**hop, "href": href, "current": current})
    hop_rows = "".join(
        f'<tr><td data-label="role">{esc(h.get("role"))}</td><td data-label="checkpoint">'
        + (f'<a href="{esc(h["href"])}">{esc(h.get("name"))}</a>' if h["href"] else esc(h.get("name")))
        + f'</td><td data-label="domain">{esc(h.get("domain"))}</td><td data-label="steps">{esc(h.get("steps") or "—")}'
          f'</td><td data-label="sha256"><code class="sha">{esc(h.get("sha256") or "not recorded")}</code></td></tr>'
        for h in hops)
    lineage_html = (f'<figure class="lineage">{lineage_svg(hops)}</figure>'
                    '<div class="scroll"><table class="hops"><thead><tr><th>role</th><th>checkpoint</th>'
                    f'<th>domain</th><th>steps</th><th>sha256</th></tr></thead><tbody>{hop_rows}</tbody></table></div>'
                    if hops else "<p>No lineage recorded.</p>")
    snippets = "".join(f'<div class="snippet"><div class="snippet-head"><span>{esc(label)}</span>'
                       f'<button type="button" class="copy">copy</button></div><pre><code>{esc(code)}</code></pre>'
                       f'</div>' for label, code in _snippets(model, site))
    if model.bn_variants:
        variant_names = dict(zip(model.bn_variants, model.derived_names)) if model.derived_names else {}
        items = "".join(f'<li><code>{esc(v)}</code>'
                        + (f' — also published as <code>{esc(variant_names[v])}</code>' if v in variant_names else "")
                        + f' (<code>bn/{esc(v)}.safetensors</code>)</li>' for v in model.bn_variants)
        variants = (f"<p>Same trunk, BatchNorm statistics re-estimated on another domain: "
                    f"<code>zoo.load(name, bn=...)</code>.</p><ul class=\"variants\">{items}</ul>")
    else:
        variants = "<p>No BN-statistic variant.</p>"
    file_rows = []
    for record in model.files:
        href = (f"{site.endpoint}/{model.repo_id}/resolve/{model.commit}/{record.path}" if site.endpoint else None)
        name_html = f'<a href="{esc(href)}">{esc(record.path)}</a>' if href else esc(record.path)
        file_rows.append(f'<tr><td data-label="file">{name_html}</td><td data-label="size" class="num">'
                         f'{esc(_human_size(record.size))}<div class="sub">{record.size} B</div></td>'
                         f'<td data-label="sha256"><code class="sha">{esc(record.sha256)}</code></td></tr>')
    pinned = ""
    if model.catalog_name:
        state = ("matches" if model.pinned_revision == model.commit else
                 f"differs: the catalog pins {esc(model.pinned_revision)}")
        pinned = f"<p class=\"sub\">In the catalog as <code>{esc(model.catalog_name)}</code>; mirror commit " \
                 f"<code>{esc(model.commit)}</code> ({state}).</p>"
    else:
        pinned = f"<p class=\"sub\">Not in the catalog; mirror commit <code>{esc(model.commit)}</code>.</p>"
    meta_table, card_html = render_card(model.card)
    facts = "".join(f'<tr><th>{k}</th><td>{esc(model.text(k)) or "—"}</td></tr>'
                    for k in ("strategy", "method", "domain", "arch", "steps", "license"))
    facts += f'<tr><th>headline</th><td>{esc(_headline_text(model.headline))}</td></tr>'
    body = (f'<h1 class="modelname">{esc(model.name)}</h1><p class="sub">{esc(model.repo_id)}</p>{pinned}'
            f'<p class="summary">{esc(model.text("summary"))}</p>'
            f'<div class="grid"><section><h2>Facts</h2><table class="meta">{facts}</table></section>'
            f'<section><h2>Card metadata</h2>{meta_table or "<p>No metadata header.</p>"}</section></div>'
            f'<section id="use"><h2>Use</h2>{snippets}</section>'
            f'<section id="lineage"><h2>Lineage</h2>{lineage_html}</section>'
            f'<section id="evaluations"><h2>Evaluations</h2>{_evaluation_rows(model)}</section>'
            f'<section id="bn"><h2>BN variants</h2>{variants}</section>'
            f'<section id="files"><h2>Files</h2><div class="scroll"><table class="files"><thead><tr><th>file</th>'
            f'<th>size</th><th>sha256</th></tr></thead><tbody>{"".join(file_rows)}</tbody></table></div></section>'
            f'<section id="card"><h2>Model card</h2><article class="card">{card_html}</article></section>')
    return page(f"{model.name} · hpt-zoo", body, depth)


def _strategy_key(model: Model) -> tuple:
    strategy = model.text("strategy")
    return (STRATEGY_ORDER.index(strategy) if strategy in STRATEGY_ORDER else len(STRATEGY_ORDER), model.name)


def domain_page(domain: str, site: Site) -> str:
    """Every model's results on one domain, side by side: a table (protocols as columns) and a bar chart each."""
    results = {}  # (protocol, metric) -> [(model, record)]
    for model in sorted(site.models, key=_strategy_key):
        for record in model.evaluations:
            if str(record.get("data")) == domain and score_of(record) is not None:
                results.setdefault((str(record.get("protocol")), str(record.get("metric"))), []).append(
                    (model, record))
    columns = sorted(results, key=lambda pm: (pm[0] not in ("linear", "finetune", "semi", "knn"), pm))
    models = [m for m in sorted(site.models, key=_strategy_key)
              if any(m is entry[0] for pm in columns for entry in results[pm])]
    head = "".join(f"<th>{esc(p)} {esc(m)}</th>" for p, m in columns)
    rows = []
    for model in models:
        cells = []
        for column in columns:
            values = [score_of(r) for m, r in results[column] if m is model]
            cells.append(f'<td class="num" data-label="{esc(" ".join(column))}">'
                         f'{esc(", ".join(f"{v:.4f}" for v in values)) or "—"}</td>')
        rows.append(f'<tr><td data-label="model"><a href="{esc(site.link(1, model_path(model)))}">'
                    f'{esc(model.name)}</a></td><td data-label="strategy">{esc(model.text("strategy"))}</td>'
                    f'<td data-label="steps">{esc(model.text("steps")) or "—"}</td>{"".join(cells)}</tr>')
    charts = []
    for protocol, metric in columns:
        bars = [(f"{m.text('strategy') or '?'} · {m.name} ({r.get('split')})", score_of(r),
                 f"s-{safe_part(m.text('strategy') or 'other')}") for m, r in results[(protocol, metric)]]
        top = 1.0 if all(0 <= b[1] <= 1 for b in bars) else None
        charts.append(f"<figure>{bar_chart_svg(f'{protocol} · {metric} on {domain}', bars, top)}</figure>")
    body = (f'<h1>Domain: {esc(domain)}</h1><p class="lead">Every published strategy\'s result on {esc(domain)}, side '
            f'by side: which starting point wins for this data.</p>'
            '<div class="scroll"><table class="compare"><thead><tr><th>model</th><th>strategy</th><th>steps</th>'
            f'{head}</tr></thead><tbody>{"".join(rows)}</tbody></table></div>'
            f'<div class="charts">{"".join(charts)}</div>')
    return page(f"{domain} · hpt-zoo", body, 1)


def domains_index(site: Site) -> str:
    items = []
    for domain in site.domains():
        count = sum(1 for m in site.models if any(str(e.get("data")) == domain for e in m.evaluations))
        items.append(f'<li><a href="{esc(site.link(1, domain_path(domain)))}">{esc(domain)}</a> '
                     f'<span class="sub">{count} model{"s" if count != 1 else ""} evaluated</span></li>')
    body = ("<h1>Domains</h1><p class=\"lead\">Results per evaluation data set.</p>"
            + (f"<ul class=\"domains\">{''.join(items)}</ul>" if items else "<p>No evaluation recorded yet.</p>"))
    return page("domains · hpt-zoo", body, 1)
