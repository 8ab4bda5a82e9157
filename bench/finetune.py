"""What the synthetic default's weights are worth to a user with a few labelled real cases: the
fine-tuning curve, against a random start given the same training.

    python bench/finetune.py --data REAL_DIR --init WEIGHTS [--sizes 3 6 12] [--test 8] [--epochs 20]
                             [--seeds 2024] [--work /tmp/brats-finetune] [--out bench/results/finetune.json]
                             [--plot FILE.png] [--reuse] [-S key=value ...]

The real cases' patients are shuffled (seeded by `base.seed`): the first `--test` patients' cases are
the unseen set that every run is scored on; of the rest, the first n train (n in `--sizes`, so each
training set holds the smaller ones). Each size is trained twice with the real-data CPU recipe
(bench/real.py's: 2 mm, 64³ patches, full augmentation) for the same `--epochs`, so the same steps and
about the same CPU minutes: from `--init` (the weights the default pipeline trains on the synthetic
set) and from random weights. A user with 3 cases has no others: the training cases also serve as
validation and choose the post-processing, on both sides alike.

The unseen cases are scored by the evaluate stage on their own grid (Dice and lesion-wise Dice of WT,
TC and ET, post-processed); each figure comes with its 95 % interval over those cases and per
institution, and per size the paired difference synthetic start − random start (src/stats.py, with
the spread over `--seeds` training seeds when more than one is given). `--plot` draws the curve.
`--reuse` keeps the work folder, its preprocessed cases and every run a former call finished (more
seeds for one size, say). Nothing is downloaded; the real cases are read in place.
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
sys.path.append(str(ROOT / "bench"))      # after src/: bench/inference.py must not shadow src/inference.py

from errors import UserError, run_stage  # noqa: E402
from files import write_json  # noqa: E402
from params import apply_overrides, load_params  # noqa: E402
from report import summarise  # noqa: E402
from stats import paired  # noqa: E402
import real  # noqa: E402

STARTS = ("synthetic", "random")
REGIONS = ("WT", "TC", "ET")


def subsets(patients: dict[str, str], sizes: list[int], test: int, seed: int) -> tuple[list[str], dict[int, list[str]]]:
    """The unseen cases, and the training cases of each size (nested), dealt by patient."""
    order = sorted(set(patients.values()))
    np.random.default_rng([seed, 37]).shuffle(order)
    if test + max(sizes) > len(order):
        raise UserError(f"--test {test} and --sizes up to {max(sizes)} need {test + max(sizes)} patients; "
                        f"the data hold {len(order)}")
    cases_of = lambda group: sorted(c for c, p in patients.items() if p in set(group))  # noqa: E731
    return cases_of(order[:test]), {n: cases_of(order[test:test + n]) for n in sizes}


def train_one(work: Path, raw: dict, split: dict, name: str, init: str, train_seed: int, log: Path,
              reuse: bool = False) -> tuple[dict, float]:
    """Train, choose the post-processing and evaluate one run in WORK/runs/NAME; per-case scores, minutes
    (0 for a run kept with `reuse`)."""
    folder = work / "runs" / name
    if reuse and (folder / "metrics" / "evaluate_cases.csv").exists():
        return real.fold_scores(folder / "metrics"), 0.0
    paths = {f"paths.{key}": str(folder / value) for key, value in (
        ("models_dir", "models"), ("metrics_dir", "metrics"), ("predictions_dir", "predictions"),
        ("live_dir", "dvclive"), ("resume_dir", "checkpoints"), ("model_card", "MODEL_CARD.md"))}
    run_raw = apply_overrides(yaml.safe_load(yaml.safe_dump(raw)), {**paths, "train.init_weights": init,
                                                                     "train.seed": train_seed})
    (work / "params.yaml").write_text(yaml.safe_dump(run_raw, sort_keys=False))
    pre = Path(load_params(work / "params.yaml").paths.preprocessed_dir)
    (pre / "splits.json").write_text(json.dumps(split, indent=1))
    minutes = sum(real.run([sys.executable, f"src/{stage}.py"], work, log) for stage in real.STAGES)
    return real.fold_scores(folder / "metrics"), minutes


def plot(result: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    sizes = result["sizes"]
    fig, axes = plt.subplots(1, len(REGIONS), figsize=(4 * len(REGIONS), 3.4), sharey=True)
    for ax, region in zip(axes, REGIONS):
        for start, colour in zip(STARTS, ("tab:orange", "tab:blue")):
            rows = [result["curve"][str(n)][start] for n in sizes]
            mean = [r["mean"][f"dice_{region}"] for r in rows]
            low = [r["ci95"][f"dice_{region}"][0] for r in rows]
            high = [r["ci95"][f"dice_{region}"][1] for r in rows]
            ax.plot(sizes, mean, "o-", color=colour, label=f"{start} start")
            ax.fill_between(sizes, low, high, color=colour, alpha=0.2)
        ax.set_title(f"{region} Dice, {result['unseen_cases']} unseen cases")
        ax.set_xlabel("real training cases")
        ax.set_xticks(sizes)
    axes[0].set_ylabel("Dice (mean, 95 % interval over cases)")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=80, metadata={"Software": None})
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, required=True, help="folder of real BraTS cases with labels (any edition)")
    ap.add_argument("--init", type=Path, required=True, help="weights of the synthetic default (models/folds/fold_0/model.pt)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[3, 6, 12], help="numbers of real training cases")
    ap.add_argument("--test", type=int, default=8, help="patients kept unseen, scored by every run")
    ap.add_argument("--epochs", type=int, default=20, help="epochs of every run (train.iterations_per_epoch steps each)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[2024], help="train.seed values: replicas of every run")
    ap.add_argument("--work", type=Path, default=Path("/tmp/brats-finetune"), help="work folder (replaced)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "finetune.json")
    ap.add_argument("--plot", type=Path, help="PNG of the curve")
    ap.add_argument("--reuse", action="store_true", help="keep the work folder and the runs it finished")
    ap.add_argument("-S", dest="overrides", type=real.parse_override, action="append", default=[],
                    help="params override, as dvc exp run -S takes it (repeatable)")
    args = ap.parse_args()
    if not args.data.is_dir():
        ap.error(f"--data {args.data}: not a folder")
    if not args.init.is_file():
        ap.error(f"--init {args.init}: no such weights file (the default pipeline writes models/folds/fold_0/model.pt)")
    if min(args.sizes) < 1 or args.test < 1 or args.epochs < 1:
        ap.error("--sizes, --test and --epochs must be 1 or more")
    sizes = sorted(set(args.sizes))

    if not args.reuse:
        shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True, exist_ok=True)
    log = args.work / "bench.log"
    overrides = {**real.CPU_RECIPE, **real.QUIET, "paths.raw_dir": str(args.data.resolve()),
                 "train.epochs": args.epochs, "train.val_every": args.epochs, **dict(args.overrides)}
    raw = real.checkout(args.work, overrides)
    params = load_params(args.work / "params.yaml")       # checks the overrides before any work
    started = time.time()
    if not (args.reuse and (params.paths.preprocessed_dir / "manifest.json").exists()):
        real.run([sys.executable, "src/preprocess.py"], args.work, log)
    manifest = json.loads((params.paths.preprocessed_dir / "manifest.json").read_text())
    patients = {c: e["patient"] for c, e in manifest["cases"].items()}
    unseen, training = subsets(patients, sizes, args.test, params.base.seed)
    print(f"preprocessed {len(patients)} cases in {(time.time() - started) / 60:.1f} min; "
          f"{len(unseen)} unseen: {', '.join(unseen)}")

    scores: dict[int, dict[str, list[dict]]] = {n: {s: [] for s in STARTS} for n in sizes}
    minutes: dict[str, float] = {}
    for n in sizes:
        split = {"train": training[n], "val": training[n], "test": unseen,
                 "folds": [{"train": training[n], "val": training[n]}]}
        for seed in args.seeds:
            for start in STARTS:
                name = f"{n}-{start}-{seed}"
                per_case, minutes[name] = train_one(args.work, raw, split, name,
                                                    str(args.init.resolve()) if start == "synthetic" else "", seed, log,
                                                    args.reuse)
                scores[n][start].append(per_case)
                print(f"{n} cases, {start} start, seed {seed}: {minutes[name]:.1f} min; " + ", ".join(
                    f"{r} Dice {np.mean([s[f'dice_{r}'] for s in per_case.values()]):.3f}" for r in REGIONS))

    curve = {}
    for n in sizes:
        row = {}
        for start in STARTS:
            runs = scores[n][start]
            averaged = {c: {k: float(np.mean([r[c][k] for r in runs])) for k in runs[0][c]} for c in unseen}
            row[start] = summarise(averaged)
            row[start]["seed_means"] = {k: [round(float(np.mean([r[c][k] for c in unseen])), 4) for r in runs]
                                        for k in runs[0][unseen[0]]}
        row["synthetic_minus_random"] = {}
        for key in (f"{m}_{r}" for m in ("dice", "lesionwise_dice") for r in REGIONS):
            d = paired(np.array([[r[c][key] for c in unseen] for r in scores[n]["random"]]),
                       np.array([[r[c][key] for c in unseen] for r in scores[n]["synthetic"]]))
            row["synthetic_minus_random"][key] = {"change": round(d.change, 4),
                                                  "ci95": [round(x, 4) for x in (d.judged_on or ())] or None,
                                                  "verdict": d.verdict}
        curve[str(n)] = row
    result = {"data": str(args.data), "init": str(args.init), "sizes": sizes, "seeds": args.seeds,
              "epochs": args.epochs, "unseen": unseen, "unseen_cases": len(unseen),
              "training": {str(n): c for n, c in training.items()},
              "overrides": {k: v for k, v in overrides.items() if k != "paths.raw_dir"},
              "minutes": {k: round(m, 2) for k, m in minutes.items()},
              "machine": {"cpu": platform.processor() or platform.machine(), "python": platform.python_version(),
                          "torch": __import__("torch").__version__},
              "curve": curve}
    write_json(args.out, result)
    if args.plot:
        plot(result, args.plot)
    for n in sizes:
        for start in STARTS:
            m, ci = curve[str(n)][start]["mean"], curve[str(n)][start]["ci95"]
            print(f"{n:>3} cases, {start:<9}: " + ", ".join(
                f"{r} {m[f'dice_{r}']:.3f} ({ci[f'dice_{r}'][0]:.3f}–{ci[f'dice_{r}'][1]:.3f})" for r in REGIONS))
        d = curve[str(n)]["synthetic_minus_random"]
        print("      synthetic − random: " + ", ".join(
            f"{r} {d[f'dice_{r}']['change']:+.3f} {d[f'dice_{r}']['ci95']} ({d[f'dice_{r}']['verdict']})" for r in REGIONS))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    run_stage(main)
