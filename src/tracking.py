"""Experiment tracking in MLflow and Weights & Biases, both optional, neither able to stop training.

MLflow: a SQLite store at the repository root (`mlflow.db`, artifacts in `mlartifacts/`). The root is
DVC's `DVC_ROOT` when DVC runs the stage, which for `dvc exp run --queue` is the original repository,
not the temporary copy the experiment runs in, so every run lands in one store.
`MLFLOW_TRACKING_URI` overrides the store. `mlflow ui --backend-store-uri sqlite:///mlflow.db` shows it.

A resumed training continues its runs (their ids travel in the resume checkpoint) instead of
starting second ones. With `train.mlflow_log_model` the best network is logged with
`mlflow.pytorch.log_model` (input/output signature from one patch; registered under
`train.mlflow_model_name` when that is set); weights otherwise travel through DVC only.

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
                 wandb_mode: str, nested: bool = False, resume: dict[str, str] | None = None):
        """`resume`: the `run_ids()` of an interrupted run, to continue it."""
        self.mlflow = self.wandb = None
        resume = resume or {}
        root = tracking_root()
        commit = git_commit(root)
        if use_mlflow:
            try:
                self.mlflow = _start_mlflow(root, experiment, run_name, params, commit, nested, resume.get("mlflow"))
            except Exception as e:  # a broken store must not cost a training run
                _warn("MLflow", e)
        mode = os.environ.get("WANDB_MODE", wandb_mode)
        if mode != "disabled":
            try:
                self.wandb = _start_wandb(root, experiment, run_name, params, commit, mode, resume.get("wandb"))
            except Exception as e:
                _warn("Weights & Biases", e)

    def run_ids(self) -> dict[str, str]:
        ids = {}
        if self.mlflow and self.mlflow.active_run():
            ids["mlflow"] = self.mlflow.active_run().info.run_id
        if self.wandb:
            ids["wandb"] = self.wandb.id
        return ids

    def log(self, metrics: dict[str, float], step: int) -> None:
        if self.mlflow:
            self.mlflow.log_metrics(metrics, step=step)
        if self.wandb:
            self.wandb.log(metrics, step=step)

    def log_model(self, model, patch: tuple[int, int, int], registered_name: str = "") -> None:
        """The network as an MLflow model (eval mode, CPU) with the signature of one patch."""
        if not self.mlflow:
            return
        try:
            _log_mlflow_model(model, patch, registered_name)
        except Exception as e:
            print(f"warning: MLflow could not log the model: {type(e).__name__}: {e}", file=sys.stderr)

    def finish(self, ok: bool) -> None:
        if self.mlflow:
            self.mlflow.end_run(status="FINISHED" if ok else "FAILED")
        if self.wandb:
            self.wandb.finish(exit_code=0 if ok else 1)


def _start_mlflow(root: Path, experiment: str, run_name: str, params: dict, commit: str, nested: bool,
                  run_id: str | None = None):
    import mlflow
    local = "MLFLOW_TRACKING_URI" not in os.environ
    # set either way: a URI set earlier in the process would otherwise win over the environment's
    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}" if local else os.environ["MLFLOW_TRACKING_URI"])
    if mlflow.get_experiment_by_name(experiment) is None:
        # the local store keeps artifacts beside it; a tracking server decides where its go
        mlflow.create_experiment(experiment, artifact_location=(root / "mlartifacts").as_uri() if local else None)
    mlflow.set_experiment(experiment)
    if run_id:
        try:
            mlflow.start_run(run_id=run_id)     # the interrupted run, status back to RUNNING
            return mlflow
        except Exception as e:                  # deleted, or another store: a new run it is
            _warn(f"continuing MLflow run {run_id}", e)
    mlflow.start_run(run_name=run_name, nested=nested)
    mlflow.log_params(params)
    mlflow.set_tags({"git_commit": commit, "dvc_exp_name": os.environ.get("DVC_EXP_NAME", "")})
    return mlflow


def _log_mlflow_model(model, patch: tuple[int, int, int], registered_name: str) -> None:
    import mlflow.pytorch
    import numpy as np
    import torch
    from mlflow.models import infer_signature
    from brats import MODALITIES
    model = model.cpu().eval()
    example = np.zeros((1, len(MODALITIES), *patch), np.float32)
    with torch.no_grad():
        output = model(torch.from_numpy(example)).numpy()
    here = Path(__file__).parent
    mlflow.pytorch.log_model(model, name="model", signature=infer_signature(example, output),
                             serialization_format="pickle",    # an nn.Module back, any window size
                             registered_model_name=registered_name or None,
                             code_paths=[str(here / f) for f in ("model.py", "params.py", "errors.py", "files.py",
                                                                  "brats.py")],
                             pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", f"numpy=={np.__version__}",
                                               "pyyaml"])


def _start_wandb(root: Path, experiment: str, run_name: str, params: dict, commit: str, mode: str,
                 run_id: str | None = None):
    import wandb
    if mode == "online" and not (os.environ.get("WANDB_API_KEY") or (Path.home() / ".netrc").exists()):
        warnings.warn("W&B is set online but no credentials were found (WANDB_API_KEY or `wandb login`); "
                      "logging offline instead")
        mode = "offline"
    (root / "wandb").mkdir(exist_ok=True)
    return wandb.init(project=experiment, name=run_name, mode=mode, dir=str(root), config=params,
                      tags=[commit[:12]], settings=wandb.Settings(silent=True, init_timeout=60),
                      reinit="create_new", **({"id": run_id, "resume": "allow"} if run_id else {}))
