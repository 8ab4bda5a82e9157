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
FOLD0 = Path("models") / "folds" / "fold_0"
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
    assert (origin / FOLD0 / "model.pt").stat().st_size > 0
    best = json.loads((origin / "tune" / "best_params.json").read_text())
    trained = yaml.safe_load((origin / "dvclive" / "fold_0" / "params.yaml").read_text())
    assert float(trained["lr"]) == best["best"]["lr"]              # tuned value reached training
    assert json.loads((origin / "dvclive" / "fold_0" / "metrics.json").read_text())["step"] == TINY["train.epochs"]
    assert json.loads((origin / "metrics" / "cv.json").read_text())["cv"]["folds"] == 1
    assert "## Metrics" in (origin / "MODEL_CARD.md").read_text()
    import boto3
    listed = boto3.client("s3", endpoint_url=s3.url, region_name="us-east-1", aws_access_key_id="testing",
                          aws_secret_access_key="testing").list_objects_v2(Bucket=BUCKET, Prefix="dvc/")
    assert listed["KeyCount"] > 10


def test_fresh_clone_pulls_everything_and_has_nothing_to_do(origin, s3, env, tmp_path):
    repo = clone(origin, tmp_path / "b", env, s3)
    sh(["dvc", "pull"], repo, env)
    folders = ("data/synthetic", "data/preprocessed", "models", "data/predictions")
    assert md5s(repo, *folders) == md5s(origin, *folders)
    assert (repo / "models" / "postprocessing.json").exists()
    assert "up to date" in sh(["dvc", "status"], repo, env).stdout
    assert "Running stage" not in sh(["dvc", "repro"], repo, env).stdout


def test_pulling_only_the_weights_and_predicting(origin, s3, env, tmp_path):
    repo = clone(origin, tmp_path / "c", env, s3)
    sh(["dvc", "pull", "train", "postprocess"], repo, env)       # the new-machine recipe (README, docs/remote.md)
    assert (repo / FOLD0 / "model.pt").exists() and (repo / "models" / "postprocessing.json").exists()
    assert not (repo / "data" / "synthetic").exists() and not (repo / "data" / "preprocessed").exists()
    test_case = json.loads((origin / "data" / "preprocessed" / "splits.json").read_text())["test"][0]
    case = origin / "data" / "synthetic" / test_case
    done = sh([sys.executable, "src/predict.py", "--weights", "models", "--input", str(case),
               "--output", str(tmp_path / "pred")], repo, env)
    ours = (tmp_path / "pred" / f"{case.name}.nii.gz")
    assert ours.exists() and "not post-processed" not in done.stderr, done.stderr
    import nibabel as nib
    import numpy as np
    stage = nib.load(origin / "data" / "predictions" / f"{case.name}.nii.gz")   # what evaluate scored
    assert np.array_equal(np.asanyarray(nib.load(ours).dataobj), np.asanyarray(stage.dataobj))


def test_deterministic_reruns_change_no_metric_and_no_lock(origin, s3, env, tmp_path):
    repo = clone(origin, tmp_path / "rerun", env, s3)
    sh(["dvc", "pull"], repo, env)
    locks = []
    for _ in range(2):
        sh(["dvc", "repro", "--force", "--single-item", "train"], repo, env)
        sh(["dvc", "repro"], repo, env)
        assert json.loads(sh(["dvc", "metrics", "diff", "--json"], repo, env).stdout or "{}") == {}
        locks.append((repo / "dvc.lock").read_text())
    assert locks[0] == locks[1]
    assert "Running stage" not in sh(["dvc", "repro"], repo, env).stdout


def test_model_registry_round_trip(origin, s3, env, tmp_path):
    """Register a version, assign a stage, then fetch the exact weights by either from an empty folder
    (the repository is a bare clone with no DVC cache, so the bytes come from the S3 remote)."""
    repo = clone(origin, tmp_path / "registry", env, s3)
    sh(["gto", "register", "brats-unet", "--version", "v0.1.0"], repo, env)
    sh(["gto", "assign", "brats-unet", "--version", "v0.1.0", "--stage", "prod"], repo, env)
    shown = sh(["gto", "show", "--json"], repo, env).stdout
    assert "v0.1.0" in shown and "prod" in shown
    bare = tmp_path / "registry.git"
    sh(["git", "clone", "-q", "--bare", str(repo), str(bare)], tmp_path, env)
    empty = tmp_path / "new-machine"
    empty.mkdir()
    remote = ["--remote", "s3", "--remote-config", f"endpointurl={s3.url}", f"url=s3://{BUCKET}/dvc"]
    sh(["dvc", "artifacts", "get", str(bare), "brats-unet", "--rev", "v0.1.0", "-o", "by-version", *remote],
       empty, env)
    sh(["dvc", "artifacts", "get", str(bare), "brats-unet", "--stage", "prod", "-o", "by-stage", *remote],
       empty, env)
    for name in ("folds/fold_0/model.pt", "postprocessing.json"):       # the model set: weights + post-processing
        wanted = (origin / "models" / name).read_bytes()
        assert (empty / "by-version" / name).read_bytes() == wanted and (empty / "by-stage" / name).read_bytes() == wanted
    failed = sh(["dvc", "artifacts", "get", str(bare), "brats-unet", "--rev", "v9.9.9", "-o", "none", *remote],
                empty, env, ok=False)
    assert failed.returncode != 0 and "Unable to find artifact 'brats-unet @ v9.9.9'" in failed.stderr
    assert not (empty / "none").exists()


def test_experiment_metrics_diff_and_show(origin, s3, env, tmp_path):
    repo = clone(origin, tmp_path / "d", env, s3)
    sh(["dvc", "pull"], repo, env)
    sh(["dvc", "exp", "run", "-S", "lr=1e-5"], repo, env)
    assert yaml.safe_load((repo / "params.yaml").read_text())["lr"] in (1e-5, "1e-05")
    assert float(yaml.safe_load((repo / "dvclive" / "fold_0" / "params.yaml").read_text())["lr"]) == 1e-5   # YAML 1.1 reads text
    diff = sh(["dvc", "metrics", "diff", "--json"], repo, env).stdout
    changed = json.loads(diff)["metrics/evaluate.json"]
    assert "iou.WT" in changed and "old" in changed["iou.WT"]
    show = sh(["dvc", "exp", "show", "--csv"], repo, env).stdout
    header = show.splitlines()[0]
    assert "lr" in header and "iou.WT" in header and "1e-05" in show
    # the README's narrow table: the params the experiment changed and test IoU per region, within 160 columns
    table = sh([*readme_exp_show(), "--no-pager"], repo, {**env, "COLUMNS": "400"}).stdout
    assert max(len(line.rstrip()) for line in table.splitlines()) <= 160, table
    for column in ("Experiment", "lr", "iou.WT", "1e-05"):      # (a region both runs score alike is left out)
        assert column in table, (column, table)
    for column in ("dice.WT", "ci95", "src/", "data/", "train.epochs"):       # unchanged or not asked for
        assert column not in table, (column, table)


def test_fresh_clone_compares_metrics_without_pulling_and_without_warnings(origin, env, tmp_path):
    """No remote, no `dvc pull`: the metrics compared across revisions are in git."""
    repo = tmp_path / "fresh"
    sh(["git", "clone", "-q", str(origin), str(repo)], tmp_path, env)
    declared = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]
    metric_files = [m if isinstance(m, str) else next(iter(m)) for st in declared.values() for m in st.get("metrics", [])]
    assert metric_files and not [m for m in metric_files if m.endswith((".yaml", ".yml"))], metric_files
    for cmd in (["dvc", "metrics", "diff", "HEAD~1"], ["dvc", "metrics", "diff"], ["dvc", "metrics", "show"]):
        done = sh(cmd, repo, env)
        assert "failed to load" not in (done.stdout + done.stderr).lower() and "WARNING" not in done.stderr, done
    changed = json.loads(sh(["dvc", "metrics", "diff", "HEAD~1", "--json"], repo, env).stdout)
    assert {"iou.WT", "ci95.iou.WT.low", "ci95.iou.WT.high"} <= set(changed["metrics/evaluate.json"])
    shown = sh(["dvc", "exp", "show", "--json"], repo, env)
    assert "failed to load" not in (shown.stdout + shown.stderr).lower()
    rows = json.loads(shown.stdout)
    workspace_and_head = [rows[0]] + [r for r in rows[1:] if r.get("rev") not in (None, "workspace")][:1]
    for row in workspace_and_head:
        for exp in [row] + [e for e in row.get("experiments") or []]:
            for revision in exp.get("revs", [exp]):
                data = revision.get("data") or {}
                assert not revision.get("error") and not data.get("error"), revision
                for path, content in (data.get("metrics") or {}).items():
                    assert "error" not in content, (path, content)
                    assert not path.startswith("dvclive"), path


def test_training_seed_reruns_training_only_and_experiments_compare_by_name(origin, s3, env, tmp_path):
    """train.seed draws training, not data: synthesize, preprocess and tune stay cached; the replica is
    a DVC experiment that src/compare.py reads by its name."""
    repo = clone(origin, tmp_path / "seeds", env, s3)
    sh(["dvc", "pull"], repo, env)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["train"]["seed"] = 7
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    changed = json.loads(sh(["dvc", "status", "--json"], repo, env).stdout)
    assert set(changed) == {"train@0"}, changed
    sh(["git", "checkout", "params.yaml"], repo, env)
    ran = sh(["dvc", "exp", "run", "-S", "train.seed=7", "--name", "seed7"], repo, env).stdout
    assert "Running stage 'train@0'" in ran and "Running stage 'evaluate'" in ran
    for stage in ("synthesize", "preprocess", "tune"):
        assert f"Running stage '{stage}'" not in ran, ran
    done = sh([sys.executable, "src/compare.py", "-a", "HEAD", "-b", "seed7", "--out", str(tmp_path / "cmp")], repo, env)
    result = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    splits = json.loads((repo / "data" / "preprocessed" / "splits.json").read_text())
    assert result["cases"] == sorted(splits["test"]) and result["candidate"]["runs"] == ["seed7"]
    assert "| iou | WT |" in done.stdout and result["primary"]["verdict"] in ("better", "worse", "within noise")


def readme_exp_show() -> list[str]:
    import re
    import shlex
    line = re.search(r"^dvc exp show --only-changed .*$", (ROOT / "README.md").read_text(), re.M)
    assert line, "the README lost its narrow `dvc exp show` command"
    return shlex.split(line.group(0).split("  #")[0])


def test_queued_experiments_finish_and_log_to_the_repository_store(origin, s3, env, tmp_path):
    repo = clone(origin, tmp_path / "q", env, s3)
    sh(["dvc", "pull"], repo, env)
    for lr in ("0.001", "0.002"):
        sh(["dvc", "exp", "run", "--queue", "-S", f"lr={lr}"], repo, env)
    sh(["dvc", "queue", "start"], repo, env)
    wait_for_queue(repo, env, 2)
    import sqlite3
    with sqlite3.connect(repo / "mlflow.db") as db:
        lrs = {float(v) for (v,) in db.execute("select value from params where key = 'lr'")}
    assert {0.001, 0.002} <= lrs


def wait_for_queue(repo: Path, env: dict, tasks: int) -> str:
    for _ in range(900):
        status = sh(["dvc", "queue", "status"], repo, env).stdout
        if "Queued" not in status and "Running" not in status:
            break
        time.sleep(1)
    assert status.count("Success") == tasks, status
    return status


def test_folds_trained_in_the_queue_and_on_another_machine_meet_through_the_run_cache(origin, s3, env, tmp_path):
    """train.folds [0, 1, 2]: folds 0 and 1 run side by side in DVC's queue, fold 2 on a second machine
    that pushes its run cache; the evaluating machine pulls it and trains nothing itself."""
    main = clone(origin, tmp_path / "cv", env, s3)
    sh(["dvc", "pull"], main, env)
    params = yaml.safe_load((main / "params.yaml").read_text())
    params["train"]["folds"] = [0, 1, 2]
    (main / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh(["dvc", "repro", "tune"], main, env)                 # new folds in splits.json; tuning for all folds
    sh(["git", "add", "-A"], main, env)
    sh(["git", "commit", "-qm", "three folds"], main, env)
    sh(["dvc", "push"], main, env)
    stages = sh(["dvc", "stage", "list", "--name-only"], main, env).stdout.split()
    assert {"train@0", "train@1", "train@2"} <= set(stages)

    for fold in (0, 1):                                     # the queue recipe (docs/cross-validation.md)
        sh(["dvc", "exp", "run", "--queue", f"train@{fold}"], main, env)
    sh(["dvc", "queue", "start", "-j", "2"], main, env)
    wait_for_queue(main, env, 2)

    other = clone(main, tmp_path / "cv-other", env, s3)      # another machine: one fold, then its run cache
    ran = sh(["dvc", "repro", "--pull", "train@2"], other, env).stdout
    assert "Running stage 'train@2'" in ran and "Running stage 'train@0'" not in ran and "Running stage 'tune'" not in ran
    sh(["dvc", "push", "--run-cache"], other, env)

    done = sh(["dvc", "repro", "--pull"], main, env).stdout      # fetches fold 2's run and weights
    for fold in (0, 1, 2):
        assert f"Stage 'train@{fold}' is cached - skipping run" in done, done
    assert "Running stage 'train@" not in done and "Running stage 'evaluate'" in done
    fold2 = Path("models") / "folds" / "fold_2" / "model.pt"
    assert (main / fold2).read_bytes() == (other / fold2).read_bytes()
    cv = json.loads((main / "metrics" / "cv.json").read_text())["cv"]
    splits = json.loads((main / "data" / "preprocessed" / "splits.json").read_text())
    assert cv["folds"] == 3 and cv["cases"] == len(splits["train"]) + len(splits["val"])
    weights = json.loads((main / "models" / "postprocessing.json").read_text())["weights"]
    assert [w["path"] for w in weights] == [f"folds/fold_{k}/model.pt" for k in (0, 1, 2)]
    assert "the mean probability of the 3 fold models" in (main / "MODEL_CARD.md").read_text()
    assert "Running stage" not in sh(["dvc", "repro"], main, env).stdout


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
    assert not (repo / FOLD0 / "model.pt").exists()
