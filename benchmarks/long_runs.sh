#!/bin/bash
# Start (or resume) the long CPU runs of issues 12 and 13 in the background, one per core, at one thread and
# nice 5; each run continues from its last checkpoint and skips finished points. Logs: benchmarks/_work/logs/.
#   core 1: quality_fashion's remaining rows (PIC, rotation, distill, selftrain, selftrain from the SSL init and
#           its few-labels baseline and with its teacher from that init too, PIC with a full-coverage stride),
#           the fine-tune length check, then the supervised-base HPT series
#   core 2: the self-supervised-base HPT series
# Then `python benchmarks/hpt_repro.py --report` / `python benchmarks/quality_fashion.py --help` for the results.
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD OMP_NUM_THREADS=1
python=${PYTHON:-.venv/bin/python}
logs=benchmarks/_work/logs
mkdir -p "$logs"
ssl_base=benchmarks/_work/hpt2/full/ssl_base_r18c/moco-fashion_mnist-r18c-1132
quality="benchmarks/quality_fashion.py --minutes 25 --eval-train 10000 --eval-test 5000 --budget-reference moco --update --missing-only"
(
  for method in pic rotation distill selftrain; do
    nice -n 5 $python $quality --methods $method || echo "long_runs: quality_fashion $method failed"
  done
  # the self-supervised init is the ssl series' base (the same MoCo recipe and 1,132 steps; --base-only trains it if
  # core 2 has not yet, and checks a rebuilt one against the committed record)
  nice -n 5 $python benchmarks/hpt_repro.py --base-only > /dev/null \
    && nice -n 5 $python $quality --methods selftrain --selftrain-init "$ssl_base" \
    || echo "long_runs: quality_fashion selftrain from the SSL init failed"
  # its baseline: the teacher's recipe (supervised on the 1,000 labels) from the same init, at the same steps
  # per phase (548, the self-training rows' own: benchmarks/RESULTS.md)
  nice -n 5 $python $quality --methods fewlabels --steps 548 --selftrain-init "$ssl_base" \
    || echo "long_runs: quality_fashion fewlabels from the SSL init failed"
  # self-training with the teacher fine-tuned from the same init too (pseudo-labels from the better teacher),
  # at the other self-training rows' 548 steps per phase so that they differ in the teacher's init only
  nice -n 5 $python $quality --methods selftrain --steps 548 --selftrain-init "$ssl_base" --teacher-from-init \
    || echo "long_runs: quality_fashion selftrain with the teacher from the SSL init failed"
  # PIC again at the PIC row's steps, with the stride whose windows reach every image in them (the row's
  # defaults reached 57%: benchmarks/RESULTS.md)
  nice -n 5 $python $quality --methods pic --steps 1510 --set pic_stride=1217 || echo "long_runs: PIC stride row failed"
  # does the series' short fine-tune rank checkpoints as a 1000-iteration one does (a few seed-0 exports)
  nice -n 5 $python benchmarks/finetune_length.py || echo "long_runs: finetune_length failed"
  nice -n 5 $python benchmarks/hpt_repro.py --series sup || echo "long_runs: hpt_repro sup failed"
) >> "$logs/core1.log" 2>&1 &
echo "core 1: pid $! (log $logs/core1.log)"
nice -n 5 $python benchmarks/hpt_repro.py --series ssl >> "$logs/core2.log" 2>&1 &
echo "core 2: pid $! (log $logs/core2.log)"
