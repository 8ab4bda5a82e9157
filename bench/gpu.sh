#!/usr/bin/env bash
# Every GPU check in one command, for a lent GPU machine (16 cores) that lacks the project's
# non-PyTorch packages: carry them as wheels in .whl/ (BENCHMARKS.md says which) and run
#     bash bench/gpu.sh OUT_DIR
# Writes the scale benchmark (12 loader workers, full augmentation on the GPU) and bench/run.py's
# table (train step vs nnU-Net, inference vs MONAI, loader, predict end to end) under OUT_DIR.
set -uo pipefail
out=${1:?usage: bash bench/gpu.sh OUT_DIR}
mkdir -p "$out"
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH=/tmp/site || exit 1
fi
export PYTHONUNBUFFERED=1
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; lscpu | grep -E "Model name|^CPU\(s\)";
  python3 -c "import torch, numpy, scipy, blosc2; print('torch', torch.__version__, 'CUDA', torch.version.cuda,
'cuDNN', torch.backends.cudnn.version(), 'numpy', numpy.__version__, 'scipy', scipy.__version__, 'blosc2', blosc2.__version__)"
} 2>&1 | tee "$out/machine.txt"
timeout 300 python3 bench/scale.py --cases 24 --workers 12 --loader-workers 12 --batches 40 \
    --out "$out/scale_gpu_machine.json" 2>&1 | grep -v "case/s\]\|it/s\]" | tee "$out/scale.log"
timeout 270 python3 bench/run.py 2>&1 | grep -v "it/s\]" | tee "$out/run.log"
