"""The training loop that the train and tune stages share: network, data and optimizer in, history out.

`build` makes the parts of a run from params (network seeded by `train.seed`, Adam, the lr schedule,
the patch loader); `fit` runs epochs over them, validates every `train.val_every` epochs (and at the
last), keeps the best state by validation mean IoU, and calls `on_epoch` after each epoch. Resuming,
tracking and writing outputs belong to the train stage; the study belongs to the tune stage.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from augment import collate, to_batch
from brats import labels_to_regions
from dataset import PatchDataset
from errors import UserError
from files import file_sha256
from inference import predict_probs, probs_to_labels
from layout import MANIFEST_FILE, open_case
from losses import combined_loss, deep_supervision_loss
from metrics import mean_scores, region_scores
from model import UNet3D
from params import ROOT, LossParams, Params, flat_params
from runtime import Runtime, autocast_for, compile_errors, memory_format
from weights import folder_hint, load_state, read


class TrainingDiverged(UserError):
    """The loss became NaN or infinite."""


@dataclass
class Parts:
    """What one training run works on."""
    model: torch.nn.Module      # the network itself: its state dict is what gets saved
    step_model: torch.nn.Module  # what the training step calls: the network, wrapped in DDP / compiled
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    dataset: PatchDataset
    loader: DataLoader


@dataclass
class FitState:
    """Where a run stands after `epoch` epochs; the train stage checkpoints it to resume."""
    epoch: int = 0
    history: list[dict] = field(default_factory=list)   # one row per epoch
    best: dict = field(default_factory=lambda: {"val_mean_iou": -1.0, "epoch": -1})
    best_state: dict | None = None                       # network tensors of the best epoch (CPU)


# Params that cannot change the weights: a checkpoint stays resumable, a study stays the same study.
# (train.folds: a fold's own cases are hashed instead, so a fold keeps its checkpoint when K changes
# but its cases do not.)
NOT_IN_FINGERPRINT = ("train.folds", "train.workers", "train.mlflow", "train.mlflow_log_model", "train.mlflow_model_name",
                      "train.wandb", "train.experiment")


def fingerprint(params: Params, train_cases: list[str], val_cases: list[str]) -> str:
    """Identifies a training run's inputs: the params that shape the weights, the data (manifest) and
    the cases it trains and validates on."""
    pre = params.paths.preprocessed_dir
    relevant = {k: v for k, v in flat_params(params).items() if k not in NOT_IN_FINGERPRINT}
    relevant["cases"] = {"train": sorted(train_cases), "val": sorted(val_cases)}
    digest = hashlib.sha256(json.dumps(relevant, sort_keys=True).encode())
    try:
        digest.update((pre / MANIFEST_FILE).read_bytes())
    except FileNotFoundError:
        raise UserError(f"{pre / MANIFEST_FILE} not found: run `dvc repro preprocess` first") from None
    init = init_weights(params)
    if init is not None and init.exists():
        digest.update(file_sha256(init).encode())
    return digest.hexdigest()


def init_weights(params: Params) -> Path | None:
    """The weights file training starts from (`train.init_weights`, relative to the repository), or None."""
    if not params.train.init_weights:
        return None
    path = Path(params.train.init_weights)
    return path if path.is_absolute() else ROOT / path


def lr_lambda(schedule: str, total_steps: int) -> Callable[[int], float]:
    if schedule == "poly":
        return lambda step: (1 - min(step, total_steps) / total_steps) ** 0.9
    if schedule == "cosine":
        return lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / total_steps))
    return lambda step: 1.0


def make_loader(params: Params, rt: Runtime, cases: list[str]) -> tuple[PatchDataset, DataLoader]:
    tp = params.train
    per_epoch = tp.iterations_per_epoch * tp.batch_size * rt.world
    dataset = PatchDataset(params.paths.preprocessed_dir, cases, tp.patch, per_epoch, tp.foreground_fraction,
                           tp.augment, tp.seed, tp.modality_dropout)
    # rank r takes batch slots r, r + world, …: disjoint samples, the same ones after a resume
    mine = [i for i in range(per_epoch) if (i // tp.batch_size) % rt.world == rt.rank]
    loader = DataLoader(Subset(dataset, mine), batch_size=tp.batch_size, shuffle=False, collate_fn=collate,
                        num_workers=tp.workers, pin_memory=rt.device.type == "cuda", drop_last=True,
                        persistent_workers=False)
    return dataset, loader


def batches(loader: DataLoader):
    """The loader's batches. A UserError raised in a worker process (a damaged case file) reaches
    this process wrapped in the worker's traceback; it is raised again as the one line it was."""
    try:
        yield from loader
    except UserError as e:
        lines = [line for line in str(e).splitlines() if line.strip()]
        raise UserError(lines[-1].split("UserError: ", 1)[-1] if lines else str(e)) from None


def build(params: Params, rt: Runtime, train_cases: list[str]) -> Parts:
    """Network (seeded by train.seed), Adam with the resolved lr/betas/decay, schedule, loader."""
    tp = params.train
    torch.manual_seed(tp.seed)
    model = UNet3D(params.model)
    if tp.init_weights:
        start_from(model, params)
    model = model.to(rt.device, memory_format=memory_format(rt.device))
    optimizer = torch.optim.Adam(model.parameters(), lr=params.lr, betas=(params.beta1, params.beta2),
                                 weight_decay=params.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer,
                                                  lr_lambda(tp.schedule, tp.epochs * tp.iterations_per_epoch))
    scaler = torch.amp.GradScaler("cuda", enabled=rt.precision == "fp16")
    step_model: torch.nn.Module = model
    if rt.world > 1:
        step_model = DistributedDataParallel(model, device_ids=[rt.device.index] if rt.device.type == "cuda" else None)
    if tp.compile:
        step_model = torch.compile(step_model)
    dataset, loader = make_loader(params, rt, train_cases)
    return Parts(model, step_model, optimizer, scheduler, scaler, dataset, loader)


def start_from(model: torch.nn.Module, params: Params) -> None:
    """Load `train.init_weights` (a weights file of the same network, e.g. trained on the synthetic
    set) into `model`: fine-tuning instead of a random start."""
    path = init_weights(params)
    if path.is_dir():
        raise UserError(f"train.init_weights: {path} is a folder, not a weights file: {folder_hint(path)}")
    if not path.is_file():
        raise UserError(f"train.init_weights: {path} not found; give a weights file of this project "
                        "(`dvc pull` it if it is DVC-tracked), or \"\" for a random start")
    saved = read(path)
    if saved["model"] != dataclasses.asdict(params.model):
        raise UserError(f"train.init_weights: {path} holds a network of {saved['model']}, but model in params.yaml "
                        f"is {dataclasses.asdict(params.model)}; start from weights of the same network")
    load_state(model, saved["state_dict"], path, "train.init_weights")


def forward_loss(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, loss: LossParams,
                 device: torch.device, precision: str) -> torch.Tensor:
    """One batch's loss: images (B, 4, P, P, P) and labels (B, P, P, P) in, scalar out."""
    x = x.to(device, non_blocking=True, memory_format=memory_format(device))
    target = labels_to_regions(y.to(device, non_blocking=True)).transpose(0, 1)  # (B, R, P, P, P) bool
    with autocast_for(device, precision):
        out = model(x)
    return deep_supervision_loss(out, target, loss) if isinstance(out, list) else combined_loss(out, target, loss)


def validate(model: torch.nn.Module, params: Params, rt: Runtime, cases: list[str]) -> dict[str, float]:
    """Sliding-window prediction of each validation case; mean Dice and IoU per region."""
    tp = params.train
    scores = []
    for case in cases:
        image, label = open_case(params.paths.preprocessed_dir, case)
        probs = predict_probs(model, image.read(), tp.patch, tp.val_overlap, tp.val_batch, precision=rt.precision)
        scores.append(region_scores(probs_to_labels(probs), label.read()))
    mean = mean_scores(scores)
    flat = {f"val_{k}_{region}": v for region, s in mean.items() for k, v in s.items()}
    flat["val_mean_iou"] = float(np.mean([s["iou"] for s in mean.values()]))
    flat["val_mean_dice"] = float(np.mean([s["dice"] for s in mean.values()]))
    return flat


def fit(parts: Parts, params: Params, rt: Runtime, val_cases: list[str], state: FitState,
        on_epoch: Callable[[FitState, dict], None]) -> FitState:
    """Train from `state.epoch` to `train.epochs`; `on_epoch(state, row)` after each epoch."""
    tp = params.train
    for epoch in range(state.epoch, tp.epochs):
        parts.dataset.epoch = epoch
        parts.step_model.train()
        losses = []
        bar = tqdm(batches(parts.loader), total=len(parts.loader), desc=f"epoch {epoch + 1}/{tp.epochs}",
                   unit="batch", disable=not rt.main, leave=False)
        t0 = time.time()
        for step, batch in enumerate(bar):
            x, y = to_batch(batch, rt.device, tp.patch)     # augmented on the device (src/augment.py)
            with compile_errors("train.compile" if tp.compile else None):
                loss = forward_loss(parts.step_model, x, y, tp.loss, rt.device, rt.precision)
            value = loss.detach()
            if rt.world > 1:
                dist.all_reduce(value, op=dist.ReduceOp.AVG)
            if not torch.isfinite(value):
                raise TrainingDiverged(f"the loss became {value.item()} at epoch {epoch + 1}, iteration "
                                       f"{step + 1}. Lower lr (now {params.lr:g}) or use train.precision: fp32")
            parts.optimizer.zero_grad(set_to_none=True)
            with compile_errors("train.compile" if tp.compile else None):
                parts.scaler.scale(loss).backward()
            parts.scaler.step(parts.optimizer)
            parts.scaler.update()
            parts.scheduler.step()
            losses.append(value.item())
            bar.set_postfix(loss=f"{losses[-1]:.4f}",
                            patches_per_s=f"{(step + 1) * x.shape[0] * rt.world / (time.time() - t0):.1f}")
        seconds = time.time() - t0       # the epoch's steps and their loading, not its validation
        row = {"epoch": epoch + 1, "loss": float(np.mean(losses)), "lr": parts.scheduler.get_last_lr()[0],
               "patches_per_s": len(losses) * tp.batch_size * rt.world / seconds}
        if (epoch + 1) % tp.val_every == 0 or epoch + 1 == tp.epochs:
            if rt.main:
                row.update(validate(parts.model, params, rt, val_cases))
                if row["val_mean_iou"] > state.best["val_mean_iou"]:
                    state.best = {"epoch": epoch + 1, **{k: v for k, v in row.items() if k.startswith("val_")}}
                    state.best_state = {k: v.detach().cpu().clone() for k, v in parts.model.state_dict().items()}
            if rt.world > 1:
                dist.barrier()
        state.history.append(row)
        state.epoch = epoch + 1
        on_epoch(state, row)
    return state
