"""The cascade (src/cascade.py) on real cases, measured against its first stage, fold by fold.

    python bench/cascade.py --stage1 /tmp/brats-real --out bench/results/real_cascade.json
                            [--work /tmp/brats-cascade] [--fold K] [-S key=value ...]

`--stage1` is the work folder of a finished bench/real.py run (its fold models, its kept
probabilities, its data folder and folds). For each of its folds, a second network is trained at the
cases' own spacing (1 mm for BraTS) on tumour-centred patches (FINE below: train.foreground_fraction
1, fewer epochs), starting from that fold's first-stage weights, on the same training cases; then
every unseen case of the fold is predicted again inside the box around the first stage's whole
tumour, and the second network's probabilities replace the first's there: for the tumour core and
enhancing tumour (`core`), or for every region (`all`).

The three variants (`stage1`, `core`, `all`) are scored as bench/oof.py scores real.py's runs, cut at
0.5 without post-processing (`plain_*`). Writes `--out` (JSON: settings, minutes, per variant the
means with 95 % intervals and per institution, per case). `--score-only` scores what an earlier run
left in `--work` (the folds it finished) without training.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

from errors import UserError, run_stage  # noqa: E402
from params import apply_overrides, load_params  # noqa: E402
from preprocess import fold_patients  # noqa: E402
import oof  # noqa: E402
from real import CPU_RECIPE, QUIET, REGIONS, checkout, fold_split, parse_override, run  # noqa: E402
from report import summarise  # noqa: E402

# The second stage: the case's own voxels, every patch centred on tumour, a shorter schedule (it starts
# from the first stage's weights).
FINE = {"preprocess.spacing_mm": "keep", "train.foreground_fraction": 1.0, "train.epochs": 25,
        "train.val_every": 25}
MARGIN = 8                      # voxels around the first stage's whole tumour
VARIANTS = {"core": ("TC", "ET"), "all": ("WT", "TC", "ET")}


def refine_fold(params, weights: Path, cases: list[str], stage1_probs: Path, out: Path) -> float:
    """The fold's unseen cases refined by the second stage, kept as oof.py keeps probabilities (one
    folder per variant); seconds per case."""
    import torch

    from cascade import refine
    from layout import load_manifest, open_case
    from predictor import Predictor, Settings
    from runtime import default_device

    device = default_device()
    settings = Settings.of(params.evaluate, device)
    fine = Predictor(weights, settings, device)
    manifest = load_manifest(params.paths.preprocessed_dir)
    start = time.time()
    for case in cases:
        first = oof.load_case(stage1_probs / f"{case}.npz")
        image = open_case(params.paths.preprocessed_dir, case)[0].read()
        if tuple(manifest[case]["shape"]) != tuple(first["probs"].shape[1:]):
            raise UserError(f"{case}: the second stage's grid {manifest[case]['shape']} is not the case's own "
                            f"{list(first['probs'].shape[1:])}: preprocess.spacing_mm must be keep")
        coarse = torch.from_numpy(first["probs"].astype(np.float32))
        for variant, refined in VARIANTS.items():
            with torch.no_grad():
                probs, box = refine(coarse, image, fine, first["regions"], refined, MARGIN, fine.spec.patch)
            oof.save_case(out / variant / f"{case}.npz", probs.numpy(), first["regions"], first["labels"],
                          first["spacing"])
        print(f"{case}: refined in box {[(s.start, s.stop) for s in box] if box else None}", flush=True)
    return (time.time() - start) / max(len(cases), 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--stage1", type=Path, required=True, help="work folder of a finished bench/real.py run")
    ap.add_argument("--out", type=Path, required=True, help="JSON file for the figures")
    ap.add_argument("--work", type=Path, default=Path("/tmp/brats-cascade"), help="work folder (replaced)")
    ap.add_argument("--fold", type=int, help="run this fold only")
    ap.add_argument("--score-only", action="store_true",
                    help="score the refined probabilities an earlier run left in --work (nothing is trained)")
    ap.add_argument("-S", dest="overrides", type=parse_override, action="append", default=[],
                    help="params override for the second stage, as dvc exp run -S takes it (repeatable)")
    args = ap.parse_args()
    first = load_params(args.stage1 / "params.yaml")
    stage1_probs = args.stage1 / "probabilities"
    n_folds = len(list((args.stage1 / "folds").iterdir())) if (args.stage1 / "folds").is_dir() else 0
    if not stage1_probs.is_dir() or n_folds < 2:
        ap.error(f"--stage1 {args.stage1}: not the work folder of a finished bench/real.py run "
                 "(it needs probabilities/ and folds/)")

    if args.score_only and not (args.work / "params.yaml").is_file():
        ap.error(f"--score-only: {args.work} holds no earlier bench/cascade.py run (no params.yaml)")
    if not args.score_only:
        shutil.rmtree(args.work, ignore_errors=True)
        args.work.mkdir(parents=True)
    log = args.work / "bench.log"
    overrides = {**CPU_RECIPE, **QUIET, **FINE, "paths.raw_dir": str(first.paths.raw_dir), **dict(args.overrides)}
    raw = yaml.safe_load((args.work / "params.yaml").read_text()) if args.score_only else checkout(args.work, overrides)
    params = load_params(args.work / "params.yaml")
    minutes = {} if args.score_only else {"preprocess": run([sys.executable, "src/preprocess.py"], args.work, log)}
    pre = params.paths.preprocessed_dir
    manifest = json.loads((pre / "manifest.json").read_text())
    patients = {c: e["patient"] for c, e in manifest["cases"].items()}
    folds = json.loads((args.stage1 / "folds.json").read_text()) if (args.stage1 / "folds.json").is_file() else \
        fold_patients(list(patients.values()), n_folds, params.base.seed)        # the first stage's folds
    chosen = range(n_folds) if args.fold is None else [args.fold]
    fold_of, seconds = {}, {}
    for k in chosen:
        split = fold_split(patients, folds, k, params)
        if args.score_only:       # the folds an earlier run finished
            fold_of.update({c: k for c in split["test"]
                            if all((args.work / "probabilities" / v / f"{c}.npz").is_file() for v in VARIANTS)})
            continue
        fold_of.update({c: k for c in split["test"]})
        (pre / "splits.json").write_text(json.dumps(split, indent=1))
        fold_dir = args.work / "folds" / str(k)
        fold_raw = apply_overrides(yaml.safe_load(yaml.safe_dump(raw)), {
            **{f"paths.{key}": str(fold_dir / key) for key in ("models_dir", "metrics_dir", "live_dir", "resume_dir")},
            "train.init_weights": str(args.stage1 / "folds" / str(k) / "models" / "folds" / "fold_0" / "model.pt")})
        (args.work / "params.yaml").write_text(yaml.safe_dump(fold_raw, sort_keys=False))
        minutes[f"train fold {k}"] = run([sys.executable, "src/train.py"], args.work, log)
        fold_params = load_params(args.work / "params.yaml")
        seconds[str(k)] = refine_fold(fold_params, fold_params.paths.models_dir / "folds" / "fold_0" / "model.pt",
                                      split["test"], stage1_probs, args.work / "probabilities")
        print(f"fold {k}: second stage trained in {minutes[f'train fold {k}']:.1f} min, "
              f"{seconds[str(k)]:.0f} s a case to refine", flush=True)

    variants = {"stage1": stage1_probs, **{v: args.work / "probabilities" / v for v in VARIANTS}}
    result = {"stage1": str(args.stage1), "folds": n_folds, "fine": {k: v for k, v in overrides.items()
                                                                      if k != "paths.raw_dir"},
              "margin_voxels": MARGIN, "minutes": {k: round(m, 2) for k, m in minutes.items()},
              "seconds_per_case_refine": {k: round(s, 1) for k, s in seconds.items()},
              "machine": {"cpu": platform.processor() or platform.machine(), "python": platform.python_version(),
                          "torch": __import__("torch").__version__}, "variants": {}}
    for variant, folder in variants.items():
        scored = oof.choose_and_score(folder, fold_of, choose_too=False)
        scored.update(summarise({c: {k: v for k, v in s.items() if k != "fold"} for c, s in scored["per_case"].items()}))
        result["variants"][variant] = scored
        m, ci = scored["mean"], scored["ci95"]
        print(f"{variant:6s} " + ", ".join(
            f"{r} Dice {m[f'plain_dice_{r}']:.3f} ({ci[f'plain_dice_{r}'][0]}–{ci[f'plain_dice_{r}'][1]}) "
            f"lesion-wise {m[f'plain_lesionwise_dice_{r}']:.3f}" for r in REGIONS))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    run_stage(main)
