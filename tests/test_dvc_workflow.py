"""The user's DVC workflow, end to end on a tiny config, against a real S3 API server (moto) on
127.0.0.1: repro, push, clone, pull, experiments, the queue, and a remote that dies mid-push.

The repository under test is a `git clone` of this checkout's HEAD, as CI's clean clone is."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from helpers import ROOT, TINY
from params import apply_overrides

BUCKET = "brats-e2e"
pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class S3Server:
    """moto's S3 server in its own process, so that it can be killed and restarted."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        import boto3
        boto3.client("s3", endpoint_url=self.url, region_name="us-east-1", aws_access_key_id="testing",
                     aws_secret_access_key="testing").create_bucket(Bucket=BUCKET)

    def stop(self) -> None:
        if self.proc:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


@pytest.fixture(scope="module")
def s3():
    server = S3Server()
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    return {**os.environ, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1", "HOME": str(home), "MLFLOW_TRACKING_URI": "",
            "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
            "GIT_COMMITTER_EMAIL": "t@t", "DVC_NO_ANALYTICS": "1"}


def sh(cmd: list[str], cwd: Path, env: dict, ok: bool = True, timeout: int = 900) -> subprocess.CompletedProcess:
    run_env = {k: v for k, v in env.items() if v != ""}
    done = subprocess.run(cmd, cwd=cwd, env=run_env, capture_output=True, text=True, timeout=timeout)
    if ok:
        assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    return done


def clone(src: Path, dst: Path, env: dict, s3: S3Server, prefix: str = "dvc") -> Path:
    sh(["git", "clone", "-q", str(src), str(dst)], dst.parent, env)
    sh(["dvc", "remote", "modify", "--local", "s3", "endpointurl", s3.url], dst, env)
    sh(["dvc", "remote", "modify", "--local", "s3", "url", f"s3://{BUCKET}/{prefix}"], dst, env)
    sh(["dvc", "remote", "default", "--local", "s3"], dst, env)
    return dst


def md5s(repo: Path, *folders: str) -> dict[str, str]:
    return {str(p.relative_to(repo)): hashlib.md5(p.read_bytes()).hexdigest()
            for f in folders for p in sorted((repo / f).rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def origin(tmp_path_factory, s3, env) -> Path:
    """A clone of this checkout with tiny params, reproduced, committed and pushed to S3."""
    base = tmp_path_factory.mktemp("e2e")
    repo = clone(ROOT, base / "origin", env, s3)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    # the tiny configuration, tuned and tracked in MLflow as a user's pipeline is
    apply_overrides(params, {**TINY, "train.mlflow": True})
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh(["dvc", "repro"], repo, env)
    sh(["git", "add", "-A"], repo, env)
    sh(["git", "commit", "-qm", "tiny run"], repo, env)
    sh(["dvc", "push"], repo, env)
    return repo


def test_repro_outputs_and_push(origin, s3):
    metrics = json.loads((origin / "metrics" / "evaluate.json").read_text())
    assert set(metrics["iou"]) == {"ET", "TC", "WT", "NETC", "SNFH", "RC"}
    assert (origin / "models" / "model.pt").stat().st_size > 0
    best = json.loads((origin / "tune" / "best_params.json").read_text())
    trained = json.loads((origin / "metrics" / "train.json").read_text())
    assert trained["lr"] == best["best"]["lr"]                     # tuned value reached training
    import boto3
    listed = boto3.client("s3", endpoint_url=s3.url, region_name="us-east-1", aws_access_key_id="testing",
                          aws_secret_access_key="testing").list_objects_v2(Bucket=BUCKET, Prefix="dvc/")
    assert listed["KeyCount"] > 10


def test_fresh_clone_pulls_everything_and_has_nothing_to_do(origin, s3, env, tmp_path):
    repo = clone(origin, tmp_path / "b", env, s3)
    sh(["dvc", "pull"], repo, env)
    folders = ("data/synthetic", "data/preprocessed", "models", "data/predictions")
    assert md5s(repo, *folders) == md5s(origin, *folders)
    assert "up to date" in sh(["dvc", "status"], repo, env).stdout
    assert "Running stage" not in sh(["dvc", "repro"], repo, env).stdout


def test_pulling_only_the_weights_and_predicting(origin, s3, env, tmp_path):
    repo = clone(origin, tmp_path / "c", env, s3)
    sh(["dvc", "pull", "models/model.pt"], repo, env)
    assert (repo / "models" / "model.pt").exists()
    assert not (repo / "data" / "synthetic").exists() and not (repo / "data" / "preprocessed").exists()
    case = sorted((origin / "data" / "synthetic").iterdir())[0]
    done = sh([sys.executable, "src/predict.py", "--weights", "models/model.pt", "--input", str(case),
               "--output", str(tmp_path / "pred")], repo, env)
    assert (tmp_path / "pred" / f"{case.name}.nii.gz").exists(), done.stderr


def test_experiment_metrics_diff_and_show(origin, s3, env, tmp_path):
    repo = clone(origin, tmp_path / "d", env, s3)
    sh(["dvc", "pull"], repo, env)
    sh(["dvc", "exp", "run", "-S", "lr=1e-5"], repo, env)
    assert yaml.safe_load((repo / "params.yaml").read_text())["lr"] in (1e-5, "1e-05")
    assert json.loads((repo / "metrics" / "train.json").read_text())["lr"] == 1e-5
    diff = sh(["dvc", "metrics", "diff", "--json"], repo, env).stdout
    changed = json.loads(diff)["metrics/evaluate.json"]
    assert "iou.WT" in changed and "old" in changed["iou.WT"]
    show = sh(["dvc", "exp", "show", "--csv"], repo, env).stdout
    header = show.splitlines()[0]
    assert "lr" in header and "iou.WT" in header and "1e-05" in show


def test_queued_experiments_finish_and_log_to_the_repository_store(origin, s3, env, tmp_path):
    repo = clone(origin, tmp_path / "q", env, s3)
    sh(["dvc", "pull"], repo, env)
    for lr in ("0.001", "0.002"):
        sh(["dvc", "exp", "run", "--queue", "-S", f"lr={lr}"], repo, env)
    sh(["dvc", "queue", "start"], repo, env)
    for _ in range(600):
        status = sh(["dvc", "queue", "status"], repo, env).stdout
        if "Queued" not in status and "Running" not in status:
            break
        time.sleep(1)
    assert status.count("Success") == 2, status
    import sqlite3
    with sqlite3.connect(repo / "mlflow.db") as db:
        lrs = {float(v) for (v,) in db.execute("select value from params where key = 'lr'")}
    assert {0.001, 0.002} <= lrs


def test_remote_dying_mid_push_then_retry(origin, s3, env, tmp_path):
    repo = origin
    sh(["dvc", "remote", "modify", "--local", "s3", "url", f"s3://{BUCKET}/retry"], repo, env)
    push = subprocess.Popen(["dvc", "push", "-j", "1"], cwd=repo, env={k: v for k, v in env.items() if v},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(1.0)
    s3.stop()
    out, err = push.communicate(timeout=600)
    if push.returncode != 0:                       # the usual case: the server died under the push
        assert "ERROR" in err and ("push" in err or "connect" in err.lower()), err
    s3.start()                                     # a new, empty server on the same address
    sh(["dvc", "push"], repo, env)
    fresh = clone(repo, tmp_path / "after", env, s3, prefix="retry")
    sh(["dvc", "pull"], fresh, env)
    folders = ("data/synthetic", "data/preprocessed", "models")
    assert md5s(fresh, *folders) == md5s(repo, *folders)



def test_dead_remote_is_a_clear_error(origin, s3, env, tmp_path):
    repo = clone(origin, tmp_path / "dead", env, s3)
    sh(["dvc", "remote", "modify", "--local", "s3", "endpointurl", S3Server().url], repo, env)  # nobody there
    failed = sh(["dvc", "pull"], repo, env, ok=False)
    assert failed.returncode != 0 and "ERROR" in failed.stderr
    assert not (repo / "models" / "model.pt").exists()
