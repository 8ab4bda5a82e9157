"""Training patches: seeded per sample, padded when the case is small, the same whatever the workers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from augment import collate, to_batch
from dataset import PatchDataset, choose_corner, cut
from errors import UserError
from layout import load_split


def test_cut_pads_outside_the_array():
    a = np.arange(1, 28).reshape(1, 3, 3, 3)
    out = cut(a, np.array([-1, 1, 2]), (3, 3, 3))
    assert out.shape == (1, 3, 3, 3)
    assert np.all(out[:, 0] == 0)                         # row -1 does not exist
    np.testing.assert_array_equal(out[0, 1:, :2, :1], a[0, :2, 1:3, 2:3])
    assert np.all(out[:, :, 2:] == 0) and np.all(out[:, :, :, 1:] == 0)


def test_foreground_patches_contain_a_label():
    label = np.zeros((40, 40, 40), np.uint8)
    label[30:33, 5:8, 20:22] = 3
    for seed in range(30):
        corner = choose_corner(np.random.default_rng(seed), label, (16, 16, 16), foreground=True)
        assert cut(label, corner, (16, 16, 16)).any()


def test_random_patches_stay_inside_a_big_case():
    label = np.zeros((40, 30, 20), np.uint8)
    for seed in range(30):
        corner = choose_corner(np.random.default_rng(seed), label, (16, 16, 16), foreground=False)
        assert np.all(corner >= 0) and np.all(corner + 16 <= np.array(label.shape))


@pytest.mark.parametrize("augmentation", ["light", "full"])
def test_dataset_is_reproducible_and_worker_independent(tiny_data, augmentation):
    pre = tiny_data / "data" / "preprocessed"
    cases = load_split(pre, "train")
    ds = PatchDataset(pre, cases, (16, 16, 16), 8, 0.5, augmentation, seed=5)
    x0, y0 = ds.patch_at(3)
    x1, y1 = ds.patch_at(3)
    assert torch.equal(x0, x1) and torch.equal(y0, y1)
    assert not torch.equal(ds.patch_at(4)[0], x0)
    ds.epoch = 1
    assert not torch.equal(ds.patch_at(3)[0], x0)        # a new epoch draws new patches
    ds.epoch = 0
    batches = [[to_batch(b, torch.device("cpu"), (16, 16, 16))
                for b in DataLoader(ds, batch_size=2, num_workers=n, collate_fn=collate)] for n in (0, 2)]
    for (xa, ya), (xb, yb) in zip(*batches):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert batches[0][1][0].shape == (2, 4, 16, 16, 16) and batches[0][1][1].shape == (2, 16, 16, 16)
    assert x0.shape == (4, 16, 16, 16) and x0.dtype == torch.float32 and y0.dtype == torch.uint8


def test_patch_larger_than_the_case_is_padded(tiny_data):
    pre = tiny_data / "data" / "preprocessed"
    cases = load_split(pre, "train")
    x, y = PatchDataset(pre, cases, (64, 64, 64), 2, 1.0, "none", seed=0).patch_at(0)
    assert x.shape == (4, 64, 64, 64) and y.shape == (64, 64, 64)
    assert (x == 0).all(dim=0).any() and y.any()


def test_missing_preprocessed_case_is_named(tiny_data):
    pre = tiny_data / "data" / "preprocessed"
    with pytest.raises(UserError, match="BraTS-GLI-99999-100.*dvc repro -f preprocess"):
        PatchDataset(pre, ["BraTS-GLI-99999-100"], (16, 16, 16), 2, 0.5, "none", seed=0)
    with pytest.raises(UserError, match=r"splits.json not found .*dvc repro preprocess"):
        load_split(tiny_data / "nowhere", "train")


def test_a_case_damaged_during_training_is_one_line_from_any_worker(tiny_data, tmp_path):
    import shutil

    from fit import batches
    from layout import LABEL_FILE, case_folder
    pre = tmp_path / "pre"
    shutil.copytree(tiny_data / "data" / "preprocessed", pre)
    cases = load_split(pre, "train")
    ds = PatchDataset(pre, cases, (16, 16, 16), 8, 0.5, "light", seed=5)
    for case in cases:                                  # damaged after the dataset checked it
        label = case_folder(pre, case) / LABEL_FILE
        label.write_bytes(label.read_bytes()[:200])
    for workers in (0, 2):
        loader = DataLoader(ds, batch_size=2, num_workers=workers, collate_fn=collate)
        with pytest.raises(UserError) as caught:
            list(batches(loader))
        message = str(caught.value)
        assert "\n" not in message and "Traceback" not in message
        assert message.startswith("preprocessed file ") and "label.b2nd is missing or damaged" in message


def test_modality_dropout_blanks_one_whole_channel_and_nothing_else(tiny_data):
    """train.modality_dropout: in that share of patches one modality, drawn per sample, is
    0 (the head's mean after z-scoring) everywhere; the other channels and the labels are the patch
    without it, and with 0 no random number is drawn, so the patches are those of before."""
    pre = tiny_data / "data" / "preprocessed"
    cases = load_split(pre, "train")
    plain = PatchDataset(pre, cases, (16, 16, 16), 40, 0.5, "light", seed=5)
    never = PatchDataset(pre, cases, (16, 16, 16), 40, 0.5, "light", seed=5, modality_dropout=0.0)
    always = PatchDataset(pre, cases, (16, 16, 16), 40, 0.5, "light", seed=5, modality_dropout=1.0)
    half = PatchDataset(pre, cases, (16, 16, 16), 40, 0.5, "light", seed=5, modality_dropout=0.5)
    dropped = []
    for i in range(40):
        x, y = plain.patch_at(i)
        xn, yn = never.patch_at(i)
        assert torch.equal(x, xn) and torch.equal(y, yn)
        xa, ya = always.patch_at(i)
        assert torch.equal(y, ya)
        blank = [c for c in range(4) if not torch.equal(xa[c], x[c])]
        assert len(blank) == 1 and (xa[blank[0]] == 0).all() and (x[blank[0]] != 0).any()
        dropped.append(blank[0])
        xh, _ = half.patch_at(i)
        assert sum(not torch.equal(xh[c], x[c]) for c in range(4)) <= 1
    assert set(dropped) == {0, 1, 2, 3}                    # each modality is drawn
    assert 5 <= sum(not torch.equal(half.patch_at(i)[0], plain.patch_at(i)[0]) for i in range(40)) <= 35
