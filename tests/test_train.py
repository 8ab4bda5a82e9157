"""The train stage on a tiny config: outputs, determinism, resume, guards, tracking, DDP."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys

import pytest
import torch

import fit
import train
from fit import TrainingDiverged
from helpers import ADAM, TINY, checkout
from model import UNet3D
from params import ModelParams, load_params
from train import LAST_FILE, RESUME_FILE, WEIGHTS_FILE


def weights(params) -> dict:
    return torch.load(params.paths.models_dir / WEIGHTS_FILE, weights_only=True)


def same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_outputs(tiny_params):
    params = tiny_params()
    metrics = train.train(params)
    saved = weights(params)
    model = UNet3D(ModelParams(**saved["model"]))
    model.load_state_dict(saved["state_dict"])           # strict: every key matches
    assert saved["params"]["lr"] == params.lr and saved["inference"]["regions"] == ["WT", "TC", "ET", "RC"]
    assert saved["inference"]["patch"] == [16, 16, 16] and saved["inference"]["spacing_mm"] == [4.0, 4.0, 4.0]
    assert torch.load(params.paths.models_dir / LAST_FILE, weights_only=True)["epoch"] == 2
    written = json.loads((params.paths.metrics_dir / "train.json").read_text())
    assert written == json.loads(json.dumps(metrics))
    assert set(written["best"]) >= {f"iou_{r}" for r in ("ET", "TC", "WT", "NETC", "SNFH", "RC")}
    rows = list(csv.DictReader(open(params.paths.metrics_dir / "train_history.csv")))
    assert [r["epoch"] for r in rows] == ["1", "2"] and all(r["val_iou_WT"] for r in rows)
    assert not (params.paths.resume_dir / RESUME_FILE).exists()   # removed once finished


def test_same_seed_same_weights_other_seed_other_weights(tiny_params, tmp_path):
    a = tiny_params()
    train.train(a)
    first = weights(a)["state_dict"]
    shutil.rmtree(a.paths.models_dir)
    train.train(a)
    assert same_state(first, weights(a)["state_dict"])
    b = tiny_params(base__seed=99, paths__models_dir=str(tmp_path / "other"))
    train.train(b)
    assert not same_state(first, weights(b)["state_dict"])


def test_killed_and_resumed_run_ends_with_the_same_weights(tiny_params, tmp_path, monkeypatch):
    whole = tiny_params(train__epochs=3, paths__models_dir=str(tmp_path / "whole"))
    train.train(whole)
    killed = tiny_params(train__epochs=3)
    real_save = train.save_checkpoint

    def save_then_die(path, state):
        real_save(path, state)
        if state["epoch"] == 2:
            raise KeyboardInterrupt  # the process dies right after epoch 2's checkpoint
    monkeypatch.setattr(train, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train.train(killed)
    assert (killed.paths.resume_dir / RESUME_FILE).exists() and not (killed.paths.models_dir / WEIGHTS_FILE).exists()
    monkeypatch.setattr(train, "save_checkpoint", real_save)
    resumed_epochs = []
    monkeypatch.setattr(fit, "validate", lambda *a, **k: resumed_epochs.append(1) or real_validate(*a, **k))
    train.train(killed)
    assert len(resumed_epochs) == 1                               # only epoch 3 ran again
    assert same_state(weights(whole)["state_dict"], weights(killed)["state_dict"])
    assert weights(whole)["epoch"] == weights(killed)["epoch"]


real_validate = fit.validate


def test_checkpoint_of_other_params_is_not_resumed(tiny_params, monkeypatch, capsys):
    params = tiny_params()
    real_save = train.save_checkpoint

    def die(path, state):
        real_save(path, state)
        raise KeyboardInterrupt
    monkeypatch.setattr(train, "save_checkpoint", die)
    with pytest.raises(KeyboardInterrupt):
        train.train(params)
    monkeypatch.setattr(train, "save_checkpoint", real_save)
    train.train(tiny_params(lr=0.002))
    assert "written with other params or data: starting afresh" in capsys.readouterr().err


def test_nan_loss_stops_with_a_clear_error_and_keeps_the_last_good_state(tiny_params, monkeypatch):
    params = tiny_params(train__epochs=3)
    real_loss = fit.deep_supervision_loss
    calls = []

    def nan_in_epoch_2(outputs, target, w):
        calls.append(1)
        loss = real_loss(outputs, target, w)
        return loss * float("nan") if len(calls) > params.train.iterations_per_epoch else loss
    monkeypatch.setattr(fit, "deep_supervision_loss", nan_in_epoch_2)
    with pytest.raises(TrainingDiverged, match=r"loss became nan at epoch 2, iteration 1.*Lower lr"):
        train.train(params)
    state = torch.load(params.paths.resume_dir / RESUME_FILE, weights_only=False)
    assert state["epoch"] == 1 and all(torch.isfinite(v).all() for v in state["model"].values())


def test_lr_written_by_dvc_exp_as_text_trains_with_the_float(tiny_params, tiny_data, tmp_path):
    text = (tiny_data / "params.yaml").read_text()
    edited = "\n".join("lr: 1e-05" if line.startswith("lr:") else line for line in text.splitlines())
    (tmp_path / "params.yaml").write_text(edited + "\n")
    base = tiny_params()
    overrides = {k: str(getattr(base.paths, k.split(".")[1])) for k in
                 ("paths.preprocessed_dir", "paths.models_dir", "paths.metrics_dir", "paths.resume_dir")}
    adam = {k: v for k, v in ADAM.items() if k != "lr"}  # keep the file's text value
    params = load_params(tmp_path / "params.yaml", {**adam, **overrides})
    metrics = train.train(params)
    assert metrics["lr"] == 1e-5 and type(metrics["lr"]) is float
    assert weights(params)["params"]["lr"] == 1e-5


def test_mlflow_and_offline_wandb_record_the_run(tiny_params, tmp_path, monkeypatch):
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))          # where DVC says the repository is
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    params = tiny_params(lr=1e-5, train__mlflow=True, train__wandb="offline")
    train.train(params)
    import mlflow
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=[params.train.experiment], output_format="list")
    assert len(runs) == 1
    run = runs[0]
    assert float(run.data.params["lr"]) == 1e-5 and run.info.status == "FINISHED"
    assert "val_iou_WT" in run.data.metrics and "git_commit" in run.data.tags
    history = mlflow.tracking.MlflowClient().get_metric_history(run.info.run_id, "loss")
    assert [m.step for m in history] == [1, 2]
    assert list((tmp_path / "wandb").glob("offline-run-*"))


@pytest.mark.slow
def test_two_process_ddp_on_cpu(tiny_data, tmp_path):
    """torchrun with 2 CPU processes (gloo): trains, and only rank 0 writes."""
    checkout(tmp_path, {**TINY, **ADAM, "paths.preprocessed_dir": str(tiny_data / "data" / "preprocessed")})
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "src/train.py"], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    saved = torch.load(tmp_path / "models" / WEIGHTS_FILE, weights_only=True)
    assert saved["epoch"] >= 1
    assert done.stdout.count("best epoch") == 1                 # one report, from rank 0
    assert not (tmp_path / "checkpoints" / RESUME_FILE).exists()


def test_wandb_online_without_credentials_falls_back_to_offline(tmp_path, monkeypatch):
    from tracking import Tracker
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    monkeypatch.setenv("HOME", str(tmp_path))                  # no ~/.netrc
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_MODE", "online")
    with pytest.warns(UserWarning, match="no credentials.*offline"):
        tracker = Tracker("t", "e", {"lr": 1e-5}, use_mlflow=False, wandb_mode="offline")
    assert tracker.wandb is not None and tracker.wandb.settings.mode == "offline"
    tracker.log({"loss": 1.0}, step=1)
    tracker.finish(True)
    assert list((tmp_path / "wandb").glob("offline-run-*"))


def test_corrupt_resume_checkpoint_warns_and_trains_afresh(tiny_params, capsys):
    params = tiny_params()
    params.paths.resume_dir.mkdir(parents=True)
    (params.paths.resume_dir / RESUME_FILE).write_bytes(b"truncated by a full disk")
    train.train(params)
    err = capsys.readouterr().err
    assert f"cannot read the resume checkpoint {params.paths.resume_dir / RESUME_FILE}" in err
    assert "starting afresh" in err and (params.paths.models_dir / WEIGHTS_FILE).exists()


def test_unwritable_output_folder_stops_before_the_first_epoch(tiny_params, tmp_path, monkeypatch):
    from errors import UserError
    blocker = tmp_path / "models-is-a-file"
    blocker.write_text("")
    monkeypatch.setattr(train, "fit", lambda *a, **k: pytest.fail("trained before checking the outputs"))
    with pytest.raises(UserError, match=rf"cannot write to {blocker}.*train writes its outputs there"):
        train.train(tiny_params(paths__models_dir=str(blocker)))
