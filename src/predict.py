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
from model import load_model
from nifti import read_case, write_nifti
from preprocess import prepare


def case_dirs(path: Path) -> list[Path]:
    if is_case_dir(path):
        return [path]
    if not path.is_dir():
        raise UserError(f"--input {path} is not a folder")
    found = sorted(p for p in path.iterdir() if is_case_dir(p))
    if not found:
        raise UserError(f"--input {path} holds no case folders named like BraTS-GLI-00000-100")
    return found


def predict_case(model: torch.nn.Module, case_dir: Path, patch: tuple[int, int, int], overlap: float,
                 batch: int, mirror: bool, precision: str) -> tuple[np.ndarray, np.ndarray]:
    """Label map (uint8) on the case's own grid, and that grid's affine."""
    raw = read_case(case_dir, with_seg=False)
    images, _, box, _ = prepare(raw)
    probs = predict_probs(model, images, patch, overlap, batch, mirror, precision)
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
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    model, saved = load_model(args.weights, args.device)
    patch = tuple(saved["params"]["train.patch"])
    precision = "bf16" if args.device.startswith("cuda") else "fp32"
    cases = case_dirs(args.input)
    args.output.mkdir(parents=True, exist_ok=True)
    failed = {}
    for case_dir in tqdm(cases, desc="predict", unit="case"):
        try:
            labels, affine = predict_case(model, case_dir, patch, args.overlap, args.batch, args.mirror, precision)
        except UserError as e:
            if args.fail_fast:
                raise
            failed[case_dir.name] = str(e)
            print(f"error: {e}", file=sys.stderr)
            continue
        write_nifti(args.output / f"{case_dir.name}.nii.gz", labels, affine)
    print(f"wrote {len(cases) - len(failed)} of {len(cases)} predictions to {args.output}")
    if failed:
        print(f"{len(failed)} case(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    run_stage(lambda: sys.exit(main()))
