"""Preprocess: every bad input gets a clear error; geometry, normalisation and splits are right."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from errors import UserError
from geometry import restore, to_canonical
from helpers import write_case
from layout import IMAGE_FILE, LABEL_FILE, Stored
from nifti import CaseError, read_case, write_nifti
from editions import case_at, find_cases
from params import load_params
from prepare import zscore
from preprocess import RAW_DIR_HINT, preprocess, preprocess_case, split_cases, split_patients

CASE = "BraTS-GLI-00001-100"


@pytest.fixture
def one_case(tmp_path, small_case) -> Path:
    images, labels, affine = small_case
    return write_case(tmp_path / "raw", CASE, images, labels, affine)


def rewrite(case_dir: Path, suffix: str, array: np.ndarray, affine: np.ndarray | None = None) -> None:
    path = case_dir / f"{case_dir.name}-{suffix}.nii.gz"
    write_nifti(path, array, nib.load(path).affine if affine is None else affine)


def test_valid_case_reads(one_case, small_case):
    raw = read_case(case_at(one_case), with_seg=True)
    np.testing.assert_array_equal(raw.images, small_case[0])
    np.testing.assert_array_equal(raw.seg, small_case[1])


def test_missing_modality(one_case):
    (one_case / f"{CASE}-t2f.nii.gz").unlink()
    with pytest.raises(CaseError, match=rf"{CASE}: missing file {CASE}-t2f\.nii\.gz"):
        read_case(case_at(one_case), with_seg=True)


def test_missing_seg_only_matters_when_asked(one_case):
    (one_case / f"{CASE}-seg.nii.gz").unlink()
    assert read_case(case_at(one_case), with_seg=False).seg is None
    with pytest.raises(CaseError, match=rf"missing file {CASE}-seg"):
        read_case(case_at(one_case), with_seg=True)


def test_shape_mismatch(one_case, small_case):
    rewrite(one_case, "t1c", small_case[0][1][:-1])
    with pytest.raises(CaseError, match=rf"{CASE}: {CASE}-t1c\.nii\.gz has shape \(39, 48, 40\) but "
                                        rf"{CASE}-t1n\.nii\.gz has \(40, 48, 40\)"):
        read_case(case_at(one_case), with_seg=True)


def test_affine_mismatch(one_case, small_case):
    shifted = small_case[2].copy()
    shifted[0, 3] += 2.0
    rewrite(one_case, "t2w", small_case[0][2], shifted)
    with pytest.raises(CaseError, match=rf"{CASE}: the affine of {CASE}-t2w\.nii\.gz differs .* by up to 2 mm"):
        read_case(case_at(one_case), with_seg=True)


def test_affine_within_tolerance_is_accepted(one_case, small_case):
    nudged = small_case[2].copy()
    nudged[1, 3] += 1e-5   # header rounding, as real files have
    rewrite(one_case, "t2w", small_case[0][2], nudged)
    read_case(case_at(one_case), with_seg=True)


def test_truncated_file(one_case):
    path = one_case / f"{CASE}-t1n.nii.gz"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CaseError, match=rf"{CASE}: cannot read {CASE}-t1n\.nii\.gz.*truncated or corrupt"):
        read_case(case_at(one_case), with_seg=True)


def test_not_gzip_at_all(one_case):
    (one_case / f"{CASE}-t1c.nii.gz").write_bytes(b"this is not a NIfTI file")
    with pytest.raises(CaseError, match=rf"cannot read {CASE}-t1c\.nii\.gz"):
        read_case(case_at(one_case), with_seg=True)


def test_nan_voxels(one_case, small_case):
    image = small_case[0][3].copy()
    image[10, 10, 10] = np.nan
    image[11, 10, 10] = np.inf
    rewrite(one_case, "t2f", image)
    with pytest.raises(CaseError, match=rf"{CASE}: {CASE}-t2f\.nii\.gz has 2 NaN or infinite voxels"):
        read_case(case_at(one_case), with_seg=True)


def test_label_5(one_case, small_case):
    seg = small_case[1].copy()
    seg[20, 20, 20] = 5
    rewrite(one_case, "seg", seg)
    with pytest.raises(CaseError, match=rf"{CASE}: {CASE}-seg\.nii\.gz: label value 5 is not a BraTS 2024 GLI label"):
        read_case(case_at(one_case), with_seg=True)


def test_negative_label(one_case, small_case):
    rewrite(one_case, "seg", small_case[1].astype(np.int16) - 1)
    with pytest.raises(CaseError, match="label value -1"):
        read_case(case_at(one_case), with_seg=True)


def test_float_label_file_is_rounded(one_case, small_case):
    wobble = np.random.default_rng(0).uniform(-1e-6, 1e-6, small_case[1].shape)   # float noise: 2.0000001
    rewrite(one_case, "seg", (small_case[1] + wobble).astype(np.float32))
    raw = read_case(case_at(one_case), with_seg=True)
    assert raw.seg.dtype == np.uint8
    np.testing.assert_array_equal(raw.seg, small_case[1])


def test_fractional_label_is_refused_not_rounded(one_case, small_case):
    seg = small_case[1].astype(np.float32)
    seg[20, 20, 20] = 2.5
    rewrite(one_case, "seg", seg)
    with pytest.raises(CaseError, match=rf"{CASE}-seg\.nii\.gz: label value 2.5 is not a whole number"):
        read_case(case_at(one_case), with_seg=True)


def test_one_absurd_intensity_is_refused(one_case, small_case):
    image = small_case[0][1].copy()
    image[20, 20, 20] = 1e30                 # would flatten the whole channel after z-scoring
    rewrite(one_case, "t1c", image)
    with pytest.raises(CaseError, match=rf"{CASE}: {CASE}-t1c\.nii\.gz has 1 voxel\(s\) above 1000 × the head's"):
        read_case(case_at(one_case), with_seg=True)
    image[20, 20, 20] = 5 * small_case[0][1].max()      # bright, but plausible
    rewrite(one_case, "t1c", image)
    read_case(case_at(one_case), with_seg=True)


def test_4d_volume_is_refused(one_case, small_case):
    rewrite(one_case, "t1n", np.stack([small_case[0][0]] * 2, axis=-1))
    with pytest.raises(CaseError, match=r"has shape \(40, 48, 40, 2\); a 3D volume is expected"):
        read_case(case_at(one_case), with_seg=True)


def lps_copy(images: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The same head stored as older BraTS files are: affine diag(-1, -1, 1), axes 0 and 1 flipped."""
    shape = labels.shape
    affine = np.diag([-1.0, -1.0, 1.0, 1.0])
    affine[:3, 3] = [shape[0] - 1, shape[1] - 1, 0]  # so every voxel keeps its world position
    return images[:, ::-1, ::-1].copy(), labels[::-1, ::-1].copy(), affine


def test_non_ras_input_gives_the_same_arrays_as_ras(tmp_path, small_case):
    images, labels, _ = small_case
    ras_dir = write_case(tmp_path / "raw", "BraTS-GLI-00001-100", images, labels, np.eye(4))
    lps_dir = write_case(tmp_path / "raw", "BraTS-GLI-00002-100", *lps_copy(images, labels))
    out = tmp_path / "out"
    out.mkdir()
    ras_entry, lps_entry = preprocess_case(case_at(ras_dir), out), preprocess_case(case_at(lps_dir), out)
    for name in (IMAGE_FILE, LABEL_FILE):
        np.testing.assert_array_equal(Stored(out / ras_dir.name / name).read(),
                                      Stored(out / lps_dir.name / name).read())
    assert ras_entry["crop_box"] == lps_entry["crop_box"]
    assert lps_entry["original_affine"][0][0] == -1.0


@pytest.mark.parametrize("layout", ["ras", "lps", "las"])
def test_manifest_round_trip_rebuilds_the_original_labels(tmp_path, small_case, layout):
    images, labels, affine = small_case   # "las": the synthetic MNI affine diag(-4, 4, 4)
    if layout == "ras":
        affine = np.eye(4)
    elif layout == "lps":
        images, labels, affine = lps_copy(images, labels)
    case_dir = write_case(tmp_path / "raw", CASE, images, labels, affine)
    out = tmp_path / "out"
    out.mkdir()
    entry = json.loads(json.dumps(preprocess_case(case_at(case_dir), out)))  # as read back from manifest.json
    cropped = Stored(out / CASE / LABEL_FILE).read()
    rebuilt = restore(cropped, tuple(map(tuple, entry["crop_box"])), tuple(entry["original_shape"]),
                      np.array(entry["original_affine"]))
    original = np.asanyarray(nib.load(case_dir / f"{CASE}-seg.nii.gz").dataobj)
    np.testing.assert_array_equal(rebuilt, original)
    assert entry["shape"] == list(cropped.shape) and cropped.shape != original.shape  # it was cropped


def test_stored_case_is_cropped_and_zscored_inside_the_head(tmp_path, one_case, small_case):
    out = tmp_path / "out"
    out.mkdir()
    entry = preprocess_case(case_at(one_case), out)
    image = Stored(out / CASE / IMAGE_FILE).read()
    assert image.dtype == np.float16 and image.shape[0] == 4
    # independent expectation: canonical raw images, cropped by the recorded box
    canonical, _ = to_canonical(small_case[0], small_case[2])
    box = entry["crop_box"]
    raw = canonical[:, box[0][0]:box[0][1], box[1][0]:box[1][1], box[2][0]:box[2][1]]
    head = np.any(raw != 0, axis=0)
    assert head[0].any() and head[-1].any() and head[:, 0].any() and head[:, :, -1].any()  # tight box
    for c in range(4):
        inside = np.asarray(image[c])[head].astype(np.float64)
        assert abs(inside.mean()) < 1e-4 and abs(inside.std() - 1) < 1e-3   # float16: ~1e-3 relative
        assert np.all(np.asarray(image[c])[~head] == 0)
        expected = (raw[c][head] - raw[c][head].mean()) / raw[c][head].std()
        np.testing.assert_allclose(inside, expected, rtol=2 ** -11, atol=1e-7)   # float16 rounding


def test_manifest_digest_follows_the_intensities_not_only_the_labels(tmp_path, one_case, small_case):
    """Training and tuning fingerprint the manifest: a case whose images change while its labels do
    not (a changed generator) must change it, or a resumed run or an Optuna study would carry over."""
    out = tmp_path / "out"
    out.mkdir()
    first = preprocess_case(case_at(one_case), out)
    again = preprocess_case(case_at(one_case), tmp_path / "out")
    assert first == again
    images = small_case[0].copy()
    images[3][images[3] > 0] *= 1.5          # FLAIR brighter; z-scoring keeps a linear change, so bend it
    images[3] = np.sqrt(images[3])
    rewrite(one_case, "t2f", images[3])
    changed = preprocess_case(case_at(one_case), out)
    assert changed["label_voxels"] == first["label_voxels"] and changed["crop_box"] == first["crop_box"]
    assert changed["sha256"] != first["sha256"]


def test_zscore_by_hand():
    images = np.array([[[[0.0, 1.0], [3.0, 0.0]]]])  # (C=1, 1, 2, 2): head voxels 1 and 3
    mask = images[0] != 0
    out = zscore(images, mask)
    np.testing.assert_allclose(out[0][mask], [-1.0, 1.0])   # mean 2, std 1
    assert np.all(out[0][~mask] == 0)
    constant = zscore(np.ones((1, 2, 2, 2)), np.ones((2, 2, 2), bool))
    assert np.all(constant == 0)


def test_split_is_grouped_by_patient_seeded_and_covers_everyone():
    patients = [f"BraTS-GLI-{i:05d}" for i in range(20)]
    a = split_patients(patients, 0.15, 0.25, seed=1)
    assert split_patients(patients, 0.15, 0.25, seed=1) == a
    assert split_patients(patients, 0.15, 0.25, seed=2) != a
    assert sorted(sum(a.values(), [])) == patients
    assert (len(a["test"]), len(a["val"]), len(a["train"])) == (5, 3, 12)


def test_folds_hold_out_every_training_patient_once_and_leave_test_alone():
    # 10 patients, some with two visits; 3 folds over the train and val patients
    manifest = {f"BraTS-GLI-{p:05d}-{v:03d}": {"patient": f"BraTS-GLI-{p:05d}"}
                for p in range(10) for v in range(100, 100 + 1 + p % 2)}
    p = load_params().preprocess
    one = split_cases(manifest, p, seed=3)
    three = split_cases(manifest, p, seed=3, folds=3)
    assert one["folds"] == [{"train": one["train"], "val": one["val"]}]
    assert {k: three[k] for k in ("train", "val", "test")} == {k: one[k] for k in ("train", "val", "test")}
    pool = sorted(one["train"] + one["val"])
    held_out = [c for fold in three["folds"] for c in fold["val"]]
    assert sorted(held_out) == pool                                   # each case held out exactly once
    patient = lambda case: manifest[case]["patient"]                   # noqa: E731
    sizes = []
    for fold in three["folds"]:
        assert sorted(fold["train"] + fold["val"]) == pool
        assert not {patient(c) for c in fold["train"]} & {patient(c) for c in fold["val"]}   # grouped
        assert not set(fold["train"] + fold["val"]) & set(one["test"])
        sizes.append(len({patient(c) for c in fold["val"]}))
    assert max(sizes) - min(sizes) <= 1
    assert split_cases(manifest, p, seed=3, folds=3) == three        # seeded
    assert split_cases(manifest, p, seed=4, folds=3)["folds"] != three["folds"]
    with pytest.raises(UserError, match="train.folds asks for 9 folds, but only 8 patients"):
        split_cases(manifest, p, seed=3, folds=9)


def test_too_few_patients_to_split():
    with pytest.raises(UserError, match="only 2 patients"):
        split_patients(["BraTS-GLI-00001", "BraTS-GLI-00002"], 0.4, 0.4, seed=0)


def test_whole_stage(raw_dir, params_for):
    params = params_for(paths__raw_dir=str(raw_dir), paths__preprocessed_dir="pre",
                        preprocess__val_fraction=0.34, preprocess__test_fraction=0.34)
    report = preprocess(params)
    out = params.paths.preprocessed_dir
    manifest = json.loads((out / "manifest.json").read_text())
    splits = json.loads((out / "splits.json").read_text())
    assert splits.pop("folds") == [{"train": splits["train"], "val": splits["val"]}]   # train.folds [0]
    assert report["processed"] == 4 and report["skipped"] == {}
    assert sorted(manifest["cases"]) == sorted(p.name for p in raw_dir.iterdir())
    assert sorted(sum(splits.values(), [])) == sorted(manifest["cases"])
    owner = {}
    for split, cases in splits.items():
        for case in cases:
            patient = manifest["cases"][case]["patient"]
            assert owner.setdefault(patient, split) == split, f"{patient} is in two splits"
    assert manifest["cases"]["BraTS-GLI-00001-101"]["patient"] == "BraTS-GLI-00001"
    assert all(len(cases) for cases in splits.values())
    assert not list((out / "cases").glob(".tmp-*"))


def test_workers_do_not_change_results(raw_dir, params_for, tmp_path):
    one = params_for(paths__raw_dir=str(raw_dir), paths__preprocessed_dir="one", preprocess__workers=1)
    two = params_for(paths__raw_dir=str(raw_dir), paths__preprocessed_dir="two", preprocess__workers=2)
    preprocess(one), preprocess(two)
    files = sorted(p.relative_to(tmp_path / "one") for p in (tmp_path / "one").rglob("*") if p.is_file())
    assert files
    for f in files:
        assert (tmp_path / "one" / f).read_bytes() == (tmp_path / "two" / f).read_bytes(), f


def break_one_case(raw_dir: Path) -> str:
    bad = "BraTS-GLI-00002-100"
    seg = raw_dir / bad / f"{bad}-seg.nii.gz"
    seg.write_bytes(gzip.compress(b"\0" * 10))
    return bad


def test_on_error_skip_lists_the_case_and_keeps_the_rest(raw_dir, params_for):
    bad = break_one_case(raw_dir)
    params = params_for(paths__raw_dir=str(raw_dir), paths__preprocessed_dir="pre",
                        preprocess__on_error="skip", preprocess__val_fraction=0.0,
                        preprocess__test_fraction=0.34)
    report = preprocess(params)
    out = params.paths.preprocessed_dir
    assert report["processed"] == 3 and list(report["skipped"]) == [bad]
    assert "cannot read" in report["skipped"][bad] and f"{bad}-seg.nii.gz" in report["skipped"][bad]
    assert json.loads((out / "report.json").read_text())["skipped"] == report["skipped"]
    manifest = json.loads((out / "manifest.json").read_text())["cases"]
    assert bad not in manifest and not (out / "cases" / bad).exists()
    splits = json.loads((out / "splits.json").read_text())
    assert bad not in splits["train"] + splits["val"] + splits["test"]


def test_on_error_fail_stops_with_the_reason_and_leaves_nothing_half_written(raw_dir, params_for):
    bad = break_one_case(raw_dir)
    params = params_for(paths__raw_dir=str(raw_dir), paths__preprocessed_dir="pre", preprocess__workers=2)
    with pytest.raises(CaseError, match=rf"(?s){bad}: cannot read {bad}-seg\.nii\.gz.*on_error: skip"):
        preprocess(params)
    out = params.paths.preprocessed_dir
    assert not out.exists() and not list(out.parent.glob(".tmp-*"))   # nothing written, nothing left over


def complete_output(raw_dir, params_for, **overrides):
    """Params whose preprocessed folder already holds a complete output of raw_dir, and its files."""
    params = params_for(paths__raw_dir=str(raw_dir), paths__preprocessed_dir="pre", preprocess__val_fraction=0.0,
                        preprocess__test_fraction=0.34, **overrides)
    preprocess(params)
    out = params.paths.preprocessed_dir
    return params, {p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def test_full_disk_stops_the_stage_and_keeps_the_complete_earlier_output(raw_dir, params_for, monkeypatch):
    params, before = complete_output(raw_dir, params_for, preprocess__on_error="skip", preprocess__workers=1)
    import errno

    real_write, calls = Path.write_bytes, []

    def disk_full_on_the_second_case(path, data):
        calls.append(path)
        if len(calls) == 3:                  # image of the second case
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real_write(path, data)
    monkeypatch.setattr(Path, "write_bytes", disk_full_on_the_second_case)
    # with on_error: skip, a full disk is still not a bad case: the stage stops, naming path and reason
    with pytest.raises(UserError, match=r"BraTS-GLI-00001-101: cannot write the preprocessed case: .*image\.b2nd: "
                                        r"No space left on device"):
        preprocess(params)
    out = params.paths.preprocessed_dir
    after = {p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    assert after == before                   # the earlier, complete output is untouched
    assert not list(out.parent.glob(".tmp-*"))


def test_killed_worker_ends_the_stage_with_the_case_it_held(raw_dir, tmp_path):
    """kill -9 one preprocess worker (what the OOM killer does): no hang, one line naming the cases."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from helpers import checkout
    repo = checkout(tmp_path / "repo", {"paths.raw_dir": str(raw_dir), "preprocess.workers": 2,
                                        "preprocess.val_fraction": 0.0, "preprocess.test_fraction": 0.34})
    proc = subprocess.Popen([sys.executable, "src/preprocess.py"], cwd=repo, stderr=subprocess.PIPE, text=True)
    victim = None
    for _ in range(3000):                    # the spawned workers appear as children of the stage
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
        pids = children.read_text().split() if children.exists() else []
        workers = [p for p in pids if "spawn" in Path(f"/proc/{p}/cmdline").read_text(errors="ignore")] \
            if pids else []
        if workers:
            victim = int(workers[0])
            break
        time.sleep(0.01)
    assert victim, "no worker process appeared"
    os.kill(victim, signal.SIGKILL)
    _, err = proc.communicate(timeout=60)    # ends within seconds, does not wait forever
    assert proc.returncode == 1 and "Traceback" not in err, err
    assert "a preprocess worker died while it held BraTS-GLI-" in err and "memory" in err
    assert not (repo / "data" / "preprocessed").exists()


def test_ctrl_c_with_workers_is_one_line(raw_dir, tmp_path):
    """Ctrl-C reaches the whole process group, workers included: one line, exit 130, nothing kept."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from helpers import checkout
    repo = checkout(tmp_path / "repo", {"paths.raw_dir": str(raw_dir), "preprocess.workers": 2,
                                        "preprocess.val_fraction": 0.0, "preprocess.test_fraction": 0.34})
    proc = subprocess.Popen([sys.executable, "src/preprocess.py"], cwd=repo, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)             # its own process group, as a terminal gives
    for _ in range(3000):
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
        pids = children.read_text().split() if children.exists() else []
        if sum("spawn" in Path(f"/proc/{p}/cmdline").read_text(errors="ignore") for p in pids) >= 2:
            break
        time.sleep(0.01)
    time.sleep(0.05)                                             # workers still starting up
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("interrupted:")
    assert not (repo / "data" / "preprocessed").exists()


def test_misnamed_case_folder_fails_or_is_reported(raw_dir, params_for, small_case):
    images, labels, affine = small_case
    write_case(raw_dir, "BraTS-GLI-0000-100", images, labels, affine)     # 4-digit patient
    (raw_dir / "notes.txt").write_text("scanner protocol")
    params = params_for(paths__raw_dir=str(raw_dir), paths__preprocessed_dir="pre",
                        preprocess__val_fraction=0.0, preprocess__test_fraction=0.34)
    with pytest.raises(CaseError, match=r"BraTS-GLI-0000-100: named like a case but not BraTS-GLI-PPPPP-VVV"):
        preprocess(params)
    report = preprocess(params_for(paths__raw_dir=str(raw_dir), paths__preprocessed_dir="pre",
                                   preprocess__on_error="skip", preprocess__val_fraction=0.0,
                                   preprocess__test_fraction=0.34))
    assert "BraTS-GLI-0000-100" in report["skipped"] and report["processed"] == 4
    assert report["ignored"] == {"notes.txt": "a file, not a case folder"}


def test_when_every_case_fails_the_reasons_are_given(raw_dir, params_for):
    for case_dir in raw_dir.iterdir():
        (case_dir / f"{case_dir.name}-t2f.nii.gz").unlink()
    params = params_for(paths__raw_dir=str(raw_dir), paths__preprocessed_dir="pre", preprocess__on_error="skip")
    with pytest.raises(UserError, match=r"(?s)could be preprocessed:\n.*BraTS-GLI-00001-100: missing file "
                                        r"BraTS-GLI-00001-100-t2f.*BraTS-GLI-00003-100: missing file"):
        preprocess(params)


def test_raw_folder_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist.*paths.raw_dir"):
        find_cases(tmp_path / "missing", RAW_DIR_HINT)
    (tmp_path / "empty" / "not-a-case").mkdir(parents=True)
    with pytest.raises(UserError, match="no BraTS cases in .*BraTS-GLI-00000-100"):
        find_cases(tmp_path / "empty", RAW_DIR_HINT)


def test_all_zero_case(tmp_path, small_case):
    case_dir = write_case(tmp_path / "raw", CASE, np.zeros_like(small_case[0]),
                          np.zeros_like(small_case[1]), small_case[2])
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(CaseError, match=f"{CASE}: the images are zero everywhere"):
        preprocess_case(case_at(case_dir), out)
    shutil.rmtree(out)
