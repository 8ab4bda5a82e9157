"""Stage `preprocess`: validate raw BraTS cases and store them ready for training.

For every case folder under `paths.raw_dir` (synthetic or real BraTS 2024):
  validate (four modalities, one grid, finite values, labels 0..4) ->
  reorient to RAS -> crop to the head (non-zero) box -> z-score each modality inside the head ->
  `<preprocessed_dir>/cases/<case>/image.npy` (4, X, Y, Z) float32 and `label.npy` (X, Y, Z) uint8,
  plain .npy files that a training worker memory-maps to cut a patch without reading the whole case.
Then `manifest.json` (patient, crop box, original shape and affine of each case), `splits.json`
(a seeded train/val/test split grouped by patient) and `report.json` (skipped cases and why).

Each case is written to a temporary folder and renamed into place, so no half-written case remains
whatever happens. Workers each hold one case at a time, so memory does not grow with the dataset.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from brats import EDITION, MODALITIES, is_case_dir, patient_of
from errors import UserError, run_stage
from files import write_json
from geometry import Box, crop, foreground_box, to_canonical
from nifti import CaseError, RawCase, read_case
from params import Params, PreprocessParams, load_params

IMAGE_FILE = "image.npy"
LABEL_FILE = "label.npy"


@dataclass(frozen=True)
class Outcome:
    case: str
    entry: dict | None   # manifest entry when the case was written
    error: str | None    # reason when it was not


def find_cases(raw_dir: Path) -> list[Path]:
    """Case folders (BraTS-GLI-PPPPP-VVV) directly under `raw_dir`, sorted by name."""
    if not raw_dir.is_dir():
        raise UserError(f"raw data folder {raw_dir} does not exist; run `dvc repro synthesize` for the "
                        "synthetic set, or set paths.raw_dir in params.yaml to your BraTS 2024 folder")
    cases = sorted(p for p in raw_dir.iterdir() if is_case_dir(p))
    if not cases:
        raise UserError(f"no case folders named like BraTS-GLI-00000-100 in {raw_dir}; "
                        "point paths.raw_dir at the folder that holds the case folders")
    return cases


def zscore(images: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Each channel minus its mean, over its std, both taken inside `mask`; zero outside the mask."""
    out = np.zeros_like(images, dtype=np.float32)
    for c, channel in enumerate(images):
        values = channel[mask].astype(np.float64)
        std = values.std()
        if std == 0:
            std = 1.0  # a constant channel carries no contrast; keep it at zero instead of dividing by 0
        out[c][mask] = ((values - values.mean()) / std).astype(np.float32)
    return out


def prepare(raw: RawCase) -> tuple[np.ndarray, np.ndarray | None, Box, np.ndarray]:
    """Reorient to RAS, crop to the head, z-score: the network's input, as training and prediction
    both need it. Returns images (4, x, y, z) float32, labels (x, y, z) or None, the crop box and
    the canonical affine."""
    images, affine = to_canonical(raw.images, raw.affine)
    labels = to_canonical(raw.seg, raw.affine)[0] if raw.seg is not None else None
    try:
        box = foreground_box(images, labels)
    except ValueError as e:
        raise CaseError(f"{raw.name}: {e}") from None
    images = crop(images, box)
    labels = np.ascontiguousarray(crop(labels, box)) if labels is not None else None
    return zscore(images, np.any(images != 0, axis=0)), labels, box, affine


def spacing_of(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel edge lengths (mm) along the array axes of an affine."""
    return tuple(float(v) for v in np.sqrt((affine[:3, :3] ** 2).sum(0)).round(6))


def preprocess_case(case_dir: Path, out_dir: Path) -> dict:
    """Validate, reorient, crop and normalise one case; write it atomically; return its manifest entry."""
    raw = read_case(case_dir, with_seg=True)
    images, labels, box, affine = prepare(raw)
    tmp = out_dir / f".tmp-{raw.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    np.save(tmp / IMAGE_FILE, images)
    np.save(tmp / LABEL_FILE, labels)
    final = out_dir / raw.name
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    return {
        "patient": patient_of(raw.name),
        "crop_box": [list(b) for b in box],
        "shape": list(labels.shape),
        "original_shape": list(raw.seg.shape),
        "original_affine": raw.affine.round(6).tolist(),
        "spacing_mm": list(spacing_of(affine)),
        "label_voxels": np.bincount(labels.ravel(), minlength=5).tolist(),
    }


def _work(job: tuple[Path, Path]) -> Outcome:
    case_dir, out_dir = job
    try:
        return Outcome(case_dir.name, preprocess_case(case_dir, out_dir), None)
    except UserError as e:
        return Outcome(case_dir.name, None, str(e))
    except Exception as e:  # an unforeseen failure still names the case
        return Outcome(case_dir.name, None, f"{case_dir.name}: {type(e).__name__}: {e}")


def run_cases(case_dirs: list[Path], out_dir: Path, p: PreprocessParams) -> list[Outcome]:
    """Process cases on `p.workers` processes; with on_error=fail, stop at the first failure."""
    jobs = [(c, out_dir) for c in case_dirs]
    outcomes = []
    try:
        with mp.get_context("spawn").Pool(min(p.workers, len(jobs))) as pool, \
                tqdm(total=len(jobs), desc="preprocess", unit="case") as bar:
            for outcome in pool.imap_unordered(_work, jobs, chunksize=1):
                bar.update()
                if outcome.error and p.on_error == "fail":
                    raise CaseError(f"{outcome.error}\n(set preprocess.on_error: skip in params.yaml "
                                    "to leave failing cases out and list them in the report)")
                outcomes.append(outcome)
    finally:
        # Leaving the pool terminates the workers; drop the cases they had not finished writing.
        for tmp in out_dir.glob(".tmp-*"):
            shutil.rmtree(tmp, ignore_errors=True)
    return sorted(outcomes, key=lambda o: o.case)


def split_patients(patients: list[str], val_fraction: float, test_fraction: float,
                   seed: int) -> dict[str, list[str]]:
    """Shuffle patients with `seed`, then cut them into test, val and train (at least one in train)."""
    order = sorted(set(patients))
    np.random.default_rng(seed).shuffle(order)
    n = len(order)
    n_test = int(round(n * test_fraction))
    n_val = int(round(n * val_fraction))
    if n_test and n_val and n_test + n_val >= n:
        raise UserError(f"only {n} patients: too few to split into train, val and test; "
                        "add cases or lower preprocess.val_fraction / test_fraction")
    return {"test": sorted(order[:n_test]), "val": sorted(order[n_test:n_test + n_val]),
            "train": sorted(order[n_test + n_val:])}


def split_cases(manifest: dict[str, dict], p: PreprocessParams, seed: int) -> dict[str, list[str]]:
    """Case names of each split; every visit of a patient lands in the same split."""
    by_patient = split_patients([e["patient"] for e in manifest.values()], p.val_fraction,
                                p.test_fraction, seed)
    which = {patient: name for name, group in by_patient.items() for patient in group}
    return {name: sorted(c for c, e in manifest.items() if which[e["patient"]] == name)
            for name in ("train", "val", "test")}


def preprocess(params: Params) -> dict:
    """The whole stage; returns the report."""
    raw_dir, out_dir = params.paths.raw_dir, params.paths.preprocessed_dir
    case_dirs = find_cases(raw_dir)
    cases_dir = out_dir / "cases"
    cases_dir.mkdir(parents=True, exist_ok=True)
    outcomes = run_cases(case_dirs, cases_dir, params.preprocess)
    manifest = {o.case: o.entry for o in outcomes if o.entry is not None}
    skipped = {o.case: o.error for o in outcomes if o.error is not None}
    if not manifest:
        raise UserError(f"no case of {raw_dir} could be preprocessed; see the reasons above")
    splits = split_cases(manifest, params.preprocess, params.base.seed)
    # No absolute paths in outputs: their hashes must not depend on where the repository lives.
    write_json(out_dir / "manifest.json", {"edition": EDITION, "modalities": list(MODALITIES),
                                           "cases": manifest})
    write_json(out_dir / "splits.json", splits)
    report = {"processed": len(manifest), "skipped": skipped,
              "split_sizes": {k: len(v) for k, v in splits.items()}}
    write_json(out_dir / "report.json", report)
    return report


def main() -> None:
    params = load_params()
    report = preprocess(params)
    print(f"preprocessed {report['processed']} cases into {params.paths.preprocessed_dir} "
          f"(train/val/test: {report['split_sizes']})")
    for case, reason in report["skipped"].items():
        print(f"skipped {case}: {reason}", file=sys.stderr)


if __name__ == "__main__":
    run_stage(main)
