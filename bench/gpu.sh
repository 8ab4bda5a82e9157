#!/usr/bin/env bash
# Every GPU check in one command, for a lent GPU machine (16 cores) that lacks the project's
# non-PyTorch packages: carry them as wheels in .whl/ (BENCHMARKS.md says which) and run
#     bash bench/gpu.sh OUT_DIR
# Writes the scale benchmark (12 loader workers, full augmentation on the GPU), bench/run.py's
# table (train step vs nnU-Net, inference vs MONAI, loader, predict end to end) and bench/recipe.py's
# two short runs of the GPU recipe (docs/real-data.md) (weights hash, patches/s per epoch) under OUT_DIR.
# All three take up to 18 minutes; PARTS="run recipe" (any of scale, run, recipe) runs some of them,
# so that one call fits a lent machine's 10-minute limit.
set -uo pipefail
out=${1:?usage: bash bench/gpu.sh OUT_DIR}
parts=${PARTS:-scale run recipe}
for part in $parts; do
    case $part in scale|run|recipe) ;; *) echo "error: PARTS holds '$part'; use any of: scale run recipe" >&2; exit 2;; esac
done
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
if [[ " $parts " == *" scale "* ]]; then
    timeout 300 python3 bench/scale.py --cases 24 --workers 12 --loader-workers 12 --batches 40 \
        --out "$out/scale_gpu_machine.json" 2>&1 | grep -v "case/s\]\|it/s\]" | tee "$out/scale.log"
fi
if [[ " $parts " == *" run "* ]]; then
    timeout 270 python3 bench/run.py 2>&1 | grep -v "it/s\]" | tee "$out/run.log"
fi
if [[ " $parts " == *" recipe "* ]]; then   # the GPU recipe, 2 epochs x 250 iterations, twice
    timeout 480 python3 bench/recipe.py --work /tmp/recipe-work --out "$out/recipe.json" 2>&1 \
        | grep -v "it/s\]\|batch/s\]\|case/s\]" | tail -n 40 | tee "$out/recipe.log"
fi
