#!/usr/bin/env bash
# Every GPU check in one command, for a lent GPU machine (16 cores) that lacks the project's
# non-PyTorch packages: carry them as wheels in .whl/ (BENCHMARKS.md says which) and run
#     bash bench/gpu.sh OUT_DIR
# Writes the scale benchmark (12 loader workers, full augmentation on the GPU), bench/run.py's
# table (train step vs nnU-Net, inference vs MONAI, loader, predict end to end) and bench/recipe.py's
# two short runs of the GPU recipe (docs/real-data.md) (weights hash, patches/s per epoch) under OUT_DIR.
# All three take up to 18 minutes; PARTS="run recipe" (any of scale, run, recipe, seeds) runs some of
# them, so that one call fits a lent machine's 10-minute limit.
# PARTS=seeds is not in the default set: each run of SEEDS_RUNS (default: the default pipeline's model
# and the false-positive-weighted loss, Tversky 0.7/0.3 + BCE; one run a line, "name: -S key=value ...")
# trained once per seed of SEEDS (default 2024 and 1-11), SEEDS_JOBS (6) seeds of each run at a time,
# for SEEDS_MINUTES (default 7); the finished seeds' folders come back as
# seeds-<run>-<n>.tar (weights, params, synthetic test figures), to be scored on the real cases where
# they are: tar -xf each into WORK/<run>/, then bench/sim2real.py --data REAL --seeds ... --reuse
# --work WORK/<run> (BENCHMARKS.md, "Synthetic to real"). SEEDS_EXTRA adds -S overrides to every run
# (a dry run on a CPU: tiny settings).
set -uo pipefail
out=${1:?usage: bash bench/gpu.sh OUT_DIR}
parts=${PARTS:-scale run recipe}
for part in $parts; do
    case $part in scale|run|recipe|seeds) ;; *) echo "error: PARTS holds '$part'; use any of: scale run recipe seeds" >&2; exit 2;; esac
done
declare -A runs=()
if [[ " $parts " == *" seeds "* ]]; then   # SEEDS_RUNS checked before any work
    spec=${SEEDS_RUNS:-"default:
tversky_fp: -S train.loss.dice=0.0 -S train.loss.tversky=1.0 -S train.loss.tversky_alpha=0.7 -S train.loss.tversky_beta=0.3"}
    while IFS= read -r line; do
        [ -z "${line//[[:space:]]/}" ] && continue
        name=${line%%:*}
        if [[ $line != *:* || ! $name =~ ^[A-Za-z0-9_-]+$ || -n ${runs[$name]+x} ]]; then
            echo "error: SEEDS_RUNS line '$line': write one run a line as 'name: -S key=value ...', each name once (letters, digits, _ and -)" >&2
            exit 2
        fi
        runs[$name]=${line#*:}
    done <<< "$spec"
fi
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
if [[ " $parts " == *" seeds "* ]]; then   # the same recipe as on a CPU but uncompiled (each process would compile), fp32
    seeds=${SEEDS:-2024 1 2 3 4 5 6 7 8 9 10 11}
    if ! (cd / && python3 -c "from dvclive import Live") 2>/dev/null; then   # as bench/recipe.py: a logger writing nothing
        mkdir -p /tmp/nolive/dvclive                     # (DVCLive needs dvc, too large to carry); weights do not depend on it
        printf 'class Live:\n    def __init__(self, *args, **kwargs):\n        pass\n\n    def __getattr__(self, name):\n        return lambda *args, **kwargs: None\n' \
            > /tmp/nolive/dvclive/__init__.py
        export PYTHONPATH=/tmp/nolive${PYTHONPATH:+:$PYTHONPATH}
        echo "DVCLive is not installed: its curves are not written" | tee -a "$out/seeds.log"
    fi
    # shellcheck disable=SC2206
    gpu=(-S train.compile=false -S evaluate.compile=false -S train.precision=fp32 ${SEEDS_EXTRA:-})
    for run in "${!runs[@]}"; do
        # shellcheck disable=SC2086
        OMP_NUM_THREADS=2 timeout $((${SEEDS_MINUTES:-7} * 60)) python3 bench/sim2real.py --train-only --seeds $seeds \
            --jobs "${SEEDS_JOBS:-6}" \
            --work "/tmp/seeds/$run" --out "$out/seeds-$run.json" "${gpu[@]}" ${runs[$run]} > "/tmp/seeds-$run.log" 2>&1 &
    done
    wait
    for run in "${!runs[@]}"; do
        grep -a "trained in\|error\|synthetic test" "/tmp/seeds-$run.log" | sed "s/^/$run: /" | tee -a "$out/seeds.log"
        for s in $seeds; do    # a seed that failed: the end of its log
            log=/tmp/seeds/$run/seed-$s/bench.log
            [ -f "$log" ] && [ ! -f "/tmp/seeds/$run/seed-$s/trained" ] && grep -a -v "it/s\]\|batch/s\]\|case/s\]\|try/s\]" "$log" | tail -n 15 | sed "s/^/$run seed $s: /" >> "$out/seeds.log"
        done
        ( cd "/tmp/seeds/$run" 2>/dev/null || exit 0
          done=$(for s in $seeds; do [ -f "seed-$s/trained" ] && echo "seed-$s"; done)
          n=0; set -- $done
          while [ $# -gt 0 ]; do    # 8 seeds a file: under the 16 MiB a returned file may hold
              chunk=("${@:1:8}"); shift $(( $# < 8 ? $# : 8 )); n=$((n + 1))
              tar -cf "$out/seeds-$run-$n.tar" $(for f in "${chunk[@]}"; do
                  echo "$f/params.yaml $f/trained $f/models/postprocessing.json $f/models/folds/fold_0/model.pt"
                  echo "$f/metrics/evaluate.json $f/metrics/evaluate_cases.csv"; done)
          done )
    done
    ls -la "$out" | tee -a "$out/seeds.log"
fi
