"""Training at a chosen spacing: resampling geometry, label round trips, and predictions that land on
the input's own grid whatever its voxel size."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch

import predict
import resample
from brats import MODEL_REGIONS, REGIONS, labels_to_regions, region_mask, regions_to_labels
from editions import case_at
from helpers import write_case
from inference import resize
from layout import NATIVE_LABEL_FILE, Stored, native_labels
from metrics import dice
from nifti import read_case
from prepare import prepare
from preprocess import preprocess, preprocess_case
from errors import UserError


def test_target_shape_and_spacing_by_hand():
    assert resample.target_shape((240, 240, 155), (1.0, 1.0, 1.0), (2.0, 2.0, 2.0)) == (120, 120, 78)
    assert resample.spacing_after((240, 240, 155), (1.0, 1.0, 1.0), (120, 120, 78)) == (2.0, 2.0, 1.987179)
    assert resample.target_shape((10, 10, 4), (1.0, 1.0, 3.0), (2.0, 2.0, 2.0)) == (5, 5, 6)
    assert resample.target_shape((3, 3, 3), (1.0, 1.0, 1.0), (8.0, 8.0, 8.0)) == (1, 1, 1)  # never empty


def test_grids_are_aligned_at_their_outer_edges():
    # a linear ramp along x: new voxel centre j lies at (j + 0.5)·n/m − 0.5 of the old grid
    n, m = 40, 16
    ramp = np.broadcast_to(np.arange(n, dtype=np.float32)[:, None, None], (n, 4, 4)).copy()
    expected = (np.arange(m) + 0.5) * n / m - 0.5
    for interpolation, edge in (("cubic", 2), ("linear", 0)):    # the spline bends at the edges
        out = resample.images(ramp[None], (m, 4, 4), interpolation)[0]
        np.testing.assert_allclose(out[edge:m - edge, 2, 2], expected[edge:m - edge], atol=1e-3)
    # the way back (inference.resize, torch) uses the same geometry: the ramp comes back exactly inside
    back = resize(torch.from_numpy(out[None].copy()), (n, 4, 4))[0].numpy()
    inner = slice(int(np.ceil(n / m / 2)), n - int(np.ceil(n / m / 2)))
    np.testing.assert_allclose(back[inner, 2, 2], np.arange(n)[inner], atol=1e-3)


def test_scipy_and_torch_linear_resampling_agree():
    volume = np.random.default_rng(0).random((13, 17, 11)).astype(np.float32)
    for shape in ((7, 30, 11), (26, 9, 5)):
        ours = resample.images(volume[None], shape, "linear")[0]
        theirs = resize(torch.from_numpy(volume[None]), shape)[0].numpy()
        np.testing.assert_allclose(ours, theirs, atol=1e-5)


def ball(shape, centre, radius_mm, spacing):
    grid = np.indices(shape).astype(np.float64)
    d2 = sum(((g - c) * s) ** 2 for g, c, s in zip(grid, centre, spacing))
    return d2 <= radius_mm ** 2


def nested_tumour(shape=(80, 90, 70), spacing=(1.0, 1.0, 1.0), rim: bool = False) -> np.ndarray:
    """Oedema around a core of necrosis and enhancing tissue, and a separate cavity: every region is a
    blob of over 1000 mm³ (`rim`: the enhancing tissue is instead a 5 mm shell around the necrosis)."""
    labels = np.zeros(shape, np.uint8)
    labels[ball(shape, (40, 45, 35), 22, spacing)] = 2
    if rim:
        labels[ball(shape, (42, 44, 36), 13, spacing)] = 3
        labels[ball(shape, (42, 44, 36), 8, spacing)] = 1
    else:
        labels[ball(shape, (48, 45, 35), 8, spacing)] = 3
        labels[ball(shape, (32, 45, 35), 8, spacing)] = 1
    labels[ball(shape, (12, 15, 15), 8, spacing)] = 4
    return labels


def round_trip(labels: np.ndarray) -> np.ndarray:
    """A 1 mm label map to 2 mm as preprocess stores it, and back as evaluate and predict come back: the
    region masks as probabilities, resized linearly, thresholded at 0.5."""
    coarse = resample.labels(labels, resample.target_shape(labels.shape, (1.0,) * 3, (2.0,) * 3))
    probs = torch.from_numpy(labels_to_regions(coarse).astype(np.float32))
    return regions_to_labels((resize(probs, labels.shape) > 0.5).numpy())


@pytest.mark.parametrize("rim", [False, True])
def test_every_label_survives_2mm_and_back(rim):
    labels = nested_tumour(rim=rim)
    for region in REGIONS:
        assert region_mask(labels, region).sum() >= 1000          # 1 mm voxels: mm³
    back = round_trip(labels)
    assert set(np.unique(back)) == {0, 1, 2, 3, 4}
    for region in REGIONS:      # a 5 mm rim is two 2 mm voxels thick, and loses as much as a small ball
        assert dice(region_mask(back, region), region_mask(labels, region)) >= 0.90, region


@pytest.mark.parametrize("radius_mm, least", [(6.2, 0.91), (10.0, 0.94), (14.0, 0.96), (20.0, 0.97)])
def test_round_trip_dice_by_blob_size(radius_mm, least):
    """A hard 2 mm label map places each border to within about a 1 mm: measured, balls of 1000 mm³
    (r 6.2 mm) keep Dice 0.93-0.95, 4200 mm³ (r 10) 0.944-0.955, 11500 mm³ (r 14) 0.966-0.968,
    33500 mm³ (r 20) 0.975, wherever the ball sits on the grid (a sphere has the least border per
    volume; the oedema of a glioma is 20000-100000 mm³)."""
    for offset in (0.0, 0.3, 0.5):
        labels = np.zeros((64, 64, 64), np.uint8)
        labels[ball(labels.shape, (31 + offset, 32 - offset, 31.7), radius_mm, (1.0,) * 3)] = 3
        back = round_trip(labels)
        assert dice(back == 3, labels == 3) >= least, offset


@pytest.mark.parametrize("radius_mm", [6.2, 10.0])
def test_the_way_back_keeps_dice_095_on_blobs_of_1000_mm3(radius_mm):
    """What limits the round trip above is the hard 2 mm label map training sees, not the way back:
    a network's output is a probability, and a 2 mm map of each voxel's region fraction (a perfectly
    calibrated prediction) comes back to 1 mm through evaluate's and predict's `inference.resize` with
    Dice ≥ 0.95 on balls of 1000 mm³ (measured 0.968-0.976; 10 mm: 0.983-0.987)."""
    for offset in (0.0, 0.3, 0.5):
        labels = np.zeros((64, 64, 64), np.uint8)
        labels[ball(labels.shape, (31 + offset, 32 - offset, 31.7), radius_mm, (1.0,) * 3)] = 3
        fraction = resample._zoom((labels == 3).astype(np.float32), (32, 32, 32), 1)
        assert ((fraction > 0.05) & (fraction < 0.95)).sum() > 50        # soft at the border, as probabilities
        back = resize(torch.from_numpy(fraction[None]), labels.shape)[0].numpy() >= 0.5
        assert dice(back, labels == 3) >= 0.95, offset


def test_same_spacing_means_no_resampling(small_case):
    images, labels, affine = small_case
    from nifti import RawCase
    raw = RawCase("x", images, labels, affine)
    plain, same = prepare(raw), prepare(raw, (4.0, 4.0, 4.0))
    assert not same.resampled and np.array_equal(plain.image, same.image)
    assert np.array_equal(plain.labels, same.labels)


def test_preprocess_at_a_chosen_spacing_keeps_the_native_labels(tmp_path):
    spacing = (1.0, 1.0, 1.0)
    labels = nested_tumour(spacing=spacing)
    rng = np.random.default_rng(1)
    head = ball(labels.shape, (40, 45, 35), 34, spacing) | (labels > 0)
    images = np.stack([np.where(head, rng.uniform(50, 60, labels.shape) + 30 * (labels == v), 0)
                       for v in (1, 3, 4, 2)]).astype(np.float32)
    case_dir = write_case(tmp_path / "raw", "BraTS-GLI-00001-100", images, labels, np.eye(4))
    out = tmp_path / "cases"                   # as preprocess lays it out: <preprocessed>/cases/<case>
    entry = json.loads(json.dumps(preprocess_case(case_at(case_dir), out, (2.0, 2.0, 2.0))))
    stored_image, stored_labels = (Stored(out / "BraTS-GLI-00001-100" / n).read() for n in ("image.b2nd", "label.b2nd"))
    box = entry["crop_box"]
    native = labels[tuple(slice(lo, hi) for lo, hi in box)]
    assert entry["native_spacing_mm"] == [1.0, 1.0, 1.0]
    assert entry["shape"] == list(stored_labels.shape) == list(resample.target_shape(native.shape, spacing, (2.0,) * 3))
    assert np.allclose(entry["spacing_mm"], 2.0, atol=0.05) and stored_image.shape[1:] == stored_labels.shape
    # what evaluate scores against is the original crop, voxel for voxel
    np.testing.assert_array_equal(Stored(out / "BraTS-GLI-00001-100" / NATIVE_LABEL_FILE).read(), native)
    np.testing.assert_array_equal(native_labels(tmp_path, "BraTS-GLI-00001-100", entry), native)
    assert entry["label_voxels"] == np.bincount(native.ravel(), minlength=5).tolist()
    # outside the (resampled) head the image is exactly zero; inside it is z-scored
    inside = np.any(stored_image != 0, axis=0)
    for c in range(4):
        values = stored_image[c][inside].astype(np.float64)
        assert abs(values.mean()) < 1e-3 and abs(values.std() - 1) < 1e-2


@pytest.fixture
def weights_at(tmp_path):
    """A small untrained network's weights file, trained (so it says) at `spacing`."""
    from model import UNet3D
    from params import ModelParams
    from test_predict import ORIGIN
    from weights import current_spec, save, weights_payload

    def make(spacing):
        torch.manual_seed(0)
        config = ModelParams(base_width=4, max_width=8, depth=3, norm="instance", deep_supervision=False)
        path = tmp_path / f"model-{spacing[0]}-{spacing[2]}.pt"
        save(path, weights_payload(UNet3D(config).state_dict(), config, current_spec((16, 16, 16), spacing),
                                   {}, epoch=1, val={}, origin=ORIGIN))
        return str(path)
    return make


@pytest.mark.parametrize("input_spacing, trained", [((1.0, 1.0, 1.0), (2.0, 2.0, 2.0)),
                                                    ((0.9, 1.1, 3.0), (2.0, 2.0, 2.0)),
                                                    ((3.0, 3.0, 3.0), (2.0, 2.0, 2.0)),
                                                    ((2.0, 2.0, 2.0), (2.0, 2.0, 2.0))])
def test_predict_writes_on_the_input_grid_for_any_spacing(tmp_path, weights_at, input_spacing, trained):
    labels = nested_tumour((60, 64, 30), input_spacing)
    images = np.stack([np.where(np.ones_like(labels, bool), 100.0 + 20 * c + 40 * (labels > 0), 0)
                       for c in range(4)]).astype(np.float32)
    images[:, :3] = 0                                                     # an empty margin to crop
    affine = np.diag([-input_spacing[0], input_spacing[1], input_spacing[2], 1.0])   # LAS, as MNI files
    affine[:3, 3] = [50.0, -40.0, -20.0]
    write_case(tmp_path / "in", "BraTS-GLI-00001-100", images, None, affine)
    assert predict.main(["--weights", weights_at(trained), "--input", str(tmp_path / "in"), "--output",
                         str(tmp_path / "out"), "--no-mirror", "--no-compile", "--overlap", "0.5", "--batch", "2",
                         "--no-postprocessing", "--save-probabilities"]) == 0
    out = nib.load(tmp_path / "out" / "BraTS-GLI-00001-100.nii.gz")
    assert out.shape == labels.shape and np.allclose(out.affine, affine)
    probs = np.load(tmp_path / "out" / "BraTS-GLI-00001-100.probs.npz")["probabilities"]
    assert probs.shape == (len(MODEL_REGIONS), *labels.shape)
    assert not np.asanyarray(out.dataobj)[:3].any() and not probs[:, :3].any()   # nothing outside the head
    # the network saw the case at the training spacing
    raw = read_case(case_at(tmp_path / "in" / "BraTS-GLI-00001-100"), with_seg=False)
    prepared = prepare(raw, trained)
    assert prepared.resampled == (input_spacing != trained)
    assert np.allclose(prepared.spacing, trained, rtol=0.1)


def test_mixed_voxel_sizes_under_keep_are_one_line_naming_the_cases(tmp_path, raw_dir, small_case, params_for):
    images, labels, affine = small_case
    finer = affine.copy()
    finer[:3, :3] /= 2                                     # the same voxels, half the size: a 2 mm case
    write_case(raw_dir, "BraTS-GLI-00004-100", images, labels, finer)
    keep = params_for(paths__raw_dir=str(raw_dir), preprocess__spacing_mm="keep", preprocess__workers=1)
    with pytest.raises(UserError, match=r"mixes voxel sizes: 4 case\(s\) at 4×4×4 mm \(e.g. BraTS-GLI-00001-100\) "
                                        r"and 1 at 2×2×2 mm \(e.g. BraTS-GLI-00004-100\).*preprocess.spacing_mm is keep"):
        preprocess(keep)
    assert not keep.paths.preprocessed_dir.exists()
    one = params_for(paths__raw_dir=str(raw_dir), preprocess__spacing_mm=4.0, preprocess__workers=1)
    manifest = json.loads((one.paths.preprocessed_dir / "manifest.json").read_text()) if preprocess(one) else None
    assert len(manifest["cases"]) == 5 and manifest["spacing_mm"] == [4.0, 4.0, 4.0]
    assert manifest["cases"]["BraTS-GLI-00004-100"]["native_spacing_mm"] == [2.0, 2.0, 2.0]


def test_a_spacing_too_fine_for_memory_is_refused_with_the_figure_before_allocating(tmp_path, raw_dir, params_for,
                                                                                     monkeypatch):
    import prepare as prepare_module
    from errors import SetupError
    monkeypatch.setattr(prepare_module, "available_memory", lambda: 8 * 2 ** 30)
    params = params_for(paths__raw_dir=str(raw_dir), preprocess__spacing_mm=0.1, preprocess__workers=1,
                        preprocess__on_error="skip")
    with pytest.raises(SetupError, match=r"BraTS-GLI-00001-100: resampling its 4×4×4 mm voxels .* makes \d+×\d+×\d+ "
                                         r"voxels, \d+\.\d GiB a channel and about \d+ GiB while it is prepared, more "
                                         r"than the 8.0 GiB .*preprocess.spacing_mm"):
        preprocess(params)                # not a bad case to skip: every case would fail the same way
    assert not params.paths.preprocessed_dir.exists()
