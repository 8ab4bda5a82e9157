"""Predict BraTS 2024 label maps for new cases: a valid challenge submission.

    python src/predict.py --weights models/model.pt --input CASES_DIR --output PRED_DIR

`--input` is one case folder (`BraTS-GLI-PPPPP-VVV/` with the four modalities; no seg needed) or a
folder of them. Each case is checked as preprocess checks it, prepared the same way (RAS, crop,
z-score), segmented by sliding-window inference and written as `<output>/<case>.nii.gz`: uint8 labels
0-4 on the input's own grid, with its shape and affine. A bad case is reported and skipped
(`--fail-fast` stops instead); the exit status is 1 if any case failed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from brats import is_case_dir
from errors import UserError, run_stage
from geometry import restore
from inference import predict_probs, probs_to_labels
from nifti import read_case, write_nifti
from prepare import Listing, find_cases, prepare, spacing_of
from runtime import resolve_precision
from weights import InferenceSpec, load_model

SPACING_TOLERANCE = 0.1   # relative voxel-size difference from the training data before a warning


def case_dirs(path: Path) -> Listing:
    """`path` itself when it is a case folder, else every entry of the folder (cases and the rest)."""
    if is_case_dir(path):
        return Listing([path], {}, {})
    return find_cases(path, "give --input a case folder (BraTS-GLI-PPPPP-VVV) or a folder of them")


def predict_case(model: torch.nn.Module, case_dir: Path, spec: InferenceSpec, overlap: float,
                 batch: int, mirror: bool, precision: str) -> tuple[np.ndarray, np.ndarray]:
    """Label map (uint8) on the case's own grid, and that grid's affine."""
    raw = read_case(case_dir, with_seg=False)
    images, _, box, affine = prepare(raw)
    spacing = np.array(spacing_of(affine))
    if np.any(np.abs(spacing / np.array(spec.spacing_mm) - 1) > SPACING_TOLERANCE):
        print(f"warning: {raw.name}: voxel size {tuple(spacing)} mm differs from the training data's "
              f"{spec.spacing_mm} mm; resample the case to that grid for reliable results", file=sys.stderr)
    probs = predict_probs(model, images, spec.patch, overlap, batch, mirror, precision)
    labels = probs_to_labels(probs)
    return restore(labels, box, raw.images.shape[1:], raw.affine), raw.affine


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--weights", type=Path, required=True, help="weights file from the train stage")
    ap.add_argument("--input", type=Path, required=True, help="a case folder, or a folder of case folders")
    ap.add_argument("--output", type=Path, required=True, help="folder for <case>.nii.gz predictions")
    ap.add_argument("--overlap", type=float, default=0.5, help="sliding-window overlap (default 0.5)")
    ap.add_argument("--batch", type=int, default=2, help="windows per forward pass (default 2)")
    ap.add_argument("--mirror", action="store_true", help="average over the 8 axis flips (8x slower)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--fail-fast", action="store_true", help="stop at the first bad case")
    args = ap.parse_args(argv)
    if not 0 <= args.overlap < 1:
        ap.error(f"--overlap {args.overlap}: must be at least 0 and below 1")
    if args.batch < 1:
        ap.error(f"--batch {args.batch}: must be 1 or more")
    try:
        device = torch.device(args.device)
    except RuntimeError:
        ap.error(f"--device {args.device!r}: not a device (cpu, cuda, cuda:1, ...)")
    if device.type == "cuda" and not torch.cuda.is_available():
        ap.error(f"--device {args.device}: no CUDA GPU is available here; use --device cpu")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    model, spec = load_model(args.weights, args.device)
    precision = resolve_precision("auto", args.device)
    listing = case_dirs(args.input)
    cases = listing.cases
    for name, reason in listing.ignored.items():
        print(f"ignored {args.input / name}: {reason}", file=sys.stderr)
    if listing.misnamed and args.fail_fast:
        raise UserError(next(iter(listing.misnamed.values())))
    args.output.mkdir(parents=True, exist_ok=True)
    failed = dict(listing.misnamed)
    for reason in failed.values():
        print(f"error: {reason}", file=sys.stderr)
    for case_dir in tqdm(cases, desc="predict", unit="case"):
        try:
            labels, affine = predict_case(model, case_dir, spec, args.overlap, args.batch, args.mirror, precision)
        except UserError as e:
            if args.fail_fast:
                raise
            failed[case_dir.name] = str(e)
            print(f"error: {e}", file=sys.stderr)
            continue
        write_nifti(args.output / f"{case_dir.name}.nii.gz", labels, affine)
    total = len(cases) + len(listing.misnamed)
    print(f"wrote {total - len(failed)} of {total} predictions to {args.output}")
    if failed:
        print(f"{len(failed)} case(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    run_stage(lambda: sys.exit(main()))
