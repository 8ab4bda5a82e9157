"""The synthetic dataset: official layout, valid labels, byte-identical reruns, and not trivial."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from brats import CASE_PATTERN, MODALITIES, REGIONS, patient_of
from params import RandomiseParams, SynthesizeParams
from prepare import zscore
from scipy import ndimage

from helpers import ROOT, bench_module
from synthesize import DEEP_GREY, anatomy, coordinates, make_case, mni_affine, plan, synthesize


hardness = bench_module("hardness")

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


def test_best_threshold_iou_agrees_with_brute_force():
    rng = np.random.default_rng(0)
    values = rng.integers(0, 12, 200).astype(float)
    target = rng.random(200) < 0.3
    brute = max(max(np.sum((values > t) & target) / np.sum((values > t) | target),
                    np.sum((values < t) & target) / np.sum((values < t) | target))
                for t in np.arange(-0.5, 12.5, 0.5))
    assert hardness.best_threshold_iou(values, target) == pytest.approx(brute)


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
    """Oedema FLAIR-bright and the cavity fluid-like in every case; the enhancing rim T1c-brighter
    than normal tissue in nearly every case: in 2 of the 20 real BraTS 2018 cases its median is below
    the healthy tissue's (z -0.47 and -0.37, bench/results/sim2real.json), a thin rim averaged with
    the necrosis and oedema around it."""
    t1n, t1c, t2w, t2f = range(4)
    rims = []
    for images, labels, _ in default_dataset:
        brain = images[0] > 0
        normal = brain & (labels == 0)
        # intensities are in arbitrary scanner units: compare with the same image's normal tissue
        med = lambda m, mask: np.median(images[m][mask])  # noqa: E731
        if (labels == 2).sum() > 50:
            assert med(t2f, labels == 2) > med(t2f, normal)      # oedema bright on FLAIR
        if (labels == 3).sum() > 50:
            rims.append(med(t1c, labels == 3) > med(t1c, normal))   # enhancing rim on T1c
        if (labels == 4).sum() > 50:
            assert med(t2w, labels == 4) > med(t2w, normal)      # fluid-filled cavity
            assert med(t1n, labels == 4) < med(t1n, normal)
    assert np.mean(rims) >= 0.85, rims                           # real: 18 of 20


def test_no_single_modality_threshold_finds_the_whole_tumour(default_dataset):
    """Per case, the best threshold of any one modality against the whole tumour. On real scans FLAIR
    alone does well in some cases: on the 20 public BraTS 2018 cases (at 2 mm) the best per-case IoU
    has median 0.53, 8 cases at 0.70 or more, maximum 0.86 (T1, T1c and T2 stay below 0.63). The
    synthetic set must be at least as hard, so that a model learns to combine the modalities. One data
    seed is one draw (seed 3 alone gives median 0.62, maximum 0.96: bench/results/hardness.json), so
    the cases of seeds 2024, 1 and 2 are pooled and judged with their intervals
    (bench/hardness.py's pooled_verdict)."""
    best = [hardness.case_hardness(images, labels) for images, labels, _ in default_dataset]
    params = SynthesizeParams(patients=16, visits=3, grid=(91, 109, 91), spacing_mm=2.0, workers=1)
    for seed in (1, 2):
        best += hardness.seed_hardness(params, seed, progress=False)
    verdict = hardness.pooled_verdict(best)
    assert verdict["cases"] > 80
    assert verdict["limits_hold"], verdict


# Per-case statistics of 20 public BraTS 2018 training cases (bench/results/sim2real.json, "real"):
# the quartiles over cases. The synthetic set's median must fall inside them (volumes: see below).
REAL_QUARTILES = {
    "brain_cm3": (1404.0, 1531.0),
    "head_z_mm": (127.5, 147.5),  # real: median 137.5 (the cerebellum and brainstem below the cerebrum)
    "tc_cm3": (32.1, 94.7),
    "snfh_over_tc": (0.77, 1.60),
    ("t2f", 2): (1.38, 2.18),   # FLAIR in oedema, z-scored over the head
    ("t2f", 1): (1.26, 2.93),   # FLAIR in necrosis: bright, as in real gliomas
    ("t1c", 3): (1.03, 2.08),   # T1c in enhancing tumour
    ("t1c", 1): (-0.94, -0.11),  # T1c in necrosis
    ("t1n", 1): (-1.04, -0.21),
}


def case_figures(images: np.ndarray, labels: np.ndarray, affine: np.ndarray) -> dict:
    head = images[0] > 0
    spacing = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    voxel_cm3 = float(np.prod(spacing)) / 1000
    tc = np.isin(labels, REGIONS["TC"])
    slices = np.flatnonzero(head.any(axis=(0, 1)))
    out = {"brain_cm3": head.sum() * voxel_cm3, "head_z_mm": (slices[-1] - slices[0] + 1) * spacing[2],
           "tc_cm3": tc.sum() * voxel_cm3,
           "snfh_over_tc": (labels == 2).sum() / tc.sum() if tc.any() else None}
    for name, label in (key for key in REAL_QUARTILES if isinstance(key, tuple)):
        m = MODALITIES.index(name)
        values = images[m][head]
        z = (images[m] - values.mean()) / values.std()
        out[(name, label)] = float(np.median(z[labels == label])) if (labels == label).sum() > 20 else None
    return out


def test_tumours_and_contrast_resemble_real_gliomas(default_dataset):
    """Sizes, oedema/core ratio and tumour contrast where real BraTS cases put them, and the
    contrast drawn per case (a spread across cases like the real one, not one value)."""
    figures = [case_figures(*case) for case in default_dataset]
    for key, (low, high) in REAL_QUARTILES.items():
        values = [f[key] for f in figures if f[key] is not None]
        median = float(np.median(values))
        # post-treatment cases (resected, smaller) pull the synthetic tumour-core volume down: allow
        # two thirds of the real lower quartile
        low = low * 2 / 3 if key == "tc_cm3" else low
        assert low <= median <= high, (key, median)
    t1c_et = [f[("t1c", 3)] for f in figures if f[("t1c", 3)] is not None]
    q1, q3 = np.percentile(t1c_et, [25, 75])
    assert q3 - q1 > 0.5   # real: 1.06; one fixed signal per tissue gave 0.46


def test_healthy_tissue_is_more_textured_than_oedema_as_in_real_scans(default_dataset):
    """In the 20 real cases at 2 mm, healthy tissue carries at least as much fine structure
    as oedema (median high-pass std, bench/results/sim2real.json: T1 0.28 vs 0.17, T1c 0.37 vs 0.26,
    T2 0.33 vs 0.22, FLAIR 0.32 vs 0.32). A generator whose oedema was the rougher tissue (T2 0.21 vs
    0.27, FLAIR 0.25 vs 0.34) taught a network that rough and bright is tumour, and it painted real
    cerebella and temporal lobes as oedema."""
    s2r = bench_module("sim2real")   # the statistics the real cases were measured with
    rough = {name: [] for name in MODALITIES}
    for images, labels, _ in default_dataset:
        head = (images != 0).any(axis=0)
        z = zscore(images, head)
        for m, name in enumerate(MODALITIES):
            t = s2r.texture(z[m], head, {"healthy": head & (labels == 0), "SNFH": labels == 2})
            if t["SNFH"] is not None:
                rough[name].append((t["healthy"], t["SNFH"]))
    for name, pairs in rough.items():
        healthy, oedema = np.median(np.array(pairs), axis=0)
        assert 0.2 <= healthy <= 0.45, (name, healthy)            # real: 0.26-0.40
        assert oedema <= healthy * 1.1, (name, healthy, oedema)   # real: 0.66-1.0; before: up to 1.35


def test_healthy_intensity_from_bottom_to_top_follows_real_scans(default_dataset):
    """Healthy tissue's median z per eighth of the head's height, bottom first. Real (20
    cases): FLAIR -0.11 0.05 0.07 0.06 -0.02 -0.03 -0.06 -0.29, so the skull base is not FLAIR-bright
    on the whole; T1 -0.51 -0.19 at the bottom (cerebellar grey matter) against 0.35-0.47 mid-brain.
    The generator that brightened FLAIR toward the skull base (0.71 0.44 in the bottom two) and had a
    T1-bright cerebellum (0.11) taught a network that the real cerebellum, T1-darker with normal
    FLAIR, was tumour."""
    s2r = bench_module("sim2real")   # the statistics the real cases were measured with
    profiles = {name: [] for name in MODALITIES}
    for images, labels, _ in default_dataset:
        head = (images != 0).any(axis=0)
        z = zscore(images, head)
        for m, name in enumerate(MODALITIES):
            profiles[name].append(s2r.height_profile(z[m], head, head & (labels == 0)))
    flair = np.median(np.array(profiles["t2f"], dtype=float), axis=0)
    t1 = np.median(np.array(profiles["t1n"], dtype=float), axis=0)
    assert np.all(np.abs(flair[:2]) < 0.3), flair
    assert t1[0] < 0 and t1[0] < t1[3:6].mean() - 0.3, t1


def test_anatomy_has_cerebellum_brainstem_and_deep_grey():
    """Below the cerebrum, tissue (cerebellum and brainstem), and deep grey nuclei where they belong:
    without them a network takes real inferior and deep slices for tumour."""
    grid, spacing = (91, 109, 91), 2.0
    xyz = coordinates(grid, spacing)
    brain, tissue, cerebral_r = anatomy(np.random.default_rng(0), grid, spacing, xyz)
    assert np.count_nonzero(brain & (cerebral_r >= 1.0)) * spacing ** 3 / 1000 > 50   # cm³
    for centre, _ in DEEP_GREY:      # the nucleus' centre, right and left, is mostly grey matter
        for side in (-1, 1):
            mm = (side * centre[0], centre[1], centre[2])
            index = tuple(int(round(c / spacing + (n - 1) / 2)) for c, n in zip(mm, grid))
            assert tissue[1][index] > 0.5, (centre, side)


def test_oedema_is_always_connected_to_the_tumour(default_dataset):
    for _, labels, _ in default_dataset:
        pieces, n = ndimage.label(labels > 0)
        with_core = np.unique(pieces[np.isin(labels, (1, 3, 4))])
        assert set(range(1, n + 1)) <= set(with_core.tolist())


def test_patient_of_case_ids():
    assert patient_of("BraTS-GLI-00012-101") == "BraTS-GLI-00012"
    with pytest.raises(ValueError):
        patient_of("BraTS-GLI-12-101")


# --- domain randomisation (synthesize.randomise) ---

class NoDraws:
    """A random generator that fails the test when anything is drawn from it."""
    def __getattr__(self, name):
        raise AssertionError(f"randomisation drew {name}() although every synthesize.randomise param is 0")


def test_randomisation_off_draws_nothing_and_on_changes_only_the_images(monkeypatch):
    import synthesize as synth
    grid, spacing = TINY.grid, TINY.spacing_mm
    base = make_case(5, 1, 0, grid, spacing)
    # off: the generator of the randomisation is never touched
    real_rng = np.random.default_rng

    def guarded(seed):
        return NoDraws() if list(seed)[-1:] == [11] else real_rng(seed)
    monkeypatch.setattr(synth.np.random, "default_rng", guarded)
    off = make_case(5, 1, 0, grid, spacing, RandomiseParams(0.0, 0.0, 0.0, 0.0, 0.0))
    monkeypatch.undo()
    assert np.array_equal(off[0], base[0]) and np.array_equal(off[1], base[1])
    # each draw on its own: same labels, other images; the images inside the brain only
    brain = base[0][0] > 0
    for name in ("contrast", "resolution", "bias", "gamma", "noise"):
        values = {"contrast": 0.0, "resolution": 0.0, "bias": 0.0, "gamma": 0.0, "noise": 0.0}
        values[name] = 1.0 if name in ("contrast", "resolution") else 0.5
        images, labels, _ = make_case(5, 1, 0, grid, spacing, RandomiseParams(**values))
        assert np.array_equal(labels, base[1]), name
        assert not np.array_equal(images, base[0]), name
        assert np.all(images[:, ~brain] == 0) and np.all(images[:, brain] >= 1), name


def test_wild_contrast_draws_every_tissue_in_its_range_and_in_any_order():
    from synthesize import TISSUES, TISSUE_SIGNAL, wild_contrast
    rng = np.random.default_rng(0)
    draws = np.stack([wild_contrast(rng) for _ in range(400)])
    assert draws.shape == (400, len(TISSUES))
    assert draws.min() >= 0.05 and draws.max() <= 1.2
    assert draws.min() < 0.08 and draws.max() > 1.15           # the whole range is used
    wm, csf = TISSUES.index("wm"), TISSUES.index("csf")
    # the fitted T1n contrast has white matter far brighter than CSF; wild draws invert it about half the time
    assert TISSUE_SIGNAL["wm"][0] > TISSUE_SIGNAL["csf"][0]
    assert 0.4 < np.mean(draws[:, csf] > draws[:, wm]) < 0.6


def test_acquire_blurs_along_the_coarse_axes_only_and_keeps_the_grid():
    """Stripes 1 voxel wide at 2 mm, one volume per axis, each acquired with the same draw: an axis
    acquired with voxels larger than 2 mm loses its stripes, the others keep them exactly; a constant
    stays constant."""
    from synthesize import acquire
    grid = (24, 26, 22)
    stripes = [np.broadcast_to((np.arange(n) % 2).reshape([-1 if a == axis else 1 for a in range(3)]), grid) * 1.0
               for axis, n in enumerate(grid)]
    seen = {"none": 0, "one axis": 0, "all axes": 0}
    for seed in range(40):
        np.testing.assert_allclose(acquire(np.full(grid, 3.0), 2.0, np.random.default_rng(seed)), 3.0, atol=1e-9)
        lost = []
        for axis in range(3):
            out = acquire(stripes[axis], 2.0, np.random.default_rng(seed))
            assert out.shape == grid
            if np.allclose(out, stripes[axis], atol=1e-9):
                lost.append(False)
            else:
                inner = out[2:-2, 2:-2, 2:-2]
                assert np.abs(np.diff(inner, axis=axis)).mean() < 0.5      # the stripes are gone, not just moved
                lost.append(True)
        assert sum(lost) in (0, 1, 3), lost
        seen[{0: "none", 1: "one axis", 3: "all axes"}[sum(lost)]] += 1
    assert all(seen.values()), seen           # 3D finer than the grid, thick slices, coarse 3D all drawn


def test_randomise_params_are_checked():
    from params import ParamsError, load_params
    with pytest.raises(ParamsError, match=r"synthesize\.randomise\.contrast: 1\.5 is out of range"):
        load_params(ROOT / "params.yaml", {"synthesize.randomise.contrast": 1.5})
    with pytest.raises(ParamsError, match=r"unknown key synthesize\.randomise\.blur"):
        load_params(ROOT / "params.yaml", {"synthesize.randomise.blur": 0.1})
