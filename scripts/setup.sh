#!/usr/bin/env bash
# Set up .venv/, the Fashion-MNIST data and (as root) chromium. Idempotent; called by `make demo` and `make test`.
set -euo pipefail
cd "$(dirname "$0")/.."

DATA_DIR="${MDIEXIT_DATA:-/usr/share/datasets/fashion-mnist}"
PYTHON="${PYTHON:-python3}"

# 1. Python >= 3.11
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "setup: mdiexit needs Python >= 3.11 (found: $("$PYTHON" --version 2>&1)). Set PYTHON=/path/to/python3.11." >&2
  exit 1
fi

# 2. The dataset
if [[ ! -f "$DATA_DIR/train-images-idx3-ubyte.gz" && ! -f "$DATA_DIR/train-images-idx3-ubyte" ]]; then
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
    echo "setup: installing the Debian package dataset-fashion-mnist" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null
  else
    cat >&2 <<MSG
setup: Fashion-MNIST not found in $DATA_DIR.
  Install it as root:   apt-get install -y dataset-fashion-mnist
  or download the four idx files (train/t10k images/labels, .gz is fine) into a folder and
  point at it:          export MDIEXIT_DATA=/path/to/folder   (or pass --data-dir to mdiexit)
MSG
    exit 1
  fi
fi

# 2b. A headless browser for the test that renders the pilot's page (optional: without it that test is skipped)
if ! command -v chromium >/dev/null && [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
  echo "setup: installing the Debian package chromium (the pilot page's browser test)" >&2
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } ||
    echo "setup: chromium could not be installed; the browser test will be skipped" >&2
fi

# 2c. An MQTT broker for the test that receives a camera's results over MQTT (optional: without it that test is
#     skipped; a site points --sink at its own broker)
if ! command -v mosquitto >/dev/null && ! [[ -x /usr/sbin/mosquitto ]] && [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
  echo "setup: installing the Debian package mosquitto (the MQTT sink's test)" >&2
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto >/dev/null; } ||
    echo "setup: mosquitto could not be installed; the MQTT test will be skipped" >&2
fi

# 3. The virtual environment (torch pinned: an unpinned torch pulls a multi-GB CUDA build)
STAMP=.venv/.installed
if [[ ! -f $STAMP || pyproject.toml -nt $STAMP ]]; then
  echo "setup: creating .venv and installing mdiexit[all] (torch==2.13.0, CPU)" >&2
  [[ -x .venv/bin/python ]] || "$PYTHON" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
  .venv/bin/python -m pip install -q "torch==2.13.0" 2>&1 | grep -v "^WARNING: Location" || true
  .venv/bin/python -m pip install -q -e ".[all]" 2>&1 | grep -v "^WARNING: Location" || true
  .venv/bin/python -c "import torch, onnxruntime, zmq, mdiexit" || { echo "setup: install failed" >&2; exit 1; }
  touch $STAMP
fi
