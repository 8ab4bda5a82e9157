"""The label/region table and the label <-> region-channel conversion."""

from __future__ import annotations

import numpy as np
import torch

from brats import MODEL_REGIONS, REGIONS, labels_to_regions, region_mask, regions_to_labels


def test_regions_follow_brats_2024():
    assert REGIONS["WT"] == (1, 2, 3) and 4 not in REGIONS["WT"]
    assert REGIONS["TC"] == (1, 3) and REGIONS["ET"] == (3,) and REGIONS["RC"] == (4,)


def test_labels_regions_labels_is_identity_on_valid_maps():
    labels = np.random.default_rng(0).integers(0, 5, (9, 10, 11)).astype(np.uint8)
    masks = labels_to_regions(labels)
    assert masks.shape == (len(MODEL_REGIONS), 9, 10, 11) and masks.dtype == bool
    np.testing.assert_array_equal(regions_to_labels(masks), labels)


def test_region_channels_by_hand():
    labels = np.array([0, 1, 2, 3, 4], np.uint8)
    expected = {"WT": [0, 1, 1, 1, 0], "TC": [0, 1, 0, 1, 0], "ET": [0, 0, 0, 1, 0], "RC": [0, 0, 0, 0, 1]}
    masks = labels_to_regions(labels)
    for i, region in enumerate(MODEL_REGIONS):
        assert masks[i].astype(int).tolist() == expected[region]


def test_painting_order_resolves_inconsistent_channels():
    # ET without TC or WT still paints 3; RC over WT wins (painted last)
    masks = np.zeros((4, 3), bool)
    masks[MODEL_REGIONS.index("ET"), 0] = True
    masks[[MODEL_REGIONS.index("WT"), MODEL_REGIONS.index("RC")], 1] = True
    masks[MODEL_REGIONS.index("TC"), 2] = True
    assert regions_to_labels(masks).tolist() == [3, 4, 1]


def test_torch_and_numpy_agree():
    labels = np.random.default_rng(1).integers(0, 5, (4, 5, 6)).astype(np.uint8)
    np.testing.assert_array_equal(labels_to_regions(torch.from_numpy(labels)).numpy(), labels_to_regions(labels))
    assert region_mask(labels, "TC").sum() == np.isin(labels, [1, 3]).sum()
