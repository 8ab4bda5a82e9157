"""The synthetic dataset: official layout, valid labels, byte-identical reruns, and not trivial."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from brats import CASE_PATTERN, MODALITIES, REGIONS, patient_of
from params import SynthesizeParams
from synthesize import make_case, mni_affine, plan, synthesize

TINY = SynthesizeParams(patients=3, visits=3, grid=(40, 48, 40), spacing_mm=4.0, workers=1)


def md5s(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.md5(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_same_params_give_byte_identical_files_with_any_number_of_workers(tmp_path):
    synthesize(TINY, 11, tmp_path / "a")
    synthesize(dataclasses.replace(TINY, workers=2), 11, tmp_path / "b")
    a, b = md5s(tmp_path / "a"), md5s(tmp_path / "b")
    assert a and a == b
    synthesize(TINY, 12, tmp_path / "c")
    assert md5s(tmp_path / "c") != a


def test_layout_types_and_geometry(tmp_path):
    names = synthesize(TINY, 11, tmp_path)
    assert sorted(names) == sorted(p.name for p in tmp_path.iterdir())
    assert not list(tmp_path.glob(".tmp*"))
    for name in names:
        assert CASE_PATTERN.match(name)
        files = sorted(p.name for p in (tmp_path / name).iterdir())
        assert files == sorted(f"{name}-{s}.nii.gz" for s in (*MODALITIES, "seg"))
        for mod in MODALITIES:
            img = nib.load(tmp_path / name / f"{name}-{mod}.nii.gz")
            assert img.get_data_dtype() == np.float32 and img.shape == TINY.grid
            np.testing.assert_allclose(img.affine, mni_affine(TINY.spacing_mm))
        seg = nib.load(tmp_path / name / f"{name}-seg.nii.gz")
        assert seg.get_data_dtype() == np.uint8
        assert set(np.unique(np.asanyarray(seg.dataobj))) <= {0, 1, 2, 3, 4}


def test_mni_affine_matches_fsl_templates():
    # FSL's MNI152_T1_1mm (182x218x182) and _2mm (91x109x91) headers.
    np.testing.assert_array_equal(mni_affine(1.0), [[-1, 0, 0, 90], [0, 1, 0, -126], [0, 0, 1, -72],
                                                    [0, 0, 0, 1]])
    np.testing.assert_array_equal(mni_affine(2.0), [[-2, 0, 0, 90], [0, 2, 0, -126], [0, 0, 2, -72],
                                                    [0, 0, 0, 1]])


def test_plan_gives_some_patients_several_visits():
    cases = plan(SynthesizeParams(patients=16, visits=3, grid=(91, 109, 91), spacing_mm=2.0, workers=1), 2024)
    visits = np.bincount([p for p, _ in cases])
    assert len(visits) == 16 and visits.min() >= 1 and visits.max() == 3


def test_brats_2024_grid_works():
    images, labels, affine = make_case(0, 1, 0, (182, 218, 182), 1.0)
    assert images.shape == (4, 182, 218, 182) and labels.shape == (182, 218, 182)
    assert labels.any() and np.all(images[:, 0, 0, 0] == 0)


def best_threshold_iou(values: np.ndarray, target: np.ndarray) -> float:
    """Best IoU of `values > t` or `values < t` with `target`, over every threshold t."""
    best = 0.0
    for sign in (1.0, -1.0):
        order = np.argsort(-sign * values, kind="stable")
        v, hits = values[order], target[order]
        tp = np.cumsum(hits)
        predicted = np.arange(1, len(v) + 1)
        can_cut = np.r_[v[1:] != v[:-1], True]  # a threshold cannot split equal values
        iou = tp / (target.sum() + predicted - tp)
        best = max(best, float(iou[can_cut].max()))
    return best


def test_best_threshold_iou_agrees_with_brute_force():
    rng = np.random.default_rng(0)
    values = rng.integers(0, 12, 200).astype(float)
    target = rng.random(200) < 0.3
    brute = max(max(np.sum((values > t) & target) / np.sum((values > t) | target),
                    np.sum((values < t) & target) / np.sum((values < t) | target))
                for t in np.arange(-0.5, 12.5, 0.5))
    assert best_threshold_iou(values, target) == pytest.approx(brute)


@pytest.fixture(scope="module")
def default_dataset():
    """Every case of the default params, in memory (labels and images)."""
    params = SynthesizeParams(patients=16, visits=3, grid=(91, 109, 91), spacing_mm=2.0, workers=1)
    return [make_case(2024, p, v, params.grid, params.spacing_mm) for p, v in plan(params, 2024)]


def test_default_dataset_is_varied(default_dataset):
    present = [set(np.unique(labels)) for _, labels, _ in default_dataset]
    assert any(4 not in s for s in present) and any(4 in s for s in present)   # with and without RC
    assert any(3 not in s for s in present) and any(3 in s for s in present)   # with and without ET
    volumes = [np.isin(labels, REGIONS["WT"]).sum() for _, labels, _ in default_dataset]
    assert min(volumes) > 0 and max(volumes) > 5 * min(volumes)
    centres = [np.argwhere(labels > 0).mean(0) for _, labels, _ in default_dataset]
    assert np.ptp(centres, axis=0).min() > 10  # tumours at different places


def test_tumour_compartments_have_their_signal(default_dataset):
    t1n, t1c, t2w, t2f = range(4)
    for images, labels, _ in default_dataset:
        brain = images[0] > 0
        normal = brain & (labels == 0)
        # intensities are in arbitrary scanner units: compare with the same image's normal tissue
        med = lambda m, mask: np.median(images[m][mask])  # noqa: E731
        if (labels == 2).sum() > 50:
            assert med(t2f, labels == 2) > med(t2f, normal)      # oedema bright on FLAIR
        if (labels == 3).sum() > 50:
            assert med(t1c, labels == 3) > med(t1c, normal)      # enhancing rim on T1c
        if (labels == 4).sum() > 50:
            assert med(t2w, labels == 4) > med(t2w, normal)      # fluid-filled cavity
            assert med(t1n, labels == 4) < med(t1n, normal)


def test_no_single_modality_threshold_finds_the_whole_tumour(default_dataset):
    worst = 0.0
    for images, labels, _ in default_dataset:
        brain = images[0] > 0
        wt = np.isin(labels, REGIONS["WT"])[brain]
        for m in range(len(MODALITIES)):
            worst = max(worst, best_threshold_iou(images[m][brain], wt))
    assert worst < 0.7


def test_patient_of_case_ids():
    assert patient_of("BraTS-GLI-00012-101") == "BraTS-GLI-00012"
    with pytest.raises(ValueError):
        patient_of("BraTS-GLI-12-101")
