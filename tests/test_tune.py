"""The tune stage: a tiny real study that prunes, writes its outputs and resumes."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import optuna
import pytest

import tune
from params import SearchRange, resolve_tuned


@pytest.fixture
def tune_params(tiny_params, tmp_path, monkeypatch):
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    def build(**over):
        defaults = {"paths__tune_dir": str(tmp_path / "tune"), "tune__epochs": 3, "tune__pruner": "median",
                    "tune__storage": ""}
        return tiny_params(**{**defaults, **over})
    return build


def trials_in(params) -> list[optuna.trial.FrozenTrial]:
    study = optuna.load_study(study_name=tune.study_name(params), storage=tune.storage_for(params))
    return study.trials


def test_tiny_study_prunes_writes_outputs_and_feeds_train(tune_params, tmp_path):
    # a range from hopeless to useful learning rates, so that the median pruner has work to do
    params = tune_params(tune__trials=6)
    params = dataclasses.replace(params, tune=dataclasses.replace(params.tune, lr=SearchRange(1e-7, 3e-2, True)))
    result = tune.tune(params)
    states = [t.state for t in trials_in(params)]
    assert len(states) == 6 and optuna.trial.TrialState.PRUNED in states
    assert result["complete"] + result["pruned"] == 6
    best = json.loads((tmp_path / "tune" / "best_params.json").read_text())
    assert set(best["best"]) == {"lr", "weight_decay", "beta1", "beta2"}
    assert 1e-7 <= best["best"]["lr"] <= 3e-2
    rows = (tmp_path / "tune" / "trials.csv").read_text().strip().splitlines()
    assert len(rows) == 7 and "params_lr" in rows[0] and "duration" not in rows[0]   # same bytes on a rerun
    plots = tmp_path / "tune" / "plots"
    assert (plots / "history.png").stat().st_size > 0
    assert result["complete"] < tune.IMPORTANCE_MIN_TRIALS and not (plots / "importance.png").exists()
    # precedence: `tuned` keys take the study's best value...
    resolved = resolve_tuned(dataclasses.replace(params, lr="tuned", beta2="tuned"))
    assert resolved.lr == best["best"]["lr"] and resolved.beta2 == best["best"]["beta2"]
    assert resolved.beta1 == params.beta1                      # not `tuned`: the number stays
    # ...and a number set in params.yaml (or by `dvc exp run -S lr=...`) wins over it
    assert resolve_tuned(tune_params(lr=1e-5)).lr == 1e-5


def test_interrupted_tune_resumes_without_repeating_trials(tune_params, monkeypatch):
    params = tune_params(tune__trials=3, tune__pruner="none")
    real = tune.run_trial
    calls = []

    def dies_in_second_trial(p, on_epoch):
        calls.append(p.lr)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(p, on_epoch)
    monkeypatch.setattr(tune, "run_trial", dies_in_second_trial)
    with pytest.raises(KeyboardInterrupt):
        tune.tune(params)
    first = [t for t in trials_in(params) if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(first) == 1
    monkeypatch.setattr(tune, "run_trial", real)
    tune.tune(params)
    trials = trials_in(params)
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 3
    assert complete[0].number == first[0].number and complete[0].params == first[0].params  # kept, not rerun


def test_zero_trials_skip_tuning_and_train_needs_numbers(tune_params, tmp_path):
    from errors import UserError
    params = tune_params(tune__trials=0)
    result = tune.tune(params)
    assert result["best"] == {} and (tmp_path / "tune" / "best_params.json").exists()
    tuned = dataclasses.replace(params, lr="tuned", weight_decay="tuned", beta1="tuned", beta2="tuned")
    with pytest.raises(UserError, match=r"lr, weight_decay, beta1, beta2: `tuned` in params.yaml.*tune.trials is 0"):
        resolve_tuned(tuned)
    numbers = tune_params(tune__trials=0, lr=0.001, weight_decay=0.0, beta1=0.9, beta2=0.999)
    assert resolve_tuned(numbers).lr == 0.001


def test_changed_search_space_starts_a_new_study(tune_params):
    a = tune_params(tune__trials=1)
    b = tune_params(tune__trials=1, tune__epochs=2)
    assert tune.study_name(a) != tune.study_name(b)
    assert tune.study_name(a) == tune.study_name(tune_params(tune__trials=5))  # more trials: same study


def test_journal_storage(tune_params, tmp_path):
    params = tune_params(tune__trials=1, tune__storage="journal:optuna.log", tune__pruner="none")
    tune.tune(params)
    assert (tmp_path / "optuna.log").exists()
    assert len(trials_in(params)) == 1


def test_bad_storage_url_is_named(tune_params):
    from errors import UserError
    with pytest.raises(UserError, match="tune.storage 'nosuchdb://x'"):
        tune.storage_for(tune_params(tune__storage="nosuchdb://x"))


def test_each_trial_is_a_nested_mlflow_run(tune_params, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    params = tune_params(tune__trials=2, tune__pruner="none", train__mlflow=True)
    tune.tune(params)
    import mlflow
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=[params.train.experiment], output_format="list")
    parent = [r for r in runs if r.info.run_name == "tune"]
    trials = [r for r in runs if r.info.run_name.startswith("trial-")]
    assert len(parent) == 1 and len(trials) == 2
    assert all(r.data.tags.get("mlflow.parentRunId") == parent[0].info.run_id for r in trials)
    assert all("lr" in r.data.params and "val_mean_iou" in r.data.metrics for r in trials)


def test_importances_are_plotted_once_enough_trials_completed(tune_params, tmp_path):
    params = tune_params(tune__trials=tune.IMPORTANCE_MIN_TRIALS, tune__epochs=1, tune__pruner="none")
    tune.tune(params)
    assert (tmp_path / "tune" / "plots" / "importance.png").stat().st_size > 0
    assert (tmp_path / "tune" / "plots" / "history.png").stat().st_size > 0


def test_tpe_takes_over_after_the_startup_trials(tune_params, monkeypatch):
    from params import ParamsError
    made = []
    real = optuna.samplers.TPESampler
    monkeypatch.setattr(optuna.samplers, "TPESampler", lambda **kw: made.append(kw) or real(**kw))
    tune.tune(tune_params(tune__trials=3, tune__startup_trials=2, tune__pruner="none"))
    assert made and made[0]["n_startup_trials"] == 2
    with pytest.raises(ParamsError, match=r"tune.startup_trials \(4\) must be below tune.trials \(4\)"):
        tune_params(tune__trials=4, tune__startup_trials=4)


def tune_checkout(tmp_path, tiny_data, storage: str, **overrides) -> Path:
    """A copy of src/ with the tiny params, tiny_data's cases and `storage`, for `python src/tune.py`."""
    from helpers import TINY, checkout
    return checkout(tmp_path, {**TINY, "paths.preprocessed_dir": str(tiny_data / "data" / "preprocessed"),
                               "tune.storage": storage, "tune.pruner": "none", "tune.epochs": 1, **overrides})


@pytest.mark.slow
@pytest.mark.parametrize("database", ["postgresql", "sqlite"])
def test_two_processes_on_one_study_run_exactly_the_trials(database, request, tiny_data, tmp_path):
    """Two `python src/tune.py` at once on one study (PostgreSQL: as on two machines; SQLite: two
    processes of one machine): exactly tune.trials finished trials between them, each value drawn
    once, each trial run by one process, and both processes write the same outputs (the one that ends
    first waits for the other's trial)."""
    import os
    import subprocess
    import sys
    trials = 4
    url = request.getfixturevalue("postgres_url") if database == "postgresql" else f"sqlite:///{tmp_path / 'study.db'}"
    repos = [tune_checkout(tmp_path / f"m{i}", tiny_data, url, **{"tune.trials": trials}) for i in range(2)]
    env = {k: v for k, v in os.environ.items() if k != "DVC_ROOT"}
    procs = [subprocess.Popen([sys.executable, "src/tune.py"], cwd=repo, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for repo in repos]
    outputs = [p.communicate(timeout=900) for p in procs]
    for p, (out, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-3000:]
    from params import load_params
    params = load_params(repos[0] / "params.yaml")
    study = optuna.load_study(study_name=tune.study_name(params), storage=url)
    states = [t.state for t in study.trials]
    assert states.count(optuna.trial.TrialState.COMPLETE) == trials and len(states) == trials, states
    drawn = {tuple(sorted(t.params.items())) for t in study.trials}
    assert len(drawn) == trials                                     # no value drawn twice
    ran = [int(line.split()[1].rstrip(":")) for _, err in outputs for line in err.splitlines()
           if line.startswith("trial ")]
    assert sorted(ran) == list(range(trials))                       # each trial run once, by one process
    written = [json.loads((repo / "tune" / "best_params.json").read_text()) for repo in repos]
    assert written[0] == written[1] and written[0]["complete"] == trials


@pytest.mark.slow
def test_mlflow_tracking_server_with_a_postgresql_backend(postgres_url, tune_params, tmp_path, monkeypatch):
    """MLFLOW_TRACKING_URI pointing at `mlflow server` backed by PostgreSQL, as a team runs it: the tune
    run and its nested trials land there, not in a local file."""
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    import sqlalchemy as sa
    with sa.create_engine(postgres_url, isolation_level="AUTOCOMMIT").connect() as conn:
        conn.execute(sa.text("CREATE DATABASE mlflow"))
    backend = postgres_url.rsplit("/", 1)[0] + "/mlflow"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend,
                               "--artifacts-destination", (tmp_path / "artifacts").as_uri(), "--host", "127.0.0.1",
                               "--port", str(port), "--workers", "1"],
                              stdout=subprocess.DEVNULL, stderr=open(tmp_path / "server.log", "w"))
    try:
        uri = f"http://127.0.0.1:{port}"
        for _ in range(240):
            try:
                urllib.request.urlopen(f"{uri}/health", timeout=2)
                break
            except OSError:
                assert server.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
                time.sleep(0.5)
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        params = tune_params(tune__trials=2, tune__pruner="none", tune__epochs=1, train__mlflow=True)
        tune.tune(params)
        from mlflow import MlflowClient
        client = MlflowClient(uri)
        experiment = client.get_experiment_by_name(params.train.experiment)
        runs = client.search_runs([experiment.experiment_id])
        parent = [r for r in runs if r.info.run_name == "tune"]
        trials = [r for r in runs if r.info.run_name.startswith("trial-")]
        assert len(parent) == 1 and len(trials) == 2
        assert all(r.data.tags.get("mlflow.parentRunId") == parent[0].info.run_id for r in trials)
        assert not (tmp_path / "mlflow.db").exists()                # nothing went to the local store
    finally:
        server.terminate()
        server.wait(timeout=60)
