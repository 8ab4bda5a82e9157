"""Stage `evaluate`, and a scorer for any folder of BraTS-format predictions.

As the DVC stage (`python src/evaluate.py`): predict every test case with the trained weights (the
ensemble of the `train.folds` folds: their probabilities averaged), apply
the post-processing the postprocess stage chose (`models/postprocessing.json`), and write
`metrics/evaluate.json` (per-region means of IoU, Dice, HD95, lesion-wise Dice and HD95 of the
post-processed masks, under `ci95` the 95 % interval over cases of the IoU, Dice and lesion-wise Dice
means (src/stats.py), and under `no_postprocessing` the IoU and lesion-wise scores without it, for
`dvc metrics show/diff`), `metrics/evaluate_cases.csv` (per case, with lesion counts; `dvc plots`),
overlay PNGs of a few cases under `metrics/overlays/`, `MODEL_CARD.md`, and the test predictions in
BraTS format under `paths.predictions_dir` (original grid and affine, post-processed: the masks
src/predict.py writes for the same case).

As a scorer:
    python src/evaluate.py --pred PRED_DIR --gt GT_DIR --out scores.json [--labels 2024]
scores `<case>.nii.gz` predictions against the ground truth of GT_DIR, in any edition's layout
(`<case>/<case>-seg.nii.gz` or `<case>-seg.nii.gz` files of 2023/2024, `<case>/<case>_seg.nii.gz` of
2017-2021, a Decathlon task's `labelsTr/`: src/editions.py; labels read in the 2024 meaning), with
the metrics of src/metrics.py (`--labels`: the edition whose values the predictions hold: 2024's,
predict.py's default, or the ground truth's own edition, which its layout and case ids tell: flat
`BraTS2021_00000-seg.nii.gz` files are 2017-2021's, where 4 is enhancing tumour), writes
{"cases": {case: {region: {...}}}, "mean": {region: {...}}, "ci95": {metric: {region: {"low": l, "high": h}}}}
and prints a table. Every ground-truth case needs its labels and a prediction (a missing one is an error, as in the
challenge); `--only-predicted` scores the ground-truth cases that have one and lists the others.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import numpy as np
from tqdm import tqdm

from brats import MODALITIES, REGIONS
from editions import EDITIONS, LEGACY_CASE, Edition, case_at, find_cases, year_edition
from errors import UserError, run_stage
from files import atomic_folder, write_csv, write_json
from geometry import restore
from layout import load_manifest, load_split, native_labels, native_shape, open_case
from metrics import case_scores, mean_scores
import model_card
from nifti import AFFINE_TOLERANCE_MM, labels_from_array, load_volume, write_nifti
from params import Params, load_params
import postprocessing
from prepare import spacing_of
import resample
from predictor import Predictor, Settings
from runtime import default_device
from stats import intervals
from weights import fold_weights, read

KEYS = ("iou", "dice", "hd95", "lesionwise_dice", "lesionwise_hd95")
RAW_KEYS = ("iou", "lesionwise_dice", "lesionwise_hd95")     # reported without post-processing too
CI_KEYS = ("iou", "dice", "lesionwise_dice")                 # reported with their 95 % interval over cases
OVERLAYS_DIR = "overlays"


def table(mean: dict) -> str:
    """Readable per-region table of mean scores."""
    head = f"{'region':<6}" + "".join(f"{k:>17}" for k in KEYS) + f"{'tp':>6}{'fp':>6}{'fn':>6}"
    rows = [f"{r:<6}" + "".join(f"{mean[r][k]:>17.4f}" for k in KEYS) +
            "".join(f"{mean[r][k]:>6d}" for k in ("tp", "fp", "fn")) for r in mean]
    return "\n".join([head, *rows])


def interval_table(mean: dict, ci: dict) -> str:
    """Per region: each CI_KEYS mean with its 95 % interval over cases."""
    head = f"{'region':<6}" + "".join(f"{k + ' [95 % CI]':>32}" for k in CI_KEYS)
    cell = lambda m, c: f"{m:.4f} [{c['low']:.4f}, {c['high']:.4f}]" if c["low"] is not None else f"{m:.4f} [n/a]"
    rows = [f"{r:<6}" + "".join(f"{cell(mean[r][k], ci[k][r]):>32}" for k in CI_KEYS) for r in mean]
    return "\n".join([head, *rows])


# --- scorer ---------------------------------------------------------------------------------------

FLAT_SEG = ("-seg.nii.gz", "_seg.nii.gz")
MSD_ID = re.compile(r"^BRATS_\d+$", re.I)       # a Decathlon Task01 case id


def flat_edition(case: str) -> Edition:
    """The edition of a flat `<case>-seg.nii.gz` ground truth, from its id: 2023 or 2024 by the visit,
    2017-2021 for their ids (their ET is 4), the Decathlon's for `BRATS_001` (its 1 is oedema),
    otherwise 2024."""
    if LEGACY_CASE.match(case):
        return EDITIONS["2021"]
    if MSD_ID.match(case):
        return EDITIONS["msd"]
    return year_edition(case)


def ground_truths(gt_dir: Path) -> dict[str, tuple[Path, Edition]]:
    """Label file and edition of each ground-truth case under `gt_dir`: `<case>-seg.nii.gz` (or
    `_seg`) files directly in it, or cases of any edition (src/editions.py), each of which must hold
    its labels: a case without them is an error, never a case left out of the means."""
    flat = sorted(p for p in gt_dir.iterdir() if p.name.endswith(FLAT_SEG)) if gt_dir.is_dir() else []
    if flat:
        cases = [e.name for e in sorted(gt_dir.iterdir()) if e not in flat and case_at(e) is not None]
        if cases:
            raise UserError(f"{gt_dir} holds both <case>-seg.nii.gz files ({flat[0].name}) and case folders "
                            f"({cases[0]}); give --gt a folder of one kind")
        names = {p.name[:-len(FLAT_SEG[0])]: p for p in flat}
        return {name: (path, flat_edition(name)) for name, path in names.items()}
    listing = find_cases(gt_dir, "give --gt a folder of ground-truth cases (any BraTS edition) or of "
                                 "<case>-seg.nii.gz files")
    if listing.misnamed:
        raise UserError(f"--gt: {next(iter(listing.misnamed.values()))}")
    lacking = [c for c in listing.cases if not c.seg.is_file()]
    if lacking:
        raise UserError(f"{lacking[0].name}: its ground truth {lacking[0].seg} is missing ({len(lacking)} of "
                        f"{len(listing.cases)} cases under {gt_dir} have none); every ground-truth case is "
                        "scored: restore the file, or move the case out of --gt")
    return {c.name: (c.seg, c.edition) for c in listing.cases}


def compatible(pred_labels: str, gt_edition: str) -> bool:
    """Predictions hold 2024's values (predict.py's default) or the ground truth's own; 2023's values
    are 2024's without RC, so the two go together."""
    return pred_labels in ("2024", gt_edition) or {pred_labels, gt_edition} <= {"2023", "2024"}


def load_labels(path: Path, case: str, edition: Edition = EDITIONS["2024"]) -> tuple[np.ndarray, np.ndarray]:
    """A label map of `edition` (checked) in the 2024 meaning (uint8), and its affine."""
    data, affine = load_volume(case, path)
    return labels_from_array(data, f"{case}: {path.name}", edition), affine


def score_folders(pred_dir: Path, gt_dir: Path, label_map_quirk: bool = False, only_predicted: bool = False,
                  pred_labels: str = "2024") -> dict:
    """Scores of every prediction in pred_dir (label values of edition `pred_labels`); every
    ground-truth case must have one unless `only_predicted` (then the cases without one are listed
    under "unscored"). `label_map_quirk`: legacy HD95 as the official code computes it
    (metrics.region_scores)."""
    if not pred_dir.is_dir() or not gt_dir.is_dir():
        raise UserError(f"--pred {pred_dir} and --gt {gt_dir} must both be folders")
    truths = ground_truths(gt_dir)
    gt_cases = sorted(truths)
    if not gt_cases:
        raise UserError(f"no ground truth found under {gt_dir} (<case>-seg.nii.gz, <case>_seg.nii.gz or labelsTr/)")
    editions = sorted({e.key for _, e in truths.values()})
    clash = [e for e in editions if not compatible(pred_labels, e)]
    if clash:
        gt_edition = EDITIONS[clash[0]]
        raise UserError(f"--labels {pred_labels} contradicts the ground truth under {gt_dir}, which is "
                        f"{gt_edition.title} ({gt_edition.key}, from its layout and case ids): predictions "
                        f"hold 2024's values (predict.py's default) or the ground truth's own; give --labels "
                        f"2024 or --labels {gt_edition.key}")
    missing = [c for c in gt_cases if not (pred_dir / f"{c}.nii.gz").exists()]
    if missing and not only_predicted:
        raise UserError(f"{missing[0]}: prediction {pred_dir / (missing[0] + '.nii.gz')} is missing "
                        f"({len(missing)} of {len(gt_cases)} ground-truth cases have none); "
                        "--only-predicted scores the cases that have one")
    if len(missing) == len(gt_cases):
        raise UserError(f"none of the {len(gt_cases)} ground-truth cases under {gt_dir} has a prediction "
                        f"<case>.nii.gz in {pred_dir}")
    cases = {}
    for case in tqdm([c for c in gt_cases if c not in missing], desc="score", unit="case"):
        pred_path = pred_dir / f"{case}.nii.gz"
        pred, pred_affine = load_labels(pred_path, case, EDITIONS[pred_labels])
        gt_path, gt_edition = truths[case]
        gt, gt_affine = load_labels(gt_path, case, gt_edition)
        if pred.shape != gt.shape:
            raise UserError(f"{case}: prediction shape {pred.shape} differs from ground truth {gt.shape}")
        if not np.allclose(pred_affine, gt_affine, atol=AFFINE_TOLERANCE_MM, rtol=0):
            raise UserError(f"{case}: the prediction's affine differs from the ground truth's; write "
                            "predictions on the input's grid (src/predict.py does)")
        cases[case] = case_scores(pred, gt, spacing_of(gt_affine), label_map_quirk)
    extra = sorted(p.name.removesuffix(".nii.gz") for p in pred_dir.glob("*.nii.gz")
                   if p.name.removesuffix(".nii.gz") not in truths)
    return {"cases": cases, "mean": mean_scores(list(cases.values())),
            "ci95": intervals(list(cases.values()), CI_KEYS, REGIONS), "unscored": missing,
            "without_ground_truth": extra}


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
    weights = fold_weights(paths.models_dir, params.train.folds)
    pp_file = paths.models_dir / postprocessing.FILE
    postprocessing.check_weights(pp_file, weights)
    predictor = Predictor(weights, Settings.of(ep, device), device)
    predictor.pp = pp = postprocessing.load(pp_file, predictor.spec.regions)
    manifest = load_manifest(paths.preprocessed_dir)
    cases = load_split(paths.preprocessed_dir, "test")
    per_case, raw_case = {}, {}
    with atomic_folder(paths.predictions_dir) as predictions, \
            atomic_folder(paths.metrics_dir / OVERLAYS_DIR) as overlays:
        for i, case in enumerate(tqdm(cases, desc="evaluate", unit="case")):
            # predicted at the training spacing, scored and written on the case's own grid
            entry = manifest[case]
            image = open_case(paths.preprocessed_dir, case)[0].read()
            gt, shape = native_labels(paths.preprocessed_dir, case, entry), native_shape(entry)
            spacing = tuple(entry["native_spacing_mm"])
            raw, pred = predictor.labels(image, shape, spacing)
            per_case[case] = case_scores(pred, gt, spacing)
            raw_case[case] = per_case[case] if pred is raw else case_scores(raw, gt, spacing)
            original = restore(pred, tuple(map(tuple, entry["crop_box"])), tuple(entry["original_shape"]),
                               np.array(entry["original_affine"]))
            write_nifti(predictions / f"{case}.nii.gz", original, np.array(entry["original_affine"]))
            if i < ep.overlays:
                shown = image if image.shape[1:] == shape else resample.images(image, shape, "linear")
                overlay(overlays / f"{case}.png", shown, gt, pred, case)
        mean, raw_mean = mean_scores(list(per_case.values())), mean_scores(list(raw_case.values()))
        metrics = {key: {r: round(mean[r][key], 4) for r in REGIONS} for key in KEYS}
        metrics["ci95"] = intervals(list(per_case.values()), CI_KEYS, REGIONS)
        metrics["no_postprocessing"] = {key: {r: round(raw_mean[r][key], 4) for r in REGIONS} for key in RAW_KEYS}
        metrics["cases"] = len(cases)
        columns = [*KEYS, "tp", "fp", "fn"]
        write_json(paths.metrics_dir / "evaluate.json", metrics)
        write_csv(paths.metrics_dir / "evaluate_cases.csv", ["case"] + [f"{k}_{r}" for k in columns for r in REGIONS],
                  ([case] + [round(s[r][k], 4) for k in columns for r in REGIONS] for case, s in per_case.items()))
        model_card.write(paths.model_card, read(weights[0]), pp, metrics, params, len(weights))
    print("without post-processing:\n" + table(raw_mean))
    print("with post-processing (what predict writes):\n" + table(mean))
    print(f"95 % intervals over the {len(cases)} test cases (bootstrap, src/stats.py):\n"
          + interval_table(mean, metrics["ci95"]))
    return metrics


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Evaluate stage, or (with --pred/--gt/--out) a BraTS scorer.")
    ap.add_argument("--pred", type=Path, help="folder of <case>.nii.gz predictions")
    ap.add_argument("--gt", type=Path, help="ground truth in any edition's layout (case folders with their seg, "
                                            "<case>-seg.nii.gz files, a Decathlon task folder)")
    ap.add_argument("--out", type=Path, help="scores JSON to write")
    ap.add_argument("--labels", choices=tuple(EDITIONS), default="2024",
                    help="the edition whose label values the predictions hold (predict.py --labels): 2024 (default) "
                         "or the ground truth's own edition")
    ap.add_argument("--only-predicted", action="store_true",
                    help="score only the ground-truth cases that have a prediction (default: all must have one)")
    ap.add_argument("--leaderboard-hd95", action="store_true",
                    help="legacy HD95 exactly as the official code computes it, quirk included: the inside "
                         "of lesions numbered 2 or more counts as surface (docs/scorer.md)")
    args = ap.parse_args(argv)
    given = [a is not None for a in (args.pred, args.gt, args.out)]
    if any(given) and not all(given):
        ap.error("--pred, --gt and --out go together")
    if all(given):
        result = score_folders(args.pred, args.gt, args.leaderboard_hd95, args.only_predicted, args.labels)
        write_json(args.out, result)
        print(table(result["mean"]))
        print(interval_table(result["mean"], result["ci95"]))
        if result["without_ground_truth"]:
            extra = result["without_ground_truth"]
            print(f"{len(extra)} prediction(s) without ground truth under {args.gt} were not scored "
                  f"({', '.join(extra[:3])}{' …' if len(extra) > 3 else ''}; listed under \"without_ground_truth\")")
        if result["unscored"]:
            print(f"{len(result['unscored'])} ground-truth case(s) without a prediction were not scored "
                  f"(listed under \"unscored\" in {args.out})")
        return
    evaluate(load_params())


if __name__ == "__main__":
    run_stage(main)
