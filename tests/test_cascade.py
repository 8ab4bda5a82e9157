"""The cascade's second stage (src/cascade.py): the box around the first stage's tumour, the crop the
second network sees and the paste back onto the case's own grid, and a case where the first stage
finds nothing. Boxes are computed by hand; the paste-back is checked voxel by voxel."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cascade import refine, tumour_box

REGIONS = ("WT", "TC", "ET", "RC")


def box_of(*ranges):
    return tuple(slice(lo, hi) for lo, hi in ranges)


def test_the_box_holds_the_tumour_and_its_margin_clipped_to_the_grid():
    mask = np.zeros((20, 30, 10), bool)
    mask[2:4, 10:12, 5] = True
    mask[6, 11, 5] = True                                        # a second blob: the box holds both
    assert tumour_box(mask, 0) == box_of((2, 7), (10, 12), (5, 6))
    assert tumour_box(mask, 3) == box_of((0, 10), (7, 15), (2, 9))          # x clipped at 0
    assert tumour_box(mask, 5) == box_of((0, 12), (5, 17), (0, 10))         # z clipped at both ends


def test_a_box_smaller_than_the_patch_grows_evenly_then_shifts_inside_the_grid():
    mask = np.zeros((20, 30, 10), bool)
    mask[2:4, 10:12, 5] = True
    # x: 1..5 (margin 1) is 4 short of 8 -> -1..7 -> shifted to 0..8; y: 9..13 -> 7..15;
    # z: 4..7 is 5 short -> 2..10, the whole axis
    assert tumour_box(mask, 1, (8, 8, 8)) == box_of((0, 8), (7, 15), (2, 10))
    # a patch larger than the grid: the whole axis, never beyond it
    assert tumour_box(mask, 0, (64, 4, 64)) == box_of((0, 20), (9, 13), (0, 10))
    corner = np.zeros((5, 5, 5), bool)
    corner[4, 4, 4] = True
    assert tumour_box(corner, 0, (3, 3, 1)) == box_of((2, 5), (2, 5), (4, 5))


def test_nothing_found_is_no_box():
    assert tumour_box(np.zeros((4, 5, 6), bool), 2, (3, 3, 3)) is None


class Fine:
    """A second stage that records the image it is given and answers probabilities of its own."""

    def __init__(self, seed: int = 1):
        self.seen: list[torch.Tensor] = []
        self.seed = seed

    def probs(self, image):
        self.seen.append(torch.as_tensor(image).clone())
        g = torch.Generator().manual_seed(self.seed)
        return torch.rand((len(REGIONS), *image.shape[1:]), generator=g)


def coarse_case(shape=(12, 14, 9)):
    g = torch.Generator().manual_seed(0)
    coarse = torch.rand((len(REGIONS), *shape), generator=g) * 0.4          # nothing above 0.5 ...
    coarse[0, 3:6, 4:9, 2:5] = 0.9                                            # ... but this whole tumour
    image = torch.randn((4, *shape), generator=g)
    return coarse, image


def test_the_second_stage_sees_the_box_and_its_regions_are_pasted_back_there_only():
    coarse, image = coarse_case()
    before = coarse.clone()
    fine = Fine()
    out, box = refine(coarse, image, fine, REGIONS, ("TC", "ET"), margin=1)
    assert box == box_of((2, 7), (3, 10), (1, 6))
    assert len(fine.seen) == 1 and torch.equal(fine.seen[0], image[:, 2:7, 3:10, 1:6])
    answer = Fine().probs(image[:, 2:7, 3:10, 1:6])
    inside = np.zeros(coarse.shape[1:], bool)
    inside[2:7, 3:10, 1:6] = True
    for i, region in enumerate(REGIONS):
        if region in ("TC", "ET"):
            assert torch.equal(out[i][torch.from_numpy(inside)], answer[i].flatten())
        else:
            assert torch.equal(out[i][torch.from_numpy(inside)], coarse[i][torch.from_numpy(inside)])
        assert torch.equal(out[i][torch.from_numpy(~inside)], coarse[i][torch.from_numpy(~inside)])
    assert torch.equal(coarse, before)                   # the first stage's probabilities are not changed


def test_a_case_where_the_first_stage_finds_nothing_keeps_its_probabilities():
    coarse, image = coarse_case()
    coarse[0] = 0.2
    fine = Fine()
    out, box = refine(coarse, image, fine, REGIONS, ("WT", "TC", "ET"), margin=4, min_size=(8, 8, 8))
    assert box is None and fine.seen == [] and torch.equal(out, coarse)


def test_grids_and_regions_that_do_not_fit_are_refused():
    coarse, image = coarse_case()
    with pytest.raises(ValueError, match="case's grid"):
        refine(coarse, image[:, :-1], Fine(), REGIONS, ("ET",), margin=1)
    with pytest.raises(ValueError, match="NETC"):
        refine(coarse, image, Fine(), REGIONS, ("NETC",), margin=1)


def test_a_real_network_refines_at_the_cases_own_grid(tmp_path):
    """With an untrained network through predictor.Predictor: the output keeps the case's odd grid,
    and the refined channels inside the box are what the network says of the crop."""
    from predictor import Predictor, Settings
    from test_editions import tiny_weights

    fine = Predictor(tiny_weights(tmp_path), Settings(0.5, 1, False, "fp32", False), "cpu")
    coarse, image = coarse_case((21, 19, 13))
    out, box = refine(coarse, image, fine, fine.spec.regions, ("ET",), margin=2, min_size=fine.spec.patch)
    assert out.shape == coarse.shape
    assert [s.stop - s.start for s in box] == [16, 16, 13]           # grown to the patch, z the whole axis
    expected = fine.probs(image[(slice(None), *box)])[fine.spec.regions.index("ET")]
    assert torch.allclose(out[(fine.spec.regions.index("ET"), *box)], expected)
