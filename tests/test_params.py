"""params.yaml is read into frozen dataclasses; every bad key is an error that names it."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest
import yaml

from helpers import ROOT
from params import ParamsError, load_params


def write_params(tmp_path: Path, edit) -> Path:
    """A copy of the repository's params.yaml with `edit(dict)` applied."""
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    edit(raw)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_repository_params_load():
    p = load_params(ROOT / "params.yaml")
    assert p.lr == "tuned" or (isinstance(p.lr, float) and p.lr > 0)
    assert p.synthesize.grid == (91, 109, 91)
    assert p.paths.raw_dir.is_absolute() and p.paths.raw_dir.parent.parent == ROOT


def test_dvc_exp_style_float_text_is_a_float(tmp_path):
    # `dvc exp run -S lr=1e-5` writes `lr: 1e-05`; PyYAML (YAML 1.1) reads that as a string.
    path = tmp_path / "params.yaml"
    text = (ROOT / "params.yaml").read_text()
    lines = [("lr: 1e-05" if line.startswith("lr:") else line) for line in text.splitlines()]
    path.write_text("\n".join(lines) + "\n")
    assert yaml.safe_load(path.read_text())["lr"] == "1e-05"  # the trap is real
    p = load_params(path)
    assert p.lr == 1e-5 and type(p.lr) is float


def test_tuned_marker_or_a_number():
    assert load_params(ROOT / "params.yaml", {"lr": "tuned"}).lr == "tuned"
    assert load_params(ROOT / "params.yaml", {"lr": "1e-4"}).lr == 1e-4
    with pytest.raises(ParamsError, match=r"lr: expected a number.*or.*expected one of tuned"):
        load_params(ROOT / "params.yaml", {"lr": "tunde"})


def test_the_t1c_gate_is_a_number_or_null():
    assert load_params(ROOT / "params.yaml").postprocess.enhancing_min_t1c_z is None
    assert load_params(ROOT / "params.yaml", {"postprocess.enhancing_min_t1c_z": 0}).postprocess.enhancing_min_t1c_z == 0.0


def test_integer_accepted_for_float():
    p = load_params(ROOT / "params.yaml", {"weight_decay": 0})
    assert p.weight_decay == 0.0 and type(p.weight_decay) is float


@pytest.mark.parametrize("key, value, words", [
    ("synthesize.patients", "ten", ["synthesize.patients", "integer"]),
    ("synthesize.patients", 2.5, ["synthesize.patients", "integer"]),
    ("synthesize.patients", True, ["synthesize.patients", "integer"]),
    ("synthesize.patients", 0, ["synthesize.patients", "out of range"]),
    ("lr", 0, ["lr", "out of range"]),
    ("lr", "fast", ["lr", "number"]),
    ("lr", float("nan"), ["lr", "finite"]),
    ("beta1", 1.0, ["beta1", "out of range"]),
    ("beta2", -0.1, ["beta2", "out of range"]),
    ("synthesize.grid", [91, 109], ["synthesize.grid", "3 values"]),
    ("synthesize.grid", [91, 109, 8], ["synthesize.grid[2]", "out of range"]),
    ("preprocess.on_error", "maybe", ["preprocess.on_error", "fail", "skip"]),
    ("preprocess.workers", None, ["preprocess.workers", "integer"]),
    ("paths.raw_dir", 3, ["paths.raw_dir", "path"]),
    ("base", 5, ["base", "mapping"]),
    ("train.folds", 3, ["train.folds", "list"]),
    ("train.folds", [], ["train.folds", "list"]),
    ("train.folds", [0, 2], ["train.folds [0, 2]", "[0, 1, ..., K-1]"]),
    ("train.folds", [1], ["train.folds [1]", "[0, 1, ..., K-1]"]),
    ("postprocess.enhancing_min_t1c_z", "bright", ["postprocess.enhancing_min_t1c_z", "number", "null"]),
    ("postprocess.enhancing_min_t1c_z", 50, ["postprocess.enhancing_min_t1c_z", "out of range"]),
])
def test_bad_values_name_the_key(key, value, words):
    with pytest.raises(ParamsError) as e:
        load_params(ROOT / "params.yaml", {key: value})
    for word in words:
        assert word in str(e.value)


def test_unknown_key_is_named(tmp_path):
    path = write_params(tmp_path, lambda raw: raw["synthesize"].update(patiens=3))
    with pytest.raises(ParamsError, match=r"unknown key synthesize\.patiens"):
        load_params(path)
    path = write_params(tmp_path, lambda raw: raw.update(learning_rate=0.1))
    with pytest.raises(ParamsError, match=r"unknown key learning_rate"):
        load_params(path)


def test_missing_key_is_named(tmp_path):
    path = write_params(tmp_path, lambda raw: raw["preprocess"].pop("workers"))
    with pytest.raises(ParamsError, match=r"missing key preprocess\.workers"):
        load_params(path)


def test_fractions_must_leave_training_patients():
    with pytest.raises(ParamsError, match="val_fraction"):
        load_params(ROOT / "params.yaml", {"preprocess.val_fraction": 0.5, "preprocess.test_fraction": 0.5})


def test_missing_and_broken_files(tmp_path):
    with pytest.raises(ParamsError, match="not found"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "params.yaml"
    bad.write_text("lr: [unclosed\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(bad)


def test_params_are_frozen_and_paths_resolve_next_to_the_file(tmp_path):
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    p = load_params(tmp_path / "params.yaml")
    assert p.paths.preprocessed_dir == tmp_path / "data" / "preprocessed"
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.lr = 1.0  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.synthesize.patients = 1  # type: ignore[misc]


def test_a_key_given_twice_is_refused_not_overwritten(tmp_path):
    text = (ROOT / "params.yaml").read_text().replace("\ntrain:\n", "\ntrain:\n  epochs: 5\n")
    assert text.count("epochs: 5") == 1                    # train.epochs now appears twice
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(ParamsError, match=r"key 'epochs' appears twice in one section of params.yaml \(line \d+\)"):
        load_params(path)
