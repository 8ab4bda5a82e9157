"""Sliding-window inference over a whole (cropped, canonical) case: the one implementation that
validation, the evaluate stage and predict all use."""

from __future__ import annotations

import itertools
from contextlib import nullcontext

import numpy as np
import torch
from torch import nn

from brats import regions_to_labels


def window_starts(size: int, patch: int, overlap: float) -> list[int]:
    """Evenly spaced window starts covering [0, size) with windows of `patch` overlapping by at least
    `overlap` (nnU-Net's rule); one window when the case fits."""
    if size <= patch:
        return [0]
    step = patch * (1 - overlap)
    n = int(np.ceil((size - patch) / step)) + 1
    return [int(round(i * (size - patch) / (n - 1))) for i in range(n)]


def gaussian_weight(patch: tuple[int, int, int], sigma_scale: float = 1 / 8) -> torch.Tensor:
    """Importance map peaking at the window centre (σ = patch/8), so window edges count least."""
    axes = []
    for p in patch:
        x = torch.arange(p, dtype=torch.float64) - (p - 1) / 2
        axes.append(torch.exp(-0.5 * (x / (p * sigma_scale)) ** 2))
    w = axes[0][:, None, None] * axes[1][None, :, None] * axes[2][None, None, :]
    w = w / w.max()
    return w.clamp_min(w[w > 0].min()).float()  # never zero: every voxel gets a weight


def autocast_for(device: torch.device, precision: str):
    """Autocast context for `precision` (bf16/fp16) on CUDA; fp32 and CPU run without it."""
    if device.type != "cuda" or precision == "fp32":
        return nullcontext()
    return torch.autocast("cuda", dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


@torch.no_grad()
def predict_probs(model: nn.Module, image: np.ndarray | torch.Tensor, patch: tuple[int, int, int],
                  overlap: float = 0.5, batch: int = 2, mirror: bool = False,
                  precision: str = "fp32") -> torch.Tensor:
    """Region probabilities (R, X, Y, Z) float32 on the CPU for an image (C, X, Y, Z).

    Windows of `patch` (smaller edges are zero-padded) are run `batch` at a time and blended with a
    Gaussian weight; `mirror` averages over the 8 flips of the three axes. Voxels outside the head
    (zero in every modality: BraTS images are skull-stripped) get probability 0, since no tumour label
    lies there; a network can otherwise fire on the empty corners of the crop box.
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    x = torch.as_tensor(np.array(image) if isinstance(image, np.memmap) else image).float()
    shape = tuple(x.shape[1:])
    pad = [max(0, p - s) for p, s in zip(patch, shape)]
    if any(pad):  # pad at the end of each axis; cropped off again below
        x = torch.nn.functional.pad(x, [0, pad[2], 0, pad[1], 0, pad[0]])
    padded = tuple(x.shape[1:])
    starts = list(itertools.product(*(window_starts(s, p, overlap) for s, p in zip(padded, patch))))
    single = len(starts) == 1
    weight = torch.ones(patch) if single else gaussian_weight(patch)
    out, norm = None, torch.zeros(padded)
    x = x.to(device)
    for i in range(0, len(starts), batch):
        chunk = starts[i:i + batch]
        windows = torch.stack([x[:, a:a + patch[0], b:b + patch[1], c:c + patch[2]] for a, b, c in chunk])
        probs = _forward(model, windows, mirror, precision).cpu()        # (n, R, P, P, P)
        if out is None:
            out = torch.zeros((probs.shape[1], *padded))
        for (a, b, c), p in zip(chunk, probs):
            region = (slice(a, a + patch[0]), slice(b, b + patch[1]), slice(c, c + patch[2]))
            if single:
                out[(slice(None), *region)] = p  # one window: exactly the plain forward pass
            else:
                out[(slice(None), *region)] += p * weight
                norm[region] += weight
    if not single:
        out /= norm
    model.train(was_training)
    out = out[:, : shape[0], : shape[1], : shape[2]]
    head = (x[:, : shape[0], : shape[1], : shape[2]] != 0).any(dim=0).cpu()
    return (out * head).contiguous()


def _forward(model: nn.Module, windows: torch.Tensor, mirror: bool, precision: str) -> torch.Tensor:
    with autocast_for(windows.device, precision):
        flips = [()] if not mirror else [f for k in range(4) for f in itertools.combinations((2, 3, 4), k)]
        total = None
        for dims in flips:
            logits = model(windows.flip(dims) if dims else windows)
            probs = torch.sigmoid(logits.float())
            probs = probs.flip(dims) if dims else probs
            total = probs if total is None else total + probs
    return total / len(flips)


def probs_to_labels(probs: torch.Tensor, threshold: float = 0.5) -> np.ndarray:
    """(R, X, Y, Z) region probabilities -> uint8 label map, painted as brats.PAINT says."""
    return regions_to_labels((probs > threshold).numpy())
