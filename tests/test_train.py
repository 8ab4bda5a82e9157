"""The train stage on a tiny config: outputs, determinism, resume, guards, tracking, DDP."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
import time

import pytest
import torch
import yaml

import fit
import train
from fit import TrainingDiverged
from helpers import ADAM, TINY, checkout
from model import UNet3D
from params import ModelParams, load_params
from train import RESUME_FILE
from weights import LAST_FILE, WEIGHTS_FILE


def out(params):
    """Where train writes fold 0 (the only fold of train.folds [0]): models, DVCLive, resume folders."""
    return train.fold_paths(params, 0).paths


def weights(params) -> dict:
    return torch.load(out(params).models_dir / WEIGHTS_FILE, weights_only=True)


def yaml_1_2(path) -> dict:
    """A YAML file read as DVC reads it (YAML 1.2, where `1e-05` is a number; PyYAML reads text)."""
    from ruamel.yaml import YAML
    return YAML(typ="safe").load(path.read_text())


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
    assert torch.load(out(params).models_dir / LAST_FILE, weights_only=True)["epoch"] == 2
    live = out(params).live_dir
    written = json.loads((live / "metrics.json").read_text())
    assert written == {**json.loads(json.dumps(metrics)), "step": 2}
    assert set(written["best"]) >= {f"iou_{r}" for r in ("ET", "TC", "WT", "NETC", "SNFH", "RC")}
    assert not {"train_seconds", "patches_per_s"} & set(written)    # timing is not a metric
    assert yaml_1_2(live / "params.yaml") == {k: getattr(params, k) for k in ADAM}
    rows = list(csv.DictReader(open(live / "plots" / "metrics" / "val" / "iou_WT.tsv"), delimiter="\t"))
    assert [r["step"] for r in rows] == ["1", "2"]
    assert not (out(params).resume_dir / RESUME_FILE).exists()   # removed once finished
    origin = saved["provenance"]
    assert set(origin) == {"training_data", "init_weights", "code", "versions"}
    assert origin["versions"]["torch"] == str(torch.__version__) and origin["init_weights"] is None
    assert origin["training_data"]["edition"] == "2024"        # the tiny synthetic cases are 2024's layout


def test_modality_dropout_is_never_silent_on_real_data(tiny_params, tmp_path, capsys):
    """train.modality_dropout is for the synthetic default: with paths.raw_dir elsewhere
    (real data), train says it is on and how to turn it off; on the synthetic set, or at 0, nothing."""
    assert train.real_data_notice(tiny_params(train__modality_dropout=0.3)) is None
    real = {"paths__raw_dir": str(tmp_path / "BraTS2021")}
    assert train.real_data_notice(tiny_params(train__modality_dropout=0.0, **real)) is None
    notice = train.real_data_notice(tiny_params(train__modality_dropout=0.3, **real))
    assert notice.startswith("note: train.modality_dropout is 0.3 with the data of ")
    assert str(tmp_path / "BraTS2021") in notice and "30%" in notice and "train.modality_dropout: 0" in notice
    train.train(tiny_params(train__modality_dropout=0.3, train__epochs=1, **real))
    assert notice in capsys.readouterr().err.splitlines()


def test_validation_curves_have_rows_only_where_validation_ran(tiny_params):
    params = tiny_params(train__epochs=3, train__val_every=2)
    train.train(params)
    metrics = out(params).live_dir / "plots" / "metrics"
    steps = lambda path: [row.split("\t")[0] for row in path.read_text().splitlines()[1:]]  # noqa: E731
    assert steps(metrics / "train" / "loss.tsv") == ["1", "2", "3"]
    assert steps(metrics / "val" / "iou_WT.tsv") == ["2", "3"]         # epoch 2 and the last


def test_curves_are_readable_while_training_runs(tiny_data, tmp_path):
    """`dvc plots show` during a run reads DVCLive's files: they must hold the finished epochs."""
    repo = checkout(tmp_path, {**TINY, **ADAM, "train.epochs": 400, "train.val_every": 1000,
                               "paths.preprocessed_dir": str(tiny_data / "data" / "preprocessed")})
    proc = subprocess.Popen([sys.executable, "src/train.py"], cwd=repo, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    loss = repo / "dvclive" / "fold_0" / "plots" / "metrics" / "train" / "loss.tsv"
    try:
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            if loss.exists() and len(loss.read_text().splitlines()) >= 3:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "training ended before the test could look: " + proc.stderr.read()[-2000:]
        rows = loss.read_text().splitlines()
        assert rows[0] == "step\tloss" and len(rows) >= 3
        summary = json.loads((repo / "dvclive" / "fold_0" / "metrics.json").read_text())
        assert summary["step"] >= 2 and "train" in summary               # the latest epoch, mid-run
        assert not (repo / "models" / "folds" / "fold_0" / WEIGHTS_FILE).exists()
    finally:
        proc.kill()
        proc.wait()


def test_same_seed_same_weights_other_seed_other_weights(tiny_params, tmp_path):
    a = tiny_params()
    train.train(a)
    first = weights(a)["state_dict"]
    shutil.rmtree(out(a).models_dir)
    train.train(a)
    assert same_state(first, weights(a)["state_dict"])
    b = tiny_params(train__seed=99, paths__models_dir=str(tmp_path / "other"))
    train.train(b)
    assert not same_state(first, weights(b)["state_dict"])
    # base.seed draws the data, not training: on the same preprocessed cases, the same weights
    c = tiny_params(base__seed=99, paths__models_dir=str(tmp_path / "data-seed"))
    train.train(c)
    assert same_state(first, weights(c)["state_dict"])
    assert (weights(c)["params"]["train.seed"], weights(c)["params"]["base.seed"]) == (2024, 99)


def test_killed_and_resumed_run_ends_with_the_same_weights(tiny_params, tmp_path, monkeypatch):
    whole = tiny_params(train__epochs=3, paths__models_dir=str(tmp_path / "whole"),
                        paths__live_dir=str(tmp_path / "whole-live"))
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
    assert (out(killed).resume_dir / RESUME_FILE).exists() and not (out(killed).models_dir / WEIGHTS_FILE).exists()
    monkeypatch.setattr(train, "save_checkpoint", real_save)
    resumed_epochs = []
    monkeypatch.setattr(fit, "validate", lambda *a, **k: resumed_epochs.append(1) or real_validate(*a, **k))
    train.train(killed)
    assert len(resumed_epochs) == 1                               # only epoch 3 ran again
    assert same_state(weights(whole)["state_dict"], weights(killed)["state_dict"])
    assert weights(whole)["epoch"] == weights(killed)["epoch"]
    curves = lambda live: {p.relative_to(live): p.read_text() for p in sorted(live.rglob("*")) if p.is_file()}  # noqa: E731
    assert curves(out(whole).live_dir) == curves(out(killed).live_dir)   # every epoch, once


def test_resumed_training_continues_its_mlflow_run(tiny_params, tmp_path, monkeypatch):
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    params = tiny_params(train__epochs=3, train__mlflow=True)
    real_save = train.save_checkpoint

    def save_then_die(path, state):
        real_save(path, state)
        if state["epoch"] == 1:
            raise KeyboardInterrupt
    monkeypatch.setattr(train, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train.train(params)
    monkeypatch.setattr(train, "save_checkpoint", real_save)
    train.train(params)
    import mlflow
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=[params.train.experiment], output_format="list")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    history = mlflow.tracking.MlflowClient().get_metric_history(runs[0].info.run_id, "loss")
    assert sorted(m.step for m in history) == [1, 2, 3]


def test_mlflow_model_upload_is_opt_in_and_has_a_signature(tiny_params, tmp_path, monkeypatch):
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    import mlflow
    train.train(tiny_params(train__mlflow=True))
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert not mlflow.search_logged_models(output_format="list")          # off by default
    params = tiny_params(train__mlflow=True, train__mlflow_log_model=True, train__mlflow_model_name="brats-unet",
                         paths__models_dir=str(tmp_path / "m2"))
    train.train(params)
    info = mlflow.models.get_model_info("models:/brats-unet/1")
    assert tuple(info.signature.inputs.to_dict()[0]["tensor-spec"]["shape"]) == (-1, 4, 16, 16, 16)  # any batch
    assert tuple(info.signature.outputs.to_dict()[0]["tensor-spec"]["shape"]) == (-1, 4, 16, 16, 16)
    loaded = mlflow.pytorch.load_model("models:/brats-unet/1")
    best = UNet3D(ModelParams(**weights(params)["model"]))
    best.load_state_dict(weights(params)["state_dict"])
    x = torch.randn(1, 4, 16, 16, 16)
    with torch.no_grad():
        assert torch.equal(loaded.eval()(x), best.eval()(x))


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
    state = torch.load(out(params).resume_dir / RESUME_FILE, weights_only=False)
    assert state["epoch"] == 1 and all(torch.isfinite(v).all() for v in state["model"].values())


def test_lr_written_by_dvc_exp_as_text_trains_with_the_float(tiny_params, tiny_data, tmp_path):
    text = (tiny_data / "params.yaml").read_text()
    edited = "\n".join("lr: 1e-05" if line.startswith("lr:") else line for line in text.splitlines())
    (tmp_path / "params.yaml").write_text(edited + "\n")
    base = tiny_params()
    overrides = {k: str(getattr(base.paths, k.split(".")[1])) for k in
                 ("paths.preprocessed_dir", "paths.models_dir", "paths.metrics_dir", "paths.resume_dir",
                  "paths.live_dir")}
    adam = {k: v for k, v in ADAM.items() if k != "lr"}  # keep the file's text value
    params = load_params(tmp_path / "params.yaml", {**adam, **overrides})
    train.train(params)
    logged = yaml_1_2(out(params).live_dir / "params.yaml")["lr"]
    assert logged == 1e-5 and type(logged) is float
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
    saved = torch.load(tmp_path / "models" / "folds" / "fold_0" / WEIGHTS_FILE, weights_only=True)
    assert saved["epoch"] >= 1
    assert done.stdout.count("best epoch") == 1                 # one report, from rank 0
    assert not (tmp_path / "checkpoints" / "fold_0" / RESUME_FILE).exists()


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
    out(params).resume_dir.mkdir(parents=True)
    (out(params).resume_dir / RESUME_FILE).write_bytes(b"truncated by a full disk")
    train.train(params)
    err = capsys.readouterr().err
    assert f"cannot read the resume checkpoint {out(params).resume_dir / RESUME_FILE}" in err
    assert "starting afresh" in err and (out(params).models_dir / WEIGHTS_FILE).exists()


def test_unwritable_output_folder_stops_before_the_first_epoch(tiny_params, tmp_path, monkeypatch):
    from errors import UserError
    blocker = tmp_path / "models-is-a-file"
    blocker.write_text("")
    monkeypatch.setattr(train, "fit", lambda *a, **k: pytest.fail("trained before checking the outputs"))
    with pytest.raises(UserError, match=rf"cannot write to {blocker}.*train writes its outputs there"):
        train.train(tiny_params(paths__models_dir=str(blocker)))


def test_provenance_reads_the_data_hash_from_dvc_lock(tmp_path):
    from weights import provenance
    lock = {"schema": "2.0", "stages": {"preprocess": {"cmd": "python src/preprocess.py", "outs": [
        {"path": "data/preprocessed", "hash": "md5", "md5": "0123abcd.dir", "size": 1, "nfiles": 1}]}}}
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump(lock))
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "train.py").write_text("print(1)\n")
    origin = provenance(tmp_path / "data" / "preprocessed", tmp_path)
    assert origin["training_data"] == {"path": "data/preprocessed", "md5": "0123abcd.dir", "edition": None}
    assert set(origin["versions"]) == {"python", "torch", "numpy"}
    # the code digest, computed independently: sha256 of name, NUL, bytes, NUL per file
    import hashlib
    assert origin["code"] == {"sha256": hashlib.sha256(b"src/train.py\0print(1)\n\0").hexdigest(), "files": 1}
    (tmp_path / "src" / "train.py").write_text("print(2)\n")
    assert provenance(tmp_path / "data" / "preprocessed", tmp_path)["code"] != origin["code"]
    assert provenance(tmp_path / "elsewhere", tmp_path)["training_data"]["md5"] is None
    (tmp_path / "dvc.lock").write_text("{broken")
    assert provenance(tmp_path / "data" / "preprocessed", tmp_path)["training_data"]["md5"] is None


def test_code_digest_covers_the_train_stage_deps_of_dvc_yaml():
    from helpers import ROOT
    from weights import code_digest
    deps = [d for d in yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["train"]["deps"]
            if d.startswith("src/")]
    assert code_digest(ROOT)["files"] == len(deps) and "src/train.py" in deps


@pytest.mark.slow
def test_compiled_cpu_training_is_deterministic_and_a_missing_compiler_is_one_line(tiny_data, tmp_path):
    """train.compile on a CPU: two runs give the same weights; without a C++ compiler, one line."""
    import os
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor")}   # compile afresh, no cache
    digests = []
    for run, extra in enumerate(({}, {}, {"CXX": str(tmp_path / "no-such-compiler")})):
        repo = checkout(tmp_path / f"r{run}", {**TINY, **ADAM, "train.compile": True, "train.epochs": 1,
                                               "paths.preprocessed_dir": str(tiny_data / "data" / "preprocessed")})
        if extra:
            env["TORCHINDUCTOR_CACHE_DIR"] = str(tmp_path / "inductor-empty")
        done = subprocess.run([sys.executable, "src/train.py"], cwd=repo, capture_output=True, text=True,
                              env={**env, **extra}, timeout=900)
        if extra:
            assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
            assert done.stderr.strip().splitlines()[-1].startswith("error: train.compile: torch.compile failed on "
                                                                   "this machine")
            assert "turn train.compile off" in done.stderr
        else:
            assert done.returncode == 0, done.stderr[-2000:]
            saved = torch.load(repo / "models" / "folds" / "fold_0" / WEIGHTS_FILE, weights_only=True)["state_dict"]
            digests.append([v.numpy().tobytes() for v in saved.values()])
    assert digests[0] == digests[1]


def test_init_weights_start_the_network_and_are_recorded(tiny_params, tmp_path):
    import hashlib

    from files import file_sha256
    from runtime import Runtime
    first = tiny_params()
    train.train(first)                                  # weights of the same network, to start from
    start = tmp_path / "start.pt"
    shutil.copy(out(first).models_dir / WEIGHTS_FILE, start)
    params = tiny_params(train__init_weights=str(start), paths__models_dir=str(tmp_path / "m2"))
    train_cases = json.loads((params.paths.preprocessed_dir / "splits.json").read_text())["train"]
    parts = fit.build(params, Runtime(torch.device("cpu"), "fp32", 0, 1), train_cases)
    saved = torch.load(start, weights_only=True)["state_dict"]
    for name, tensor in parts.model.state_dict().items():
        assert torch.equal(tensor, saved[name]), name
    val_cases = json.loads((params.paths.preprocessed_dir / "splits.json").read_text())["val"]
    assert fit.fingerprint(params, train_cases, val_cases) != fit.fingerprint(first, train_cases, val_cases)
    train.train(params)
    origin = weights(params)["provenance"]
    assert origin["init_weights"] == {"path": str(start), "sha256": file_sha256(start)}
    assert origin["init_weights"]["sha256"] == hashlib.sha256(start.read_bytes()).hexdigest()
    assert weights(first)["provenance"]["init_weights"] is None


def test_init_weights_of_another_network_are_one_line(tiny_params, tmp_path):
    first = tiny_params()
    train.train(first)
    with pytest.raises(fit.UserError, match=r"train.init_weights: .*model.pt holds a network of .*'base_width': 4.*"
                                            r"but model in params.yaml is .*'base_width': 8"):
        train.train(tiny_params(train__init_weights=str(out(first).models_dir / WEIGHTS_FILE),
                                model__base_width=8, paths__models_dir=str(tmp_path / "m2")))
    with pytest.raises(fit.UserError, match=r"train.init_weights: .*none\.pt not found; "):
        train.train(tiny_params(train__init_weights=str(tmp_path / "none.pt"), paths__models_dir=str(tmp_path / "m3")))


def _payload_with(params, change) -> dict:
    """Weights of the params' own network (right format and header), with `change` applied to its tensors."""
    import dataclasses

    from test_predict import ORIGIN
    from weights import current_spec, weights_payload
    state = UNet3D(params.model).state_dict()
    change(state)
    return weights_payload(state, params.model, current_spec(params.train.patch, (4.0,) * 3), {}, epoch=1,
                           val={}, origin=ORIGIN) | {"model": dataclasses.asdict(params.model)}


def _drop_first(state):
    del state[next(iter(state))]


def _reshape_first(state):
    name = next(iter(state))
    state[name] = torch.zeros(3, *state[name].shape)


@pytest.mark.parametrize("change, said", [(_drop_first, r"missing \S+ \(1\)"),
                                          (_reshape_first, r"of another shape \S+ \(3, .*\(this network: ")])
def test_init_weights_whose_tensors_do_not_fit_are_one_line(tiny_params, tmp_path, change, said):
    import predict
    from weights import save
    params = tiny_params(paths__models_dir=str(tmp_path / "m"))
    start = tmp_path / "start.pt"
    save(start, _payload_with(params, change))
    with pytest.raises(fit.UserError, match=rf"^train.init_weights: the tensors of .*start.pt do not fit this network: "
                                            rf"{said}.*same model section"):
        train.train(tiny_params(train__init_weights=str(start), paths__models_dir=str(tmp_path / "m")))
    with pytest.raises(fit.UserError, match=rf"^--weights: the tensors of .*start.pt do not fit this network: {said}"):
        predict.main(["--weights", str(start), "--input", str(tmp_path), "--output", str(tmp_path / "p"),
                      "--no-compile", "--no-mirror", "--overlap", "0", "--batch", "1"])


def test_init_weights_that_are_a_folder_or_not_plain_data_are_one_line(tiny_params, tmp_path):
    from weights import save
    params = tiny_params(paths__models_dir=str(tmp_path / "m"))
    fold = tmp_path / "models" / "folds" / "fold_0"
    fold.mkdir(parents=True)
    save(fold / WEIGHTS_FILE, _payload_with(params, lambda state: None))
    with pytest.raises(fit.UserError, match=r"^train.init_weights: .*models is a folder, not a weights file: give a "
                                            r"weights file in it, e.g. .*models/folds/fold_0/model.pt$"):
        train.train(tiny_params(train__init_weights=str(tmp_path / "models"), paths__models_dir=str(tmp_path / "m")))
    pickled = tmp_path / "pickled.pt"
    torch.save({"format": 3, "anything": fit.Path("x")}, pickled)          # an object, not plain data
    with pytest.raises(fit.UserError) as caught:
        train.train(tiny_params(train__init_weights=str(pickled), paths__models_dir=str(tmp_path / "m")))
    assert "not a weights file of this project" in str(caught.value)
    assert "weights_only" not in str(caught.value) and "trust" not in str(caught.value)
