"""Stage `evaluate`, and a scorer for any folder of BraTS-format predictions.

As the DVC stage (`python src/evaluate.py`): predict every test case with the trained weights and
write `metrics/evaluate.json` (per-region means of IoU, Dice, HD95, lesion-wise Dice and HD95, for
`dvc metrics show/diff`), `metrics/evaluate_cases.csv` (per case; `dvc plots`), overlay PNGs of a few
cases under `metrics/overlays/`, and the test predictions in BraTS format under
`paths.predictions_dir` (original grid and affine, ready for the scorer below).

As a scorer:
    python src/evaluate.py --pred PRED_DIR --gt GT_DIR --out scores.json
scores `<case>.nii.gz` predictions against `GT_DIR/<case>/<case>-seg.nii.gz` (or `GT_DIR/<case>-seg.nii.gz`)
with the metrics of src/metrics.py, writes {"cases": {case: {region: {...}}}, "mean": {region: {...}}}
and prints a table.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from tqdm import tqdm

from brats import MODALITIES, REGIONS
from errors import UserError, run_stage
from files import atomic_folder, write_csv, write_json
from geometry import restore
from inference import predict_probs, probs_to_labels
from layout import load_manifest, load_split, open_case
from metrics import case_scores, mean_scores
from nifti import AFFINE_TOLERANCE_MM, labels_from_array, load_volume, write_nifti
from params import Params, load_params
from prepare import spacing_of
from runtime import default_device, resolve_precision
from weights import load_model

KEYS = ("iou", "dice", "hd95", "lesionwise_dice", "lesionwise_hd95")
OVERLAYS_DIR = "overlays"


def table(mean: dict) -> str:
    """Readable per-region table of mean scores."""
    head = f"{'region':<6}" + "".join(f"{k:>17}" for k in KEYS) + f"{'tp':>6}{'fp':>6}{'fn':>6}"
    rows = [f"{r:<6}" + "".join(f"{mean[r][k]:>17.4f}" for k in KEYS) +
            "".join(f"{mean[r][k]:>6d}" for k in ("tp", "fp", "fn")) for r in mean]
    return "\n".join([head, *rows])


# --- scorer ---------------------------------------------------------------------------------------

def gt_file(gt_dir: Path, case: str) -> Path:
    for candidate in (gt_dir / case / f"{case}-seg.nii.gz", gt_dir / f"{case}-seg.nii.gz"):
        if candidate.exists():
            return candidate
    raise UserError(f"{case}: no ground truth {case}-seg.nii.gz in {gt_dir} or {gt_dir / case}")


def load_labels(path: Path, case: str) -> tuple[np.ndarray, np.ndarray]:
    """A label map (uint8, checked to be 0..4) and its affine."""
    data, affine = load_volume(case, path)
    return labels_from_array(data, f"{case}: {path.name}"), affine


def score_folders(pred_dir: Path, gt_dir: Path, label_map_quirk: bool = False) -> dict:
    """Scores of every prediction in pred_dir; every ground-truth case must have one.
    `label_map_quirk`: legacy HD95 as the official code computes it (metrics.region_scores)."""
    if not pred_dir.is_dir() or not gt_dir.is_dir():
        raise UserError(f"--pred {pred_dir} and --gt {gt_dir} must both be folders")
    gt_cases = sorted({p.name.removesuffix("-seg.nii.gz") for p in gt_dir.rglob("*-seg.nii.gz")})
    if not gt_cases:
        raise UserError(f"no <case>-seg.nii.gz ground truth found under {gt_dir}")
    cases = {}
    for case in tqdm(gt_cases, desc="score", unit="case"):
        pred_path = pred_dir / f"{case}.nii.gz"
        if not pred_path.exists():
            raise UserError(f"{case}: prediction {pred_path} is missing")
        pred, pred_affine = load_labels(pred_path, case)
        gt, gt_affine = load_labels(gt_file(gt_dir, case), case)
        if pred.shape != gt.shape:
            raise UserError(f"{case}: prediction shape {pred.shape} differs from ground truth {gt.shape}")
        if not np.allclose(pred_affine, gt_affine, atol=AFFINE_TOLERANCE_MM, rtol=0):
            raise UserError(f"{case}: the prediction's affine differs from the ground truth's; write "
                            "predictions on the input's grid (src/predict.py does)")
        cases[case] = case_scores(pred, gt, spacing_of(gt_affine), label_map_quirk)
    return {"cases": cases, "mean": mean_scores(list(cases.values()))}


# --- DVC stage ------------------------------------------------------------------------------------

def overlay(path: Path, image: np.ndarray, gt: np.ndarray, pred: np.ndarray, title: str) -> None:
    """Axial slice through the most tumour: T1c, FLAIR with ground truth, FLAIR with prediction."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    z = int(np.argmax((gt > 0).sum(axis=(0, 1)))) if gt.any() else gt.shape[2] // 2
    colours = ListedColormap([(0, 0, 0, 0), (1, 0.2, 0.2, 0.6), (0.2, 0.9, 0.2, 0.45), (1, 1, 0.1, 0.7),
                              (0.3, 0.5, 1, 0.6)])
    t1c, flair = (image[MODALITIES.index(m), :, :, z].T.astype(np.float32) for m in ("t1c", "t2f"))
    fig, axes = plt.subplots(1, 3, figsize=(10, 4))
    for ax, background, labels, name in ((axes[0], t1c, None, "T1c"), (axes[1], flair, gt, "ground truth"),
                                         (axes[2], flair, pred, "prediction")):
        ax.imshow(background, cmap="gray", origin="lower")
        if labels is not None:
            ax.imshow(labels[:, :, z].T, cmap=colours, vmin=0, vmax=4, origin="lower", interpolation="nearest")
        ax.set_title(name)
        ax.axis("off")
    fig.suptitle(f"{title}  (red NETC, green SNFH, yellow ET, blue RC)")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def evaluate(params: Params) -> dict:
    """The DVC stage. Predictions and overlays are written beside their folders and swapped in at the
    end with the metrics files, so a killed run leaves the previous set whole."""
    paths, ep = params.paths, params.evaluate
    device = default_device()
    model, spec = load_model(paths.models_dir / "model.pt", device)
    manifest = load_manifest(paths.preprocessed_dir)
    cases = load_split(paths.preprocessed_dir, "test")
    precision = resolve_precision("auto", device)
    per_case = {}
    with atomic_folder(paths.predictions_dir) as predictions, \
            atomic_folder(paths.metrics_dir / OVERLAYS_DIR) as overlays:
        for i, case in enumerate(tqdm(cases, desc="evaluate", unit="case")):
            stored_image, stored_gt = open_case(paths.preprocessed_dir, case)
            image, gt = stored_image.read(), stored_gt.read()
            pred = probs_to_labels(predict_probs(model, image, spec.patch, ep.overlap, ep.batch, ep.mirror,
                                                 precision))
            entry = manifest[case]
            per_case[case] = case_scores(pred, gt, tuple(entry["spacing_mm"]))
            original = restore(pred, tuple(map(tuple, entry["crop_box"])), tuple(entry["original_shape"]),
                               np.array(entry["original_affine"]))
            write_nifti(predictions / f"{case}.nii.gz", original, np.array(entry["original_affine"]))
            if i < ep.overlays:
                overlay(overlays / f"{case}.png", image, gt, pred, case)
        mean = mean_scores(list(per_case.values()))
        metrics = {key: {r: round(mean[r][key], 4) for r in REGIONS} for key in KEYS}
        metrics["lesions"] = {r: {k: mean[r][k] for k in ("tp", "fp", "fn")} for r in REGIONS}
        metrics["cases"] = len(cases)
        write_json(paths.metrics_dir / "evaluate.json", metrics)
        write_csv(paths.metrics_dir / "evaluate_cases.csv", ["case"] + [f"{k}_{r}" for k in KEYS for r in REGIONS],
                  ([case] + [round(s[r][k], 4) for k in KEYS for r in REGIONS] for case, s in per_case.items()))
    print(table(mean))
    return metrics


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Evaluate stage, or (with --pred/--gt/--out) a BraTS scorer.")
    ap.add_argument("--pred", type=Path, help="folder of <case>.nii.gz predictions")
    ap.add_argument("--gt", type=Path, help="folder of case folders holding <case>-seg.nii.gz")
    ap.add_argument("--out", type=Path, help="scores JSON to write")
    ap.add_argument("--leaderboard-hd95", action="store_true",
                    help="legacy HD95 exactly as the official code computes it, quirk included: the inside "
                         "of lesions numbered 2 or more counts as surface (README, scorer)")
    args = ap.parse_args(argv)
    given = [a is not None for a in (args.pred, args.gt, args.out)]
    if any(given) and not all(given):
        ap.error("--pred, --gt and --out go together")
    if all(given):
        result = score_folders(args.pred, args.gt, args.leaderboard_hd95)
        write_json(args.out, result)
        print(table(result["mean"]))
        return
    evaluate(load_params())


if __name__ == "__main__":
    run_stage(main)
