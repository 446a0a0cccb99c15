"""The HPT reproduction's analysis and report, from the results JSON only (`hpt_repro.py --report` runs it):
means and spreads over seeds, steps-to-match on the mean curves, the paired verdict per claim of the study, the plot,
and the generated tables in RESULTS.md. Tested on hand-worked rows in tests/test_hpt_repro_analysis.py.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from hpt_series import HERE, NETWORKS, ORDER, RESULTS, SERIES, base_knn_curve, load_rows


def summarise(rows: list[dict]) -> dict:
    """(series, data, strategy, steps, protocol) -> {"mean", "std", "n", "values"}."""
    groups: dict = {}
    for row in rows:
        groups.setdefault((row["series"], row["data"], row["strategy"], row["steps"], row["protocol"]), []).append(
            row["value"])
    out = {}
    for key, values in groups.items():
        mean = sum(values) / len(values)
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else float("nan")
        out[key] = {"mean": mean, "std": std, "n": len(values), "values": values}
    return out


def steps_to_match(curves: dict, series: str, data: str) -> tuple[float | None, dict]:
    """On the curves given ({(series, data, strategy, steps, "linear"): value}): Target's best and the step
    where it is reached; the fewest HPT steps whose value matches it. Ratio = target steps / HPT steps."""
    target = sorted((k[3], v) for k, v in curves.items() if k[:3] == (series, data, "target") and k[4] == "linear")
    hpt_runs = sorted((k[3], v) for k, v in curves.items() if k[:3] == (series, data, "hpt") and k[4] == "linear")
    if not target or not hpt_runs:
        return None, {}
    best_steps, best = max(target, key=lambda item: item[1])
    matched = next((steps for steps, value in hpt_runs if value >= best), None)
    details = {"target_best": best, "target_steps": best_steps, "target_budget": target[-1][0],
               "hpt_best": max(v for _, v in hpt_runs),
               "hpt_steps_to_match": matched}
    return (best_steps / matched if matched else None), details


# The study's claims, each a paired comparison over seeds (the same seed's two values: the Base strategies
# vary only by their evaluation seeds, so every pair shares the probe's and the fine-tune's draws). The rule
# was fixed before the seeds 1 and 2 finished: a difference counts only when its 95% t-interval (n - 1
# degrees of freedom: 4.30 x its standard error at n = 3) excludes 0; fewer than 3 pairs is "pending".
CLAIMS = (
    # (claim, better, worse, protocols); "hpt@*" = every HPT rung of the ladder, each compared on its own
    ("HPT > Base", "hpt@*", "base@0", ("linear", "semi_supervised")),
    ("Base-BN vs Base", "base_bn@0", "base@0", ("linear", "semi_supervised")),
    ("HPT-BN vs HPT (same steps)", "hptbn@{hptbn}", "hpt@{hptbn}", ("linear", "semi_supervised")),
    ("chain vs HPT (same steps)", "chain@{chain}", "hpt@{chain}", ("linear", "semi_supervised")),
)
MIN_PAIRS = 3


def paired_difference(rows: list[dict], first: tuple, second: tuple) -> dict | None:
    """first - second over the seeds both have; first/second = (series, data, strategy, steps, protocol).
    Returns mean, std, n, the 95% t-interval and a verdict: "higher", "lower", "within noise" or "pending"."""
    from scipy import stats

    def by_seed(key):
        return {r["seed"]: r["value"] for r in rows
                if (r["series"], r["data"], r["strategy"], r["steps"], r["protocol"]) == key}

    a, b = by_seed(first), by_seed(second)
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return None
    differences = [a[s] - b[s] for s in seeds]
    n = len(differences)
    mean = sum(differences) / n
    if n < 2:
        return {"mean": mean, "std": float("nan"), "n": n, "low": float("nan"), "high": float("nan"),
                "verdict": f"pending (n={n})"}
    std = math.sqrt(sum((d - mean) ** 2 for d in differences) / (n - 1))
    half = stats.t.ppf(0.975, n - 1) * std / math.sqrt(n)
    low, high = mean - half, mean + half
    verdict = (f"pending (n={n})" if n < MIN_PAIRS else "higher" if low > 0 else "lower" if high < 0
               else "within noise")
    return {"mean": mean, "std": std, "n": n, "low": low, "high": high, "verdict": verdict}


def claim_verdicts(rows: list[dict]) -> list[dict]:
    """Every paired comparison of CLAIMS that the results hold, per (series, target, protocol)."""
    out = []
    for series, data in sorted({(r["series"], r["data"]) for r in rows}):
        network = NETWORKS[series]
        chain_source = SERIES[series]["chain"].get(data)
        rungs = {"hptbn": network["hptbn_steps"], "chain": network["chain_steps"]}
        for claim, better, worse, protocols in CLAIMS:
            strategy = better.split("@")[0]
            if strategy == "chain":
                if not chain_source:
                    continue
                strategy = f"chain:{chain_source}"
            steps = list(network["hpt_ladder"]) if better.endswith("@*") else [
                int(better.split("@")[1].format(**rungs))]
            for step in steps:
                worse_strategy, worse_steps = worse.split("@")
                worse_steps = step if worse_steps == "*" else int(worse_steps.format(**rungs))
                for protocol in protocols:
                    result = paired_difference(rows, (series, data, strategy, step, protocol),
                                               (series, data, worse_strategy, worse_steps, protocol))
                    if result:
                        out.append({"claim": claim, "series": series, "data": data, "protocol": protocol,
                                    "first": f"{strategy} {step}", "second": f"{worse_strategy} {worse_steps}",
                                    **result})
    return out


# one colour per strategy in every panel, so a reader can follow HPT across targets and protocols
STRATEGY_STYLE = {"target": ("tab:blue", "o-"), "hpt": ("tab:orange", "s-"), "hptbn": ("tab:green", "^"),
                  "chain": ("tab:purple", "*")}
LINE_STYLE = {"random": ("red", "-."), "base": ("gray", "--"), "base_bn": ("black", ":")}
PROTOCOL_LABEL = {"linear": "linear probe top-1 (test)", "semi_supervised": "1000-label fine-tune top-1 (test)"}


def plot(summary: dict, path: Path) -> None:
    """One column per (series, target), one row per protocol; markers are means over seeds, bars +- std
    (none at n = 1), horizontal lines the step-free strategies with their +- std band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = panels(summary)
    protocols = tuple(PROTOCOL_LABEL)
    figure, axes = plt.subplots(len(protocols), len(columns), figsize=(5.5 * len(columns), 4.2 * len(protocols)),
                                squeeze=False)
    spread = lambda point: 0 if math.isnan(point["std"]) else point["std"]  # noqa: E731
    for row, protocol in enumerate(protocols):
        for axis, (series, data) in zip(axes[row], columns):
            points = {k: v for k, v in summary.items() if k[:2] == (series, data) and k[4] == protocol}
            for strategy, (color, style) in STRATEGY_STYLE.items():
                curve = sorted((k[3], v, k[2]) for k, v in points.items() if k[2].split(":")[0] == strategy)
                if curve:
                    label = strategy if strategy != "chain" else f"chain via {curve[0][2][6:]}"
                    axis.errorbar([s for s, _, _ in curve], [v["mean"] for _, v, _ in curve],
                                  yerr=[spread(v) for _, v, _ in curve], fmt=style, color=color, capsize=3,
                                  markersize=10 if strategy == "chain" else 6,
                                  label=f"{label} (n={min(v['n'] for _, v, _ in curve)})")
            for strategy, (color, dash) in LINE_STYLE.items():
                point = next((v for k, v in points.items() if k[2] == strategy), None)
                if point:
                    axis.axhline(point["mean"], color=color, linestyle=dash, label=f"{strategy} (n={point['n']})")
                    if spread(point):
                        axis.axhspan(point["mean"] - point["std"], point["mean"] + point["std"], color=color,
                                     alpha=0.12)
            if not points:
                axis.set_axis_off()
                continue
            axis.set_xscale("log")
            axis.set_xlabel("MoCo steps on the target (log)")
            axis.set_ylabel(f"{PROTOCOL_LABEL[protocol]}, mean +- std")
            axis.set_title(f"{data}, {'self-supervised' if series == 'ssl' else 'supervised ImageNet'} base")
            axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def signed(value: float) -> str:
    """An interval's bound; with one seed there is none ("-", not nan)."""
    return "-" if math.isnan(value) else f"{value:+.4f}"


def json_dumps(data) -> str:
    """Strict JSON: an undefined spread (one seed) is null, not NaN (which other JSON readers refuse)."""
    def clean(value):
        if isinstance(value, float) and math.isnan(value):
            return None
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(v) for v in value]
        return value
    return json.dumps(clean(data), indent=1, allow_nan=False)


# RESULTS.md holds the series' tables between these markers; `--report` rewrites what lies between them from the
# JSON (never by hand), and leaves the rest of the file as it is
RESULTS_MD = HERE / "RESULTS.md"
TABLES_START = "<!-- hpt_repro --report writes from here: generated from benchmarks/results, edits are overwritten -->"
TABLES_END = "<!-- hpt_repro --report writes up to here -->"


def cell(point: dict | None) -> str:
    """mean +- std (n); one seed has no spread."""
    if not point:
        return "-"
    spread = "" if math.isnan(point["std"]) else f" +- {point['std']:.4f}"
    return f"{point['mean']:.4f}{spread} ({point['n']})"


def panel_keys(summary: dict, series: str, data: str) -> list[tuple]:
    return sorted({k[2:4] for k in summary if k[:2] == (series, data)},
                  key=lambda k: (ORDER.index(k[0].split(":")[0]), k[1]))


def steps_to_match_line(summary: dict, rows: list[dict], series: str, data: str) -> tuple[str | None, float | None]:
    """Steps-to-match on the mean curves, with the per-seed ratios as its spread (None: no Target/HPT pair)."""
    ratio, details = steps_to_match({k: v["mean"] for k, v in summary.items()}, series, data)
    if not details:
        return None, None
    per_seed = []
    for seed in sorted({r["seed"] for r in rows if r["series"] == series and r["data"] == data}):
        own = {(r["series"], r["data"], r["strategy"], r["steps"], r["protocol"]): r["value"] for r in rows
               if r["seed"] == seed}
        seed_ratio, seed_details = steps_to_match(own, series, data)
        if seed_details:  # a seed without both curves yet is not "no match"
            per_seed.append(seed_ratio)
    line = (f"mean curves: Target best {details['target_best']:.4f} at {details['target_steps']} steps "
            f"(of its {details['target_budget']}-step budget); HPT best {details['hpt_best']:.4f}; HPT steps to "
            f"match: {details['hpt_steps_to_match']} -> " + (f"{ratio:.1f}x" if ratio else "no match")
            + "; per seed: " + ", ".join(f"{r:.1f}x" if r else "none" for r in per_seed))
    return line, ratio


def steps_to_match_lines(summary: dict, rows: list[dict]) -> dict:
    """(series, data) -> (steps-to-match line or None, ratio) for every panel, in the report's order."""
    return {(series, data): steps_to_match_line(summary, rows, series, data) for series, data in panels(summary)}


def speedup_line(lines: dict) -> str:
    """The headline: the smaller steps-to-match ratio of the ssl series' targets (mean curves)."""
    ratios = {data: ratio for (series, data), (line, ratio) in lines.items() if series == "ssl" and line}
    if ratios and all(ratios.values()):
        return f"hpt steps-to-match speedup vs target: {min(ratios.values()):.1f}x"
    if ratios:
        missing = [d for d, r in ratios.items() if not r]
        return f"hpt steps-to-match speedup vs target: 0.0x (HPT did not match Target's best on {', '.join(missing)})"
    return "hpt steps-to-match speedup vs target: n/a (the self-supervised-base series has no Target/HPT pair yet)"


def panels(summary: dict) -> list[tuple[str, str]]:
    return sorted({(k[0], k[1]) for k in summary}, key=lambda p: (list(SERIES).index(p[0]), p[1]))


PROTOCOL_NAME = {"linear": "linear", "semi_supervised": "fine-tune"}


def markdown_tables(summary: dict, rows: list[dict], verdicts: list[dict], lines_to_match: dict) -> str:
    """The tables RESULTS.md shows, from the same numbers --report prints (`lines_to_match`: steps_to_match_lines)."""
    seeds = sorted({r["seed"] for r in rows})
    lines = [f"Generated by `python benchmarks/hpt_repro.py --report` from {len(rows)} measured points (seeds "
             f"{', '.join(map(str, seeds))}): mean +- std over seeds (n). Linear = the study's linear probe, "
             "fine-tune = the 1000-label fine-tune (150 iterations; see the fine-tune length check).", ""]
    for (series, data), (line, _) in lines_to_match.items():
        base = "self-supervised (MoCo v2 ResNet-18, Fashion-MNIST)" if series == "ssl" else \
            "supervised ImageNet MobileNetV2"
        lines += [f"**{data}, {base} base**", "", "| strategy | steps | linear | fine-tune |", "|---|---|---|---|"]
        for strategy, steps in panel_keys(summary, series, data):
            lines.append(f"| {strategy} | {steps} | {cell(summary.get((series, data, strategy, steps, 'linear')))} | "
                         f"{cell(summary.get((series, data, strategy, steps, 'semi_supervised')))} |")
        if line:
            lines += ["", f"Steps to match: {line}."]
        lines.append("")
    if verdicts:
        lines += [f"Paired differences over seeds (first - second), 95% t-interval; a verdict needs n >= {MIN_PAIRS}:",
                  "", "| claim | base | target | protocol | first - second | mean | 95% interval | n | verdict |",
                  "|---|---|---|---|---|---|---|---|---|"]
        lines += [f"| {v['claim']} | {v['series']} | {v['data']} | {PROTOCOL_NAME[v['protocol']]} | {v['first']} - "
                  f"{v['second']} | {v['mean']:+.4f} | [{signed(v['low'])}, {signed(v['high'])}] | {v['n']} | "
                  f"{v['verdict']} |" for v in verdicts]
        lines.append("")
    lines.append(f"`{speedup_line(lines_to_match)}`")
    return "\n".join(lines)


def write_tables_into(path: Path, tables: str) -> bool:
    """Replace what lies between the markers in `path` (atomically); a file without both markers is left alone."""
    from training.runfiles import atomic_write_bytes

    text = path.read_text() if path.exists() else ""
    if TABLES_START not in text or TABLES_END not in text or text.index(TABLES_START) > text.index(TABLES_END):
        return False
    head, rest = text.split(TABLES_START, 1)
    tail = rest.split(TABLES_END, 1)[1]
    atomic_write_bytes(path, f"{head}{TABLES_START}\n{tables}\n{TABLES_END}{tail}".encode())
    return True


def report(tag: str) -> None:
    rows = load_rows(tag)
    curve = base_knn_curve(tag)
    if curve:
        print("ssl base (MoCo v2, Fashion-MNIST) kNN on val: " + ", ".join(f"{s}: {v:.3f}" for s, v in curve))
    if not rows:
        print(f"no results yet in {RESULTS}/hpt_repro.*.json")
        print("hpt steps-to-match speedup vs target: n/a (no results yet)")
        return
    summary = summarise(rows)
    name = "hpt_repro" if tag == "full" else f"hpt_repro.{tag}"
    table = [{"series": k[0], "data": k[1], "strategy": k[2], "steps": k[3], "protocol": k[4], **v}
             for k, v in sorted(summary.items(), key=lambda kv: str(kv[0]))]
    verdicts = claim_verdicts(rows)
    (RESULTS / f"{name}.summary.json").write_text(json_dumps({"points": table, "ssl_base_knn": curve,
                                                          "verdicts": verdicts}))
    plot(summary, RESULTS / f"{name}.png")
    lines_to_match = steps_to_match_lines(summary, rows)
    for (series, data), (line, _) in lines_to_match.items():
        print(f"\n{series} base, target {data}")
        print(f"  {'strategy':16s} {'steps':>6s} {'linear (mean +- std, n)':>26s} {'1000-label':>24s}")
        for strategy, steps in panel_keys(summary, series, data):
            cells = [cell(summary.get((series, data, strategy, steps, protocol)))
                     for protocol in ("linear", "semi_supervised")]
            print(f"  {strategy:16s} {steps:>6d} {cells[0]:>26s} {cells[1]:>24s}")
        if line:
            print(f"  {line}")
    if verdicts:
        print(f"\npaired differences over seeds (first - second), 95% t-interval; verdict needs n >= {MIN_PAIRS}:")
        for v in verdicts:
            print(f"  {v['claim']:27s} {v['series']} {v['data']:13s} {v['protocol']:15s} {v['first']:>10s} - "
                  f"{v['second']:<10s} {v['mean']:+.4f} [{signed(v['low'])}, {signed(v['high'])}] n={v['n']} "
                  f"{v['verdict']}")
    if tag == "full" and write_tables_into(RESULTS_MD, markdown_tables(summary, rows, verdicts, lines_to_match)):
        print(f"\ntables written into {RESULTS_MD.relative_to(HERE.parent)} (between its hpt_repro markers)")
    print(speedup_line(lines_to_match))
