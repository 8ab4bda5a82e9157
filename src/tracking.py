"""Experiment tracking in MLflow and Weights & Biases, both optional, neither able to stop training.

MLflow: a SQLite store at the repository root (`mlflow.db`, artifacts in `mlartifacts/`). The root is
DVC's `DVC_ROOT` when DVC runs the stage, which for `dvc exp run --queue` is the original repository,
not the temporary copy the experiment runs in, so every run lands in one store.
`MLFLOW_TRACKING_URI` overrides the store. `mlflow ui --backend-store-uri sqlite:///mlflow.db` shows it.

W&B: offline by default (runs are written under `wandb/`; `wandb sync wandb/offline-run-*` uploads
them later). `wandb: online` in params, or `WANDB_MODE=online`, logs live when you are logged in; with
no credentials it falls back to offline with a warning instead of prompting.
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

from params import ROOT


def tracking_root() -> Path:
    return Path(os.environ.get("DVC_ROOT") or ROOT)


def git_commit(root: Path) -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                              timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _warn(what: str, e: Exception) -> None:
    print(f"warning: {what} disabled for this run: {type(e).__name__}: {e}", file=sys.stderr)


class Tracker:
    """Logs params, per-epoch metrics, tags and files to whichever trackers are on."""

    def __init__(self, run_name: str, experiment: str, params: dict[str, Any], use_mlflow: bool,
                 wandb_mode: str, nested: bool = False):
        self.mlflow = self.wandb = None
        root = tracking_root()
        commit = git_commit(root)
        if use_mlflow:
            try:
                self.mlflow = _start_mlflow(root, experiment, run_name, params, commit, nested)
            except Exception as e:  # a broken store must not cost a training run
                _warn("MLflow", e)
        mode = os.environ.get("WANDB_MODE", wandb_mode)
        if mode != "disabled":
            try:
                self.wandb = _start_wandb(root, experiment, run_name, params, commit, mode)
            except Exception as e:
                _warn("Weights & Biases", e)

    def log(self, metrics: dict[str, float], step: int) -> None:
        if self.mlflow:
            self.mlflow.log_metrics(metrics, step=step)
        if self.wandb:
            self.wandb.log(metrics, step=step)

    def log_file(self, path: Path) -> None:
        if self.mlflow:
            self.mlflow.log_artifact(str(path))
        if self.wandb:
            self.wandb.save(str(path), base_path=str(path.parent), policy="now")

    def finish(self, ok: bool) -> None:
        if self.mlflow:
            self.mlflow.end_run(status="FINISHED" if ok else "FAILED")
        if self.wandb:
            self.wandb.finish(exit_code=0 if ok else 1)


def _start_mlflow(root: Path, experiment: str, run_name: str, params: dict, commit: str, nested: bool):
    import mlflow
    if "MLFLOW_TRACKING_URI" not in os.environ:
        mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    if mlflow.get_experiment_by_name(experiment) is None:
        mlflow.create_experiment(experiment, artifact_location=(root / "mlartifacts").as_uri())
    mlflow.set_experiment(experiment)
    mlflow.start_run(run_name=run_name, nested=nested)
    mlflow.log_params(params)
    mlflow.set_tags({"git_commit": commit, "dvc_exp_name": os.environ.get("DVC_EXP_NAME", "")})
    return mlflow


def _start_wandb(root: Path, experiment: str, run_name: str, params: dict, commit: str, mode: str):
    import wandb
    if mode == "online" and not (os.environ.get("WANDB_API_KEY") or (Path.home() / ".netrc").exists()):
        warnings.warn("W&B is set online but no credentials were found (WANDB_API_KEY or `wandb login`); "
                      "logging offline instead")
        mode = "offline"
    (root / "wandb").mkdir(exist_ok=True)
    return wandb.init(project=experiment, name=run_name, mode=mode, dir=str(root), config=params,
                      tags=[commit[:12]], settings=wandb.Settings(silent=True, init_timeout=60),
                      reinit="create_new")
