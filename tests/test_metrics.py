"""Metrics on hand-computable arrays, BRATS2024.md's worked examples, and MONAI as a reference."""

from __future__ import annotations

import numpy as np
import pytest

from metrics import (HD_MISS, dice, hd95, iou, lesion_scores, lesions, mean_scores, merge_across_tissues,
                     merge_touching, region_scores, surfel_areas, touching_pairs)


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


def blobs(seed: int, shape=(30, 31, 32)) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """Two random smooth blobs and a random anisotropic spacing."""
    from scipy import ndimage
    rng = np.random.default_rng(seed)
    spacing = tuple(float(v) for v in rng.uniform(0.5, 2.0, 3))
    a, b = (ndimage.binary_opening(ndimage.gaussian_filter((rng.random(shape) > 0.5).astype(float), 3) > 0.52)
            for _ in range(2))
    assert a.any() and b.any()
    return a, b, spacing


def official_hd95(gt: np.ndarray, pred: np.ndarray, spacing, allow_label_maps: bool = False) -> float:
    """HD95 by DeepMind's surface-distance, the library the official BraTS scorer calls."""
    import surface_distance
    from surface_distance import metrics as sd_metrics
    check = sd_metrics._assert_is_bool_numpy_array
    if allow_label_maps:   # the official scorer's pinned version accepted the lesion-numbered maps
        sd_metrics._assert_is_bool_numpy_array = lambda name, array: None
    try:
        return surface_distance.compute_robust_hausdorff(
            surface_distance.compute_surface_distances(gt, pred, spacing), 95)
    finally:
        sd_metrics._assert_is_bool_numpy_array = check


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (0.7, 1.3, 2.1), (2.0, 0.5, 1.0)])
def test_surface_element_table_is_the_official_one(spacing):
    from surface_distance import lookup_tables
    np.testing.assert_allclose(surfel_areas(spacing),
                               lookup_tables.create_table_neighbour_code_to_surface_area(spacing),
                               rtol=0, atol=1e-12)


@pytest.mark.parametrize("seed", range(4))
def test_hd95_agrees_with_the_official_library(seed):
    a, b, spacing = blobs(seed)
    assert hd95(b, a, spacing) == pytest.approx(official_hd95(a, b, spacing), rel=1e-12)


@pytest.mark.parametrize("inner, expected", [(8, 2 ** 0.5), (38, 1.0)])
def test_hd95_of_a_box_grown_by_one_voxel_by_hand(inner, expected):
    # Surface elements of a box of n voxels: 6 (n-1)^2 face squares (1 mm^2), 12 (n-1) edge quads
    # (0.707 mm^2), 8 corner triangles (0.217 mm^2). From the grown box (n = inner + 2) to the inner one,
    # faces are 1 mm away and edges sqrt(2) mm (a few at the ends sqrt(3)); from the inner box out,
    # everything is 1 mm away. Faces hold 86 % of the grown surface for n = 10 (so the 95th percentile
    # falls on an edge: sqrt(2)) and 96.5 % for n = 40 (so it is 1).
    a = cube(at=(10, 10, 10), size=inner)
    b = cube(at=(9, 9, 9), size=inner + 2)
    assert hd95(a, b) == pytest.approx(expected) and hd95(b, a) == pytest.approx(expected)


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


# --- the official scorer's remaining rules (../shared/BRATS2024.md rules 9 and 10) ------------------

def labels_of(**parts: np.ndarray) -> np.ndarray:
    """A label map from boolean masks named after their label: NETC=1, SNFH=2, ET=3, RC=4."""
    out = np.zeros(next(iter(parts.values())).shape, np.uint8)
    for name, mask in parts.items():
        out[mask] = {"NETC": 1, "SNFH": 2, "ET": 3, "RC": 4}[name]
    return out


def test_rule_9_legacy_scores_use_the_filtered_prediction():
    five = np.zeros((64, 64, 64), bool)
    five[30, 30, 30:35] = True                                  # the only ET: 5 voxels
    gt = labels_of(ET=five)
    s = region_scores(gt.copy(), gt, spacing=(1.0, 1.0, 1.0))   # a perfect prediction
    # the official code deletes the 5-voxel predicted lesion (<= 10) before the whole-mask Dice/HD95
    assert s["ET"]["dice"] == 0.0 and s["ET"]["hd95"] == HD_MISS
    assert s["ET"]["iou"] == 1.0                                # the plain voxel IoU is untouched
    # the 5-voxel ground-truth lesion is left out of the lesion-wise score, and nothing else is there
    assert (s["ET"]["lesionwise_dice"], s["ET"]["tp"], s["ET"]["fp"], s["ET"]["fn"]) == (1.0, 0, 0, 0)
    big = labels_of(ET=cube())                                  # 27 voxels: kept, perfect
    assert region_scores(big, big, spacing=(1.0, 1.0, 1.0))["ET"]["dice"] == 1.0


def two_et_cubes_and_a_netc_bar() -> dict[str, np.ndarray]:
    """Two 3×3×3 ET cubes 15 voxels apart (too far for rule 2's 3 dilations), with one NETC bar
    between them that touches both."""
    et_a, et_b = cube(at=(10, 20, 20)), cube(at=(28, 20, 20))   # x 10..12 and 28..30: gap 15
    netc = np.zeros((64, 64, 64), bool)
    netc[13:28, 20:23, 20:23] = True                            # x 13..27, flush with both cubes
    return {"a": et_a, "b": et_b, "netc": netc}


def test_rule_10_et_lesions_touching_one_netc_lesion_are_one_lesion():
    c = two_et_cubes_and_a_netc_bar()
    gt = labels_of(ET=c["a"] | c["b"], NETC=c["netc"])
    pred = labels_of(ET=c["a"], NETC=c["netc"])                 # finds one of the two cubes
    assert lesions(c["a"] | c["b"], 3)[1] == 2                  # rule 2 alone keeps them apart
    s = region_scores(pred, gt, spacing=(1.0, 1.0, 1.0))["ET"]
    # one ground-truth ET lesion of 54 voxels, hit by the 27-voxel prediction: Dice 2·27/(54+27)
    assert (s["tp"], s["fn"], s["fp"]) == (1, 0, 0)
    assert s["lesionwise_dice"] == pytest.approx(2 * 27 / 81)
    # scored without rule 10 (ET on its own), the same maps give two lesions, one missed: (1 + 0) / 2
    alone = lesion_scores(c["a"], c["a"] | c["b"], "ET")
    assert (alone["tp"], alone["fn"], alone["lesionwise_dice"]) == (1, 1, 0.5)


def test_rule_10_a_single_touching_pair_merges_nothing():
    c = two_et_cubes_and_a_netc_bar()
    netc_a = np.zeros((64, 64, 64), bool)
    netc_a[13:16, 20:23, 20:23] = True                          # touches cube a only
    gt = labels_of(ET=c["a"] | c["b"], NETC=netc_a)
    s = region_scores(labels_of(ET=c["a"], NETC=netc_a), gt, spacing=(1.0, 1.0, 1.0))["ET"]
    assert (s["tp"], s["fn"]) == (1, 1)


def test_rule_10_a_lesion_touching_several_joins_the_lowest_numbered_group():
    # a-lesions 1, 2, 3 along one row; b-lesions 1 and 2 in the row below. a1 touches b1 and b2, a2 and a3
    # touch b2 only: a1 joins b1's group, a2 and a3 become one lesion -> two a-lesions remain.
    a = np.zeros((3, 12), np.int32)
    b = np.zeros((3, 12), np.int32)
    a[0, 0:2], a[0, 5:7], a[0, 9:11] = 1, 2, 3
    b[1, 0], b[1, 2:11] = 1, 2
    merged = merge_touching(a[..., None], b[..., None])[..., 0]
    assert touching_pairs(a[..., None], b[..., None]) == {(1, 1), (1, 2), (2, 2), (3, 2)}
    assert merged[0, 0] != merged[0, 5] and merged[0, 5] == merged[0, 9]
    assert len(np.unique(merged[merged > 0])) == 2
    # diagonal neighbours across an edge touch (18-connectivity); across a corner, or two apart, not
    x, y = np.zeros((4, 4, 4), np.int32), np.zeros((4, 4, 4), np.int32)
    x[0, 0, 0] = 1
    for at, touching in (((1, 1, 0), True), ((1, 1, 1), False), ((2, 0, 0), False)):
        y[:] = 0
        y[at] = 1
        assert touching_pairs(x, y) == ({(1, 1)} if touching else set()), at


def test_rule_10_leaves_wt_and_tc_alone_and_renumbers():
    maps = {r: np.zeros((8, 8, 8), np.int32) for r in ("WT", "TC", "NETC", "SNFH", "ET", "RC")}
    maps["ET"][0, 0, 0], maps["ET"][0, 0, 4] = 1, 2
    maps["NETC"][0, 0, 1:4] = 1                                 # touches both ET voxels
    maps["WT"][0, 0, 0], maps["WT"][0, 0, 4] = 1, 2
    out = merge_across_tissues(maps)
    assert set(np.unique(out["ET"])) == {0, 1}                  # one lesion, numbered 1
    assert out["WT"] is maps["WT"] and out["TC"] is maps["TC"]


def test_small_ground_truth_lesion_is_judged_by_volume_in_mm3():
    # 3 voxels at 2 mm are 24 mm^3 > 10: scored (and missed); at 1 mm, 3 mm^3: left out
    gt = np.zeros((32, 32, 32), bool)
    gt[10, 10, 10:13] = True
    empty = np.zeros_like(gt)
    assert lesion_scores(empty, gt, "ET", spacing=(2.0, 2.0, 2.0))["fn"] == 1
    assert lesion_scores(empty, gt, "ET", spacing=(1.0, 1.0, 1.0))["fn"] == 0


def test_rule_11_the_label_map_quirk_is_an_option_that_matches_the_official_code():
    # WT: a 2x2x2 lesion first in scan order (numbered 1), then a 12^3 block (numbered 2); the
    # prediction is the block alone. On masks the small lesion is under 2 % of the ground truth's
    # surface, so HD95 is 0. The official code takes surfaces of the numbered map, where the inside of
    # lesion 2 counts as surface: its HD95 reaches into the block.
    gt = labels_of(SNFH=cube(at=(5, 5, 5), size=2) | cube(at=(30, 30, 30), size=12))
    pred = labels_of(SNFH=cube(at=(30, 30, 30), size=12))
    plain = region_scores(pred, gt, spacing=(1.0, 1.0, 1.0))["WT"]["hd95"]
    quirk = region_scores(pred, gt, spacing=(1.0, 1.0, 1.0), label_map_quirk=True)["WT"]["hd95"]
    gt_map, pred_map = lesions(gt > 0, 3)[0], lesions(pred > 0, 3)[0]
    assert gt_map.max() == 2 and pred_map.max() == 1
    assert plain == official_hd95(gt_map > 0, pred_map > 0, (1.0, 1.0, 1.0)) == 0.0
    assert quirk == pytest.approx(official_hd95(gt_map, pred_map, (1.0, 1.0, 1.0), allow_label_maps=True))
    assert quirk > 2.0
