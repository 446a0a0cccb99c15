#!/bin/bash
# Start (or resume) issue 13's long CPU runs in the background, one per core, at one thread and nice 5; each run
# continues from its last checkpoint and skips finished points. Logs: benchmarks/_work/logs/.
#
# A new checkout has an empty benchmarks/_work, so the ssl series' base must be rebuilt (~1.4 core-hours,
# bit-identical: hpt_repro checks its sha256) before any strategy that starts from it. The order below does the
# work that needs no base first and the base-dependent work last, so a session that ends early has spent its
# cores on points, not on a rebuild it could not use:
#   core 1: the supervised-base series (its base is the published MobileNetV2), then the ssl series' digits
#           strategies that start from the base (rebuilding it, or finding it rebuilt by core 2)
#   core 2: the ssl series' strategies that need no base (random, Random-BN, Target), then its animals
#           strategies that start from the base
# Then `python benchmarks/hpt_repro.py --report` for the tables, the plot and RESULTS.md's generated tables.
# Issue 12's quality rows (benchmarks/quality_fashion.py) and the fine-tune length check
# (benchmarks/finetune_length.py) are complete; their commands are in benchmarks/RESULTS.md.
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD OMP_NUM_THREADS=1
python=${PYTHON:-.venv/bin/python}
logs=benchmarks/_work/logs
mkdir -p "$logs"
repro="nice -n 5 $python benchmarks/hpt_repro.py"
(
  $repro --series sup || echo "long_runs: hpt_repro sup failed"
  $repro --series ssl --part from-base --targets digits || echo "long_runs: hpt_repro ssl digits from the base failed"
) >> "$logs/core1.log" 2>&1 &
echo "core 1: pid $! (log $logs/core1.log)"
(
  $repro --series ssl --part from-scratch || echo "long_runs: hpt_repro ssl from scratch failed"
  $repro --series ssl --part from-base --targets animals || echo "long_runs: hpt_repro ssl animals from the base failed"
) >> "$logs/core2.log" 2>&1 &
echo "core 2: pid $! (log $logs/core2.log)"
