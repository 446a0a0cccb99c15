"""How well does zoo.recommend's quick ranking agree with the full linear probe, and at what cost?

For each offline set (Fashion-MNIST, animals, digits) and the same candidates, side by side:
- full: the HPT linear-separability protocol of training.evaluate (3000 train / 1000 val / 1000 test
  images, SGD lr grid {0.3, 3, 30}, 1000 iterations, validation-selected test top-1), each candidate
  with its own mean/std at 64 px;
- quick: zoo.recommend on a stratified sample of the train split (closed-form ridge, leave-one-out).
Kendall's tau-b between the two rankings per set, and the quick ranking's cost (load + embed + probe, in CPU
seconds, summed) as a fraction of the full probe's (load + embed + probe).

Candidates, one family per run:
- ``mnv2`` (the headline, fixed before any result): MobileNetV2 at 64 px, any BN variant: the supervised
  ImageNet base and its animals BN variant, a randomly initialised control, and every zoo checkpoint folder
  found under --pool (default: what hpt_repro.py and target_ablation.py exported in benchmarks/_work/).
  Nine of them turned out to be collapsed MoCo runs whose full-probe scores are within noise of each other.
- ``r18c``: the ResNet-18 (3x3 stem, 1 gray channel) at 28 px: a randomly initialised control, the
  self-supervised Fashion-MNIST base and every checkpoint the hpt_repro ssl series exported from it (Base-BN,
  HPT, HPT-BN, chain and Target rungs): distinct checkpoints of one family, as a user's shortlist would be.

    python benchmarks/recommend.py                      # resumable: full-probe rows are cached
    python benchmarks/recommend.py --family r18c [--retest]   # --retest: the reference's own reliability
    python benchmarks/recommend.py --report             # every family; the mnv2 headline last

Results: benchmarks/results/recommend.json (mnv2), recommend.r18c.json.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "recommend.json"
WORK = HERE / "_work" / "recommend"
SETS = ("fashion_mnist", "animals", "digits")
PUBLISHED = ("sup-imagenet-mnv2", "base-animals-mnv2")
FULL_PROBE = {"train_images": 3000, "eval_images": 1000, "iterations": 1000, "lrs": (0.3, 3.0, 30.0)}
# family -> the input every candidate is probed at (both probes) and where its results go
FAMILIES = {"mnv2": {"image_size": 64, "crop_pct": 1.0, "results": RESULTS},
            "r18c": {"image_size": 28, "crop_pct": None, "results": RESULTS.with_name("recommend.r18c.json")}}


def kendall_tau_b(first: list[float], second: list[float]) -> float:
    """Kendall's tau-b (ties in either ranking handled), O(n^2): a few dozen candidates at most."""
    concordant = discordant = ties_first = ties_second = 0
    for i in range(len(first)):
        for j in range(i + 1, len(first)):
            a, b = first[i] - first[j], second[i] - second[j]
            if a == 0 and b == 0:
                continue
            if a == 0:
                ties_first += 1
            elif b == 0:
                ties_second += 1
            elif (a > 0) == (b > 0):
                concordant += 1
            else:
                discordant += 1
    denominator = ((concordant + discordant + ties_first) * (concordant + discordant + ties_second)) ** 0.5
    return (concordant - discordant) / denominator if denominator else float("nan")


def random_checkpoint(name: str, make) -> Path:
    """A randomly initialised control in the zoo format (seed 0), written once: make() -> (state_dict, timm config)."""
    import torch

    from zoo.checkpoint import write_checkpoint

    folder = WORK / name
    if not (folder / "zoo.json").exists():
        torch.manual_seed(0)
        state, config = make()
        write_checkpoint(folder, state, config, {"name": name, "strategy": "random", "method": "none",
                                                 "domain": "none", "lineage": []})
    return folder


def random_control() -> Path:
    """A randomly initialised MobileNetV2 (ImageNet statistics), the floor of the mnv2 ranking."""
    def make():
        from zoo.build import create_model
        from zoo.checkpoint import timm_config

        cfg = {"input_size": (3, 64, 64), "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225),
               "interpolation": "bilinear", "crop_pct": 1.0}
        return create_model("mobilenetv2_100", 0).state_dict(), timm_config("mobilenetv2_100", 0, 1280, cfg)
    return random_checkpoint("random-mnv2", make)


def random_r18c() -> Path:
    """A randomly initialised gray ResNet-18 (3x3 stem) with Fashion-MNIST's statistics (what a run from scratch
    on it normalises with), the floor of the r18c ranking."""
    def make():
        from training.data import open_source
        from training.models import build_backbone
        from training.views import input_spec
        from zoo.checkpoint import timm_config

        backbone = build_backbone("r18c", 1)
        spec = input_spec(open_source("fashion_mnist", "train").domain, 1, 28)
        return backbone.module.state_dict(), timm_config(backbone.timm_arch, 0, backbone.num_features,
                                                         spec.pretrained_cfg(), backbone.model_args)
    return random_checkpoint("random-r18c", make)


def r18c_candidates() -> list[str]:
    """The random control, the ssl base and every export of hpt_repro's ssl series (not its raw runs)."""
    work = HERE / "_work" / "hpt2" / "full"
    exports = (sorted(work.glob("ssl_base_r18c/moco-*/zoo.json")) + sorted(work.glob("ssl-r18c/*/base_bn/zoo.json"))
               + sorted(work.glob("ssl-r18c/*/seed*/*/zoo.json")))
    return [str(random_r18c()), *(str(meta.parent) for meta in exports)]


def results_file(family: str, quick: bool) -> Path:
    """Where a family's results go; --quick smoke runs write beside them (git-ignored)."""
    path = FAMILIES[family]["results"]
    return path.with_name(path.stem + ".quick.json") if quick else path


def export_ablation_runs() -> list[Path]:
    """Each finished target_ablation run, exported once (its final step) so it can be a candidate."""
    from training import runfiles
    from training.export import export

    out = []
    for run in sorted((HERE / "_work" / "target_ablation").glob("*-*-*")):
        latest = runfiles.latest_checkpoint(run) if run.is_dir() else None
        config = runfiles.read_config(run) if latest else None
        if not latest or latest[0] != config["steps"] or config["arch"] != "mnv2":
            continue
        folder = WORK / "pool" / run.name
        if not (folder / "zoo.json").exists():
            export(run, folder)
        out.append(folder)
    return out


def candidates(pool: Path) -> list[str]:
    found = [str(random_control()), *PUBLISHED, *map(str, export_ablation_runs())]
    for meta in sorted(pool.glob("**/zoo.json")):
        folder = meta.parent
        skip = ("hf-home", "mirror", "quick", "pool")  # caches, the smoke runs, exports made above
        if "runs-" in str(folder) or any(part in folder.parts for part in skip) or str(folder) in found:
            continue
        if json.loads((folder / "config.json").read_text() if (folder / "config.json").exists() else "{}").get(
                "architecture", "mobilenetv2_100") == "mobilenetv2_100":
            found.append(str(folder))
    return found


def full_probe(name: str, data: str, sets, family: dict, **retest) -> dict:
    """The full linear probe of one candidate; `retest` (draw=1, seed=1): the same protocol on other images."""
    import zoo
    from training.evaluate import linear_eval
    from training.views import input_spec

    start, cpu = time.perf_counter(), time.process_time()
    model = zoo.load(name)
    cfg = zoo.info(name)["pretrained_cfg"]
    loaded = time.perf_counter()
    spec = input_spec(sets[0].domain, "auto", family["image_size"], base_cfg=cfg, crop_pct=family["crop_pct"])
    record = linear_eval(model, *sets, spec, data, **FULL_PROBE, **retest)
    return {"value": record["value"], "lr": record["lr"], "load_s": loaded - start,
            "seconds": time.perf_counter() - start, "cpu_s": time.process_time() - cpu}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", default=",".join(SETS))
    parser.add_argument("--sample", type=int, default=200, help="recommend's sample (stratified, train split)")
    parser.add_argument("--pool", default=str(HERE / "_work"), help="folder searched for zoo checkpoint folders")
    parser.add_argument("--family", choices=tuple(FAMILIES), default="mnv2", help="the candidates' family")
    parser.add_argument("--report", action="store_true")
    parser.add_argument("--quick", action="store_true", help="digits only, tiny probe, separate JSON: a smoke check")
    parser.add_argument("--retest", action="store_true",
                        help="also rerun the full probe on other images (another fixed draw, probe seed 1): how well "
                             "the reference agrees with itself, the most any quick ranking can agree with it")
    args = parser.parse_args()
    family = FAMILIES[args.family]
    results_path = results_file(args.family, args.quick)
    if args.quick:
        FULL_PROBE.update(train_images=300, eval_images=100, iterations=100)
        args.sets, args.sample = "digits", 60
    if args.report:
        report(args.sample, args.quick)
        return 0
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    sys.path.insert(0, str(HERE))
    from hpt_repro import ensure_base_offline

    ensure_base_offline()
    import zoo
    from training.data import open_source
    from training.runfiles import atomic_write_bytes

    results = json.loads(results_path.read_text()) if results_path.exists() else {"full": [], "quick": []}
    results.setdefault("retest", [])
    names = candidates(Path(args.pool)) if args.family == "mnv2" else r18c_candidates()
    print(f"{len(names)} candidates: {names}", flush=True)

    def save():
        atomic_write_bytes(results_path, json.dumps(results, indent=1).encode())

    for data in args.sets.split(","):
        sets = tuple(open_source(data, split) for split in ("train", "val", "test"))
        for name in names:
            if any(r["data"] == data and r["name"] == name for r in results["full"]):
                continue
            row = {"data": data, "name": name, **full_probe(name, data, sets, family)}
            results["full"].append(row)
            save()
            print(f"  full  {data:14s} {row['value']:.4f} {row['seconds']:6.1f} s  {name}", flush=True)
        for name in names if args.retest else ():
            if any(r["data"] == data and r["name"] == name for r in results["retest"]):
                continue
            row = {"data": data, "name": name, **full_probe(name, data, sets, family, draw=1, seed=1)}
            results["retest"].append(row)
            save()
            print(f"  retest {data:13s} {row['value']:.4f} {row['seconds']:6.1f} s  {name}", flush=True)
        train = sets[0]
        images = train._array[:, :, :, 0] if train._array is not None else [train.image(i) for i in range(len(train))]
        cpu = time.process_time()
        ranking = zoo.recommend((images, train.labels()), candidates=names, budget_s=None, sample=args.sample,
                                image_size=family["image_size"], crop_pct=family["crop_pct"])
        cpu = time.process_time() - cpu
        results["quick"] = [r for r in results["quick"] if not (r["data"] == data and r["sample"] == args.sample)]
        results["quick"].append({"data": data, "sample": args.sample, "rows": ranking.rows,
                                 "skipped": ranking.skipped, "seconds": ranking.seconds, "cpu_s": cpu})
        save()
        print(str(ranking), flush=True)
    report(args.sample, args.quick)
    return 0


def report(headline_sample: int = 200, quick: bool = False) -> None:
    """Every family with results (mnv2, the headline, last); per data set and recommend sample size: tau and cost.
    The last line is the mnv2 headline sample's summary (sample 200 and the mnv2 pool were fixed before any
    result; other sizes and the r18c pool are printed above it)."""
    for family in sorted(FAMILIES, key=lambda f: f == "mnv2"):
        path = results_file(family, quick)
        if path.exists() or family == "mnv2":
            report_family(path, family, headline_sample)


def report_family(path: Path, family: str, headline_sample: int) -> None:
    results = json.loads(path.read_text()) if path.exists() else {"full": [], "quick": []}
    summaries = {}
    print(f"== {family} pool ({path.name})")
    for entry in sorted(results["quick"], key=lambda e: (e["sample"], e["data"])):
        data = entry["data"]
        full = {r["name"]: r for r in results["full"] if r["data"] == data}
        rows = [r for r in entry["rows"] if r["name"] in full]
        if len(rows) < 3:
            continue
        tau = kendall_tau_b([r["score"] for r in rows], [full[r["name"]]["value"] for r in rows])
        # CPU seconds of this process (torch at one thread) when every row has them: the 2-core machine's load
        # changes over a run of hours and would bias wall-clock ratios; older rows have wall-clock only
        if "cpu_s" in entry and all("cpu_s" in full[r["name"]] for r in rows) and len(rows) == len(entry["rows"]):
            quick, cost, unit = entry["cpu_s"], sum(full[r["name"]]["cpu_s"] for r in rows), "CPU s"
        else:
            quick, cost, unit = sum(r["seconds"] for r in rows), sum(full[r["name"]]["seconds"] for r in rows), "s"
        # what a user acts on is the top pick: how far below the full probe's best is the full score of recommend's
        # first choice (0 when it picks the best, or one tied with it)
        pick = max(rows, key=lambda r: r["score"])["name"]
        regret = max(full[r["name"]]["value"] for r in rows) - full[pick]["value"]
        taus, quick_cost, full_cost, regrets = summaries.get(entry["sample"], ([], 0.0, 0.0, []))
        summaries[entry["sample"]] = (taus + [tau], quick_cost + quick, full_cost + cost, regrets + [regret])
        print(f"\n{data}: {len(rows)} candidates, recommend sample {entry['sample']}: kendall tau-b {tau:.2f}, "
              f"cost {quick:.0f} {unit} vs full probe {cost:.0f} {unit} ({100 * quick / cost:.1f}%); top pick "
              f"{short_name(pick)}, {100 * regret:.1f} points below the full probe's best")
        retest = {r["name"]: r["value"] for r in results.get("retest", []) if r["data"] == data}
        if all(r["name"] in retest for r in rows):
            ceiling = kendall_tau_b([retest[r["name"]] for r in rows], [full[r["name"]]["value"] for r in rows])
            print(f"  the full probe vs its own retest (other images, probe seed 1): kendall tau-b {ceiling:.2f}, "
                  "the most any quick ranking can agree with it")
        print(f"  {'quick':>6} {'full':>6}  candidate")
        for r in sorted(rows, key=lambda r: -full[r["name"]]["value"]):
            print(f"  {r['score']:6.3f} {full[r['name']]['value']:6.3f}  {short_name(r['name'])}")
    print()
    headline = family == "mnv2"
    for sample in sorted(summaries, key=lambda s: (headline and s == headline_sample, s)):  # the headline last
        taus, quick_cost, full_cost, regrets = summaries[sample]
        suffix = "" if headline and sample == headline_sample else f" ({family} pool, sample {sample})"
        print(f"recommend top pick vs the full probe's best ({family} pool, sample {sample}): "
              f"{100 * sum(regrets) / len(regrets):.1f} points below on average, at most {100 * max(regrets):.1f}")
        print(f"recommend kendall tau vs full probe{suffix}: {sum(taus) / len(taus):.2f} at "
              f"{100 * quick_cost / full_cost:.1f}% of its cost ({len(taus)} data sets)")
    if headline and headline_sample not in summaries:
        print("recommend kendall tau vs full probe: n/a (no complete data set yet)")


def short_name(name: str) -> str:
    """A candidate's name, with what tells the series' exports apart: the target and the seed for the ssl series'
    (animals/seed1/hpt_50 vs digits/seed1/hpt_50, animals/base_bn), the seed folder for the others'."""
    path = Path(name)
    if "ssl-r18c" in path.parts:
        return "/".join(path.parts[path.parts.index("ssl-r18c") + 1:])
    return f"{path.parent.name}/{path.name}" if path.parent.name.startswith("seed") else path.name


if __name__ == "__main__":
    sys.exit(main())
