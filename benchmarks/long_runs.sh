#!/bin/bash
# Start (or resume) issue 13's long CPU runs in the background, one per core, at one thread and nice 5; each run
# continues from its last checkpoint and skips finished points. Logs: benchmarks/_work/logs/.
#
# The ssl series' base lives in benchmarks/_work (not committed). A new checkout must rebuild it (~1.4 core-hours,
# bit-identical: hpt_repro checks its sha256); when it is there, the strategies that start from it go first so the
# base is spent while it exists, and the work that needs no base comes after:
#   core 1: ssl digits from the base, then ssl digits from scratch (random, Random-BN, Target), then the
#           supervised-base series (its base is the published MobileNetV2)
#   core 2: ssl animals from the base, then ssl animals from scratch
# Each target's runs stay on one core, so the two processes never train the same point.
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
  $repro --series ssl --part from-base --targets digits || echo "long_runs: hpt_repro ssl digits from the base failed"
  $repro --series ssl --part from-scratch --targets digits || echo "long_runs: hpt_repro ssl digits from scratch failed"
  $repro --series sup || echo "long_runs: hpt_repro sup failed"
) >> "$logs/core1.log" 2>&1 &
echo "core 1: pid $! (log $logs/core1.log)"
(
  $repro --series ssl --part from-base --targets animals || echo "long_runs: hpt_repro ssl animals from the base failed"
  $repro --series ssl --part from-scratch --targets animals || echo "long_runs: hpt_repro ssl animals from scratch failed"
) >> "$logs/core2.log" 2>&1 &
echo "core 2: pid $! (log $logs/core2.log)"
