"""Stage `train`: fit the 3D U-Net on the preprocessed training split.

    python src/train.py                               # one process: CUDA if present, else CPU
    torchrun --nproc_per_node=N src/train.py          # DistributedDataParallel on N GPUs (or CPU procs)

Adam (top-level `lr`, `weight_decay`, `beta1`, `beta2`), the loss and schedule from params, random
patches with foreground oversampling and augmentation, sliding-window validation on the val split every
`train.val_every` epochs. Writes the best and last weights (`models/model.pt`, `models/last.pt`),
`metrics/train.json` and the per-epoch history `metrics/train_history.csv` (`dvc plots`).

A resume checkpoint is written atomically after every epoch under `paths.resume_dir`; running the
stage again after a kill resumes from it when params and data are unchanged, and it is deleted once
the run finishes. With `train.deterministic`, a resumed run ends with the same weights as an
uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from brats import MODEL_REGIONS, REGIONS, labels_to_regions
from dataset import PatchDataset, load_split, open_case, read_json
from errors import UserError, run_stage
from files import atomic_write, write_csv, write_json
from inference import autocast_for, predict_probs, probs_to_labels
from losses import combined_loss, deep_supervision_loss
from metrics import mean_scores, region_scores
from model import UNet3D
from params import OPTIMIZER_KEYS, LossParams, Params, load_params
from tracking import Tracker

WEIGHTS_FILE = "model.pt"     # best weights by validation mean IoU
LAST_FILE = "last.pt"
RESUME_FILE = "train_state.pt"


class TrainingDiverged(UserError):
    """The loss became NaN or infinite."""


@dataclass
class Runtime:
    device: torch.device
    precision: str        # what autocast uses: bf16 | fp16 | fp32
    rank: int
    world: int

    @property
    def main(self) -> bool:
        return self.rank == 0


BEST_PARAMS_FILE = "best_params.json"


def resolve_tuned(params: Params) -> Params:
    """Params with every `tuned` optimizer key replaced by the tune stage's best value.

    Precedence: a number in params.yaml (or from `dvc exp run -S lr=...`) always wins; `tuned` reads
    tune/best_params.json."""
    wanted = [k for k in OPTIMIZER_KEYS if getattr(params, k) == "tuned"]
    if not wanted:
        return params
    path = params.paths.tune_dir / BEST_PARAMS_FILE
    best = read_json(path, "the tune stage's best params", stage="tune").get("best") or {}
    missing = [k for k in wanted if k not in best]
    if missing:
        raise UserError(f"{', '.join(missing)}: `tuned` in params.yaml, but {path} has no tuned value "
                        f"(tune.trials is {params.tune.trials}); set a number, e.g. `dvc exp run -S "
                        f"{missing[0]}=...`, or run tuning with tune.trials > 0")
    return dataclasses.replace(params, **{k: float(best[k]) for k in wanted})


def optimizer_params(params: Params) -> dict[str, float]:
    """Adam's hyperparameters, read from the top-level keys that `dvc exp run -S` sets."""
    return {k: getattr(params, k) for k in OPTIMIZER_KEYS}


def flat_params(params: Params) -> dict[str, Any]:
    """What a run logs and a checkpoint carries: optimizer, model and train params, flattened."""
    out: dict[str, Any] = {**optimizer_params(params), "seed": params.base.seed}
    for section in ("model", "train"):
        for key, value in dataclasses.asdict(getattr(params, section)).items():
            if isinstance(value, dict):
                out.update({f"{section}.{key}.{k}": v for k, v in value.items()})
            else:
                out[f"{section}.{key}"] = list(value) if isinstance(value, tuple) else value
    return out


def setup_runtime(params: Params) -> Runtime:
    """Device, precision, determinism and (under torchrun) the process group."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    cuda = torch.cuda.is_available()
    if params.train.deterministic:
        # cuBLAS needs this before its first call to give reproducible results
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    else:
        torch.backends.cudnn.benchmark = True
    if cuda:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    precision = params.train.precision
    if precision == "auto" or not cuda:
        precision = "bf16" if cuda else "fp32"   # autocast is for CUDA; CPU trains in fp32
    return Runtime(device, precision, rank, world)


# Params that cannot change the weights: a checkpoint stays resumable, a study stays the same study.
NOT_IN_FINGERPRINT = ("train.workers", "train.mlflow", "train.wandb", "train.experiment")


def fingerprint(params: Params) -> str:
    """Identifies a training run's inputs: a resume checkpoint is used only when this matches."""
    pre = params.paths.preprocessed_dir
    relevant = {k: v for k, v in flat_params(params).items() if k not in NOT_IN_FINGERPRINT}
    digest = hashlib.sha256(json.dumps(relevant, sort_keys=True).encode())
    for name in ("manifest.json", "splits.json"):
        digest.update((pre / name).read_bytes())
    return digest.hexdigest()


def forward_loss(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, loss: LossParams,
                 device: torch.device, precision: str) -> torch.Tensor:
    """One batch's loss: images (B, 4, P, P, P) and labels (B, P, P, P) in, scalar out."""
    x = x.to(device, non_blocking=True)
    target = labels_to_regions(y.to(device, non_blocking=True)).transpose(0, 1)  # (B, R, P, P, P) bool
    with autocast_for(device, precision):
        out = model(x)
    return deep_supervision_loss(out, target, loss) if isinstance(out, list) else combined_loss(out, target, loss)


def lr_lambda(schedule: str, total_steps: int) -> Callable[[int], float]:
    if schedule == "poly":
        return lambda step: (1 - min(step, total_steps) / total_steps) ** 0.9
    if schedule == "cosine":
        return lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / total_steps))
    return lambda step: 1.0


def atomic_save(obj: Any, path: Path) -> None:
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def weights_file(state_dict: dict, params: Params, epoch: int, val: dict) -> dict:
    """What `torch.load(path, weights_only=True)` gives back: tensors, the model config, the params."""
    return {"state_dict": {k: v.detach().cpu() for k, v in state_dict.items()},
            "model": dataclasses.asdict(params.model), "params": flat_params(params),
            "epoch": epoch, "val": val, "regions": list(MODEL_REGIONS)}


def save_checkpoint(path: Path, state: dict) -> None:
    atomic_save(state, path)


def load_resume(path: Path, expected: str, main: bool) -> dict | None:
    if not path.exists():
        return None
    state = torch.load(path, map_location="cpu", weights_only=False)
    if state.get("fingerprint") != expected:
        if main:
            print(f"{path} was written with other params or data: starting afresh", file=sys.stderr)
        return None
    return state


def make_loader(params: Params, rt: Runtime, cases: list[str]) -> tuple[PatchDataset, DataLoader]:
    tp = params.train
    per_epoch = tp.iterations_per_epoch * tp.batch_size * rt.world
    dataset = PatchDataset(params.paths.preprocessed_dir, cases, tp.patch, per_epoch, tp.foreground_fraction,
                           tp.augment, params.base.seed)
    # rank r takes batch slots r, r + world, …: disjoint samples, the same ones after a resume
    mine = [i for i in range(per_epoch) if (i // tp.batch_size) % rt.world == rt.rank]
    loader = DataLoader(Subset(dataset, mine), batch_size=tp.batch_size, shuffle=False,
                        num_workers=tp.workers, pin_memory=rt.device.type == "cuda", drop_last=True,
                        persistent_workers=False)
    return dataset, loader


def validate(model: torch.nn.Module, params: Params, rt: Runtime, cases: list[str]) -> dict[str, float]:
    """Sliding-window prediction of each validation case; mean Dice and IoU per region."""
    tp = params.train
    scores = []
    for case in cases:
        image, label = open_case(params.paths.preprocessed_dir, case)
        probs = predict_probs(model, image, tp.patch, tp.val_overlap, tp.val_batch, precision=rt.precision)
        scores.append(region_scores(probs_to_labels(probs), np.asarray(label)))
    mean = mean_scores(scores)
    flat = {f"val_{k}_{region}": v for region, s in mean.items() for k, v in s.items()}
    flat["val_mean_iou"] = float(np.mean([s["iou"] for s in mean.values()]))
    flat["val_mean_dice"] = float(np.mean([s["dice"] for s in mean.values()]))
    return flat


def write_history(path: Path, history: list[dict]) -> None:
    """One row per epoch; validation columns stay empty in epochs without validation."""
    columns = sorted({k for row in history for k in row}, key=lambda k: (k != "epoch", k))
    write_csv(path, columns, ([row.get(k, "") for k in columns] for row in history))


def train(params: Params, report: Callable[[int, dict], None] | None = None) -> dict:
    """Train as params say; return the metrics written to metrics/train.json.

    With `report`, this is a tuning trial: `report(epoch, val_metrics)` is called after each
    validation (the tune stage prunes with it), and nothing is written: no checkpoint, no outputs.
    """
    params = resolve_tuned(params)
    trial = report is not None
    tp, paths = params.train, params.paths
    rt = setup_runtime(params)
    train_cases = load_split(paths.preprocessed_dir, "train")
    val_cases = load_split(paths.preprocessed_dir, "val")
    read_json(paths.preprocessed_dir / "manifest.json", "the case manifest")  # a clear error, not a traceback

    torch.manual_seed(params.base.seed)
    raw_model = UNet3D(params.model).to(rt.device)
    optimizer = torch.optim.Adam(raw_model.parameters(), lr=params.lr, betas=(params.beta1, params.beta2),
                                 weight_decay=params.weight_decay)
    total_steps = tp.epochs * tp.iterations_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(tp.schedule, total_steps))
    scaler = torch.amp.GradScaler("cuda", enabled=rt.precision == "fp16")
    model: torch.nn.Module = raw_model
    if rt.world > 1:
        model = DistributedDataParallel(raw_model, device_ids=[rt.device.index] if rt.device.type == "cuda" else None)
    if tp.compile:
        model = torch.compile(model)

    resume_path = paths.resume_dir / RESUME_FILE
    print_ = (lambda *a: print(*a, file=sys.stderr)) if rt.main else (lambda *a: None)
    key = fingerprint(params)
    state = None if trial else load_resume(resume_path, key, rt.main)
    start_epoch, history, best = 0, [], {"val_mean_iou": -1.0, "epoch": -1}
    best_state = None
    if state is not None:
        raw_model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        start_epoch, history, best, best_state = state["epoch"], state["history"], state["best"], state["best_state"]
        print_(f"resuming from {resume_path} after epoch {start_epoch}")

    tracker = Tracker(f"train-lr{params.lr:g}", tp.experiment, flat_params(params), tp.mlflow, tp.wandb) \
        if rt.main and not trial else None
    dataset, loader = make_loader(params, rt, train_cases)
    started, seen = time.time(), 0
    ok = False
    try:
        for epoch in range(start_epoch, tp.epochs):
            dataset.epoch = epoch
            model.train()
            losses = []
            bar = tqdm(loader, desc=f"epoch {epoch + 1}/{tp.epochs}", unit="batch", disable=not rt.main,
                       leave=False)
            t0 = time.time()
            for step, (x, y) in enumerate(bar):
                loss = forward_loss(model, x, y, tp.loss, rt.device, rt.precision)
                value = loss.detach()
                if rt.world > 1:
                    dist.all_reduce(value, op=dist.ReduceOp.AVG)
                if not torch.isfinite(value):
                    raise TrainingDiverged(
                        f"the loss became {value.item()} at epoch {epoch + 1}, iteration {step + 1}; "
                        f"the last good state is kept in {resume_path}. Lower lr (now {params.lr:g}) "
                        "or use train.precision: fp32")
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                losses.append(value.item())
                seen += x.shape[0] * rt.world
                bar.set_postfix(loss=f"{losses[-1]:.4f}",
                                patches_per_s=f"{(step + 1) * x.shape[0] * rt.world / (time.time() - t0):.1f}")
            row = {"epoch": epoch + 1, "loss": float(np.mean(losses)), "lr": scheduler.get_last_lr()[0]}
            if (epoch + 1) % tp.val_every == 0 or epoch + 1 == tp.epochs:
                if rt.main:
                    row.update(validate(raw_model, params, rt, val_cases))
                    if row["val_mean_iou"] > best["val_mean_iou"]:
                        best = {"epoch": epoch + 1, **{k: v for k, v in row.items() if k.startswith("val_")}}
                        best_state = {k: v.detach().cpu().clone() for k, v in raw_model.state_dict().items()}
                    if report is not None:
                        report(epoch + 1, row)
                if rt.world > 1:
                    dist.barrier()
            history.append(row)
            if rt.main and not trial:
                print_(f"epoch {epoch + 1}/{tp.epochs}: " +
                       ", ".join(f"{k} {v:.4g}" for k, v in row.items() if k != "epoch" and
                                 (not k.startswith("val_") or k in ("val_mean_iou", "val_iou_WT"))))
                if tracker:
                    tracker.log({k: v for k, v in row.items() if k != "epoch"}, step=epoch + 1)
                save_checkpoint(resume_path, {
                    "fingerprint": key, "epoch": epoch + 1, "model": raw_model.state_dict(),
                    "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "scaler": scaler.state_dict(), "history": history, "best": best, "best_state": best_state})
        elapsed = time.time() - started
        metrics = {"epochs": tp.epochs, "best_epoch": best["epoch"], "train_seconds": round(elapsed, 1),
                   "patches_per_s": round(seen / elapsed, 2) if seen else None,
                   "final_loss": history[-1]["loss"],
                   "best": {k.removeprefix("val_"): v for k, v in best.items() if k.startswith("val_")},
                   "lr": params.lr, "weight_decay": params.weight_decay, "beta1": params.beta1,
                   "beta2": params.beta2}
        if rt.main and not trial:
            finish(params, raw_model, best_state, best, history, metrics, tracker)
            resume_path.unlink(missing_ok=True)
        ok = True
        return metrics
    finally:
        if tracker:
            tracker.finish(ok)


def finish(params: Params, model: torch.nn.Module, best_state: dict | None, best: dict,
           history: list[dict], metrics: dict, tracker: Tracker | None) -> None:
    """Write the stage's outputs: best and last weights, metrics JSON, history CSV."""
    paths = params.paths
    last = weights_file(model.state_dict(), params, history[-1]["epoch"], {})
    chosen = weights_file(best_state, params, best["epoch"], metrics["best"]) if best_state else last
    atomic_save(chosen, paths.models_dir / WEIGHTS_FILE)
    atomic_save(last, paths.models_dir / LAST_FILE)
    write_json(paths.metrics_dir / "train.json", metrics)
    write_history(paths.metrics_dir / "train_history.csv", history)
    if tracker:
        tracker.log({f"best_{k}": v for k, v in metrics["best"].items()}, step=metrics["epochs"])
        tracker.log_file(paths.models_dir / WEIGHTS_FILE)


def main() -> None:
    params = load_params()
    try:
        metrics = train(params)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    if metrics and int(os.environ.get("RANK", "0")) == 0:
        best = metrics["best"]
        print("best epoch {}: ".format(metrics["best_epoch"]) +
              ", ".join(f"IoU {r} {best.get(f'iou_{r}', float('nan')):.3f}" for r in REGIONS))


if __name__ == "__main__":
    run_stage(main)
