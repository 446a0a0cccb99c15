"""The reproduction's analysis (benchmarks/hpt_report.py on hpt_series.py; the base check in hpt_repro.py): the
verdict rule and steps-to-match, on rows whose answer is worked out by hand here. These are what RESULTS.md
reports, so they are tested like library code."""
import json
import math
import sys
from pathlib import Path

import pytest

sys.path.append(str(Path(__file__).parents[1] / "benchmarks"))  # the benchmarks import each other by file name
import hpt_report  # noqa: E402
import hpt_repro  # noqa: E402
import hpt_series  # noqa: E402


def row(strategy, steps, seed, value, protocol="linear", series="ssl", data="animals"):
    return dict(series=series, data=data, strategy=strategy, steps=steps, seed=seed, protocol=protocol, value=value)


def pairs(first, second, values_first, values_second, **kw):
    return ([row(*first, seed, v, **kw) for seed, v in enumerate(values_first)]
            + [row(*second, seed, v, **kw) for seed, v in enumerate(values_second)])


def test_consistent_gain_is_higher_with_the_t_interval_worked_by_hand():
    rows = pairs(("hpt", 50), ("base", 0), [0.72, 0.73, 0.725], [0.70, 0.70, 0.70])
    result = hpt_report.paired_difference(rows, ("ssl", "animals", "hpt", 50, "linear"),
                                         ("ssl", "animals", "base", 0, "linear"))
    # differences 0.02, 0.03, 0.025: mean 0.025, sd 0.005, t(0.975, 2) = 4.3027
    half = 4.302653 * 0.005 / math.sqrt(3)
    assert result["n"] == 3 and result["mean"] == pytest.approx(0.025)
    assert result["std"] == pytest.approx(0.005)
    assert (result["low"], result["high"]) == pytest.approx((0.025 - half, 0.025 + half), abs=1e-6)
    assert result["verdict"] == "higher"


def test_a_gain_smaller_than_its_seed_noise_is_within_noise_and_a_loss_is_lower():
    noisy = pairs(("hpt", 50), ("base", 0), [0.74, 0.69, 0.73], [0.70, 0.70, 0.70])
    keys = (("ssl", "animals", "hpt", 50, "linear"), ("ssl", "animals", "base", 0, "linear"))
    assert hpt_report.paired_difference(noisy, *keys)["verdict"] == "within noise"
    worse = pairs(("hpt", 50), ("base", 0), [0.68, 0.67, 0.675], [0.70, 0.70, 0.70])
    assert hpt_report.paired_difference(worse, *keys)["verdict"] == "lower"


def test_only_seeds_both_sides_have_are_paired_and_fewer_than_three_pairs_is_pending():
    rows = pairs(("hpt", 50), ("base", 0), [0.72, 0.73], [0.70, 0.70, 0.10])  # seed 2 has no HPT value
    result = hpt_report.paired_difference(rows, ("ssl", "animals", "hpt", 50, "linear"),
                                         ("ssl", "animals", "base", 0, "linear"))
    assert result["n"] == 2 and result["mean"] == pytest.approx(0.025) and result["verdict"] == "pending (n=2)"
    assert hpt_report.paired_difference(rows, ("ssl", "animals", "hpt", 150, "linear"),
                                       ("ssl", "animals", "base", 0, "linear")) is None


def test_claims_pair_hpt_bn_and_chains_with_hpt_at_the_same_steps_and_every_hpt_rung_with_base():
    network = hpt_series.NETWORKS["ssl"]
    bn, chain = network["hptbn_steps"], network["chain_steps"]
    rows = []
    for seed in range(3):
        rows += [row("base", 0, seed, 0.70), row("hptbn", bn, seed, 0.60), row("hpt", bn, seed, 0.70 + 0.01 * seed),
                 row("chain:animals", chain, seed, 0.9, data="digits"), row("hpt", chain, seed, 0.5, data="digits")]
        rows += [row("hpt", steps, seed, 0.8) for steps in network["hpt_ladder"] if steps != bn]
    verdicts = {(v["claim"], v["data"], v["first"]): v for v in hpt_report.claim_verdicts(rows)}
    assert verdicts[("HPT-BN vs HPT (same steps)", "animals", f"hptbn {bn}")]["second"] == f"hpt {bn}"
    assert verdicts[("HPT-BN vs HPT (same steps)", "animals", f"hptbn {bn}")]["verdict"] == "lower"
    assert verdicts[("chain vs HPT (same steps)", "digits", f"chain:animals {chain}")]["verdict"] == "higher"
    assert not any(v["claim"].startswith("chain") for v in verdicts.values() if v["data"] == "animals")  # no chain
    hpt_vs_base = {v["first"] for v in verdicts.values() if v["claim"] == "HPT > Base" and v["data"] == "animals"}
    assert hpt_vs_base == {f"hpt {steps}" for steps in network["hpt_ladder"]}


def test_steps_to_match_reads_targets_best_and_the_first_hpt_rung_reaching_it():
    curves = {("ssl", "animals", "target", 100, "linear"): 0.60, ("ssl", "animals", "target", 1000, "linear"): 0.70,
              ("ssl", "animals", "target", 300, "linear"): 0.65, ("ssl", "animals", "hpt", 50, "linear"): 0.69,
              ("ssl", "animals", "hpt", 150, "linear"): 0.71, ("ssl", "animals", "hpt", 500, "linear"): 0.72}
    ratio, details = hpt_report.steps_to_match(curves, "ssl", "animals")
    assert ratio == pytest.approx(1000 / 150) and details["hpt_steps_to_match"] == 150
    # a Target that peaked before its last rung: the best is where it peaked, the budget its last rung
    curves[("ssl", "animals", "target", 1000, "linear")] = 0.62
    ratio, details = hpt_report.steps_to_match(curves, "ssl", "animals")
    assert (details["target_steps"], details["target_budget"], ratio) == (300, 1000, pytest.approx(300 / 50))
    curves[("ssl", "animals", "target", 1000, "linear")] = 0.80  # HPT never gets there
    assert hpt_report.steps_to_match(curves, "ssl", "animals")[0] is None


def fake_export(folder: Path, sha: str) -> Path:
    folder.mkdir(parents=True)
    (folder / "zoo.json").write_text(json.dumps({"weights": {"model.safetensors": {"sha256": sha, "size": 1}}}))
    return folder


def test_a_rebuilt_ssl_base_must_be_the_recorded_one(tmp_path, monkeypatch):
    """A new checkout retrains the base (benchmarks/_work is not in git); the committed points stay valid only if
    it comes out bit-identical, so a different sha256 stops the series with the way out in the message."""
    monkeypatch.setattr(hpt_series, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(hpt_series, "WORK", tmp_path / "work")
    (tmp_path / "results").mkdir()
    record = {"name": "moco-fashion_mnist-r18c-1132", "sha256": "a" * 64, "knn_top1": [[250, 0.61], [1132, 0.74]],
              "checked_against_base_point": None}
    hpt_series.base_record_path("full").write_text(json.dumps(record))
    assert hpt_repro.check_base_identity(fake_export(tmp_path / "same", "a" * 64), hpt_series.FULL, "full") is None
    with pytest.raises(SystemExit, match="not the one the committed points were measured on.*move the ssl results"):
        hpt_repro.check_base_identity(fake_export(tmp_path / "other", "b" * 64), hpt_series.FULL, "full")
    assert json.loads(hpt_series.base_record_path("full").read_text()) == record  # the record is never rewritten
    # the report's kNN curve comes from the record when the base's run folder is gone
    assert hpt_series.base_knn_curve("full") == [(250, 0.61), (1132, 0.74)]


def test_a_first_base_record_is_written_when_no_point_needs_checking(tmp_path, monkeypatch):
    monkeypatch.setattr(hpt_series, "RESULTS", tmp_path)
    monkeypatch.setattr(hpt_series, "WORK", tmp_path / "work")
    hpt_repro.check_base_identity(fake_export(tmp_path / "base", "c" * 64), hpt_series.QUICK, "quick")
    written = json.loads(hpt_series.base_record_path("quick").read_text())
    assert written["sha256"] == "c" * 64 and written["checked_against_base_point"] is None
    assert hpt_series.base_record_path("quick").name == "hpt_repro.quick.ssl_base.json"


def test_summary_json_is_strict_json_with_null_for_an_undefined_spread():
    one_seed = hpt_report.summarise([row("hpt", 50, 0, 0.7)])
    text = hpt_report.json_dumps({"points": [{"key": list(k), **v} for k, v in one_seed.items()]})
    point = json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} in the summary JSON"))["points"][0]
    assert point["mean"] == 0.7 and point["n"] == 1 and point["std"] is None
    assert hpt_report.signed(float("nan")) == "-" and hpt_report.signed(0.01234) == "+0.0123"


def test_results_tables_are_generated_between_the_markers_and_nowhere_else(tmp_path):
    """RESULTS.md's series tables come from the JSON: --report rewrites only what lies between its markers, so the
    hand-written analysis around them survives every report, and a file without the markers is not touched."""
    rows = []
    for seed, (hpt, target) in enumerate([(0.72, 0.70), (0.73, 0.69), (0.725, 0.71)]):
        rows += [row("base", 0, seed, 0.70), row("hpt", 50, seed, hpt), row("target", 1000, seed, target)]
    rows.append(row("base", 0, 0, 0.45, protocol="semi_supervised"))  # one seed only: no spread
    summary = hpt_report.summarise(rows)
    tables = hpt_report.markdown_tables(summary, rows, hpt_report.claim_verdicts(rows),
                                       hpt_report.steps_to_match_lines(summary, rows))
    assert "| hpt | 50 | 0.7250 +- 0.0050 (3) | - |" in tables  # mean +- sample std over the 3 seeds
    assert "| base | 0 | 0.7000 +- 0.0000 (3) | 0.4500 (1) |" in tables
    # Target's best mean 0.70 at 1000 steps, HPT's 50-step mean 0.725 reaches it
    assert "HPT steps to match: 50 -> 20.0x; per seed: 20.0x, 20.0x, 20.0x" in tables
    assert "| HPT > Base | ssl | animals | linear | hpt 50 - base 0 | +0.0250 |" in tables
    assert tables.endswith("`hpt steps-to-match speedup vs target: 20.0x`")

    results = tmp_path / "RESULTS.md"
    before, after = "# Results\nanalysis by hand\n", "\n## Next section\nmore text\n"
    results.write_text(f"{before}{hpt_report.TABLES_START}\nstale table\n{hpt_report.TABLES_END}{after}")
    assert hpt_report.write_tables_into(results, tables)
    text = results.read_text()
    assert text.startswith(before) and text.endswith(after) and "stale table" not in text and tables in text
    assert hpt_report.write_tables_into(results, tables) and results.read_text() == text  # a second report: the same
    untouched = tmp_path / "other.md"
    untouched.write_text(f"no markers here\n{hpt_report.TABLES_END}\n{hpt_report.TABLES_START}\n")  # wrong order too
    assert not hpt_report.write_tables_into(untouched, tables)
    assert untouched.read_text() == f"no markers here\n{hpt_report.TABLES_END}\n{hpt_report.TABLES_START}\n"
