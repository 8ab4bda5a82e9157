"""Post-processing on hand-built label maps: what each rule does, and that the selection on
validation cases picks the threshold that is right by construction."""

from __future__ import annotations

import json

import numpy as np
import pytest

import postprocessing
from errors import UserError
from postprocessing import Postprocessing, apply, load, save, select

SPACING = (1.0, 1.0, 1.0)


def cube(labels: np.ndarray, corner: tuple[int, int, int], edge: int, value: int) -> np.ndarray:
    x, y, z = corner
    labels[x:x + edge, y:y + edge, z:z + edge] = value
    return labels


def rules(**on: float) -> Postprocessing:
    return Postprocessing({**Postprocessing.none().min_mm3, **on})


def test_each_rule_changes_only_what_it_names():
    labels = np.zeros((40, 40, 40), np.uint8)
    cube(labels, (2, 2, 2), 6, 2)          # WT 216 voxels: SNFH
    cube(labels, (4, 4, 4), 2, 3)          #   with ET 8 voxels inside (TC = ET here)
    cube(labels, (20, 20, 20), 3, 2)       # WT 27 voxels, apart
    cube(labels, (30, 30, 30), 2, 4)       # RC 8 voxels
    # WT: components under 30 mm³ go (the 27-voxel blob), the 216-voxel one stays whole
    out = apply(labels, rules(WT=30), SPACING)
    assert (out[20:23, 20:23, 20:23] == 0).all() and (out[2:8, 2:8, 2:8] == labels[2:8, 2:8, 2:8]).all()
    assert (out[30:32, 30:32, 30:32] == 4).all()                         # RC is not WT
    # the same in 2 mm voxels: 27 voxels are 216 mm³
    assert (apply(labels, rules(WT=30), (2.0, 2.0, 2.0)) == labels).all()
    # WT_rel: below a fifth of the largest WT component (216) go: 27 < 43.2
    assert (apply(labels, rules(WT_rel=0.2), SPACING) == out).all()
    assert (apply(labels, rules(WT_rel=0.1), SPACING) == labels).all()   # 27 >= 21.6 stays
    # TC -> SNFH, ET -> NETC, ET_all -> NETC, RC -> background
    assert (apply(labels, rules(TC=10), SPACING)[4:6, 4:6, 4:6] == 2).all()
    assert (apply(labels, rules(ET=10), SPACING)[4:6, 4:6, 4:6] == 1).all()
    assert (apply(labels, rules(ET_all=9), SPACING)[4:6, 4:6, 4:6] == 1).all()
    assert (apply(labels, rules(ET_all=8), SPACING) == labels).all()      # total 8 mm³ is not below 8
    assert (apply(labels, rules(RC=10), SPACING)[30:32, 30:32, 30:32] == 0).all()
    assert (apply(labels, Postprocessing.none(), SPACING) == labels).all()
    assert labels[20, 20, 20] == 2                                        # the input is not changed


def val_case(blob: int) -> tuple[np.ndarray, np.ndarray, tuple]:
    """A ground-truth lesion of 125 voxels (predicted exactly) and a predicted blob of `blob`³ voxels
    far away that is no lesion."""
    gt = cube(np.zeros((48, 48, 48), np.uint8), (5, 5, 5), 5, 2)
    pred = cube(gt.copy(), (35, 35, 35), blob, 2)
    return pred, gt, SPACING


def test_selection_finds_the_threshold_between_the_blobs_and_the_lesions():
    cases = [val_case(3), val_case(4)]       # false blobs of 27 and 64 voxels, lesions of 125
    pp, record = select(cases, candidates=(0, 20, 50, 100, 200), fractions=(0,))
    # 20 keeps both blobs, 50 keeps the 64-voxel one, 100 removes both and keeps the lesions,
    # 200 removes the lesions too
    assert pp.min_mm3["WT"] == 100
    assert record["before"] < record["after"] == pytest.approx(1.0)
    assert record["tried"]["WT"]["200"] < record["tried"]["WT"]["100"]
    assert all(v == 0 for rule, v in pp.min_mm3.items() if rule != "WT")   # nothing else was needed


def test_selection_with_relative_rule_and_small_et():
    # GT without ET; the prediction has an 8-voxel ET speck inside its 125-voxel tumour core
    gt = cube(cube(np.zeros((40, 40, 40), np.uint8), (5, 5, 5), 9, 2), (7, 7, 7), 5, 1)
    pred = cube(gt.copy(), (9, 9, 9), 2, 3)
    pred = cube(pred, (30, 30, 30), 3, 2)   # and a 27-voxel blob, an eighth of the 729-voxel tumour
    pp, _ = select([(pred, gt, SPACING)], candidates=(0, 5, 10, 1000), fractions=(0, 0.01, 0.1, 0.5))
    assert pp.min_mm3["WT_rel"] == 0.1      # removes the blob; 0.01 does not; ties go to the smaller
    assert pp.min_mm3["ET"] == 10           # the speck becomes NETC (5 does not catch it)
    assert (apply(pred, pp, SPACING) == gt).all()


def test_a_gain_below_min_gain_switches_nothing_on():
    cases = [val_case(3)] + [(gt, gt, SPACING) for _, gt, _ in [val_case(3)] * 9]   # one blob in ten cases
    assert select(cases, (0, 100), (0,), min_gain=0.0)[0].min_mm3["WT"] == 100
    small_gain = select(cases, (0, 100), (0,), min_gain=0.2)
    assert small_gain[0].min_mm3["WT"] == 0 and small_gain[1]["after"] == small_gain[1]["before"]


def test_file_round_trip_and_bad_files(tmp_path):
    path = tmp_path / postprocessing.FILE
    pp = rules(WT=100.0, WT_rel=0.1)
    save(path, pp, {"before": 0.5, "after": 0.6, "tried": {}})
    assert load(path, ("WT", "TC", "ET", "RC")) == pp
    with pytest.raises(UserError, match=r"regions \['WT', 'TC', 'ET', 'RC'\].*output \['WT', 'TC', 'ET'\].*repro postprocess"):
        load(path, ("WT", "TC", "ET"))
    raw = json.loads(path.read_text())
    for broken in ({**raw, "format": 99}, {**raw, "min_mm3": {"WT": -1}}, {**raw, "min_mm3": {"XX": 1}},
                   {**raw, "min_mm3": {"WT_rel": 2.0}}, [1, 2]):
        path.write_text(json.dumps(broken))
        with pytest.raises(UserError, match="postprocess"):
            load(path, ("WT", "TC", "ET", "RC"))
    path.write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        load(path, ("WT", "TC", "ET", "RC"))
    with pytest.raises(UserError, match="dvc repro postprocess"):
        load(tmp_path / "missing.json", ("WT", "TC", "ET", "RC"))


def test_the_t1c_gate_travels_in_the_file_and_older_files_have_none(tmp_path):
    path = tmp_path / postprocessing.FILE
    pp = Postprocessing(rules(ET=50.0).min_mm3, enhancing_min_t1c_z=0.25)
    save(path, pp, {"before": 0.5, "after": 0.6, "tried": {}})
    assert load(path, ("WT", "TC", "ET", "RC")) == pp
    raw = json.loads(path.read_text())
    del raw["enhancing_min_t1c_z"]                 # written before the gate existed: off
    path.write_text(json.dumps(raw))
    assert load(path, ("WT", "TC", "ET", "RC")).enhancing_min_t1c_z is None
    for bad in ("high", True, [0.5]):
        path.write_text(json.dumps({**raw, "enhancing_min_t1c_z": bad}))
        with pytest.raises(UserError, match="enhancing_min_t1c_z must be a number or null.*repro postprocess"):
            load(path, ("WT", "TC", "ET", "RC"))


def test_the_t1c_gate_clears_enhancing_tumour_where_the_t1c_is_not_bright():
    """By hand, at the image's own grid and at twice its resolution (the probabilities on a case's
    1 mm grid, the image at the 2 mm training spacing): the enhancing probability survives only over
    the bright half of the T1c; the other regions and channels stay as they were."""
    import torch
    from brats import MODALITIES
    from inference import gate_enhancing
    regions = ("WT", "TC", "ET", "RC")
    image = np.zeros((4, 4, 4, 4), np.float32)
    image[MODALITIES.index("t1c"), :2] = 2.0        # bright in x < 2
    image[MODALITIES.index("t1c"), 2:] = -1.0
    image[MODALITIES.index("t2f")] = 5.0            # another channel, bright everywhere: not looked at
    probs = torch.full((4, 4, 4, 4), 0.9)
    gated = gate_enhancing(probs.clone(), regions, image, 0.0)
    assert (gated[2, :2] == 0.9).all() and (gated[2, 2:] == 0).all()
    assert torch.equal(gated[[0, 1, 3]], probs[[0, 1, 3]])
    fine = gate_enhancing(torch.full((4, 8, 8, 8), 0.9), regions, image, 0.0)
    assert (fine[2, :4] == 0.9).all() and (fine[2, 4:] == 0).all()    # the edge at the middle, as resized
    assert gate_enhancing(probs.clone(), regions, image, 2.0)[2].eq(0).all()   # z 2 is not above 2
    assert torch.equal(gate_enhancing(probs.clone(), ("WT", "TC"), image, 0.0), probs)   # no ET output


def test_the_predictor_applies_the_gate_after_the_raw_map_and_before_the_rules(tmp_path):
    """An untrained network: its raw map is the plain cut; with the gate, every enhancing voxel over
    a T1c at -1 becomes core or whole tumour by what the other regions say, and its probabilities say
    the same."""
    import torch
    from brats import MODALITIES
    from predictor import Predictor, Settings
    from test_editions import tiny_weights
    weights = tiny_weights(tmp_path)
    settings = Settings(0.5, 1, False, "fp32", False)
    rng = np.random.default_rng(0)
    image = rng.normal(size=(4, 16, 16, 16)).astype(np.float32)
    image[MODALITIES.index("t1c"), 8:] = -1.0
    plain = Predictor(weights, settings, "cpu")
    gated = Predictor(weights, settings, "cpu", Postprocessing.none(0.0))
    raw, _ = plain.labels(image, (16, 16, 16), SPACING)
    raw_too, done = gated.labels(image, (16, 16, 16), SPACING)
    assert np.array_equal(raw, raw_too)
    assert (raw[8:] == 3).sum() > 100                 # the untrained network does paint enhancing tumour there
    probs = plain.probs(image)
    et = plain.spec.regions.index("ET")
    expected = probs.clone()
    expected[et, 8:] = 0.0
    expected[et, :8] *= torch.as_tensor(image[MODALITIES.index("t1c"), :8] > 0)
    assert torch.equal(gated.probs(image), expected)
    assert torch.equal(gated.probs(image, gated=False), probs)
    from inference import probs_to_labels
    assert np.array_equal(done, probs_to_labels(expected))
    assert (done[8:] != 3).all()
