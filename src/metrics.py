"""Segmentation metrics on label maps, per BraTS region. Small numpy functions on scipy.ndimage.

Voxel-wise metrics, with BraTS' empty-mask rule: prediction and ground truth both empty ->
Dice = IoU = 1, HD95 = 0; exactly one empty -> Dice = IoU = 0, HD95 = 337 mm (`HD_MISS`).
`iou` (the project's headline) is the plain voxel IoU of the prediction as written. `dice` and `hd95`
are the official "legacy" values, which the official code computes on the prediction *after*
deleting its small lesions (rule 9 of ../shared/BRATS2024.md): a ground truth whose only ET is a
5-voxel blob scores ET Dice 0 against a perfect prediction, while its IoU is 1.

HD95 is computed as the official code computes it (DeepMind's surface-distance): the surface is made
of the elements that cross each 2×2×2 voxel neighbourhood, each weighted by its area in mm²
(`surfels.TABLE`, spacing-aware); the larger of the two directed distances below which 95 % of the
surface area lies.

Lesion-wise metric of BraTS 2024 GLI (../shared/BRATS2024.md), one function per rule:
  `lesions` (rule 2): 26-connected components, merged when their dilations (18-connected structuring
  element, `LESION_DILATION` iterations) touch; `drop_small_lesions` (rule 3): predicted lesions of
  <= `MIN_LESION_VOXELS` voxels are deleted before anything else; `merge_across_tissues` (rule 10):
  lesions of NETC, SNFH, ET or RC that touch the same lesion of another of these tissues become one;
  `lesionwise` (rules 4-7): each ground-truth lesion's hits are the predicted lesions meeting its
  dilation, its Dice and HD95 are taken against the union of its hits (no hit: Dice 0, HD95 337);
  predicted lesions meeting no dilated ground-truth lesion are false positives (Dice 0, HD95 337
  each); ground-truth lesions of volume <= `MIN_LESION_VOXELS` mm^3 are left out. Case score =
  sum / (N_gt + N_fp); 1 and 0 when both are 0.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from scipy import ndimage

from brats import REGIONS, region_mask
from geometry import bounding_box, crop
from surfels import TABLE

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
    """Slices of the bounding box of the union of non-empty `masks`, grown by `margin` voxels."""
    box = bounding_box(np.logical_or.reduce(masks), margin)
    return tuple(slice(lo, hi) for lo, hi in box)


# Bit of each voxel of a 2×2×2 neighbourhood in its code; `surfels.TABLE` is indexed by these codes.
_NEIGHBOURHOOD_BITS = np.array([[[128, 64], [32, 16]], [[8, 4], [2, 1]]], np.uint8)


@lru_cache(maxsize=16)
def surfel_areas(spacing: tuple[float, float, float]) -> np.ndarray:
    """(256,) area in mm² of the surface through a 2×2×2 neighbourhood, by its code."""
    vectors = np.array([int(d) for d in TABLE], np.float64).reshape(256, 4, 3) / 8
    scale = np.array([spacing[1] * spacing[2], spacing[0] * spacing[2], spacing[0] * spacing[1]])
    return np.linalg.norm(vectors * scale, axis=-1).sum(-1)


def _surface(mask: np.ndarray, box: tuple[slice, ...], spacing: tuple[float, float, float]
             ) -> tuple[np.ndarray, np.ndarray]:
    """Surface elements of `mask` inside `box`: a boolean map of the neighbourhoods the surface
    crosses, on the grid between voxels (one larger than the box on each axis), and their areas.

    The codes are computed in uint8, as the official code does: a label map with values of 2 or
    more (rule 11's quirk) overflows, and the inside of such lesions counts as surface."""
    cropped = np.zeros(tuple(s.stop - s.start + 1 for s in box), np.uint8)
    cropped[:-1, :-1, :-1] = mask[box]
    codes = ndimage.correlate(cropped, _NEIGHBOURHOOD_BITS, mode="constant", cval=0)
    return (codes != 0) & (codes != 255), surfel_areas(tuple(spacing))[codes]


def _percentile_distance(distances: np.ndarray, areas: np.ndarray, percentile: float) -> float:
    """The distance below which `percentile` % of the surface area lies."""
    order = np.argsort(distances, kind="stable")
    cumulative = np.cumsum(areas[order]) / areas.sum()
    return float(distances[order][min(np.searchsorted(cumulative, percentile / 100), len(order) - 1)])


def hd95(pred: np.ndarray, gt: np.ndarray, spacing: tuple[float, float, float] = (1.0, 1.0, 1.0),
         percentile: float = 95.0) -> float:
    """Symmetric `percentile` Hausdorff distance in mm between the surfaces of two masks, as the
    official code computes it (DeepMind's surface-distance): distances between surface elements of
    2×2×2 neighbourhoods, each weighted by its area, spacing-aware. Label maps (numbered lesions)
    are read as the official code reads them (see `_surface`)."""
    p_any, g_any = pred.any(), gt.any()
    if not p_any and not g_any:
        return 0.0
    if not p_any or not g_any:
        return HD_MISS
    box = _box(pred != 0, gt != 0, margin=0)
    p, p_area = _surface(pred, box, spacing)
    g, g_area = _surface(gt, box, spacing)
    to_p = ndimage.distance_transform_edt(~p, sampling=spacing)
    to_g = ndimage.distance_transform_edt(~g, sampling=spacing)
    return max(_percentile_distance(to_p[g], g_area[g], percentile),
               _percentile_distance(to_g[p], p_area[p], percentile))


def lesions(mask: np.ndarray, dilation: int) -> tuple[np.ndarray, int]:
    """Rule 2. Lesion map (0 = none, 1..n) of a mask: components whose dilations touch count as one."""
    box = bounding_box(mask, margin=dilation + 1)
    if box is None:
        return np.zeros(mask.shape, np.int32), 0
    # within the mask's box grown by more than the dilation: the same components, numbered in the
    # same (row-major) order as on the whole grid, at a fraction of the cost
    inside = crop(mask, box)
    grown = ndimage.binary_dilation(inside, DILATION_18, iterations=dilation)
    merged, n = ndimage.label(grown, CONNECTIVITY_26)
    out = np.zeros(mask.shape, np.int32)
    out[tuple(slice(lo, hi) for lo, hi in box)] = np.where(inside, merged, 0)
    return out, n


def drop_small_lesions(lesion_map: np.ndarray, smallest: int) -> np.ndarray:
    """Rule 3. The lesion map without lesions of <= `smallest` voxels (for predictions only)."""
    sizes = np.bincount(lesion_map.ravel())
    keep = np.where(sizes > smallest, np.arange(sizes.size, dtype=np.int32), 0)
    keep[0] = 0
    return keep[lesion_map]


# 0 and the 18 offsets of the 18-connected structuring element: voxels this close "touch".
_OFFSETS_18 = np.argwhere(DILATION_18) - 1


def touching_pairs(a: np.ndarray, b: np.ndarray) -> set[tuple[int, int]]:
    """(a-lesion, b-lesion) label pairs with a voxel of one within the 18-neighbourhood of the other."""
    near_b = bounding_box(b > 0, margin=1)
    if near_b is None or not a.any():
        return set()
    # only a-voxels next to some b-voxel matter: find them, then look up their neighbours' labels
    region = tuple(slice(lo, hi) for lo, hi in near_b)
    contact = (a[region] > 0) & ndimage.binary_dilation(b[region] > 0, DILATION_18)
    points = np.argwhere(contact) + np.array([lo for lo, _ in near_b])
    pairs: set[tuple[int, int]] = set()
    for offset in _OFFSETS_18:
        q = points + offset
        valid = np.all((q >= 0) & (q < np.array(b.shape)), axis=1)
        la, lb = a[tuple(points[valid].T)], b[tuple(q[valid].T)]
        pairs.update(zip(la[lb > 0].tolist(), lb[lb > 0].tolist()))
    return pairs


def merge_touching(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Rule 10, one tissue pair: when more than one (a, b) touching pair exists, the a-lesions that
    touch one b-lesion become one lesion; an a-lesion touching several joins the lowest-numbered
    b-lesion's group. New labels are numbered above the old ones, in order of the sorted pairs."""
    pairs = sorted(touching_pairs(a, b))
    if len(pairs) <= 1:
        return a
    new_label: dict[int, int] = {}
    for _, lb in pairs:
        new_label.setdefault(lb, int(a.max()) + 1 + len(new_label))
    lut = np.arange(max(int(a.max()) + 1, max(new_label.values()) + 1), dtype=np.int32)
    grouped: set[int] = set()
    for la, lb in pairs:                    # sorted: an a-lesion's first pair has its lowest b-lesion
        if la not in grouped:
            grouped.add(la)
            lut[la] = new_label[lb]
    return lut[a]


# Rule 10's order: each tissue is merged against these, in turn.
MERGE_ORDER = (("NETC", ("ET", "RC")), ("ET", ("NETC", "RC")), ("RC", ("ET", "NETC")),
               ("SNFH", ("ET", "RC", "NETC")))


def renumber(lesion_map: np.ndarray) -> np.ndarray:
    """Labels 1..n in the order of the old labels."""
    present = np.bincount(lesion_map.ravel()) > 0
    present[0] = False
    if present[1:].all():
        return lesion_map                      # already 1..n
    lut = np.zeros(present.size, np.int32)
    lut[present] = np.arange(1, np.count_nonzero(present) + 1)
    return lut[lesion_map]


def merge_across_tissues(maps: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Rule 10 for NETC, ET, RC and SNFH (WT and TC are not touched). Every tissue is merged against
    the other tissues' maps as they were before this rule: the official code reads the unmerged maps
    in every step, so its second pass over the sequence repeats the first and is left out here."""
    out = dict(maps)
    for tissue, others in MERGE_ORDER:
        merged = maps[tissue]
        for other in others:
            merged = merge_touching(merged, maps[other])
        out[tissue] = renumber(merged) if merged.any() else merged
    return out


def lesion_maps(labels: np.ndarray, prediction: bool) -> dict[str, np.ndarray]:
    """Rules 2, 3 and 10: the lesion map of every region of a label map; `prediction` deletes small
    lesions first, as the official code does to predictions only."""
    maps = {}
    for region in REGIONS:
        lesion_map, _ = lesions(region_mask(labels, region), LESION_DILATION[region])
        maps[region] = drop_small_lesions(lesion_map, MIN_LESION_VOXELS[region]) if prediction else lesion_map
    return merge_across_tissues(maps)


def lesionwise(pred_lesions: np.ndarray, gt_lesions: np.ndarray, region: str,
               spacing: tuple[float, float, float] = (1.0, 1.0, 1.0), distances: bool = True) -> dict[str, float]:
    """Rules 4-7 on two lesion maps of one region: lesion-wise Dice and HD95, lesion counts tp, fp, fn.
    Without `distances` HD95 is not computed (NaN): the Dice and counts cost a fraction of it."""
    dil, smallest = LESION_DILATION[region], MIN_LESION_VOXELS[region]
    voxel_mm3 = float(np.prod(spacing))
    n_pred = int(pred_lesions.max(initial=0))
    gt_sizes = np.bincount(gt_lesions.ravel())
    hit_any = np.zeros(n_pred + 1, bool)
    dices, hds, tp, fn = [], [], 0, 0
    for i in np.flatnonzero(gt_sizes)[1:] if gt_sizes.size > 1 else []:
        box = _box(gt_lesions == i, margin=dil + 1)
        lesion = gt_lesions[box] == i
        reach = ndimage.binary_dilation(lesion, DILATION_18, iterations=dil)
        hits = np.unique(pred_lesions[box][reach])
        hits = hits[hits > 0]
        hit_any[hits] = True
        if gt_sizes[i] * voxel_mm3 <= smallest:
            continue                                   # too small to score, but still shields its hits
        if hits.size:
            matched = np.isin(pred_lesions, hits)
            full = gt_lesions == i
            dices.append(dice(matched, full))
            hds.append(hd95(matched, full, spacing) if distances else np.nan)
            tp += 1
        else:
            dices.append(0.0)
            hds.append(HD_MISS)
            fn += 1
    present = np.bincount(pred_lesions.ravel(), minlength=n_pred + 1) > 0
    fp = int(np.sum(present[1:] & ~hit_any[1:]))
    n = tp + fn + fp
    if n == 0:
        return {"lesionwise_dice": 1.0, "lesionwise_hd95": 0.0, "tp": 0, "fp": 0, "fn": 0}
    return {"lesionwise_dice": float(np.sum(dices) / n), "lesionwise_hd95": float((np.sum(hds) + HD_MISS * fp) / n),
            "tp": tp, "fp": fp, "fn": fn}


def lesion_scores(pred: np.ndarray, gt: np.ndarray, region: str,
                  spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> dict[str, float]:
    """BraTS 2024 lesion-wise scores of one region's two masks on their own (rules 2-7; rule 10 needs
    the other tissues: see `region_scores`)."""
    gt_lesions, _ = lesions(gt, LESION_DILATION[region])
    pred_lesions = drop_small_lesions(lesions(pred, LESION_DILATION[region])[0], MIN_LESION_VOXELS[region])
    return lesionwise(pred_lesions, gt_lesions, region, spacing)


def region_scores(pred_labels: np.ndarray, gt_labels: np.ndarray,
                  spacing: tuple[float, float, float] | None = None,
                  label_map_quirk: bool = False, distances: bool = True) -> dict[str, dict[str, float]]:
    """{region: {"dice", "iou"[, "hd95", lesion-wise …]}} for every BraTS 2024 region.

    Without `spacing` (validation during training): voxel Dice and IoU of the label maps as they are.
    With it: the official scores, i.e. legacy Dice and HD95 on the prediction without its small
    lesions (rule 9) and the lesion-wise scores; `iou` stays the plain voxel IoU.
    `label_map_quirk` computes legacy HD95 on the numbered lesion maps, as the official code does
    (rule 11: the inside of every lesion numbered 2 or more counts as surface), to match the
    leaderboard to the digit; off, it is computed on the masks, as the metric is defined. Without
    `distances`, HD95 and lesion-wise HD95 are NaN (for the post-processing search)."""
    if pred_labels.shape != gt_labels.shape:
        raise ValueError(f"prediction shape {pred_labels.shape} differs from ground truth {gt_labels.shape}")
    if spacing is None:
        return {region: {"dice": dice(p, g), "iou": iou(p, g)}
                for region in REGIONS
                for p, g in [(region_mask(pred_labels, region), region_mask(gt_labels, region))]}
    pred_maps, gt_maps = lesion_maps(pred_labels, prediction=True), lesion_maps(gt_labels, prediction=False)
    out = {}
    for region in REGIONS:
        kept, g = pred_maps[region] > 0, gt_maps[region] > 0
        surfaces = (pred_maps[region], gt_maps[region]) if label_map_quirk else (kept, g)
        out[region] = {"dice": dice(kept, g), "iou": iou(region_mask(pred_labels, region), g),
                       "hd95": hd95(*surfaces, spacing) if distances else np.nan,
                       **lesionwise(pred_maps[region], gt_maps[region], region, spacing, distances)}
    return out


def case_scores(pred_labels: np.ndarray, gt_labels: np.ndarray, spacing: tuple[float, float, float],
                label_map_quirk: bool = False, distances: bool = True) -> dict[str, dict[str, float]]:
    """Every metric of one case (`region_scores` with distances), computed on the box around both
    label maps grown by the largest lesion dilation: the same result, much faster on a mostly empty grid."""
    box = bounding_box((pred_labels > 0) | (gt_labels > 0), margin=max(LESION_DILATION.values()) + 1)
    if box is not None:
        pred_labels, gt_labels = crop(pred_labels, box), crop(gt_labels, box)
    return region_scores(pred_labels, gt_labels, spacing, label_map_quirk, distances)


def mean_scores(per_case: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    """Mean of each region's scores over cases (lesion counts are summed)."""
    out = {}
    for region in per_case[0]:
        out[region] = {}
        for key in per_case[0][region]:
            values = [c[region][key] for c in per_case]
            out[region][key] = int(np.sum(values)) if key in ("tp", "fp", "fn") else float(np.mean(values))
    return out
