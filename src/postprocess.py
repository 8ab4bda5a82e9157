"""Stage `postprocess`: choose the post-processing (src/postprocessing.py) on the validation split.

BraTS 2024's headline metric is lesion-wise: every predicted blob that meets no ground-truth lesion is
a false positive scoring Dice 0 and HD95 337 mm, so a few stray voxels cost more than a rough border.
As the challenge's winners do, small components are removed with volume thresholds tuned on
validation data. This stage predicts the validation cases with the evaluate stage's inference
settings (`evaluate.overlap`, `batch`, `mirror`, `compile`: predictor.Predictor), picks each rule's threshold from
`postprocess.candidates_mm3` (`candidates_fraction` for the relative rule), and writes `models/postprocessing.json` beside the weights (DVC output,
pushed and pulled with them) with the validation score before and after and every candidate tried.
"""

from __future__ import annotations

import numpy as np
from tqdm import tqdm

from errors import UserError, run_stage
from layout import load_manifest, load_split, native_labels, native_shape, open_case
from params import Params, load_params
from postprocessing import FILE, Postprocessing, save, select
from predictor import Predictor, Settings
from runtime import default_device
from weights import WEIGHTS_FILE


def predict_split(params: Params, split: str, progress: str) -> list[tuple[np.ndarray, np.ndarray, tuple]]:
    """(prediction, ground truth, spacing) of every case of a split on the case's own grid, as the
    evaluate stage predicts and scores."""
    paths = params.paths
    device = default_device()
    predictor = Predictor(paths.models_dir / WEIGHTS_FILE, Settings.of(params.evaluate, device), device)
    manifest = load_manifest(paths.preprocessed_dir)
    out = []
    for case in tqdm(load_split(paths.preprocessed_dir, split), desc=progress, unit="case"):
        entry = manifest[case]
        image = open_case(paths.preprocessed_dir, case)[0].read()
        gt = native_labels(paths.preprocessed_dir, case, entry)
        spacing = tuple(entry["native_spacing_mm"])
        out.append((predictor.labels(image, native_shape(entry), spacing)[0], gt, spacing))
    return out


def postprocess(params: Params) -> Postprocessing:
    """The DVC stage."""
    cases = predict_split(params, "val", "predict val")
    if not cases:
        raise UserError("the validation split is empty (preprocess.val_fraction); post-processing is chosen "
                        "on validation cases")
    pp, record = select(cases, params.postprocess.candidates_mm3, params.postprocess.candidates_fraction,
                        params.postprocess.min_gain, progress=True)
    save(params.paths.models_dir / FILE, pp, record)
    picked = ", ".join(f"{rule} {v:g}" for rule, v in pp.min_mm3.items() if v) or "none"
    print(f"post-processing (minimum mm³): {picked}; validation mean lesion-wise Dice "
          f"{record['before']:.4f} -> {record['after']:.4f}")
    return pp


def main() -> None:
    postprocess(load_params())


if __name__ == "__main__":
    run_stage(main)
