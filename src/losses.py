"""Losses on region logits: soft Dice, Tversky, BCE, and their weighted sum.

Dice and Tversky are "batch" versions (sums over the batch and all voxels, per channel, then the mean
over channels), as nnU-Net does for large 3D patches: a patch without some region does not turn
into a noisy per-sample ratio. `SMOOTH` in numerator and denominator gives an empty target with an
empty prediction a perfect score (loss 0) instead of 0/0.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from params import LossParams

SMOOTH = 1e-5


def _sums(probs: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-channel true positives, false positives, false negatives over batch and space."""
    axes = [0, *range(2, probs.ndim)]
    tp = (probs * target).sum(axes)
    fp = (probs * (1 - target)).sum(axes)
    fn = ((1 - probs) * target).sum(axes)
    return tp, fp, fn


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - mean over channels of (2 TP + s) / (2 TP + FP + FN + s), on sigmoid probabilities."""
    tp, fp, fn = _sums(torch.sigmoid(logits.float()), target.float())
    return 1 - ((2 * tp + SMOOTH) / (2 * tp + fp + fn + SMOOTH)).mean()


def tversky_loss(logits: torch.Tensor, target: torch.Tensor, alpha: float = 0.4,
                 beta: float = 0.6) -> torch.Tensor:
    """1 - mean over channels of (TP + s) / (TP + alpha FP + beta FN + s); beta > alpha favours recall."""
    tp, fp, fn = _sums(torch.sigmoid(logits.float()), target.float())
    return 1 - ((tp + SMOOTH) / (tp + alpha * fp + beta * fn + SMOOTH)).mean()


def bce_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits.float(), target.float())


def combined_loss(logits: torch.Tensor, target: torch.Tensor, w: LossParams) -> torch.Tensor:
    """The weighted sum chosen in params; terms with weight 0 are not computed."""
    total = logits.new_zeros((), dtype=torch.float32)
    if w.dice:
        total = total + w.dice * soft_dice_loss(logits, target)
    if w.tversky:
        total = total + w.tversky * tversky_loss(logits, target, w.tversky_alpha, w.tversky_beta)
    if w.bce:
        total = total + w.bce * bce_loss(logits, target)
    return total


def deep_supervision_loss(outputs: list[torch.Tensor], target: torch.Tensor, w: LossParams) -> torch.Tensor:
    """Loss over decoder outputs at full, 1/2, 1/4… resolution, weighted 1, 1/2, 1/4… and normalised.
    Targets are downsampled by max-pooling, so a small lesion stays visible at coarse levels."""
    weights = [0.5 ** i for i in range(len(outputs))]
    total = outputs[0].new_zeros((), dtype=torch.float32)
    level_target = target.float()
    for weight, logits in zip(weights, outputs):
        if level_target.shape[2:] != logits.shape[2:]:
            level_target = F.adaptive_max_pool3d(target.float(), logits.shape[2:])
        total = total + weight * combined_loss(logits, level_target, w)
    return total / sum(weights)
