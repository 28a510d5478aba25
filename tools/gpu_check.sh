#!/usr/bin/env bash
# The device checks, in one run on one GPU (under 8 minutes on an H200):
# installs the Python wheels the device machine lacks (lmdb, h5py, protobuf
# at pyproject's pin), then runs the CUDA-marked tests, the golden layer and
# solver cases, and bench/bench_gpu.py.
#
# The wheels are not committed: fetch them here first (manylinux, cp312),
#   pip download --only-binary=:all: --python-version 3.12 \
#       --platform manylinux2014_x86_64 -d tools/wheels lmdb h5py 'protobuf>=7.35.1,<8'
# and carry the folder to the device: run(command="bash tools/gpu_check.sh",
# carry=["tools/wheels"]).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -d tools/wheels ]; then
    python3 -m pip install -q --no-index --find-links tools/wheels lmdb h5py protobuf
fi
python3 -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; \
print(torch.__version__, torch.cuda.get_device_name(0))"
# Exit status 5: no test is marked cuda yet (nothing collected), not a failure.
timeout 150 python3 -m pytest -q -x -p no:cacheprovider -m cuda tests || [ $? -eq 5 ]
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_golden_layers.py \
    tests/test_solver_golden.py tests/test_solver_step.py tests/test_precision.py
timeout 180 python3 bench/bench_gpu.py --steps 10
