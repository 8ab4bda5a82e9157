"""Stage `train`: fit the 3D U-Net on the training cases of one cross-validation fold.

    python src/train.py [--fold K]                    # one process: CUDA if present, else CPU
    torchrun --nproc_per_node=N src/train.py          # DistributedDataParallel on N GPUs (or CPU procs)

dvc.yaml runs it once per fold of `train.folds` (stages train@0 ... train@K-1): fold K trains on the
other folds' cases and validates on its own (with one fold: the train and val splits). A single
process on a machine with several GPUs takes GPU K modulo their number, so folds started side by side
(`dvc queue start -j N`) share them out.

Adam (top-level `lr`, `weight_decay`, `beta1`, `beta2`), the loss and schedule from params, random
patches with foreground oversampling and augmentation, sliding-window validation on the val split every
`train.val_every` epochs. Writes the best and last weights (`models/folds/fold_K/model.pt`, `last.pt`) and
logs with DVCLive into `paths.live_dir`/fold_K (`dvclive/fold_0/`): per-epoch loss and learning rate, validation
scores at the epochs that validate (one row each, so curves have no gaps filled with zeros), the
resolved optimizer values (`params.yaml`) and, at the end, the best epoch and its validation scores
(`metrics.json`). The files are rewritten after every epoch, so `dvc plots show`, `dvc exp show` and
the VS Code extension follow a run while it trains. Only what the model and data determine goes
there; timing goes to the console, MLflow and W&B.

A resume checkpoint is written atomically after every epoch under `paths.resume_dir`/fold_K; running the
stage again after a kill resumes from it when params and data are unchanged, and it is deleted once
the run finishes. With `train.deterministic`, a resumed run ends with the same weights as an
uninterrupted one.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from brats import REGIONS
from errors import UserError, run_stage
from files import check_writable
from fit import FitState, TrainingDiverged, build, fingerprint, fit, init_weights
from layout import load_fold, read_manifest
from params import OPTIMIZER_KEYS, ROOT, Params, flat_params, load_params, resolve_tuned
from runtime import setup_runtime
from model import UNet3D
from tracking import Tracker
from weights import LAST_FILE, WEIGHTS_FILE, current_spec, fold_dir, provenance, save, weights_payload

RESUME_FILE = "train_state.pt"


def save_checkpoint(path: Path, state: dict) -> None:
    save(path, state)


def load_resume(path: Path, expected: str, main: bool) -> dict | None:
    """The resume checkpoint when it was written for these inputs; None (train afresh) otherwise."""
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
        if not isinstance(state, dict):
            raise ValueError("not a checkpoint dict")
    except Exception as e:  # truncated by a full disk, or not ours
        if main:
            print(f"warning: cannot read the resume checkpoint {path} ({type(e).__name__}: {e}); "
                  "starting afresh (it is replaced after the first epoch)", file=sys.stderr)
        return None
    if state.get("fingerprint") != expected:
        if main:
            print(f"{path} was written with other params or data: starting afresh", file=sys.stderr)
        return None
    return state


def training_spacing(manifest: dict, cases: list[str]) -> tuple[float, float, float]:
    """Voxel size of the training data, for the weights (predict resamples to it): the spacing
    preprocess resampled to, else the per-axis median over the training cases."""
    if isinstance(manifest.get("spacing_mm"), list):
        return tuple(float(v) for v in manifest["spacing_mm"])
    return tuple(float(v) for v in np.median([manifest["cases"][c]["spacing_mm"] for c in cases], axis=0))


# What DVCLive plots per epoch: the loss and lr, and these validation scores where validation ran.
LIVE_VAL = tuple(f"val_iou_{r}" for r in REGIONS) + ("val_mean_iou", "val_mean_dice")


class LiveLog:
    """DVCLive's files for one training run (`paths.live_dir`), x = epoch. A resumed run replays the
    checkpoint's history first, so the curves hold every epoch whether DVC kept the folder or not."""

    def __init__(self, folder: Path, params: Params, history: list[dict]):
        from dvclive import Live
        self.live = Live(str(folder), resume=False, save_dvc_exp=False, dvcyaml=False, report=None)
        self.live.log_params({k: getattr(params, k) for k in OPTIMIZER_KEYS})
        for row in history:
            self.epoch(row)

    def epoch(self, row: dict) -> None:
        self.live.step = row["epoch"]
        for key in ("loss", "lr", *LIVE_VAL):
            if key in row:
                name = f"val/{key.removeprefix('val_')}" if key.startswith("val_") else f"train/{key}"
                self.live.log_metric(name, row[key])
        self.live.make_summary()

    def finish(self, metrics: dict) -> None:
        """The summary `dvc metrics` reads: the final epoch, its loss, the best epoch and its scores."""
        self.live.summary = {**metrics, "step": metrics["epochs"]}
        self.live.make_summary()


def fold_paths(params: Params, fold: int) -> Params:
    """Params whose models, DVCLive and resume folders are fold `fold`'s own."""
    paths = params.paths
    return dataclasses.replace(params, paths=dataclasses.replace(
        paths, models_dir=fold_dir(paths.models_dir, fold), live_dir=paths.live_dir / f"fold_{fold}",
        resume_dir=paths.resume_dir / f"fold_{fold}"))


def real_data_notice(params: Params) -> str | None:
    """The line train prints when an augmentation meant for the synthetic set is on with other data:
    modality dropout helps a model trained on synthetic cases carry over to real scans (BENCHMARKS.md), and
    is never applied to real data without saying so."""
    paths, rate = params.paths, params.train.modality_dropout
    if not rate or paths.raw_dir.resolve() == paths.synthetic_dir.resolve():
        return None
    return (f"note: train.modality_dropout is {rate:g} with the data of {paths.raw_dir} (not the synthetic set): "
            f"one modality is blanked in {rate:.0%} of the patches; set train.modality_dropout: 0 to train without it")


def train(params: Params, fold: int = 0) -> dict:
    """Train fold `fold` as params say, resuming from a checkpoint of the same inputs; write the
    stage's outputs and return the summary written to DVCLive's metrics.json."""
    if fold not in params.train.folds:
        raise UserError(f"--fold {fold}: train.folds is {list(params.train.folds)}; train one of those folds")
    train_cases, val_cases = load_fold(params.paths.preprocessed_dir, fold)
    params = fold_paths(resolve_tuned(params), fold)
    tp, paths = params.train, params.paths
    rt = setup_runtime(tp.precision, tp.deterministic, slot=fold)
    if rt.main:
        for folder in (paths.models_dir, paths.live_dir, paths.resume_dir):
            check_writable(folder, "train writes its outputs there: free space, fix permissions or change "
                                   "paths in params.yaml")
        notice = real_data_notice(params)
        if notice:
            print(notice, file=sys.stderr)
    manifest = read_manifest(paths.preprocessed_dir)
    spacing = training_spacing(manifest, train_cases)
    parts = build(params, rt, train_cases)

    resume_path = paths.resume_dir / RESUME_FILE
    key = fingerprint(params, train_cases, val_cases)
    saved = load_resume(resume_path, key, rt.main)
    state = FitState()
    if saved is not None:
        parts.model.load_state_dict(saved["model"])
        parts.optimizer.load_state_dict(saved["optimizer"])
        parts.scheduler.load_state_dict(saved["scheduler"])
        parts.scaler.load_state_dict(saved["scaler"])
        state = FitState(saved["epoch"], saved["history"], saved["best"], saved["best_state"])
        if rt.main:
            print(f"resuming from {resume_path} after epoch {state.epoch}", file=sys.stderr)

    name = f"train-lr{params.lr:g}" + (f"-fold{fold}" if len(tp.folds) > 1 else "")
    tracker = Tracker(name, tp.experiment, flat_params(params), tp.mlflow, tp.wandb,
                      resume=saved.get("tracking") if saved else None) if rt.main else None
    live = LiveLog(paths.live_dir, params, state.history) if rt.main else None

    def on_epoch(state: FitState, row: dict) -> None:
        if not rt.main:
            return
        print(f"epoch {row['epoch']}/{tp.epochs}: " +
              ", ".join(f"{k} {v:.4g}" for k, v in row.items() if k != "epoch" and
                        (not k.startswith("val_") or k in ("val_mean_iou", "val_iou_WT"))), file=sys.stderr)
        live.epoch(row)
        if tracker:
            tracker.log({k: v for k, v in row.items() if k != "epoch"}, step=row["epoch"])
        save_checkpoint(resume_path, {
            "fingerprint": key, "epoch": state.epoch, "model": parts.model.state_dict(),
            "optimizer": parts.optimizer.state_dict(), "scheduler": parts.scheduler.state_dict(),
            "scaler": parts.scaler.state_dict(), "history": state.history, "best": state.best,
            "best_state": state.best_state, "tracking": tracker.run_ids() if tracker else {}})

    started, first_epoch = time.time(), state.epoch
    ok = False
    try:
        try:
            state = fit(parts, params, rt, val_cases, state, on_epoch)
        except TrainingDiverged as e:
            raise TrainingDiverged(f"{e}; the last good state is kept in {resume_path}") from None
        elapsed = time.time() - started
        seen = (state.epoch - first_epoch) * tp.iterations_per_epoch * tp.batch_size * rt.world
        timing = {"train_seconds": round(elapsed, 1), "patches_per_s": round(seen / elapsed, 2) if seen else 0.0}
        best = {k.removeprefix("val_"): v for k, v in state.best.items() if k.startswith("val_")}
        metrics = {"epochs": tp.epochs, "best_epoch": state.best["epoch"], "final_loss": state.history[-1]["loss"],
                   "best": {k: best[k] for k in (*(f"iou_{r}" for r in REGIONS), "mean_iou", "mean_dice")
                            if k in best}}
        if rt.main:
            finish(params, parts.model, state, metrics, spacing, manifest.get("edition"), tracker, live)
            if tracker:
                tracker.log(timing, step=tp.epochs)
            print(f"trained {state.epoch - first_epoch} epoch(s) in {timing['train_seconds']:.0f} s, "
                  f"{timing['patches_per_s']:.1f} patches/s", file=sys.stderr)
            resume_path.unlink(missing_ok=True)
        ok = True
        return metrics
    finally:
        if tracker:
            tracker.finish(ok)


def finish(params: Params, model: torch.nn.Module, state: FitState, metrics: dict,
           spacing: tuple[float, float, float], edition: str | None, tracker: Tracker | None, live: LiveLog) -> None:
    """Write the stage's outputs: best and last weights, DVCLive's summary; the trackers' last logs."""
    paths, tp = params.paths, params.train
    spec, record = current_spec(tp.patch, spacing), flat_params(params)
    origin = provenance(paths.preprocessed_dir, ROOT, edition, init_weights(params))
    last = weights_payload(model.state_dict(), params.model, spec, record, state.history[-1]["epoch"], {}, origin)
    chosen = weights_payload(state.best_state, params.model, spec, record, state.best["epoch"], state.best,
                             origin) if state.best_state else last
    save(paths.models_dir / WEIGHTS_FILE, chosen)
    save(paths.models_dir / LAST_FILE, last)
    live.finish(metrics)
    if tracker:
        tracker.log({f"best_{k}": v for k, v in metrics["best"].items()}, step=metrics["epochs"])
        if tp.mlflow_log_model:
            best = UNet3D(params.model)
            best.load_state_dict(chosen["state_dict"])
            tracker.log_model(best.eval(), tp.patch, tp.mlflow_model_name)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Train stage: one fold of train.folds (dvc.yaml's train@K).")
    ap.add_argument("--fold", type=int, default=0, help="the fold to train (default 0)")
    args = ap.parse_args(argv)
    params = load_params()
    try:
        metrics = train(params, args.fold)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    if metrics and int(os.environ.get("RANK", "0")) == 0:
        best = metrics["best"]
        print("best epoch {}: ".format(metrics["best_epoch"]) +
              ", ".join(f"IoU {r} {best.get(f'iou_{r}', float('nan')):.3f}" for r in REGIONS))


if __name__ == "__main__":
    run_stage(main)
