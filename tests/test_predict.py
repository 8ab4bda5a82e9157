"""predict.py writes valid BraTS submissions on the input's own grid, whatever its orientation."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch

import predict
from conftest import write_case
from errors import UserError
from model import UNet3D
from params import ModelParams


@pytest.fixture
def weights(tmp_path) -> str:
    """A small untrained network saved as the train stage saves weights (patch 48)."""
    torch.manual_seed(0)
    config = ModelParams(base_width=4, max_width=8, depth=3, norm="instance", deep_supervision=False)
    path = tmp_path / "model.pt"
    torch.save({"state_dict": UNet3D(config).state_dict(), "model": config.__dict__,
                "params": {"train.patch": [48, 48, 48]}, "epoch": 1, "val": {}}, path)
    return str(path)


def lps_brats2021_case(folder, name: str):
    """A 240 × 240 × 155 case with an LPS affine diag(-1, -1, 1), as older BraTS editions store them."""
    rng = np.random.default_rng(0)
    images = np.zeros((4, 240, 240, 155), np.float32)
    images[:, 100:140, 90:130, 50:90] = rng.uniform(100, 1000, (4, 40, 40, 40))
    affine = np.diag([-1.0, -1.0, 1.0, 1.0])
    affine[:3, 3] = [0.0, 239.0, 0.0]
    return write_case(folder, name, images, None, affine), affine


def test_lps_240_case_keeps_its_shape_and_affine(tmp_path, weights):
    case_dir, affine = lps_brats2021_case(tmp_path / "in", "BraTS-GLI-00009-100")
    assert predict.main(["--weights", weights, "--input", str(case_dir), "--output", str(tmp_path / "out")]) == 0
    out = nib.load(tmp_path / "out" / "BraTS-GLI-00009-100.nii.gz")
    assert out.shape == (240, 240, 155) and np.allclose(out.affine, affine)
    labels = np.asanyarray(out.dataobj)
    assert out.get_data_dtype() == np.uint8 and set(np.unique(labels)) <= {0, 1, 2, 3, 4}
    head = np.zeros((240, 240, 155), bool)
    head[100:140, 90:130, 50:90] = True
    assert not labels[~head].any()       # nothing outside the head


def test_ras_and_mni_cases_in_a_folder(tmp_path, weights, small_case):
    images, labels, affine = small_case                          # synthetic: FSL MNI (LAS) affine
    write_case(tmp_path / "in", "BraTS-GLI-00001-100", images, None, affine)
    write_case(tmp_path / "in", "BraTS-GLI-00002-100", images, None, np.eye(4))
    assert predict.main(["--weights", weights, "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out")]) == 0
    for name, aff in (("BraTS-GLI-00001-100", affine), ("BraTS-GLI-00002-100", np.eye(4))):
        out = nib.load(tmp_path / "out" / f"{name}.nii.gz")
        assert out.shape == images.shape[1:] and np.allclose(out.affine, aff)


def test_same_head_in_two_orientations_gets_the_same_prediction(tmp_path, weights, small_case):
    from test_preprocess import lps_copy
    images, labels, _ = small_case
    write_case(tmp_path / "in", "BraTS-GLI-00001-100", images, None, np.eye(4))
    lps_images, _, lps_affine = lps_copy(images, labels)
    write_case(tmp_path / "in", "BraTS-GLI-00002-100", lps_images, None, lps_affine)
    predict.main(["--weights", weights, "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out")])
    ras = np.asanyarray(nib.load(tmp_path / "out" / "BraTS-GLI-00001-100.nii.gz").dataobj)
    lps = np.asanyarray(nib.load(tmp_path / "out" / "BraTS-GLI-00002-100.nii.gz").dataobj)
    np.testing.assert_array_equal(ras, lps[::-1, ::-1])


def test_bad_case_is_reported_and_the_rest_still_written(tmp_path, weights, small_case, capsys):
    images, _, affine = small_case
    write_case(tmp_path / "in", "BraTS-GLI-00001-100", images, None, affine)
    bad = write_case(tmp_path / "in", "BraTS-GLI-00002-100", images, None, affine)
    (bad / "BraTS-GLI-00002-100-t1c.nii.gz").unlink()
    assert predict.main(["--weights", weights, "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out")]) == 1
    assert (tmp_path / "out" / "BraTS-GLI-00001-100.nii.gz").exists()
    assert not (tmp_path / "out" / "BraTS-GLI-00002-100.nii.gz").exists()
    assert "BraTS-GLI-00002-100: missing file BraTS-GLI-00002-100-t1c.nii.gz" in capsys.readouterr().err
    with pytest.raises(UserError, match="missing file"):
        predict.main(["--weights", weights, "--input", str(tmp_path / "in"), "--output", str(tmp_path / "o2"),
                      "--fail-fast"])


def test_missing_or_broken_weights(tmp_path):
    with pytest.raises(UserError, match="not found.*dvc pull"):
        predict.main(["--weights", str(tmp_path / "none.pt"), "--input", str(tmp_path), "--output", str(tmp_path)])
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a weights file")
    with pytest.raises(UserError, match="cannot be loaded"):
        predict.main(["--weights", str(broken), "--input", str(tmp_path), "--output", str(tmp_path)])
