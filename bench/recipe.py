"""The GPU recipe (docs/real-data.md) at a real epoch length, trained twice: is it reproducible, and how fast?

    python bench/recipe.py --work /tmp/recipe --out bench/results/recipe.json [--patients 6]
                           [--epochs 2] [-S key=value ...]

In a work copy of the repository (src/ and params.yaml, as bench/real.py makes one) with the documented
GPU recipe (`GPU_RECIPE`: the nnU-Net-sized network, 128³ patches, bf16, compiled, deterministic,
full augmentation, 250 iterations an epoch, 12 loader workers), on --patients synthetic patients at
the BraTS 2024 grid (1 mm): synthesize, preprocess, then train fold 0 from scratch twice, each in its
own folder. Writes --out (JSON): each run's seconds and its patches/s per epoch (steps and loading,
not validation; the first epoch pays the compilation), as the train stage prints them, the SHA-256
of both weights files and whether they are equal. The aim: the two equal and the last
epoch's patches/s within 10 % of bench/run.py's compiled step (bench/gpu.sh runs both).
The -S overrides come last (the tests shrink the run with them to check this script on a CPU).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "src"))

from errors import run_stage  # noqa: E402
from files import file_sha256  # noqa: E402
from real import QUIET, checkout, parse_override, run  # noqa: E402

# The documented GPU command (tests/test_readme.py checks that these are its values), less what a
# short run cannot keep: the folds (one), tuning (fixed optimizer values) and the epoch count.
GPU_RECIPE = {
    "model.base_width": 32, "model.max_width": 320, "model.depth": 6,
    "train.patch": [128, 128, 128], "train.batch_size": 2, "train.precision": "bf16", "train.compile": True,
    "train.deterministic": True, "train.workers": 12, "train.augment": "full",
    "train.iterations_per_epoch": 250, "preprocess.workers": 12,
}
SHORT_RUN = {"synthesize.grid": [182, 218, 182], "synthesize.spacing_mm": 1.0, "synthesize.visits": 1,
             "synthesize.workers": 12, "preprocess.val_fraction": 0.2, "preprocess.test_fraction": 0.0,
             "tune.trials": 0, "lr": 0.003, "weight_decay": 1.0e-5, "beta1": 0.9, "beta2": 0.999}
# The train stage's script, run as `python src/train.py` would be. A lent GPU machine has no DVCLive
# (it needs dvc, pandas and pyarrow, too large to carry there), so where it is missing its logger is
# replaced by one that writes nothing: the weights do not depend on it.
TRAIN = """
import importlib.util, runpy, sys, types
if importlib.util.find_spec("dvclive") is None:
    class Live:
        def __init__(self, *args, **kwargs):
            pass

        def __getattr__(self, name):
            return lambda *args, **kwargs: None
    sys.modules["dvclive"] = types.SimpleNamespace(Live=Live)
    print("bench/recipe.py: DVCLive is not installed; its curves are not written", file=sys.stderr)
sys.argv = ["src/train.py"]
sys.path.insert(0, "src")
runpy.run_path("src/train.py", run_name="__main__")
"""
TRAINED = re.compile(r"trained (\d+) epoch\(s\) in ([\d.]+) s")
EPOCH_RATE = re.compile(r"epoch (\d+)/\d+: .*?patches_per_s ([\d.]+)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, required=True, help="an empty or missing folder for the work copies")
    ap.add_argument("--out", type=Path, required=True, help="JSON file for the figures")
    ap.add_argument("--patients", type=int, default=6)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("-S", dest="overrides", action="append", default=[], type=parse_override,
                    metavar="KEY=VALUE", help="a params override applied last (repeatable)")
    args = ap.parse_args()
    if args.work.exists() and any(args.work.iterdir()):
        sys.exit(f"error: --work {args.work} is not empty; give a new folder")
    overrides = {**GPU_RECIPE, **SHORT_RUN, **QUIET, "synthesize.patients": args.patients,
                 "train.epochs": args.epochs, "train.val_every": args.epochs, **dict(args.overrides)}
    log = args.work / "recipe.log"
    data = args.work / "data"
    data.mkdir(parents=True)
    checkout(data, overrides)
    for stage in ("synthesize", "preprocess"):
        run([sys.executable, f"src/{stage}.py"], data, log)
    runs = []
    for k in (1, 2):
        folder = args.work / f"run{k}"
        checkout(folder, overrides)
        shutil.copytree(data / "data", folder / "data", symlinks=True)
        start = log.stat().st_size
        run([sys.executable, "-c", TRAIN], folder, log)
        text = log.read_text()[start:].replace("\r", "\n")
        trained, rates = TRAINED.findall(text), EPOCH_RATE.findall(text)
        if not trained or not rates:
            sys.exit(f"error: the train stage printed no 'trained ...' or epoch line; see {log}")
        runs.append({"seconds": float(trained[-1][1]), "epochs": int(trained[-1][0]),
                     "patches/s by epoch": [float(rate) for _, rate in rates],
                     "sha256": file_sha256(folder / "models" / "folds" / "fold_0" / "model.pt")})
    result = {"settings": overrides, "runs": runs, "identical weights": runs[0]["sha256"] == runs[1]["sha256"]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    for k, r in enumerate(runs, 1):
        print(f"run {k}: {r['epochs']} epochs x {overrides['train.iterations_per_epoch']} iterations in "
              f"{r['seconds']:.0f} s (compiling included); last epoch {r['patches/s by epoch'][-1]:.1f} "
              f"patches/s; weights {r['sha256'][:12]}")
    print("identical weights" if result["identical weights"] else "the two runs' weights DIFFER")


if __name__ == "__main__":
    run_stage(main)     # a full disk or an unwritable --out: one line
