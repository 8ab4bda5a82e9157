"""The preprocessed store: compact float16/uint8 Blosc2 files that read back exactly, slice like
numpy, are the same bytes every time, and name themselves when damaged."""

from __future__ import annotations

import numpy as np
import pytest

from dataset import PatchDataset
from errors import UserError
from layout import IMAGE_FILE, LABEL_FILE, Stored, case_folder, open_case, save_array, write_case

CASE = "BraTS-GLI-00001-100"


@pytest.fixture
def stored(tmp_path):
    rng = np.random.default_rng(0)
    image = np.zeros((4, 70, 81, 66), np.float16)
    image[:, 5:-5, 6:-6, 4:-4] = rng.standard_normal((4, 60, 69, 58))
    label = np.zeros((70, 81, 66), np.uint8)
    label[20:40, 30:50, 10:30] = rng.integers(0, 5, (20, 20, 20))
    write_case(case_folder(tmp_path, CASE), image, label)
    return tmp_path, image, label


def test_round_trip_and_slices(stored):
    pre, image, label = stored
    img, lab = open_case(pre, CASE)
    assert img.shape == image.shape and img.dtype == np.float16 and lab.dtype == np.uint8
    assert np.array_equal(img.read(), image) and np.array_equal(lab.read(), label)
    for index in [(slice(None), slice(3, 70), slice(60, 81), slice(0, 5)), (..., slice(64, 66)),
                  (slice(None), slice(10, 10), slice(0, 3), slice(0, 3))]:   # an empty slice too
        assert np.array_equal(img[index], image[index])
    assert np.array_equal(lab[...], label)


def test_same_array_gives_the_same_bytes(tmp_path, stored):
    _, image, _ = stored
    save_array(tmp_path / "a.b2nd", image)
    save_array(tmp_path / "b.b2nd", image.copy())
    assert (tmp_path / "a.b2nd").read_bytes() == (tmp_path / "b.b2nd").read_bytes()


def test_compact(stored):
    pre, image, _ = stored
    size = (case_folder(pre, CASE) / IMAGE_FILE).stat().st_size
    assert size < 0.8 * image.nbytes          # float16 noise still compresses (mostly zeros outside the head)


def test_a_flipped_byte_is_named_at_a_whole_read(stored):
    pre, _, _ = stored
    path = case_folder(pre, CASE) / IMAGE_FILE
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 8] = bytes(255 - b for b in data[middle:middle + 8])
    path.write_bytes(bytes(data))
    with pytest.raises(UserError, match=rf"{path}.*damaged.*dvc repro -f preprocess"):
        Stored(path).read()


def test_a_truncated_or_missing_file_is_named(stored):
    pre, _, _ = stored
    path = case_folder(pre, CASE) / LABEL_FILE
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(UserError, match=rf"{path} is missing or damaged"):
        open_case(pre, CASE)
    with pytest.raises(UserError, match=f"{CASE}.*dvc repro -f preprocess"):   # before training starts
        PatchDataset(pre, [CASE], (16, 16, 16), 2, 0.5, "none", seed=0)
    path.unlink()
    with pytest.raises(UserError, match=rf"{path} is missing or damaged \(not found\)"):
        open_case(pre, CASE)
    path.write_bytes(b"")
    with pytest.raises(UserError, match=rf"{path} is missing or damaged"):
        open_case(pre, CASE)
