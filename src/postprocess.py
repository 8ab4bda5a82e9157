"""Stage `postprocess`: choose the post-processing (src/postprocessing.py) on out-of-fold predictions.

BraTS 2024's headline metric is lesion-wise: every predicted blob that meets no ground-truth lesion is
a false positive scoring Dice 0 and HD95 337 mm, so a few stray voxels cost more than a rough border.
As the challenge's winners do, small components are removed with volume thresholds tuned on held-out
data, and as nnU-Net does, on the out-of-fold predictions of the whole training set: each fold of
`train.folds` predicts the cases it did not train on (with one fold, the validation split), with the
evaluate stage's inference settings (`evaluate.overlap`, `batch`, `mirror`, `compile`:
predictor.Predictor). Each rule's threshold is picked from `postprocess.candidates_mm3`
(`candidates_fraction` for the relative rule). With `postprocess.enhancing_min_t1c_z` set, the
predictions are gated by the T1c first, and the file carries the gate.

Writes `models/postprocessing.json` beside the fold weights (DVC output, pushed and pulled with them)
with the score before and after, every candidate tried and the SHA-256 of every fold's weights (the
ensemble the thresholds were chosen for), and `metrics/cv.json`: the cross-validation scores (IoU,
Dice, lesion-wise Dice per region, with their 95 % interval over the out-of-fold cases under `ci95`,
with and without the component rules, and per fold, under "cv").
"""

from __future__ import annotations

import dataclasses

import numpy as np
from tqdm import tqdm

from brats import REGIONS
from errors import UserError, run_stage
from files import check_writable, file_sha256, write_json
from layout import load_fold, load_manifest, native_labels, native_shape, open_case
from metrics import case_scores, mean_scores
from params import Params, load_params
import postprocessing
from postprocessing import FILE, Postprocessing, save, select
from predictor import Predictor, Settings
from runtime import default_device
from stats import intervals
from weights import fold_weights

CV_FILE = "cv.json"
CV_KEYS = ("iou", "dice", "lesionwise_dice")

Case = tuple[np.ndarray, np.ndarray, tuple[float, float, float]]   # prediction, ground truth, spacing


def out_of_fold(params: Params) -> dict[int, dict[str, Case]]:
    """Per fold, (prediction, ground truth, spacing) of each case it held out, on the case's own grid,
    as the evaluate stage predicts and scores. One fold's network in memory at a time."""
    paths = params.paths
    device = default_device()
    settings = Settings.of(params.evaluate, device)
    gate = Postprocessing.none(params.postprocess.enhancing_min_t1c_z)     # the rules are chosen after the gate
    manifest = load_manifest(paths.preprocessed_dir)
    out: dict[int, dict[str, Case]] = {}
    for fold, weights in zip(params.train.folds, fold_weights(paths.models_dir, params.train.folds)):
        predictor = Predictor(weights, settings, device, gate)
        out[fold] = {}
        for case in tqdm(load_fold(paths.preprocessed_dir, fold)[1], desc=f"predict fold {fold}", unit="case"):
            entry = manifest[case]
            image = open_case(paths.preprocessed_dir, case)[0].read()
            gt = native_labels(paths.preprocessed_dir, case, entry)
            spacing = tuple(entry["native_spacing_mm"])
            out[fold][case] = (predictor.labels(image, native_shape(entry), spacing)[1], gt, spacing)
    return out


def scores(cases: list[Case], pp: Postprocessing, with_ci: bool = False) -> dict[str, dict]:
    """Mean IoU, Dice and lesion-wise Dice per region of the cases, post-processed by `pp` (and under
    `ci95` their 95 % intervals over the cases)."""
    per_case = [case_scores(postprocessing.apply(pred, pp, spacing), gt, spacing, distances=False)
                for pred, gt, spacing in cases]
    mean = mean_scores(per_case)
    out: dict[str, dict] = {key: {r: round(mean[r][key], 4) for r in REGIONS} for key in CV_KEYS}
    if with_ci:
        out["ci95"] = intervals(per_case, CV_KEYS, REGIONS)
    return out


def postprocess(params: Params) -> Postprocessing:
    """The DVC stage."""
    paths = params.paths
    for folder in (paths.models_dir, paths.metrics_dir):      # before minutes of prediction, not after
        check_writable(folder, "postprocess writes postprocessing.json and cv.json there: free space, fix "
                               "permissions or change paths in params.yaml")
    folds = out_of_fold(params)
    cases = [c for fold in folds.values() for c in fold.values()]
    if not cases:
        raise UserError("no held-out case to choose the post-processing on (preprocess.val_fraction, train.folds)")
    rules, record = select(cases, params.postprocess.candidates_mm3, params.postprocess.candidates_fraction,
                           params.postprocess.min_gain, progress=True)
    pp = dataclasses.replace(rules, enhancing_min_t1c_z=params.postprocess.enhancing_min_t1c_z)
    weights = [{"path": w.relative_to(paths.models_dir).as_posix(), "sha256": file_sha256(w)}
               for w in fold_weights(paths.models_dir, params.train.folds)]
    save(paths.models_dir / FILE, pp, record, weights)
    cv = {**scores(cases, pp, with_ci=True), "no_postprocessing": scores(cases, Postprocessing.none()),
          "folds": len(folds), "cases": len(cases),
          "per_fold": {str(k): {"cases": len(v), **scores(list(v.values()), pp)} for k, v in folds.items()}}
    # under "cv", so that `dvc exp show` columns (cv.iou.WT) do not collide with evaluate.json's (iou.WT)
    write_json(paths.metrics_dir / CV_FILE, {"cv": cv})
    picked = ", ".join(f"{rule} {v:g}" for rule, v in pp.min_mm3.items() if v) or "none"
    if pp.enhancing_min_t1c_z is not None:
        picked += f" (after the T1c gate: enhancing tumour where T1c z > {pp.enhancing_min_t1c_z:g})"
    print(f"post-processing (minimum mm³): {picked}; out-of-fold mean lesion-wise Dice "
          f"{record['before']:.4f} -> {record['after']:.4f} on {len(cases)} case(s) of {len(folds)} fold(s); "
          f"WT IoU {cv['iou']['WT']:.4f} (95 % interval {cv['ci95']['iou']['WT']['low']}–{cv['ci95']['iou']['WT']['high']})")
    return pp


def main() -> None:
    postprocess(load_params())


if __name__ == "__main__":
    run_stage(main)
