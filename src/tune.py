"""Stage `tune`: Optuna search over Adam's lr, weight decay and betas, by really training.

Each trial is a short run of the training loop the train stage uses (`fit.fit`, `tune.epochs`
epochs, validated every epoch) and is scored by the validation mean IoU over the six BraTS regions, reported
each epoch so that the pruner (median or Hyperband) stops weak trials early. The sampler is TPE seeded
by `base.seed` plus the trial's number (make_sampler): its first `tune.startup_trials` trials are random, the rest are proposed by TPE's
model of the finished ones (Optuna's default of 10 start-up trials would make a 4-trial study random
search). The sampler is not part of the study's identity: the finished trials are real trainings,
valid whichever sampler proposed them, so changing `startup_trials` continues the study.

The study lives in a database: by default SQLite at the repository root (`optuna.db`, resolved like
MLflow's store, so queued `dvc exp run --queue` experiments share it), or any SQLAlchemy URL, or
`journal:<file>` for Optuna's journal file. Its name carries a hash of everything a trial depends on,
so an interrupted tune resumes without repeating finished trials, and a changed setting starts a new
study. Several processes or machines can work on one study: run `python src/tune.py` in each, with
`tune.storage` pointing at one shared database (PostgreSQL for machines, docs/tracking.md); together they run
exactly `tune.trials` trials. Each process claims its next trial under a lock (a PostgreSQL advisory
lock, or a file lock beside an SQLite or journal file): it counts the finished and running trials and
asks Optuna for a new one only while they are fewer than `tune.trials`. A running trial sends
heartbeats (RDB storages); one whose process was killed is marked failed by the next claim and its
slot is run again. A process that finds every slot claimed waits for the others' trials to end, so
the outputs it writes hold the whole study.

Writes `tune/best_params.json` (read by train where params.yaml says `tuned`), `tune/trials.csv` (no
durations, so a rerun writes the same bytes; they go to the console and MLflow), and under
`tune/plots/` the optimisation history and, once `IMPORTANCE_MIN_TRIALS` trials have completed, the
parameter importances (fANOVA on fewer trials than twice the number of parameters is noise). Each
trial is a nested MLflow run under a `tune` run. `optuna-dashboard sqlite:///optuna.db` shows the
study live (docs/pipeline.md).
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import sys
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

import optuna
from optuna.storages._heartbeat import get_heartbeat_thread, is_heartbeat_enabled

from errors import UserError, run_stage
from files import atomic_folder, write_json, write_text
from fit import FitState, build, fingerprint, fit
from layout import load_split
from params import BEST_PARAMS_FILE, OPTIMIZER_KEYS, Params, load_params
from runtime import setup_runtime
from tracking import Tracker, tracking_root

FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
CLAIMED = (*FINISHED, optuna.trial.TrialState.RUNNING)
WAIT_SECONDS = 5          # between looks at the other processes' running trials
IMPORTANCE_MIN_TRIALS = 2 * len(OPTIMIZER_KEYS)   # completed trials before importances are plotted


def storage_url(params: Params) -> str:
    """tune.storage with the default and a relative journal file resolved."""
    url = params.tune.storage
    if url.startswith("journal:"):
        path = Path(url.removeprefix("journal:"))
        return f"journal:{path if path.is_absolute() else tracking_root() / path}"
    return url or f"sqlite:///{tracking_root() / 'optuna.db'}"


def storage_for(params: Params) -> optuna.storages.BaseStorage:
    url = storage_url(params)
    if url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend, JournalStorage
        return JournalStorage(JournalFileBackend(url.removeprefix("journal:")))
    try:
        # heartbeats let a later run mark the trials of a killed process as failed, instead of waiting.
        # Processes starting together on a new database would each create Optuna's tables (all but
        # one fail): one at a time.
        with storage_lock(url, "optuna-schema"):
            return optuna.storages.RDBStorage(url, heartbeat_interval=30, grace_period=90)
    except Exception as e:
        raise UserError(f"tune.storage {url!r} cannot be opened: {type(e).__name__}: {e}") from None


def split(params: Params) -> tuple[list[str], list[str]]:
    """The cases a trial trains and validates on: the train/val split (whatever train.folds says, so
    that K folds share one tuning)."""
    pre = params.paths.preprocessed_dir
    return load_split(pre, "train"), load_split(pre, "val")


def study_name(params: Params) -> str:
    """`tune.study` plus a hash of the search space, trial length and the train inputs."""
    space = {k: dataclasses.asdict(getattr(params.tune, k)) for k in OPTIMIZER_KEYS}
    setting = {"space": space, "epochs": params.tune.epochs, "pruner": params.tune.pruner,
               "train": fingerprint(trial_params(params, {k: 0.0 for k in OPTIMIZER_KEYS}), *split(params))}
    digest = hashlib.sha256(json.dumps(setting, sort_keys=True).encode()).hexdigest()[:10]
    return f"{params.tune.study}-{digest}"


@contextmanager
def advisory_lock(engine, name: str):
    """A PostgreSQL session-level advisory lock named `name`, held on one connection of `engine`."""
    from sqlalchemy import text
    key = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)
    with engine.connect() as conn:
        conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": key})
        try:
            yield
        finally:
            conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
            conn.commit()


@contextmanager
def storage_lock(url: str, name: str, engine=None):
    """Held while one process does what processes sharing a study must do one at a time (create
    Optuna's tables, count the claimed trials and ask for a new one). PostgreSQL: an advisory lock
    named `name` (machines share nothing else; on `engine`, or a connection of its own); SQLite or a
    journal file: an flock on `<file>.lock` beside it; another database: none."""
    if url.startswith("postgresql"):
        import sqlalchemy
        own = engine is None
        engine = sqlalchemy.create_engine(url) if own else engine
        try:
            with advisory_lock(engine, name):
                yield
        finally:
            if own:
                engine.dispose()
        return
    path = url.removeprefix("journal:") if url.startswith("journal:") else \
        url.removeprefix("sqlite:///") if url.startswith("sqlite:///") else None
    if path is None:
        yield
        return
    with open(f"{path}.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def make_sampler(params: Params, number: int) -> optuna.samplers.TPESampler:
    """TPE seeded by base.seed and the number the next trial gets: processes sharing a study draw
    different values (one seed for all would give each process's first trial the same), and one
    process draws what it drew before."""
    return optuna.samplers.TPESampler(seed=params.base.seed + number, n_startup_trials=params.tune.startup_trials)


def claim_trial(study: optuna.Study, storage: optuna.storages.BaseStorage, url: str,
                params: Params) -> optuna.Trial | None:
    """A new trial of `study` (in `storage`, at `url`), or None when tune.trials are finished or
    running already."""
    with storage_lock(url, study.study_name, getattr(storage, "engine", None)):
        if is_heartbeat_enabled(study._storage):
            optuna.storages.fail_stale_trials(study)        # a killed process's trial frees its slot
        trials = study.get_trials(deepcopy=False)
        if sum(t.state in CLAIMED for t in trials) >= params.tune.trials:
            return None
        study.sampler = make_sampler(params, len(trials))
        return study.ask()


def run_claimed(study: optuna.Study, trial: optuna.Trial, params: Params) -> None:
    """Run one claimed trial with heartbeats and tell Optuna how it ended; an error or Ctrl-C marks
    it failed (its slot is run again later) and goes on up."""
    with get_heartbeat_thread(trial._trial_id, study._storage):
        try:
            value = objective(params, trial)
        except optuna.TrialPruned:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            return
        except BaseException:
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            raise
    study.tell(trial, value)


def wait_for_others(study: optuna.Study) -> None:
    """Until no trial of the study is running (another process's; a dead one's is failed by its
    heartbeat), so that the outputs hold every trial."""
    announced = False
    while True:
        if is_heartbeat_enabled(study._storage):
            optuna.storages.fail_stale_trials(study)
        running = [t.number for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))]
        if not running:
            return
        if not announced:
            print(f"waiting for trial(s) {running} of other processes to finish", file=sys.stderr)
            announced = True
        time.sleep(WAIT_SECONDS)


def make_pruner(kind: str) -> optuna.pruners.BasePruner:
    if kind == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1)
    if kind == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1)
    return optuna.pruners.NopPruner()


def suggest(trial: optuna.Trial, params: Params) -> dict[str, float]:
    out = {}
    for key in OPTIMIZER_KEYS:
        r = getattr(params.tune, key)
        out[key] = trial.suggest_float(key, r.low, r.high, log=r.log)
    return out


def trial_params(params: Params, values: dict[str, float]) -> Params:
    """The train params of one trial: suggested optimizer values, tune.epochs, validation each epoch,
    and base.seed as the training seed: a study does not change with train.seed, which only train's
    replicas vary (dvc.yaml's tune stage does not depend on it)."""
    train_section = dataclasses.replace(params.train, epochs=params.tune.epochs, val_every=1, seed=params.base.seed)
    return dataclasses.replace(params, train=train_section, **values)


def run_trial(params: Params, on_epoch) -> FitState:
    """A short training run with the trial's params; nothing is written."""
    rt = setup_runtime(params.train.precision, params.train.deterministic)
    train_cases, val_cases = split(params)
    parts = build(params, rt, train_cases)
    return fit(parts, params, rt, val_cases, FitState(), on_epoch)


def objective(params: Params, trial: optuna.Trial) -> float:
    values = suggest(trial, params)
    tracker = Tracker(f"trial-{trial.number}", params.train.experiment, values, params.train.mlflow,
                      "disabled", nested=True)

    def on_epoch(state: FitState, row: dict) -> None:
        epoch, score = row["epoch"], row["val_mean_iou"]      # trials validate every epoch
        trial.report(score, epoch)
        tracker.log({"val_mean_iou": score, "val_iou_WT": row["val_iou_WT"]}, step=epoch)
        if trial.should_prune():
            raise optuna.TrialPruned(f"epoch {epoch}: val mean IoU {score:.4f}")

    ok = False
    started = time.time()
    try:
        state = run_trial(trial_params(params, values), on_epoch)
        ok = True
    except optuna.TrialPruned:
        ok = True
        raise
    finally:
        seconds = time.time() - started
        tracker.log({"trial_seconds": seconds}, step=params.tune.epochs)
        tracker.finish(ok)
        print(f"trial {trial.number}: {seconds:.0f} s", file=sys.stderr)
    return state.best["val_mean_iou"]


def write_outputs(study: optuna.Study, params: Params) -> dict:
    out_dir = params.paths.tune_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    best = max(complete, key=lambda t: t.value) if complete else None
    result = {"study": study.study_name, "trials": len(study.trials),
              "complete": len(complete), "pruned": sum(t.state == optuna.trial.TrialState.PRUNED for t in study.trials),
              "best": dict(best.params) if best else {}, "best_value": best.value if best else None,
              "best_trial": best.number if best else None}
    write_json(out_dir / BEST_PARAMS_FILE, result)
    frame = study.trials_dataframe(attrs=("number", "value", "state", "params")) if study.trials else None
    write_text(out_dir / "trials.csv", frame.to_csv(index=False) if frame is not None else "number,value,state\n")
    write_plots(study, out_dir)
    return result


def write_plots(study: optuna.Study, out_dir: Path) -> None:
    """`history.png` always; `importance.png` once IMPORTANCE_MIN_TRIALS trials have completed."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ov
    with atomic_folder(out_dir / "plots") as folder:
        complete = sum(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
        plots = [("history", ov.plot_optimization_history)]
        if complete >= IMPORTANCE_MIN_TRIALS:
            plots.append(("importance", ov.plot_param_importances))
        for name, plot in plots:
            if complete:
                fig = plot(study).figure
            else:
                fig, ax = plt.subplots(figsize=(6, 3))
                ax.text(0.5, 0.5, "no completed trial", ha="center", va="center")
                ax.axis("off")
            fig.savefig(folder / f"{name}.png", dpi=80, bbox_inches="tight", metadata={"Software": None})
            plt.close(fig)


def tune(params: Params) -> dict:
    tp = params.tune
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # heartbeats and the matplotlib plots are marked experimental; they are what we want here, and
    # heartbeats with ask/tell (claim_trial) rather than Study.optimize
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
    storage = storage_for(params)
    study = optuna.create_study(study_name=study_name(params), storage=storage, direction="maximize",
                                sampler=make_sampler(params, 0), pruner=make_pruner(tp.pruner),
                                load_if_exists=True)
    done = sum(t.state in FINISHED for t in study.trials)
    if done:
        print(f"study {study.study_name}: {done} finished trial(s) found, {max(0, tp.trials - done)} to go",
              file=sys.stderr)
    if done < tp.trials:
        url = storage_url(params)
        parent = Tracker("tune", params.train.experiment, {"trials": tp.trials, "epochs": tp.epochs},
                         params.train.mlflow, "disabled")
        ok = False
        try:
            while (trial := claim_trial(study, storage, url, params)) is not None:
                run_claimed(study, trial, params)
            ok = True
        finally:
            parent.finish(ok)
        wait_for_others(study)
    return write_outputs(study, params)


def main() -> None:
    params = load_params()
    result = tune(params)
    if result["best"]:
        print(f"best of {result['complete']} complete trials ({result['pruned']} pruned): "
              f"val mean IoU {result['best_value']:.4f} with " +
              ", ".join(f"{k} {v:.3g}" for k, v in result["best"].items()))
    else:
        print("no trial completed (tune.trials is 0?): train needs numbers for lr, weight_decay, beta1, beta2")


if __name__ == "__main__":
    run_stage(main)
