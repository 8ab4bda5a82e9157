"""Metrics on hand-computable arrays, BRATS2024.md's worked examples, and MONAI as a reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from metrics import HD_MISS, dice, hd95, iou, lesion_scores, lesions, mean_scores, region_scores


def cube(shape=(64, 64, 64), at=(20, 20, 20), size=3) -> np.ndarray:
    m = np.zeros(shape, bool)
    m[at[0]:at[0] + size, at[1]:at[1] + size, at[2]:at[2] + size] = True
    return m


def test_dice_and_iou_by_hand():
    p = np.array([1, 1, 1, 0, 0], bool)
    g = np.array([0, 1, 1, 1, 0], bool)
    assert dice(p, g) == pytest.approx(2 * 2 / 6) and iou(p, g) == pytest.approx(2 / 4)
    empty = np.zeros(5, bool)
    assert dice(empty, empty) == iou(empty, empty) == 1.0
    assert dice(p, empty) == iou(empty, g) == 0.0


def test_hd95_by_hand_is_spacing_aware():
    a = cube(at=(10, 10, 10), size=4)
    b = cube(at=(12, 10, 10), size=4)          # shifted by 2 voxels along axis 0
    assert hd95(a, b, (1.0, 1.0, 1.0), percentile=100) == pytest.approx(2.0)
    assert hd95(a, b, (2.5, 1.0, 1.0), percentile=100) == pytest.approx(5.0)
    assert hd95(a, a) == 0.0
    assert hd95(a, np.zeros_like(a)) == HD_MISS and hd95(np.zeros_like(a), np.zeros_like(a)) == 0.0


@pytest.mark.parametrize("seed", range(4))
def test_hd95_agrees_with_monai(seed):
    from monai.metrics import compute_hausdorff_distance
    rng = np.random.default_rng(seed)
    spacing = tuple(rng.uniform(0.5, 2.0, 3))
    noise = lambda: rng.random((30, 31, 32)) > 0.5  # noqa: E731
    from scipy import ndimage
    a = ndimage.binary_opening(ndimage.gaussian_filter(noise().astype(float), 3) > 0.52)
    b = ndimage.binary_opening(ndimage.gaussian_filter(noise().astype(float), 3) > 0.52)
    assert a.any() and b.any()
    expected = compute_hausdorff_distance(torch.tensor(b[None, None]), torch.tensor(a[None, None]),
                                          percentile=95, spacing=list(spacing)).item()
    assert hd95(b, a, spacing) == pytest.approx(expected, rel=1e-5)


def test_worked_example_missed_lesion():
    s = lesion_scores(np.zeros((64, 64, 64), bool), cube(), "ET")
    assert s == {"lesionwise_dice": 0.0, "lesionwise_hd95": 337.0, "tp": 0, "fp": 0, "fn": 1}


def test_worked_example_false_positive():
    s = lesion_scores(cube(), np.zeros((64, 64, 64), bool), "ET")
    assert s == {"lesionwise_dice": 0.0, "lesionwise_hd95": 337.0, "tp": 0, "fp": 1, "fn": 0}


def test_worked_example_tiny_prediction_is_removed():
    s = lesion_scores(cube(size=2), np.zeros((64, 64, 64), bool), "ET")  # 8 voxels <= 10
    assert s == {"lesionwise_dice": 1.0, "lesionwise_hd95": 0.0, "tp": 0, "fp": 0, "fn": 0}


@pytest.mark.parametrize("gap, expected", [(6, 1), (7, 2)])
def test_worked_example_close_lesions_merge(gap, expected):
    gt = cube(at=(10, 20, 20)) | cube(at=(13 + gap, 20, 20))   # cubes span 3 voxels each
    assert lesions(gt, 3)[1] == expected


def test_lesionwise_by_hand_one_hit_one_miss_one_false_positive():
    gt = cube(at=(5, 5, 5)) | cube(at=(40, 40, 40))          # two lesions of 27 voxels
    pred = cube(at=(5, 5, 5)) | cube(at=(20, 50, 5))          # hits the first, plus a false positive
    s = lesion_scores(pred, gt, "WT")
    assert (s["tp"], s["fn"], s["fp"]) == (1, 1, 1)
    assert s["lesionwise_dice"] == pytest.approx((1 + 0 + 0) / 3)
    assert s["lesionwise_hd95"] == pytest.approx((0 + 337 + 337) / 3)


def test_prediction_near_but_not_on_the_lesion_is_a_hit():
    gt = cube(at=(20, 20, 20), size=4)
    pred = cube(at=(26, 20, 20), size=4)       # 2 voxels away: inside the 3-voxel dilation
    s = lesion_scores(pred, gt, "WT")
    assert (s["tp"], s["fp"], s["fn"]) == (1, 0, 0) and s["lesionwise_dice"] == 0.0
    assert s["lesionwise_hd95"] == pytest.approx(hd95(pred, gt))


def test_small_ground_truth_lesion_is_left_out():
    gt = cube(at=(10, 10, 10)) | cube(at=(40, 40, 40), size=2)   # 27 and 8 voxels
    s = lesion_scores(cube(at=(10, 10, 10)), gt, "WT")
    assert (s["tp"], s["fn"], s["fp"]) == (1, 0, 0) and s["lesionwise_dice"] == 1.0


def test_region_scores_and_means():
    gt = np.zeros((20, 20, 20), np.uint8)
    gt[5:10, 5:10, 5:10] = 2
    gt[6:9, 6:9, 6:9] = 3
    pred = gt.copy()
    pred[6:9, 6:9, 6:9] = 1                                    # ET called NETC
    s = region_scores(pred, gt, spacing=(1.0, 1.0, 1.0))
    assert s["WT"]["iou"] == 1.0 and s["TC"]["dice"] == 1.0
    assert s["ET"]["dice"] == 0.0 and s["ET"]["hd95"] == HD_MISS and s["ET"]["fn"] == 1
    assert s["RC"] == {"dice": 1.0, "iou": 1.0, "hd95": 0.0, "lesionwise_dice": 1.0, "lesionwise_hd95": 0.0,
                       "tp": 0, "fp": 0, "fn": 0}
    m = mean_scores([s, region_scores(gt, gt, spacing=(1.0, 1.0, 1.0))])
    assert m["ET"]["dice"] == 0.5 and m["ET"]["fn"] == 1 and m["WT"]["tp"] == 2
    with pytest.raises(ValueError, match="shape"):
        region_scores(pred[:-1], gt)
