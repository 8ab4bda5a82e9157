"""Losses against values worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from losses import bce_loss, combined_loss, deep_supervision_loss, soft_dice_loss, tversky_loss
from params import LossParams

BIG = 30.0  # sigmoid(±30) is 0 or 1 to float precision


def one_of_four() -> tuple[torch.Tensor, torch.Tensor]:
    """Logits 0 (p = 0.5) on 4 voxels, target 1 on one of them: TP 0.5, FP 1.5, FN 0.5."""
    target = torch.tensor([1.0, 0, 0, 0]).reshape(1, 1, 4, 1, 1)
    return torch.zeros_like(target), target


def test_dice_by_hand():
    logits, target = one_of_four()
    # 1 - 2·0.5 / (2·0.5 + 1.5 + 0.5) = 1 - 1/3
    assert soft_dice_loss(logits, target).item() == pytest.approx(2 / 3, abs=1e-5)


def test_dice_perfect_disjoint_and_empty():
    target = torch.tensor([1.0, 1, 0, 0]).reshape(1, 1, 4, 1, 1)
    assert soft_dice_loss((target * 2 - 1) * BIG, target).item() == pytest.approx(0, abs=1e-5)
    assert soft_dice_loss((1 - target * 2) * BIG, target).item() == pytest.approx(1, abs=1e-5)
    empty = torch.zeros(1, 1, 4, 1, 1)
    assert soft_dice_loss(torch.full_like(empty, -BIG), empty).item() == pytest.approx(0, abs=1e-5)
    assert soft_dice_loss(torch.full_like(empty, BIG), empty).item() == pytest.approx(1, abs=1e-5)


def test_dice_averages_channels():
    target = torch.zeros(1, 2, 4, 1, 1)
    target[0, 0, :2] = 1                       # channel 0 predicted perfectly, channel 1 empty but all predicted
    logits = torch.full_like(target, -BIG)
    logits[0, 0, :2] = BIG
    logits[0, 1] = BIG
    assert soft_dice_loss(logits, target).item() == pytest.approx(0.5, abs=1e-5)


def test_tversky_by_hand_and_equal_to_dice_at_half_half():
    logits, target = one_of_four()
    # 1 - 0.5 / (0.5 + 0.4·1.5 + 0.6·0.5) = 1 - 0.5/1.4
    assert tversky_loss(logits, target).item() == pytest.approx(1 - 0.5 / 1.4, abs=1e-5)
    x = torch.randn(2, 3, 5, 6, 7)
    y = (torch.rand(2, 3, 5, 6, 7) > 0.7).float()
    assert tversky_loss(x, y, 0.5, 0.5).item() == pytest.approx(soft_dice_loss(x, y).item(), abs=1e-6)


def test_tversky_punishes_misses_more_than_false_alarms():
    target = torch.tensor([1.0, 1, 0, 0]).reshape(1, 1, 4, 1, 1)
    miss = torch.tensor([BIG, -BIG, -BIG, -BIG]).reshape(1, 1, 4, 1, 1)       # 1 FN
    alarm = torch.tensor([BIG, BIG, BIG, -BIG]).reshape(1, 1, 4, 1, 1)       # 1 FP
    assert tversky_loss(miss, target) > tversky_loss(alarm, target)


def test_bce_by_hand():
    logits, target = one_of_four()
    assert bce_loss(logits, target).item() == pytest.approx(math.log(2), abs=1e-6)
    two = torch.tensor([2.0]).reshape(1, 1, 1, 1, 1)
    assert bce_loss(two, torch.ones_like(two)).item() == pytest.approx(math.log(1 + math.exp(-2)), abs=1e-6)


def test_weighted_sum():
    logits, target = one_of_four()
    w = LossParams(dice=2.0, tversky=0.5, bce=3.0, tversky_alpha=0.4, tversky_beta=0.6)
    expected = 2 * (2 / 3) + 0.5 * (1 - 0.5 / 1.4) + 3 * math.log(2)
    assert combined_loss(logits, target, w).item() == pytest.approx(expected, abs=1e-5)


def test_deep_supervision_of_equal_levels_equals_the_plain_loss():
    # logits 0 against an all-ones target give the same Dice (2/3) and BCE (ln 2) at every resolution
    target = torch.ones(1, 2, 8, 8, 8, dtype=torch.bool)
    outs = [torch.zeros(1, 2, 8, 8, 8), torch.zeros(1, 2, 4, 4, 4), torch.zeros(1, 2, 2, 2, 2)]
    w = LossParams(dice=1.0, tversky=0.0, bce=1.0, tversky_alpha=0.4, tversky_beta=0.6)
    assert deep_supervision_loss(outs, target, w).item() == pytest.approx(1 / 3 + math.log(2), abs=1e-5)


def test_deep_supervision_keeps_small_lesions_at_coarse_levels():
    target = torch.zeros(1, 1, 8, 8, 8, dtype=torch.bool)
    target[0, 0, 3, 3, 3] = True                            # one voxel
    hit_coarse = [torch.full((1, 1, 8, 8, 8), -BIG), torch.full((1, 1, 4, 4, 4), -BIG)]
    hit_coarse[0][0, 0, 3, 3, 3] = BIG
    hit_coarse[1][0, 0, 1, 1, 1] = BIG                      # the max-pooled target has it here
    w = LossParams(dice=1.0, tversky=0.0, bce=0.0, tversky_alpha=0.4, tversky_beta=0.6)
    assert deep_supervision_loss(hit_coarse, target, w).item() == pytest.approx(0, abs=1e-4)
