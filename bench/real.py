"""Train and evaluate the pipeline on a folder of real BraTS cases, by cross-validation, and write the figures.

    python bench/real.py --data /data/BraTS2021 --out bench/results/real.json [--folds 4] [--fold K]
                         [--init auto|none|WEIGHTS] [--hold-out patients|institutions] [--work /tmp/brats-real]
                         [-S key=value ...]

The real-data CPU recipe (docs/real-data.md), measured: the network starts from the weights the default pipeline
trains on the embedded synthetic set (`--init auto`: the default params' synthesize, preprocess and
train stages run first in the work folder, as `dvc repro` runs them; or a weights file; `none` for a
random start), then trains on the real cases at 2 mm.

Every case is scored once by a model that never saw it: the cases (grouped by patient, seeded by
`base.seed`) are cut into `--folds` folds; for each fold, the stage scripts run in a work copy of the
repository (`src/` and params.yaml with the real-data CPU recipe below, then the `-S` overrides, as
`dvc exp run -S` takes them): preprocess once for all cases, then per fold train on the other folds
(less `preprocess.val_fraction` of them for validation and post-processing), postprocess, and
evaluate on the fold. The figures are the evaluate stage's own, on each case's original grid against
its original labels (the network runs at `preprocess.spacing_mm`). `--fold K` runs one fold only.
`--hold-out institutions` deals whole institutions (from the BraTS 2017-2018 case names) into the
folds instead, so that each fold is scored on sites its model never saw.

Each fold's unseen cases also have their region probabilities kept (WORK/probabilities, bench/oof.py;
bench/cascade.py refines them); with every fold run, the cut-offs and post-processing chosen on the
other folds' cases are scored too (`out_of_fold_choice`).

Writes `--out` (JSON: settings, per-fold minutes, per-case and mean Dice and IoU of WT, TC and ET
with and without post-processing, and the lesion-wise Dice) and prints a table. Nothing is
downloaded; the data stay where they are (read in place, any edition: src/editions.py).
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.append(str(ROOT / "bench"))   # report.py, when loaded as a module; after src/, which bench/inference.py must not shadow

from errors import UserError, run_stage  # noqa: E402
from params import apply_overrides, load_params  # noqa: E402
from preprocess import fold_patients  # noqa: E402
from report import institution, summarise  # noqa: E402
import oof  # noqa: E402

# The real-data recipe for 2 CPU cores (docs/real-data.md): 1 mm data trained at 2 mm,
# starting from the synthetic set's weights (train.init_weights, set by --init).
CPU_RECIPE = {
    "preprocess.spacing_mm": 2.0,
    "train.patch": [64, 64, 64], "train.augment": "full", "train.modality_dropout": 0.0, "train.epochs": 50,
    "train.val_every": 25,
    "tune.trials": 0, "lr": 0.003, "weight_decay": 1.0e-5, "beta1": 0.9, "beta2": 0.999,
    "postprocess.enhancing_min_t1c_z": 0.25,
}
QUIET = {"train.mlflow": False, "train.wandb": "disabled", "evaluate.overlays": 0}
REGIONS = ("WT", "TC", "ET")
STAGES = ("train", "postprocess", "evaluate")


def parse_override(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"-S {text!r}: expected key=value")
    return key, yaml.safe_load(value)


def run(cmd: list[str], cwd: Path, log: Path) -> float:
    """Run a stage script, its output appended to `log`; minutes it took. A failure stops the bench."""
    start = time.time()
    with open(log, "a") as out:
        out.write(f"\n$ {' '.join(cmd)}\n")
        out.flush()
        done = subprocess.run(cmd, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
    if done.returncode:
        sys.exit(f"error: {' '.join(cmd)} failed in {cwd} (exit {done.returncode}); see {log}")
    return (time.time() - start) / 60


def fold_scores(metrics_dir: Path) -> dict[str, dict]:
    """Per-case scores of one fold's evaluate stage: post-processed Dice, IoU and lesion-wise Dice."""
    with open(metrics_dir / "evaluate_cases.csv") as f:
        rows = list(csv.DictReader(f))
    return {row["case"]: {f"{k}_{r}": float(row[f"{k}_{r}"]) for k in ("dice", "iou", "lesionwise_dice")
                          for r in REGIONS} for row in rows}


def fold_institutions(patients: dict[str, str], k: int) -> list[list[str]]:
    """Patients dealt into `k` folds by institution (bench/report.py's, from the case names): all of an
    institution's patients in one fold, the largest institutions first, each into the fold with the
    fewest cases so far (ties: the lower fold), so that every fold's model meets sites it never saw."""
    sites: dict[str, set[str]] = {}
    for case, patient in patients.items():
        sites.setdefault(institution(case), set()).add(patient)
    if len(sites) < k:
        raise UserError(f"--hold-out institutions with --folds {k}: the cases come from {len(sites)} institution(s) "
                        f"({', '.join(sorted(sites))}); use fewer folds")
    size = {site: sum(1 for c in patients if institution(c) == site) for site in sites}
    folds: list[list[str]] = [[] for _ in range(k)]
    load = [0] * k
    for site in sorted(sites, key=lambda s: (-size[s], s)):
        i = load.index(min(load))
        folds[i] += sorted(sites[site])
        load[i] += size[site]
    return [sorted(f) for f in folds]


def fold_split(patients: dict[str, str], folds: list[list[str]], k: int, params) -> dict:
    """splits.json for outer fold `k`: its patients' cases are the test split; of the other folds'
    patients (shuffled, seeded by base.seed and k), preprocess.val_fraction validate, the rest train."""
    rest = [p for i, f in enumerate(folds) if i != k for p in f]
    np.random.default_rng([params.base.seed, k]).shuffle(rest)
    n_val = max(1, round(len(rest) * params.preprocess.val_fraction))
    split = {"test": set(folds[k]), "val": set(rest[:n_val]), "train": set(rest[n_val:])}
    cases = {name: sorted(c for c, p in patients.items() if p in group) for name, group in split.items()}
    cases["folds"] = [{"train": cases["train"], "val": cases["val"]}]      # one training fold (train.folds [0])
    return cases


def checkout(folder: Path, overrides: dict) -> dict:
    """src/ and params.yaml (with `overrides`) in `folder`, as a clone would have them; the raw params."""
    shutil.copytree(ROOT / "src", folder / "src", ignore=shutil.ignore_patterns("__pycache__"), dirs_exist_ok=True)
    raw = apply_overrides(yaml.safe_load((ROOT / "params.yaml").read_text()), overrides)
    (folder / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    return raw


def pretrain(work: Path, log: Path) -> tuple[Path, float]:
    """The default pipeline's weights on the embedded synthetic set (its committed tuned values), and
    the minutes it took: synthesize, preprocess and train as `dvc repro` runs them."""
    folder = work / "synthetic"
    checkout(folder, QUIET)
    shutil.copytree(ROOT / "tune", folder / "tune")
    minutes = sum(run([sys.executable, f"src/{stage}.py"], folder, log) for stage in ("synthesize", "preprocess",
                                                                                        "train"))
    return folder / "models" / "folds" / "fold_0" / "model.pt", minutes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, required=True, help="folder of real BraTS cases (any edition)")
    ap.add_argument("--out", type=Path, required=True, help="JSON file for the figures")
    ap.add_argument("--work", type=Path, default=Path("/tmp/brats-real"), help="work folder (replaced)")
    ap.add_argument("--folds", type=int, default=4)
    ap.add_argument("--hold-out", choices=("patients", "institutions"), default="patients",
                    help="what a fold holds out: patients (seeded), or whole institutions (the case names' sites)")
    ap.add_argument("--fold", type=int, help="run this fold only (0-based)")
    ap.add_argument("--init", default="auto", help="auto (train on the synthetic set first), none, or a weights file")
    ap.add_argument("-S", dest="overrides", type=parse_override, action="append", default=[],
                    help="params override, as dvc exp run -S takes it (repeatable)")
    args = ap.parse_args()
    if not args.data.is_dir():
        ap.error(f"--data {args.data}: not a folder")
    if args.folds < 2 or (args.fold is not None and not 0 <= args.fold < args.folds):
        ap.error("--folds must be 2 or more, and --fold one of 0 .. folds-1")

    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    log = args.work / "bench.log"
    minutes = {}
    if args.init == "auto":
        init, minutes["pretrain on the synthetic set"] = pretrain(args.work, log)
    elif args.init != "none":
        init = Path(args.init).resolve()
    overrides = {**CPU_RECIPE, **QUIET, "paths.raw_dir": str(args.data.resolve()),
                 "train.init_weights": "" if args.init == "none" else str(init), **dict(args.overrides)}
    raw = checkout(args.work, overrides)
    params = load_params(args.work / "params.yaml")       # checks the overrides before any work
    python = sys.executable
    minutes["preprocess"] = run([python, "src/preprocess.py"], args.work, log)

    pre = params.paths.preprocessed_dir
    manifest = json.loads((pre / "manifest.json").read_text())
    patients = {c: e["patient"] for c, e in manifest["cases"].items()}
    if args.hold_out == "institutions":
        folds = fold_institutions(patients, args.folds)
    else:
        folds = fold_patients(list(patients.values()), args.folds, params.base.seed)   # as the pipeline deals folds
    (args.work / "folds.json").write_text(json.dumps(folds, indent=1))     # what bench/cascade.py reuses
    chosen = range(args.folds) if args.fold is None else [args.fold]
    per_case, fold_minutes = {}, {}
    prob_dir = args.work / "probabilities"
    for k in chosen:
        (pre / "splits.json").write_text(json.dumps(fold_split(patients, folds, k, params), indent=1))
        fold_dir = args.work / "folds" / str(k)
        paths = {f"paths.{key}": str(fold_dir / value) for key, value in (
            ("models_dir", "models"), ("metrics_dir", "metrics"), ("predictions_dir", "predictions"),
            ("live_dir", "dvclive"), ("resume_dir", "checkpoints"), ("model_card", "MODEL_CARD.md"))}
        fold_raw = apply_overrides(yaml.safe_load(yaml.safe_dump(raw)), paths)
        (args.work / "params.yaml").write_text(yaml.safe_dump(fold_raw, sort_keys=False))
        fold_minutes[k] = {stage: run([python, f"src/{stage}.py"], args.work, log) for stage in STAGES}
        fold_minutes[k]["keep probabilities"] = run([python, str(ROOT / "bench" / "oof.py"), "predict", "--params",
                                                     str(args.work / "params.yaml"), "--out", str(prob_dir)],
                                                    args.work, log)
        scores = fold_scores(fold_dir / "metrics")
        per_case.update({case: {"fold": k, **s} for case, s in scores.items()})
        print(f"fold {k}: " + ", ".join(f"{stage} {m:.1f} min" for stage, m in fold_minutes[k].items()) + "; " +
              ", ".join(f"{r} Dice {np.mean([s[f'dice_{r}'] for s in scores.values()]):.3f}" for r in REGIONS))

    summary = summarise({case: {k: v for k, v in s.items() if k != "fold"} for case, s in per_case.items()})
    out_of_fold = None
    if args.fold is None:      # every case unseen once: choose cut-offs and post-processing fold by fold
        pp = params.postprocess
        out_of_fold = oof.choose_and_score(prob_dir, {c: s["fold"] for c, s in per_case.items()},
                                           pp.candidates_mm3, pp.candidates_fraction, pp.min_gain)
        out_of_fold.update(summarise({c: {k: v for k, v in s.items() if k != "fold"}
                                      for c, s in out_of_fold["per_case"].items()}))
    mean = summary["mean"]
    result = {"data": str(args.data), "cases": len(per_case), "editions": manifest["edition"],
              "folds": args.folds, "hold_out": args.hold_out, "fold_patients": folds, "init": args.init,
              "overrides": {k: v for k, v in overrides.items() if k not in ("paths.raw_dir", "train.init_weights")},
              "minutes": {**{k: round(m, 2) for k, m in minutes.items()},
                          **{str(k): {s: round(m, 2) for s, m in v.items()} for k, v in fold_minutes.items()}},
              "machine": {"cpu": platform.processor() or platform.machine(), "python": platform.python_version(),
                          "torch": __import__("torch").__version__},
              **summary, "per_case": per_case, "out_of_fold_choice": out_of_fold}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    print(f"{len(per_case)} unseen cases, on their original grid (post-processed):")
    for r in REGIONS:
        values = [s[f"dice_{r}"] for s in per_case.values()]
        ci = summary["ci95"][f"dice_{r}"] or ["n/a", "n/a"]
        print(f"  {r}: Dice {mean[f'dice_{r}']:.3f} (95 % interval {ci[0]}–{ci[1]}, min {min(values):.3f}), "
              f"IoU {mean[f'iou_{r}']:.3f}, lesion-wise Dice {mean[f'lesionwise_dice_{r}']:.3f}")
    for site, figures in summary["institutions"].items():
        print(f"  {site} ({figures['cases']} cases): " + ", ".join(f"{r} Dice {figures[f'dice_{r}']:.3f}" for r in REGIONS))
    if out_of_fold:
        print("cut-offs and post-processing chosen on the other folds' unseen cases:")
        for variant in ("plain", "cutoffs", "chosen"):
            m, ci = out_of_fold["mean"], out_of_fold["ci95"]
            print(f"  {variant}: " + ", ".join(
                f"{r} Dice {m[f'{variant}_dice_{r}']:.3f} ({ci[f'{variant}_dice_{r}'][0]}–{ci[f'{variant}_dice_{r}'][1]}) "
                f"lesion-wise {m[f'{variant}_lesionwise_dice_{r}']:.3f}" for r in REGIONS))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    # too many folds for the patients, or a full disk: one line; Ctrl-C: what a rerun does
    run_stage(main, "run the same command again to start over (folds are not resumed)")
