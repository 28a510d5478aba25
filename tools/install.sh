#!/usr/bin/env bash
# Install caffe_ft and its test tools into the current Python environment.
# A torch that is already installed is kept (pyproject asks only torch>=2.1),
# so pip never swaps it for a multi-GB CUDA build. With no torch at all we
# ask for the CPU build first: on these machines torch==2.13.0 is a local CPU
# wheel; elsewhere, set CAFFE_FT_TORCH (e.g. "torch --index-url
# https://download.pytorch.org/whl/cpu") to choose your build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c "import torch" 2>/dev/null; then
    # shellcheck disable=SC2086
    "$PY" -m pip install ${CAFFE_FT_TORCH:-torch==2.13.0}
fi
"$PY" -m pip install -e ".[test]"
