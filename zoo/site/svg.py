"""Inline SVG pictures (no plotting library, no external asset): the lineage chain and a bar chart.

Every text is escaped with `esc`; colours come from CSS classes (style.css) so light and dark themes apply.
"""
from __future__ import annotations

from html import escape


def esc(value) -> str:
    return escape("" if value is None else str(value), quote=True)


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def lineage_svg(hops: list[dict]) -> str:
    """Hops top to bottom (base -> source -> target), joined by arrows; a hop with an `href` is a link.

    hops: {role, name, domain, method, steps, sha256, href (relative URL or None), current (bool)}.
    Vertical so it stays readable at phone width."""
    width, box_h, gap = 360, 74, 30
    height = len(hops) * box_h + (len(hops) - 1) * gap + 4
    parts = [f'<svg class="lineage" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
             f'aria-label="lineage: {esc(" -> ".join(str(h.get("name")) for h in hops))}">',
             '<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" '
             'orient="auto-start-reverse"><path class="arrowhead" d="M 0 0 L 10 5 L 0 10 z"/></marker></defs>']
    for index, hop in enumerate(hops):
        y = 2 + index * (box_h + gap)
        if index:
            parts.append(f'<line class="edge" x1="{width // 2}" y1="{y - gap + 2}" x2="{width // 2}" y2="{y - 3}" '
                         'marker-end="url(#arrow)"/>')
        steps = hop.get("steps")
        sha = str(hop.get("sha256") or "")
        details = " · ".join(str(x) for x in (hop.get("domain"), hop.get("method"),
                                               f"{steps} steps" if steps not in (None, "") else None) if x)
        box = [f'<rect class="hop{" current" if hop.get("current") else ""}" x="2" y="{y}" width="{width - 4}" '
               f'height="{box_h}" rx="8"/>',
               f'<text class="role" x="14" y="{y + 18}">{esc(str(hop.get("role") or "").upper())}</text>',
               f'<text class="hopname" x="14" y="{y + 38}">{esc(_clip(str(hop.get("name") or "?"), 40))}</text>',
               f'<text class="detail" x="14" y="{y + 55}">{esc(_clip(details, 52))}</text>',
               f'<text class="sha" x="14" y="{y + 69}">sha256 {esc(sha[:16] + "…" if sha else "not recorded")}</text>']
        if hop.get("href"):
            parts.append(f'<a href="{esc(hop["href"])}"><title>{esc(hop.get("name"))}</title>{"".join(box)}</a>')
        else:
            parts.append(f'<g><title>{esc(hop.get("name"))}</title>{"".join(box)}</g>')
    parts.append("</svg>")
    return "".join(parts)


def bar_chart_svg(title: str, bars: list[tuple[str, float, str]], unit_max: float | None = None) -> str:
    """Horizontal bars, one per (label, value, css class), label above its bar so it fits a phone screen."""
    width, row = 360, 38
    top = 22
    height = top + len(bars) * row + 4
    scale_max = unit_max or max([v for _, v, _ in bars] + [1e-9])
    parts = [f'<svg class="chart" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
             f'aria-label="{esc(title)}">', f'<text class="charttitle" x="2" y="14">{esc(_clip(title, 60))}</text>']
    for index, (label, value, css) in enumerate(bars):
        y = top + index * row
        length = max(1.0, (width - 70) * max(value, 0.0) / scale_max)
        parts.append(f'<text class="barlabel" x="2" y="{y + 11}">{esc(_clip(label, 56))}</text>')
        parts.append(f'<rect class="bar {esc(css)}" x="2" y="{y + 15}" width="{length:.1f}" height="14" rx="2"/>')
        parts.append(f'<text class="barvalue" x="{length + 8:.1f}" y="{y + 27}">{value:.4g}</text>')
    parts.append("</svg>")
    return "".join(parts)
