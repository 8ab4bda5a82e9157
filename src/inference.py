"""Sliding-window inference over a whole (cropped, canonical) case: the one implementation that
validation, the evaluate stage and predict all use."""

from __future__ import annotations

import itertools

import numpy as np
import torch
from torch import nn

from brats import MODALITIES, PAINT, regions_to_labels
from runtime import autocast_for, memory_format


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


# The 8 flips of the three spatial axes of a (B, C, D, H, W) batch: test-time mirroring.
FLIPS: tuple[tuple[int, ...], ...] = tuple(f for k in range(4) for f in itertools.combinations((2, 3, 4), k))


def resize(probs: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
    """(R, X, Y, Z) probabilities resampled linearly to spatial `shape`, grids aligned at their outer
    edges (as src/resample.py resamples images and labels): back to a case's own grid."""
    if tuple(probs.shape[1:]) == tuple(shape):
        return probs
    return torch.nn.functional.interpolate(probs[None], size=tuple(shape), mode="trilinear",
                                           align_corners=False)[0]


def gate_enhancing(probs: torch.Tensor, regions: tuple[str, ...], image: np.ndarray | torch.Tensor,
                   min_t1c_z: float) -> torch.Tensor:
    """`probs` (R, X, Y, Z) with the enhancing tumour's probability set to 0 wherever the contrast T1 of
    `image` (the network's input: z-scored inside the head, at the training spacing), resampled to the
    probabilities' grid as they were, is not above `min_t1c_z`: enhancing tissue is brighter on the T1c
    than that. The other regions do not change, so a gated voxel stays tumour core where the core
    fires (necrosis in the label map). In place; returns `probs`."""
    if "ET" not in regions:
        return probs
    t1c = torch.as_tensor(image)[MODALITIES.index("t1c")].to(probs.device, torch.float32)
    dark = resize(t1c[None], tuple(probs.shape[1:]))[0] <= min_t1c_z
    probs[regions.index("ET")].masked_fill_(dark, 0.0)
    return probs


@torch.no_grad()
def predict_probs(model: nn.Module, image: np.ndarray | torch.Tensor, patch: tuple[int, int, int],
                  overlap: float = 0.5, batch: int = 2, mirror: bool = False,
                  precision: str = "fp32", batch_flips: bool | None = None,
                  out_shape: tuple[int, int, int] | None = None) -> torch.Tensor:
    """Region probabilities (R, X, Y, Z) float32 on the CPU for an image (C, X, Y, Z), or resampled
    to `out_shape` (a case's own grid, when the image was resampled to the training spacing).

    Windows of `patch` (smaller edges are zero-padded) are run `batch` at a time and blended with a
    Gaussian weight; `mirror` averages over the 8 flips of the three axes (on CUDA, all flips of a
    window batch in one forward pass: `_forward`). Windows go in in the device's memory format
    (runtime.memory_format); a compiled network (runtime.Compiled) always gets `batch` windows, the
    last batch filled with a repeated window. Everything stays on the model's device (logits in the autocast precision,
    float32 accumulators) and one array comes back to the host at the end. Voxels outside the head
    (zero in every modality: BraTS images are skull-stripped) get probability 0, since no tumour label
    lies there; a network can otherwise fire on the empty corners of the crop box.
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    x = torch.as_tensor(image)
    x = x.to(device, torch.float32)                                        # (C, X, Y, Z)
    shape = tuple(x.shape[1:])
    pad = [max(0, p - s) for p, s in zip(patch, shape)]
    if any(pad):  # pad at the end of each axis; cropped off again below
        x = torch.nn.functional.pad(x, [0, pad[2], 0, pad[1], 0, pad[0]])
    padded = tuple(x.shape[1:])
    starts = list(itertools.product(*(window_starts(s, p, overlap) for s, p in zip(padded, patch))))
    single = len(starts) == 1
    weight = torch.ones(patch, device=device) if single else gaussian_weight(patch).to(device)
    out, norm = None, torch.zeros(padded, device=device)
    fixed = getattr(model, "fixed_shapes", False)   # a compiled network: every forward the same shape
    for i in range(0, len(starts), batch):
        chunk = starts[i:i + batch]
        windows = [x[:, a:a + patch[0], b:b + patch[1], c:c + patch[2]] for a, b, c in chunk]
        if fixed and len(windows) < batch:      # fill a short last batch; the extra outputs are dropped
            windows += windows[-1:] * (batch - len(windows))
        windows = torch.stack(windows)
        probs = _forward(model, windows, mirror, precision, batch_flips)[:len(chunk)]   # (n, R, P, P, P) float32
        if out is None:
            out = torch.zeros((probs.shape[1], *padded), device=device)
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
    head = (x[:, : shape[0], : shape[1], : shape[2]] != 0).any(dim=0)
    probs = out[:, : shape[0], : shape[1], : shape[2]] * head
    return (resize(probs, out_shape) if out_shape else probs).cpu().contiguous()


def _forward(model: nn.Module, windows: torch.Tensor, mirror: bool, precision: str,
             batch_flips: bool | None = None) -> torch.Tensor:
    """Mean sigmoid probabilities (float32) of a window batch, over the 8 flips when mirroring.

    `batch_flips` sends all flips through the network as one batch: faster on a GPU, slower on a
    CPU (measured 1.8× slower there, from memory traffic); by default, on CUDA only."""
    flips = FLIPS if mirror else ((),)
    if batch_flips is None:
        batch_flips = windows.device.type == "cuda"
    groups = [flips] if batch_flips else [(dims,) for dims in flips]
    n, total = windows.shape[0], None
    windows_layout = memory_format(windows.device)
    for group in groups:
        stacked = torch.cat([windows.flip(dims) if dims else windows for dims in group])  # (len·n, C, P, P, P)
        with autocast_for(windows.device, precision):
            logits = model(stacked.contiguous(memory_format=windows_layout)).contiguous()
        for k, dims in enumerate(group):
            probs = torch.sigmoid(logits[k * n:(k + 1) * n].float())
            probs = probs.flip(dims) if dims else probs
            total = probs if total is None else total + probs
    return total / len(flips)


def probs_to_labels(probs: torch.Tensor, threshold: float = 0.5, paint: tuple[tuple[str, int], ...] = PAINT
                    ) -> np.ndarray:
    """(R, X, Y, Z) region probabilities -> uint8 label map, painted as `paint` (brats.PAINT) says."""
    return regions_to_labels((probs > threshold).numpy(), paint)
