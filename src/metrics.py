"""Segmentation metrics on label maps, per BraTS region. Small numpy functions on scipy.ndimage.

Voxel-wise ("legacy") metrics, with BraTS' empty-mask rule: prediction and ground truth both empty ->
Dice = IoU = 1, HD95 = 0; exactly one empty -> Dice = IoU = 0, HD95 = 337 mm (`HD_MISS`).

HD95 is the larger of the two directed 95th-percentile distances between the masks' boundary voxels,
in mm (spacing-aware), as MONAI computes it. The official BraTS code weights surface distances by
surface-element area (DeepMind's surface-distance); on blob-like lesions the two differ by well under
a voxel, but they are not identical.

Lesion-wise metric of BraTS 2024 GLI (../shared/BRATS2024.md), region by region:
  lesions are 26-connected components merged when their dilations (18-connected structuring element,
  `LESION_DILATION` iterations) touch; predicted lesions of <= `MIN_LESION_VOXELS` voxels are deleted;
  each ground-truth lesion's hits are the predicted lesions meeting its dilation; its Dice and HD95 are
  taken against the union of its hits (no hit: Dice 0, HD95 337); predicted lesions meeting no dilated
  ground-truth lesion are false positives (Dice 0, HD95 337 each); ground-truth lesions of
  <= `MIN_LESION_VOXELS` voxels are left out. Case score = sum / (N_gt + N_fp); 1 and 0 when both are 0.
  The official code's extra pass that merges touching components of different tissues is not
  reproduced: each region is scored on its own mask.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from brats import REGIONS, region_mask

HD_MISS = 337.0                                   # mm, BraTS' distance for a missed or spurious lesion
LESION_DILATION = {"ET": 3, "TC": 3, "WT": 3, "SNFH": 3, "NETC": 5, "RC": 5}
MIN_LESION_VOXELS = {"ET": 10, "TC": 20, "WT": 20, "SNFH": 20, "NETC": 20, "RC": 20}
CONNECTIVITY_26 = ndimage.generate_binary_structure(3, 3)
DILATION_18 = ndimage.generate_binary_structure(3, 2)


def dice(pred: np.ndarray, gt: np.ndarray) -> float:
    """2|P∩G| / (|P| + |G|) of two boolean masks; 1 when both are empty."""
    total = int(pred.sum()) + int(gt.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(pred, gt).sum()) / total


def iou(pred: np.ndarray, gt: np.ndarray) -> float:
    """|P∩G| / |P∪G| of two boolean masks; 1 when both are empty."""
    union = int(np.logical_or(pred, gt).sum())
    if union == 0:
        return 1.0
    return int(np.logical_and(pred, gt).sum()) / union


def _box(*masks: np.ndarray, margin: int) -> tuple[slice, ...]:
    """Bounding box of the union of `masks`, grown by `margin` voxels and clipped to the array."""
    hits = np.argwhere(np.logical_or.reduce(masks))
    lo = np.maximum(hits.min(0) - margin, 0)
    hi = np.minimum(hits.max(0) + margin + 1, masks[0].shape)
    return tuple(slice(a, b) for a, b in zip(lo, hi))


def _boundary(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def hd95(pred: np.ndarray, gt: np.ndarray, spacing: tuple[float, float, float] = (1.0, 1.0, 1.0),
         percentile: float = 95.0) -> float:
    """Symmetric `percentile` Hausdorff distance in mm between boundary voxels of two masks."""
    p_any, g_any = pred.any(), gt.any()
    if not p_any and not g_any:
        return 0.0
    if not p_any or not g_any:
        return HD_MISS
    box = _box(pred, gt, margin=1)
    p, g = _boundary(pred[box]), _boundary(gt[box])
    to_g = ndimage.distance_transform_edt(~g, sampling=spacing)[p]
    to_p = ndimage.distance_transform_edt(~p, sampling=spacing)[g]
    return float(max(np.percentile(to_g, percentile), np.percentile(to_p, percentile)))


def lesions(mask: np.ndarray, dilation: int) -> tuple[np.ndarray, int]:
    """Lesion map (0 = none, 1..n) of a mask: components whose dilations touch count as one."""
    if not mask.any():
        return np.zeros(mask.shape, np.int32), 0
    grown = ndimage.binary_dilation(mask, DILATION_18, iterations=dilation)
    merged, n = ndimage.label(grown, CONNECTIVITY_26)
    return np.where(mask, merged, 0).astype(np.int32), n


def lesion_scores(pred: np.ndarray, gt: np.ndarray, region: str,
                  spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> dict[str, float]:
    """BraTS 2024 lesion-wise Dice and HD95 of one region's masks, with lesion counts tp, fp, fn."""
    dil, smallest = LESION_DILATION[region], MIN_LESION_VOXELS[region]
    gt_lesions, n_gt = lesions(gt, dil)
    pred_lesions, n_pred = lesions(pred, dil)
    sizes = np.bincount(pred_lesions.ravel(), minlength=n_pred + 1)
    pred_lesions[np.isin(pred_lesions, np.flatnonzero(sizes <= smallest))] = 0   # tiny predictions go
    gt_sizes = np.bincount(gt_lesions.ravel(), minlength=n_gt + 1)
    hit_any = np.zeros(n_pred + 1, bool)
    dices, hds, tp, fn = [], [], 0, 0
    for i in range(1, n_gt + 1):
        box = _box(gt_lesions == i, margin=dil + 1)
        lesion = gt_lesions[box] == i
        reach = ndimage.binary_dilation(lesion, DILATION_18, iterations=dil)
        hits = np.unique(pred_lesions[box][reach])
        hits = hits[hits > 0]
        hit_any[hits] = True
        if gt_sizes[i] <= smallest:
            continue                                   # too small to score, but still shields its hits
        if hits.size:
            matched = np.isin(pred_lesions, hits)
            full = gt_lesions == i
            dices.append(dice(matched, full))
            hds.append(hd95(matched, full, spacing))
            tp += 1
        else:
            dices.append(0.0)
            hds.append(HD_MISS)
            fn += 1
    kept = np.flatnonzero(sizes > smallest)
    fp = int(np.sum(~hit_any[kept[kept > 0]]))
    n = tp + fn + fp
    if n == 0:
        return {"lesionwise_dice": 1.0, "lesionwise_hd95": 0.0, "tp": 0, "fp": 0, "fn": 0}
    return {"lesionwise_dice": float(np.sum(dices) / n), "lesionwise_hd95": float((np.sum(hds) + HD_MISS * fp) / n),
            "tp": tp, "fp": fp, "fn": fn}


def region_scores(pred_labels: np.ndarray, gt_labels: np.ndarray,
                  spacing: tuple[float, float, float] | None = None) -> dict[str, dict[str, float]]:
    """{region: {"dice", "iou"[, "hd95", lesion-wise …]}} for every BraTS 2024 region.

    Distances and lesion-wise scores are computed only when `spacing` is given (they cost more)."""
    if pred_labels.shape != gt_labels.shape:
        raise ValueError(f"prediction shape {pred_labels.shape} differs from ground truth {gt_labels.shape}")
    out = {}
    for region in REGIONS:
        p, g = region_mask(pred_labels, region), region_mask(gt_labels, region)
        out[region] = {"dice": dice(p, g), "iou": iou(p, g)}
        if spacing is not None:
            out[region]["hd95"] = hd95(p, g, spacing)
            out[region].update(lesion_scores(p, g, region, spacing))
    return out


def mean_scores(per_case: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    """Mean of each region's scores over cases (lesion counts are summed)."""
    out = {}
    for region in per_case[0]:
        out[region] = {}
        for key in per_case[0][region]:
            values = [c[region][key] for c in per_case]
            out[region][key] = int(np.sum(values)) if key in ("tp", "fp", "fn") else float(np.mean(values))
    return out
