"""Stage `preprocess`: validate raw BraTS cases and store them ready for training.

For every case under `paths.raw_dir` (synthetic, or real BraTS of any edition: src/editions.py):
  validate (four modalities, one grid, finite values, the edition's labels, mapped to 2024's) ->
  reorient to RAS -> crop to the head (non-zero) box -> resample to `preprocess.spacing_mm` (unless
  keep) -> z-score each modality inside the head ->
  `<preprocessed_dir>/cases/<case>/image.b2nd` (4, X, Y, Z) float16 and `label.b2nd` (X, Y, Z) uint8,
  chunked and compressed (src/layout.py), so a training worker cuts a patch without reading the case;
  a resampled case also keeps its labels on its own grid (`native_label.b2nd`), to score against.
Then `manifest.json` (edition, spacing; patient, crop box, original shape and affine, and the sha256 of
the prepared image and labels of each case),
`splits.json` (a seeded train/val/test split grouped by patient, and the `train.folds` cross-validation
folds of the train and val patients) and `report.json` (skipped cases and why).

The whole output is written beside `preprocessed_dir` and swapped in at the end, so an earlier output
is replaced only by a complete new one. Only problems of an input case are skipped (with
`on_error: skip`); a failure to write (full disk, read-only folder) or a worker killed by the system
stops the stage with one line naming the path or the case. Workers each hold one case at a time, so
memory does not grow with the dataset.
"""

from __future__ import annotations

import hashlib
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from brats import EDITION, LABELS, MODALITIES
from editions import Case, edition_of, find_cases
from errors import UserError, describe_os_error, run_stage
from files import atomic_folder, write_json
from layout import CASES_DIR, MANIFEST_FILE, REPORT_FILE, SPLITS_FILE, write_case
from nifti import CaseError, read_case
from parallel import run_each
from params import Params, PreprocessParams, load_params
from prepare import prepare

RAW_DIR_HINT = ("run `dvc repro synthesize` for the synthetic set, or set paths.raw_dir in params.yaml to "
                "the folder that holds your BraTS cases (any edition: docs/real-data.md)")
SKIP_HINT = "(set preprocess.on_error: skip in params.yaml to leave failing cases out and list them in the report)"


@dataclass(frozen=True)
class Outcome:
    case: str
    entry: dict | None   # manifest entry when the case was written
    error: str | None    # what is wrong with the input case when it was not


def preprocess_case(case: Case, out_dir: Path, spacing: tuple[float, float, float] | None = None,
                    interpolation: str = "cubic") -> dict:
    """Validate, reorient, crop, resample and normalise one case; write it into `out_dir` (the stage
    swaps the whole output in at the end); return its manifest entry. A problem of the case raises
    CaseError; a failure to write raises UserError (not skippable)."""
    raw = read_case(case, with_seg=True)
    prepared = prepare(raw, spacing, interpolation)
    try:
        write_case(out_dir / raw.name, prepared.image, prepared.labels,
                   prepared.native_labels if prepared.resampled else None)
    except OSError as e:
        raise UserError(f"{raw.name}: cannot write the preprocessed case: {describe_os_error(e)}") from None
    return {
        "patient": case.patient,
        "edition": raw.edition,
        "crop_box": [list(b) for b in prepared.box],
        "shape": list(prepared.labels.shape),
        "original_shape": list(raw.seg.shape),
        "original_affine": raw.affine.round(6).tolist(),
        "spacing_mm": list(prepared.spacing),
        "native_spacing_mm": list(prepared.native_spacing),
        "label_voxels": np.bincount(prepared.native_labels.ravel(), minlength=len(LABELS)).tolist(),
        # training and tuning fingerprint the manifest, so new intensities with the same labels (a
        # changed generator, another scanner export) are new data to them
        "sha256": digest(prepared.image, prepared.labels),
    }


def digest(*arrays: np.ndarray) -> str:
    """sha256 of the arrays' bytes, one after the other, without copying them into one buffer."""
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).data)
    return h.hexdigest()


def _work(job: tuple[Case, Path, PreprocessParams]) -> Outcome:
    """One case; only a problem of the case itself becomes an Outcome, anything else stops the stage."""
    case, out_dir, p = job
    try:
        return Outcome(case.name, preprocess_case(case, out_dir, p.target_spacing, p.interpolation), None)
    except CaseError as e:
        return Outcome(case.name, None, str(e))


def run_cases(cases: list[Case], out_dir: Path, p: PreprocessParams) -> list[Outcome]:
    """Process cases on `p.workers` processes; with on_error=fail, stop at the first bad case."""
    outcomes = []
    with tqdm(total=len(cases), desc="preprocess", unit="case") as bar:
        jobs = [(c, out_dir, p) for c in cases]
        for outcome in run_each(_work, jobs, min(p.workers, len(jobs)), lambda job: job[0].name, "preprocess"):
            bar.update()
            if outcome.error and p.on_error == "fail":
                raise CaseError(f"{outcome.error}\n{SKIP_HINT}")
            outcomes.append(outcome)
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


def fold_patients(patients: list[str], k: int, seed: int) -> list[list[str]]:
    """Patients shuffled with `seed` and dealt into `k` folds whose sizes differ by one at most."""
    order = sorted(set(patients))
    if k > len(order):
        raise UserError(f"train.folds asks for {k} folds, but only {len(order)} patients are outside the test "
                        "split: use fewer folds or add cases")
    np.random.default_rng(seed).shuffle(order)
    return [sorted(order[i::k]) for i in range(k)]


def split_cases(manifest: dict[str, dict], p: PreprocessParams, seed: int, folds: int = 1) -> dict:
    """Case names of each split; every visit of a patient lands in the same split. `folds`: the
    cross-validation folds over the training patients (train and val together; test stays out),
    each {"train", "val"}; with one fold, the train/val split itself."""
    by_patient = split_patients([e["patient"] for e in manifest.values()], p.val_fraction,
                                p.test_fraction, seed)
    which = {patient: name for name, group in by_patient.items() for patient in group}
    splits: dict = {name: sorted(c for c, e in manifest.items() if which[e["patient"]] == name)
                    for name in ("train", "val", "test")}
    if folds == 1:
        splits["folds"] = [{"train": splits["train"], "val": splits["val"]}]
        return splits
    held_out = fold_patients(by_patient["train"] + by_patient["val"], folds, seed)
    pool = splits["train"] + splits["val"]
    splits["folds"] = [{"train": sorted(c for c in pool if manifest[c]["patient"] not in group),
                        "val": sorted(c for c in pool if manifest[c]["patient"] in group)} for group in held_out]
    return splits


SPACING_DECIMALS = 2      # voxel sizes equal to 0.01 mm are one spacing (headers round differently)


def check_one_spacing(manifest: dict[str, dict], raw_dir: Path) -> None:
    """Under `spacing_mm: keep` every case must have one voxel size: the network learns at one scale,
    the weights record one, and predict resamples every input to it."""
    groups: dict[tuple, list[str]] = {}
    for case, entry in sorted(manifest.items()):
        groups.setdefault(tuple(round(v, SPACING_DECIMALS) for v in entry["native_spacing_mm"]), []).append(case)
    if len(groups) > 1:
        (a, first), (b, second) = sorted(groups.items(), key=lambda g: -len(g[1]))[:2]
        mm = lambda s: "×".join(f"{v:g}" for v in s) + " mm"  # noqa: E731
        raise UserError(f"{raw_dir} mixes voxel sizes: {len(first)} case(s) at {mm(a)} (e.g. {first[0]}) and "
                        f"{len(second)} at {mm(b)} (e.g. {', '.join(second[:3])})"
                        f"{f' and {len(groups) - 2} other size(s)' if len(groups) > 2 else ''}, but "
                        "preprocess.spacing_mm is keep: set it to one spacing (e.g. 1 or 2) to resample every "
                        "case to it, or keep one voxel size per folder")


def preprocess(params: Params) -> dict:
    """The whole stage, written beside `preprocessed_dir` and swapped in when complete; returns the report."""
    raw_dir, out_dir = params.paths.raw_dir, params.paths.preprocessed_dir
    listing = find_cases(raw_dir, RAW_DIR_HINT, params.preprocess.edition)
    if listing.misnamed and params.preprocess.on_error == "fail":
        raise CaseError(f"{next(iter(listing.misnamed.values()))}\n{SKIP_HINT}")
    try:
        with atomic_folder(out_dir) as tmp:
            outcomes = run_cases(listing.cases, tmp / CASES_DIR, params.preprocess)
            manifest = {o.case: o.entry for o in outcomes if o.entry is not None}
            skipped = {**listing.misnamed, **{o.case: o.error for o in outcomes if o.error is not None}}
            if not manifest:
                reasons = "\n".join(f"  {reason}" for reason in skipped.values())
                raise UserError(f"no case of {raw_dir} could be preprocessed:\n{reasons}")
            if params.preprocess.target_spacing is None:
                check_one_spacing(manifest, raw_dir)
            splits = split_cases(manifest, params.preprocess, params.base.seed, len(params.train.folds))
            # No absolute paths in outputs: their hashes must not depend on where the repository lives.
            target = params.preprocess.target_spacing
            write_json(tmp / MANIFEST_FILE, {"edition": edition_of(listing), "labels": EDITION,
                                             "modalities": list(MODALITIES),
                                             "spacing_mm": list(target) if target else "keep", "cases": manifest})
            write_json(tmp / SPLITS_FILE, splits)
            report = {"processed": len(manifest), "skipped": skipped,
                      "split_sizes": {k: len(splits[k]) for k in ("train", "val", "test")},
                      "folds": len(splits["folds"])}
            if listing.ignored:                      # entries of raw_dir that are not case folders
                report["ignored"] = listing.ignored
            write_json(tmp / REPORT_FILE, report)
    except OSError as e:
        raise UserError(f"cannot write the preprocessed data: {describe_os_error(e)}") from None
    return report


def main() -> None:
    params = load_params()
    report = preprocess(params)
    print(f"preprocessed {report['processed']} cases into {params.paths.preprocessed_dir} "
          f"(train/val/test: {report['split_sizes']}; {report['folds']} cross-validation fold(s))")
    for case, reason in report["skipped"].items():
        print(f"skipped {case}: {reason}", file=sys.stderr)
    for name, reason in report.get("ignored", {}).items():
        print(f"ignored {params.paths.raw_dir / name}: {reason}", file=sys.stderr)


if __name__ == "__main__":
    run_stage(main)
