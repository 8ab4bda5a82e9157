"""Post-processing of predicted label maps: small connected components (26-connectivity) removed or
relabelled, by minimum volume per rule (mm³, so one file serves any voxel size; WT_rel by a fraction):

    WT_rel  a whole-tumour component smaller than this fraction of the case's largest becomes background
    WT      a whole-tumour component smaller than the threshold becomes background
    TC      a tumour-core component smaller than it becomes SNFH (it stays whole tumour)
    ET      an enhancing component smaller than it becomes NETC (it stays tumour core)
    ET_all  when all ET of a case is smaller than it, all of it becomes NETC
    RC      a resection-cavity component smaller than it becomes background

applied in that order (`apply`), chosen on validation cases (`select`: rule by rule, the candidate
that maximises the mean lesion-wise Dice over the six regions given the thresholds already chosen;
on a tie the smaller value, and 0 = off unless a value does strictly better), and stored as
`postprocessing.json` beside the weights (`save`, `load`). The postprocess stage chooses it; the
evaluate stage and src/predict.py apply it.

Before the rules, an optional gate on the image, set by params and not chosen:
`enhancing_min_t1c_z`, enhancing tumour only where the z-scored T1c is above it (enhancing tissue is
brighter on the contrast T1 than the head's mean); inference.gate_enhancing applies it to the
probabilities, predictor.Predictor calls it. It travels in the same file.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage
from tqdm import tqdm

from brats import MODEL_REGIONS, REGIONS, region_mask
from errors import UserError
from files import file_sha256, read_json, write_json
from metrics import case_scores

FILE = "postprocessing.json"
FORMAT = 1
RULES = ("WT_rel", "WT", "TC", "ET", "ET_all", "RC")
RELATIVE = ("WT_rel",)          # thresholds that are fractions of the largest component, not mm³
# rule -> (region whose components are judged, label they become)
_COMPONENT_RULES = {"WT_rel": ("WT", 0), "WT": ("WT", 0), "TC": ("TC", 2), "ET": ("ET", 1), "RC": ("RC", 0)}
_26 = ndimage.generate_binary_structure(3, 3)


@dataclass(frozen=True)
class Postprocessing:
    """Threshold per rule (0 = the rule is off): a volume in mm³, or for RELATIVE rules a fraction of
    the largest component; for a model with `regions` outputs."""
    min_mm3: dict[str, float]
    regions: tuple[str, ...] = MODEL_REGIONS
    enhancing_min_t1c_z: float | None = None    # the T1c gate (None: off)

    @classmethod
    def none(cls, enhancing_min_t1c_z: float | None = None) -> "Postprocessing":
        """No rule; the T1c gate when given."""
        return cls({rule: 0.0 for rule in RULES}, enhancing_min_t1c_z=enhancing_min_t1c_z)


def remove_small(labels: np.ndarray, region: str, smallest_voxels: float, becomes: int,
                 relative: bool = False) -> np.ndarray:
    """Components of `region` with fewer than `smallest_voxels` voxels (`relative`: fewer than this
    fraction of the largest component's voxels) relabelled `becomes`."""
    mask = region_mask(labels, region)
    components, n = ndimage.label(mask, _26)
    if n == 0:
        return labels
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    small = sizes < (smallest_voxels * sizes.max() if relative else smallest_voxels)
    small[0] = False
    out = labels.copy()
    out[small[components]] = becomes
    return out


def apply(labels: np.ndarray, pp: Postprocessing, spacing: tuple[float, float, float]) -> np.ndarray:
    """A label map with the rules of `pp` applied, in RULES order; the input is not changed."""
    voxel = float(np.prod(spacing))
    out = labels
    for rule in RULES:
        threshold = pp.min_mm3.get(rule, 0.0)
        if threshold <= 0:
            continue
        if rule == "ET_all":
            et = out == REGIONS["ET"][0]
            if 0 < et.sum() * voxel < threshold:
                out = np.where(et, np.uint8(REGIONS["NETC"][0]), out).astype(np.uint8)
            continue
        region, becomes = _COMPONENT_RULES[rule]
        relative = rule in RELATIVE
        out = remove_small(out, region, threshold if relative else threshold / voxel, becomes, relative)
    return out


Scored = tuple[list[np.ndarray], float, list[float]]   # post-processed maps, mean score, per-case scores


def objective(cases: list[tuple[np.ndarray, np.ndarray, tuple[float, float, float]]], pp: Postprocessing,
              previous: Scored | None = None) -> Scored:
    """Post-processed maps of the cases and their mean lesion-wise Dice over the six regions. Given the
    `previous` maps and score, cases whose map did not change are not scored again."""
    maps, values = [], []
    for i, (pred, gt, spacing) in enumerate(cases):
        done = apply(pred, pp, spacing)
        maps.append(done)
        if previous is not None and np.array_equal(done, previous[0][i]):
            values.append(previous[2][i])
            continue
        scores = case_scores(done, gt, spacing, distances=False)
        values.append(float(np.mean([scores[r]["lesionwise_dice"] for r in REGIONS])))
    return maps, float(np.mean(values)), values


def select(cases: list[tuple[np.ndarray, np.ndarray, tuple[float, float, float]]],
           candidates: tuple[float, ...], fractions: tuple[float, ...], min_gain: float = 0.0,
           progress: bool = False) -> tuple[Postprocessing, dict]:
    """Thresholds picked rule by rule, from `candidates` (mm³) or, for RELATIVE rules, `fractions`:
    for each rule the value with the best objective given the rules already picked, adopted when it
    beats the current score by more than `min_gain` (a guard against fitting noise on a few
    validation cases; ties go to the smaller value). Also returns the score of every value tried."""
    chosen = {rule: 0.0 for rule in RULES}
    best = objective(cases, Postprocessing(dict(chosen)))
    baseline = best[1]
    tried: dict[str, dict[str, float]] = {}
    options = {rule: sorted(set(fractions if rule in RELATIVE else candidates) - {0.0}) for rule in RULES}
    bar = tqdm(total=sum(map(len, options.values())), desc="postprocess", unit="try", disable=not progress)
    for rule in RULES:
        tried[rule] = {"0": round(best[1], 6)}
        current, pick = best, None
        for value in options[rule]:
            result = objective(cases, Postprocessing({**chosen, rule: float(value)}), current)
            tried[rule][f"{value:g}"] = round(result[1], 6)
            bar.update()
            if result[1] > (pick[1][1] if pick else current[1] + min_gain) + 1e-12:
                pick = (value, result)
        if pick:
            chosen[rule], best = float(pick[0]), pick[1]
    bar.close()
    return Postprocessing(chosen), {"before": round(baseline, 6), "after": round(best[1], 6), "tried": tried}


def save(path: Path, pp: Postprocessing, record: dict, weights: list[dict] | None = None) -> None:
    """Write the file; `weights`: the fold weights it was chosen for ({"path" relative to the file's
    folder, "sha256"}), which predict.py reads when given the folder."""
    write_json(path, {"format": FORMAT, "regions": list(pp.regions), "min_mm3": pp.min_mm3,
                      "enhancing_min_t1c_z": pp.enhancing_min_t1c_z,
                      "weights": weights or [],
                      "rules": {"WT_rel": "WT components below this fraction of the case's largest -> background",
                                "WT": "WT components below the volume -> background",
                                "TC": "TC components below it -> SNFH", "ET": "ET components below it -> NETC",
                                "ET_all": "all ET of a case when its total is below it -> NETC",
                                "RC": "RC components below it -> background"},
                      "validation": record})


def weights_of(path: Path) -> list[tuple[Path, str]]:
    """The fold weights a post-processing file was chosen for (paths beside it) and their SHA-256."""
    raw = read_json(Path(path), "the post-processing thresholds", "postprocess")
    listed = raw.get("weights") if isinstance(raw, dict) else None
    try:
        return [(Path(path).parent / w["path"], str(w["sha256"])) for w in listed or []]
    except (TypeError, KeyError):
        raise UserError(f"{path}: its weights list is damaged; rerun `dvc repro postprocess`") from None


def check_weights(path: Path, weights: list[Path], exact: bool = True) -> None:
    """Refuse weights other than those the post-processing file `path` was chosen for (when it lists
    them): all of them (`exact`), or some of them (one fold of the ensemble)."""
    listed = sorted(h for _, h in weights_of(path))
    given = sorted(file_sha256(w) for w in weights)
    if listed and (given != listed if exact else not set(given) <= set(listed)):
        raise UserError(f"{path} was chosen for other weights than {', '.join(map(str, weights))} (their SHA-256 "
                        "differ): rerun `dvc repro postprocess`, or `dvc pull` the weights and file of one commit")


def load(path: Path, regions: tuple[str, ...]) -> Postprocessing:
    """The post-processing file for a model with output `regions`; a clear error when it does not fit."""
    raw = read_json(Path(path), "the post-processing thresholds", "postprocess")
    if not isinstance(raw, dict) or raw.get("format") != FORMAT or not isinstance(raw.get("min_mm3"), dict):
        raise UserError(f"{path} is not a post-processing file of format {FORMAT}; rerun `dvc repro postprocess`")
    if tuple(raw.get("regions", ())) != tuple(regions):
        raise UserError(f"{path} was chosen for a model with regions {raw.get('regions')}, but the weights "
                        f"output {list(regions)}; rerun `dvc repro postprocess` for these weights")
    unknown = sorted(set(raw["min_mm3"]) - set(RULES))
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0 for v in raw["min_mm3"].values())
    if unknown or not numbers or any(raw["min_mm3"].get(rule, 0) > 1 for rule in RELATIVE):
        raise UserError(f"{path}: min_mm3 must map rules {', '.join(RULES)} to volumes >= 0 (fractions "
                        f"0..1 for {', '.join(RELATIVE)}) "
                        f"(found {raw['min_mm3']}); rerun `dvc repro postprocess`")
    gate = raw.get("enhancing_min_t1c_z")     # absent from files written before the gate: off
    if gate is not None and (isinstance(gate, bool) or not isinstance(gate, (int, float)) or not math.isfinite(gate)):
        raise UserError(f"{path}: enhancing_min_t1c_z must be a number or null (found {gate!r}); "
                        "rerun `dvc repro postprocess`")
    return Postprocessing({rule: float(raw["min_mm3"].get(rule, 0.0)) for rule in RULES}, tuple(regions),
                          None if gate is None else float(gate))
