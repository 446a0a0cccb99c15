"""Mutation testing of the core modules with mutmut, one module at a time against only its relevant tests.

Each module runs in its own scratch copy of the checkout (tracked and untracked, non-ignored files), so
the repository never gets a `mutants/` folder and a module's run cannot disturb another's. For every
module it prints killed / total and writes the surviving mutants' diffs to
benchmarks/results/mutation/<module>.txt for triage (benchmarks/RESULTS.md, "Mutation testing").

    nice -n 10 python benchmarks/mutation.py                      # every module, 1 process
    nice -n 10 python benchmarks/mutation.py zoo/names.py zoo/bn.py
    python benchmarks/mutation.py --list                          # modules and the tests each one runs
    nice -n 19 python benchmarks/mutation.py training/engine.py --sample 80   # a seeded random sample only
    nice -n 19 python benchmarks/mutation.py training/engine.py --sample 80 --seed 1 --work /tmp/mut-seed1

--sample runs a random sample of a module's mutants (--seed, 0 by default) whose every mutant runs real
training and would take hours in full; its report gives the sample's score and a 95% interval for the module's.
Another seed draws an independent sample (the report goes to <module>-seed<N>.txt).

A mutant counts as caught when a test fails on it or it times out (an infinite loop is caught too);
"survived" and "no tests" (no selected test reaches the function) count against the score.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "mutation"

# module -> the pytest arguments that select its relevant tests. Tests that need the session-wide olah
# mirror or torchrun are left out on purpose: mutmut re-runs the tests in a forked pytest per mutant, and
# a session-wide mirror or a two-process launch per mutant would not fit a session (fetch's own tests
# start a small module-scoped olah instead, about a second per mutant).
T = "tests/"
MODULES: dict[str, list[str]] = {
    "zoo/names.py": [T + "test_names_strength.py", T + "test_survivors_zoo.py", T + "test_zoo_names.py",
                     "-k", "not model_cards and not build and not recalibration and not overlay"],
    "zoo/build.py": [T + "test_build_strength.py", T + "test_survivors_zoo.py", T + "test_zoo_convert_bn.py",
                     "-k", "build or local_folder or missing_keys or wrong_shapes or stem or meta or finish or describe"],
    "zoo/bn.py": [T + "test_bn_strength.py", T + "test_survivors_zoo.py", T + "test_zoo_convert_bn.py",
                  "-k", "recalibration or overlay or bn_keys or extract or apply"],
    "zoo/integrity.py": [T + "test_integrity_strength.py"],
    "zoo/fetch.py": [T + "test_fetch_strength.py"],
    "zoo/catalog.py": [T + "test_catalog_strength.py"],
    "training/optim.py": [T + "test_training_losses.py", T + "test_optim_strength.py"],
    "training/simclr.py": [T + "test_training_losses.py", T + "test_methods_strength.py"],
    "training/moco.py": [T + "test_training_losses.py", T + "test_survivors_training.py",
                         T + "test_methods_strength.py", "-k", "not real_run and not two_gloo_ranks"],
    "training/evaluate.py": [T + "test_training_eval.py", T + "test_survivors_training.py",
                             T + "test_evaluate_strength.py", "-k", "not real_run and not evaluate_cli"],
    "training/engine.py": [T + "test_survivors_training.py::test_real_run_enqueues_every_steps_keys",
                           T + "test_engine_strength.py", T + "test_training_run.py",
                           # the CLI's SIGTERM test runs subprocesses (a minute); the in-process ones stay
                           "-k", "not sigterm_then_resume and not simclr_short_run"],
}

# Tests whose work happens in spawned processes (two gloo ranks): mutmut records which functions a test
# reaches only inside its own process, so it reports the mutants they cover as "no tests". This script
# runs these tests on each such mutant itself (MUTANT_UNDER_TEST selects it in every process).
SPAWNED: dict[str, list[str]] = {
    "training/moco.py": [T + "test_methods_strength.py::test_two_gloo_ranks_shuffle_bn_global_queue_and_global_negatives"],
    "training/engine.py": [T + "test_engine_multirank.py"],
}


def scratch_copy(work: Path) -> None:
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, check=True,
                           capture_output=True).stdout.split(b"\0")
    for name in filter(None, files):
        source = ROOT / name.decode()
        if source.is_file():
            target = work / name.decode()
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)


def existing(tests: list[str], work: Path) -> list[str]:
    """Drop test files that do not exist (yet) in this checkout; keep options such as -k."""
    kept, skip_value = [], False
    for arg in tests:
        if skip_value or arg.startswith("-"):
            kept.append(arg)
            skip_value = arg == "-k"
            continue
        if (work / arg.split("::")[0]).exists():
            kept.append(arg)
    return kept


def configure(work: Path, module: str, tests: list[str]) -> None:
    config = {
        "source_paths": ["zoo", "training"],
        "only_mutate": [module],
        "also_copy": ["model_cards", "recipes", "hubconf.py", "benchmarks", "scripts"],
        "pytest_add_cli_args_test_selection": existing(tests, work),
        "pytest_add_cli_args": ["-p", "no:cacheprovider", "-q", "-x"],
    }
    lines = ["", "[tool.mutmut]"] + [f"{key} = {json.dumps(value)}" for key, value in config.items()]
    with open(work / "pyproject.toml", "a") as handle:
        handle.write("\n".join(lines) + "\n")


def mutmut(work: Path, *args: str, capture: bool = True) -> str:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the mutated copy must be imported
    env["OMP_NUM_THREADS"] = "1"
    done = subprocess.run([str(Path(sys.executable).with_name("mutmut")), *args], cwd=work, env=env, text=True,
                          capture_output=capture)
    return done.stdout if capture else ""


def first_mutant(module: str) -> str:
    """The name mutmut gives the first mutant of the module's first top-level function (to generate only)."""
    import ast

    tree = ast.parse((ROOT / module).read_text())
    function = next(node.name for node in tree.body if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)))
    return f"{module.removesuffix('.py').replace('/', '.')}.x_{function}__mutmut_1"


def sample_names(work: Path, module: str, size: int, seed: int) -> list[str]:
    """A seeded random sample of the module's mutants (mutmut generates them all, then runs only these)."""
    import random

    names = [line.strip().split(":")[0] for line in mutmut(work, "results", "--all", "true").splitlines()
             if ":" in line and "__mutmut_" in line]
    return sorted(random.Random(seed).sample(sorted(names), min(size, len(names))))


def run_module(module: str, work_root: Path, max_children: int, reuse: bool = False, sample: int | None = None,
               seed: int = 0) -> dict:
    work = work_root / module.replace("/", "_").removesuffix(".py")
    started = time.perf_counter()
    chosen: list[str] = []
    if reuse and (work / "mutants" / "mutmut-stats.json").exists():  # mutmut's verdicts kept; tests refreshed
        shutil.copytree(ROOT / "tests", work / "mutants" / "tests", dirs_exist_ok=True)
        if sample:
            chosen = json.loads((work / "sample.json").read_text())
    else:
        scratch_copy(work)
        configure(work, module, MODULES[module])
        log = (work / "mutmut.log").open("w")
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        env["OMP_NUM_THREADS"] = "1"
        command = [str(Path(sys.executable).with_name("mutmut")), "run", "--max-children", str(max_children)]
        if sample:  # generate every mutant (and run one), then run a random sample of them
            run = subprocess.run(command + [first_mutant(module)], cwd=work, env=env, stdout=log,
                                 stderr=subprocess.STDOUT)
            if run.returncode != 0:
                raise SystemExit(f"{module}: mutmut exited {run.returncode}; see {work / 'mutmut.log'}")
            chosen = sample_names(work, module, sample, seed)
            (work / "sample.json").write_text(json.dumps(chosen))
            command += chosen
        run = subprocess.run(command, cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT)
        if run.returncode != 0:  # e.g. the selected tests fail on the unmutated code: no verdict at all
            raise SystemExit(f"{module}: mutmut exited {run.returncode}; see {work / 'mutmut.log'}")
    minutes = (time.perf_counter() - started) / 60
    if sample:
        return report_sample(work, module, chosen, minutes, seed)
    mutmut(work, "export-cicd-stats")
    stats_file = work / "mutants" / "mutmut-cicd-stats.json"
    if not stats_file.exists():
        raise SystemExit(f"{module}: mutmut produced no results; see {work / 'mutmut.log'}")
    stats = json.loads(stats_file.read_text())
    undetected = [line.strip().split(":")[0] for line in mutmut(work, "results").splitlines()
                  if line.strip().endswith(("survived", "no tests"))]
    no_tests = [line.strip().split(":")[0] for line in mutmut(work, "results").splitlines()
                if line.strip().endswith("no tests")]
    rechecked = recheck(work, module, undetected)
    undetected = [name for name in undetected if name not in rechecked]
    caught = stats["killed"] + stats["timeout"] + len(rechecked)
    score = caught / stats["total"] if stats["total"] else 1.0
    OUT.mkdir(parents=True, exist_ok=True)
    left_no_tests = [name for name in undetected if name in no_tests]
    report = [f"{module}: {caught}/{stats['total']} caught ({score:.1%}); {len(undetected) - len(left_no_tests)} "
              f"survived, {len(left_no_tests)} not reached by the selected tests; {minutes:.1f} min",
              f"tests: {' '.join(MODULES[module])} {' '.join(SPAWNED.get(module, []))}",
              f"mutmut's own verdict: {stats['killed'] + stats['timeout']} caught, {stats['survived']} survived, "
              f"{stats['no_tests']} no tests; then killed on the recheck (spawned-process tests, and tests added "
              f"after the mutmut run): {len(rechecked)}", ""]
    for name in undetected:
        diff = [line for line in mutmut(work, "show", name).splitlines()
                if line.startswith(("-", "+")) and not line.startswith(("---", "+++"))]
        report += [f"## {name}", *diff, ""]
    (OUT / (module.replace("/", "_").removesuffix(".py") + ".txt")).write_text("\n".join(report))
    return {"module": module, "caught": caught, "total": stats["total"], "score": score,
            "survived": len(undetected) - len(left_no_tests), "no_tests": len(left_no_tests), "minutes": minutes}


def report_sample(work: Path, module: str, chosen: list[str], minutes: float, seed: int = 0) -> dict:
    """The score of a random sample of the module's mutants, with a 95% (Wilson) interval for the whole."""
    import math

    status = {line.strip().split(":")[0]: line.strip().split(":")[1].strip()
              for line in mutmut(work, "results", "--all", "true").splitlines() if "__mutmut_" in line}
    total = len(status)
    unchecked = [name for name in chosen if status.get(name) == "not checked"]
    undetected = [name for name in chosen if status.get(name) in ("survived", "no tests")]
    rechecked = recheck(work, module, undetected)
    undetected = [name for name in undetected if name not in rechecked]
    checked = len(chosen) - len(unchecked)
    caught = checked - len(undetected)
    score = caught / checked if checked else 1.0
    z = 1.96
    centre = (score + z * z / (2 * checked)) / (1 + z * z / checked)
    half = z * math.sqrt(score * (1 - score) / checked + z * z / (4 * checked * checked)) / (1 + z * z / checked)
    report = [f"{module}: a random sample (seed {seed}) of {len(chosen)} of its {total} mutants; {checked} checked, "
              f"{caught} caught ({score:.1%}; 95% interval for the module {centre - half:.1%} to "
              f"{centre + half:.1%}); {len(undetected)} undetected; {minutes:.1f} min",
              f"tests: {' '.join(MODULES[module])} {' '.join(SPAWNED.get(module, []))}",
              f"mutmut's own verdict on the sample: {checked - len(undetected) - len(rechecked)} caught; then killed "
              f"on the recheck (spawned-process tests, and tests added after the mutmut run): {len(rechecked)} "
              f"({', '.join(name.rsplit('.', 1)[-1] for name in rechecked)})",
              f"not checked (run stopped): {len(unchecked)}", ""]
    for name in undetected:
        diff = [line for line in mutmut(work, "show", name).splitlines()
                if line.startswith(("-", "+")) and not line.startswith(("---", "+++"))]
        report += [f"## {name} ({status[name]})", *diff, ""]
    OUT.mkdir(parents=True, exist_ok=True)
    suffix = f"-seed{seed}" if seed else ""
    (OUT / (module.replace("/", "_").removesuffix(".py") + suffix + ".txt")).write_text("\n".join(report))
    return {"module": module, "caught": caught, "total": checked, "score": score, "survived": len(undetected),
            "no_tests": 0, "minutes": minutes}


SKIP_RECHECK = False


def recheck(work: Path, module: str, names: list[str]) -> list[str]:
    """Run the module's tests (fresh copies: tests added since the mutmut run count) and its spawned-process
    tests on each undetected mutant, in one process inside the mutated copy; returns the mutants they kill."""
    if not names or SKIP_RECHECK:
        return []
    shutil.copytree(ROOT / "tests", work / "mutants" / "tests", dirs_exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["OMP_NUM_THREADS"] = "1"
    done = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--recheck-in", module, "--", *names],
                          cwd=work / "mutants", env=env, capture_output=True, text=True)
    (work / "recheck.log").write_text(done.stderr)  # which test failed on which mutant
    if done.returncode != 0:
        raise SystemExit(f"{module}: the recheck failed to run:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def recheck_in_process(module: str, names: list[str]) -> list[str]:
    import contextlib
    import io

    import pytest

    sys.path.insert(0, os.getcwd())
    work = Path(os.getcwd())
    # spawned-process tests first: they alone reach the multi-process code, and cost seconds, not a minute
    runs = [[test] for test in SPAWNED.get(module, [])] + [existing(MODULES[module], work)]

    def fails(mutant: str) -> bool:
        os.environ["MUTANT_UNDER_TEST"] = mutant
        for selection in runs:
            with contextlib.redirect_stdout(io.StringIO()) as output:
                code = pytest.main(["-q", "-x", "-p", "no:cacheprovider", *selection])
            if code == pytest.ExitCode.TESTS_FAILED:  # kept, so that a kill can be told from a flaky test
                failed = [line for line in output.getvalue().splitlines() if line.startswith(("FAILED", "E "))]
                print(f"{mutant}: " + " | ".join(failed[:6]), file=sys.stderr, flush=True)
                return True
            if code != pytest.ExitCode.OK:
                raise SystemExit(f"pytest {selection} exited {code} under {mutant!r}")
        return False
    if fails(""):  # the unmutated code must pass, or a failure says nothing about a mutant
        raise SystemExit(f"{module}: its tests fail without a mutant")
    return [name for name in names if fails(name)]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("modules", nargs="*", help=f"default: all of {', '.join(MODULES)}")
    parser.add_argument("--work", default=os.environ.get("MUTATION_WORK", "/tmp/mutation-work"),
                        help="scratch folder for the mutated copies")
    parser.add_argument("--max-children", type=int, default=1)
    parser.add_argument("--list", action="store_true", help="print each module's test selection and exit")
    parser.add_argument("--reuse", action="store_true",
                        help="keep a finished mutmut run in --work; redo only the recheck of its survivors and the report")
    parser.add_argument("--sample", type=int, help="run only a seeded random sample of this many mutants per "
                                                   "module (a module whose full run would take hours)")
    parser.add_argument("--seed", type=int, default=0, help="the --sample's seed (another seed, another sample)")
    parser.add_argument("--no-recheck", action="store_true",
                        help="skip the recheck (no tests were added since the mutmut run, none run in spawned processes)")
    parser.add_argument("--recheck-in", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.recheck_in:  # internal: --recheck-in MODULE -- MUTANT... (the mutants land in `modules`)
        print(json.dumps(recheck_in_process(args.recheck_in, args.modules)))
        return 0
    global SKIP_RECHECK
    SKIP_RECHECK = args.no_recheck
    unknown = [m for m in args.modules if m not in MODULES]
    if unknown:
        parser.error(f"unknown module(s) {unknown}; choose from {', '.join(MODULES)}")
    if args.list:
        for module, tests in MODULES.items():
            print(f"{module}: {' '.join(tests)}")
        return 0
    rows = []
    for module in args.modules or list(MODULES):
        row = run_module(module, Path(args.work), args.max_children, args.reuse, args.sample, args.seed)
        rows.append(row)
        print(f"| {row['module']} | {row['caught']}/{row['total']} | {row['score']:.1%} | {row['survived']} | "
              f"{row['no_tests']} | {row['minutes']:.0f} |", flush=True)
    caught, total = sum(r["caught"] for r in rows), sum(r["total"] for r in rows)
    print(f"| all run | {caught}/{total} | {caught / max(total, 1):.1%} | | | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
