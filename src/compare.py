"""Compare a baseline with a candidate on the same cases, and say whether the change is real.

    python src/compare.py --baseline main --candidate my-exp
    python src/compare.py --baseline exp-a1 exp-a2 exp-a3 --candidate exp-b1 exp-b2 exp-b3

Each side is one run or several (replicas: the same params with another `train.seed`), each run given as
- a git revision (`HEAD`, `main`, a tag, a commit) or a DVC experiment's name (`dvc exp show`): its
  per-case test scores, `metrics/evaluate_cases.csv` as committed there;
- `workspace`: that file as it is now;
- a file: a per-case CSV in that layout (`case`, then `<metric>_<region>` columns), the JSON the
  scorer writes (`src/evaluate.py --pred … --gt … --out scores.json`), or a benchmark's per-seed
  `score.json` (`bench/sim2real.py --seeds`: WORK/seed-S/score.json) or result (`bench/real.py --out`).

Cases are paired by id; every run must hold the same cases (one line names what differs). Per metric
and region: each side's mean (over cases of the replica-averaged scores) with the spread of its
replicas' means, the mean paired difference with its 95 % interval (src/stats.py: bootstrap over
cases, widened by the seed spread when both sides have replicas), and a verdict: better, worse or
within noise. `--matched`: the candidate's runs are the baseline's models, in the same order, judged
another way (other cut-offs, other post-processing); the seed noise is then the spread of each
model's own change, not of the two sides' means. Prints a Markdown table (as `dvc metrics diff --md`), writes `<out>/comparison.json`
and a forest plot `<out>/comparison.png`.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import subprocess
from pathlib import Path

import numpy as np

from brats import REGIONS
from errors import UserError, run_stage
from files import atomic_write, write_json
from params import ROOT
from stats import LEVEL, RESAMPLES, Difference, paired

CASES_CSV = "metrics/evaluate_cases.csv"     # the evaluate stage's per-case scores (paths.metrics_dir)
METRICS = ("iou", "dice", "lesionwise_dice")
LOWER_IS_BETTER = ("hd95", "lesionwise_hd95")
ALL_METRICS = (*METRICS, *LOWER_IS_BETTER)
WORKSPACE = "workspace"

Scores = dict[str, dict[str, float]]        # case -> "<metric>_<region>" -> value


# --- reading runs ---------------------------------------------------------------------------------

def git(args: list[str], repo: Path) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True)
    except FileNotFoundError:
        raise UserError("git is not installed: give per-case CSV files instead of revisions") from None


def experiment_ref(name: str, repo: Path) -> str | None:
    """The git ref of the DVC experiment called `name` (refs/exps/<xx>/<baseline>/<name>), or None."""
    listed = git(["for-each-ref", "--format=%(refname)", "refs/exps/"], repo)
    refs = [r for r in listed.stdout.split() if r.count("/") == 4 and r.rsplit("/", 1)[1] == name]
    if len(refs) > 1:
        raise UserError(f"{name}: {len(refs)} DVC experiments have this name (on different baselines); "
                        f"give one by its commit (`dvc exp show --sha`)")
    return refs[0] if refs else None


def revision_text(run: str, path: str, repo: Path) -> str:
    """The text of `path` at git revision or DVC experiment `run`."""
    commit = git(["rev-parse", "--verify", "--quiet", f"{run}^{{commit}}"], repo).stdout.strip()
    if not commit:
        commit = experiment_ref(run, repo) or ""
    if not commit:
        raise UserError(f"{run}: not a file, a git revision or a DVC experiment in {repo} "
                        f"(`git log --oneline`, `dvc exp show`)")
    shown = git(["show", f"{commit}:{path}"], repo)
    if shown.returncode != 0:
        raise UserError(f"{run}: it has no {path} (was the evaluate stage run and committed there?)")
    return shown.stdout


def parse_csv(text: str, where: str) -> Scores:
    """Per-case scores of an evaluate_cases.csv text."""
    rows = list(csv.reader(io.StringIO(text)))
    if not rows or not rows[0] or rows[0][0] != "case":
        raise UserError(f"{where}: not a per-case scores CSV (its first column must be `case`, as in "
                        f"{CASES_CSV})")
    header, out = rows[0], {}
    for line, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        if len(row) != len(header):
            raise UserError(f"{where}, line {line}: {len(row)} fields, the header has {len(header)}")
        try:
            out[row[0]] = {k: float(v) for k, v in zip(header[1:], row[1:])}
        except ValueError as e:
            raise UserError(f"{where}, line {line} ({row[0]}): {e}") from None
    return out


def parse_scorer_json(text: str, where: str) -> Scores:
    """Per-case scores of the scorer's JSON ({"cases": {case: {region: {metric: value}}}}), or of a
    benchmark's score file ({"per_case": {case: {"<metric>_<region>": value}}}: bench/sim2real.py's
    WORK/seed-S/score.json, bench/real.py's --out; other per-case fields, such as a fold, are left out)."""
    try:
        data = json.loads(text)
        if "per_case" in data and not isinstance(data.get("cases"), dict):
            return {case: {k: float(v) for k, v in scores.items() if "_" in k}
                    for case, scores in data["per_case"].items()}
        return {case: {f"{k}_{region}": float(v) for region, scores in regions.items() for k, v in scores.items()}
                for case, regions in data["cases"].items()}
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError, ValueError) as e:
        raise UserError(f"{where}: not the scorer's JSON (src/evaluate.py --out) nor a benchmark's "
                        f"score file with per_case: {e}") from None


def load_run(run: str, repo: Path = ROOT, cases_csv: str = CASES_CSV) -> Scores:
    """The per-case scores of one run: a file, `workspace`, a git revision or a DVC experiment."""
    path = repo / cases_csv if run == WORKSPACE else Path(run)
    if path.is_file():
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as e:
            raise UserError(f"{path}: cannot be read ({e})") from None
        scores = parse_scorer_json(text, str(path)) if path.suffix == ".json" else parse_csv(text, str(path))
    elif run == WORKSPACE:
        raise UserError(f"{path} not found: run `dvc repro` first")
    else:
        scores = parse_csv(revision_text(run, cases_csv, repo), f"{run}:{cases_csv}")
    if not scores:
        raise UserError(f"{run}: no case scores in it")
    return scores


# --- pairing and comparing ------------------------------------------------------------------------

def check_same_cases(runs: dict[str, Scores]) -> list[str]:
    """The cases every run holds (sorted); one line naming the difference if they are not the same."""
    (first, reference), *rest = runs.items()
    for name, scores in rest:
        only_first, only_this = sorted(set(reference) - set(scores)), sorted(set(scores) - set(reference))
        if only_first or only_this:
            said = [f"{len(c)} only in {n} ({', '.join(c[:3])}{', …' if len(c) > 3 else ''})"
                    for n, c in ((first, only_first), (name, only_this)) if c]
            raise UserError(f"{first} and {name} were scored on different cases: {'; '.join(said)}; "
                            "compare runs of the same test split (base.seed and preprocess params)")
    return sorted(reference)


def matrix(side: dict[str, Scores], cases: list[str], column: str) -> np.ndarray:
    """(replicas, cases) of one column."""
    return np.array([[side[run][case][column] for case in cases] for run in side])


def compare(baseline: dict[str, Scores], candidate: dict[str, Scores], metrics: tuple[str, ...] = METRICS,
            regions: tuple[str, ...] = REGIONS, matched: bool = False) -> tuple[list[str], list[dict]]:
    """The paired cases and one row per (metric, region) that every run scored; `matched`: the i-th
    candidate run is the i-th baseline model judged another way."""
    labels = {**{f"baseline {k}": v for k, v in baseline.items()},
              **{f"candidate {k}": v for k, v in candidate.items()}}
    cases = check_same_cases(labels)
    rows = []
    for metric in metrics:
        for region in regions:
            column = f"{metric}_{region}"
            if not all(column in scores[cases[0]] for scores in labels.values()):
                continue
            d = paired(matrix(baseline, cases, column), matrix(candidate, cases, column),
                       higher_is_better=metric not in LOWER_IS_BETTER, matched=matched)
            rows.append({"metric": metric, "region": region, **row_fields(d)})
    if not rows:
        raise UserError(f"no column {metrics[0]}_<region> is in every run: the runs hold "
                        f"{', '.join(sorted(next(iter(labels.values()))[cases[0]])[:6])}, …")
    return cases, rows


def row_fields(d: Difference) -> dict:
    """One row of comparison.json: `ci95` is the interval the verdict rests on (seed spread included when
    both sides have replicas), `ci95_cases` the bootstrap over cases alone; `resolution` its half-width."""
    judged = d.judged_on
    return {"baseline": d.baseline, "candidate": d.candidate, "change": d.change, "ci95": judged,
            "ci95_cases": d.ci, "seed_sd": d.seed_sd, "verdict": d.verdict,
            "resolution": None if judged is None else (judged[1] - judged[0]) / 2}


# --- reporting ------------------------------------------------------------------------------------

def fmt(x: float | None, signed: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x:+.4f}" if signed else f"{x:.4f}"


def side_cell(mean: float, sd: float | None, runs: int) -> str:
    return fmt(mean) + (f" ± {sd:.4f}" if sd is not None else "") if runs > 1 else fmt(mean)


def markdown(result: dict) -> str:
    nb, nc = len(result["baseline"]["runs"]), len(result["candidate"]["runs"])
    lines = ["| Metric | Region | Baseline | Candidate | Change | 95 % CI | Verdict |",
             "|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        ci = r["ci95"]
        lines.append(f"| {r['metric']} | {r['region']} | {side_cell(r['baseline'], r['seed_sd'][0], nb)} | "
                     f"{side_cell(r['candidate'], r['seed_sd'][1], nc)} | {fmt(r['change'], True)} | "
                     f"{'n/a' if ci is None else f'[{ci[0]:+.4f}, {ci[1]:+.4f}]'} | {r['verdict']} |")
    return "\n".join(lines)


def notes(result: dict) -> list[str]:
    nb, nc = len(result["baseline"]["runs"]), len(result["candidate"]["runs"])
    n, rows = len(result["cases"]), result["rows"]
    out = [f"baseline: {', '.join(result['baseline']['runs'])} ({nb} run{'s' * (nb > 1)}); candidate: "
           f"{', '.join(result['candidate']['runs'])} ({nc} run{'s' * (nc > 1)}); {n} cases paired by id."]
    if result.get("matched") and nb > 1:
        out.append("Matched: each candidate run is the baseline's model at the same place, judged another way; "
                   "the interval adds the spread of the models' own changes to the bootstrap over cases.")
    elif nb > 1 and nc > 1:
        out.append("Baseline and candidate: mean ± sd of the runs' means (training-seed spread); the interval "
                   "adds that spread to the bootstrap over cases.")
    else:
        out.append("One run on a side: the interval covers the choice of cases, not the training draw; "
                   "run 3 or more seeds a side (`dvc exp run --queue -S train.seed=N`) to include it.")
    if len(rows) > 1:
        out.append(f"{len(rows)} comparisons: when nothing changed, about 1 in 20 of them reads better or worse "
                   "by chance; decide on the one chosen in advance (--primary).")
    p = result["primary"]
    if p:
        resolution = f", resolves ±{p['resolution']:.4f}" if p["resolution"] is not None else ""
        out.append(f"{p['metric']} {p['region']}: {p['verdict']} (change {fmt(p['change'], True)}{resolution}).")
    return out


def forest_plot(path: Path, result: dict) -> None:
    """Each row's change with its 95 % interval, the primary row marked."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = result["rows"]
    colours = {"better": "tab:green", "worse": "tab:red", "within noise": "tab:grey", "too few cases": "tab:grey"}
    fig, ax = plt.subplots(figsize=(7, 0.32 * len(rows) + 1.4))
    for y, r in enumerate(reversed(rows)):
        ci = r["ci95"] or (r["change"], r["change"])
        ax.errorbar(r["change"], y, xerr=[[r["change"] - ci[0]], [ci[1] - r["change"]]], fmt="o",
                    color=colours[r["verdict"]], capsize=3, markersize=4)
    ax.axvline(0, color="black", linewidth=0.8)
    labels = [f"{r['metric']} {r['region']}" for r in reversed(rows)]
    ax.set_yticks(range(len(rows)), labels, fontsize=8)
    ax.set_xlabel("candidate − baseline (95 % interval)")
    ax.set_title(f"{', '.join(result['candidate']['runs'])[:40]} vs {', '.join(result['baseline']['runs'])[:40]}"
                 f" ({len(result['cases'])} cases)", fontsize=9)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    plt.close(fig)


def run(baseline: list[str], candidate: list[str], metrics: tuple[str, ...] = METRICS,
        primary: tuple[str, str] = ("iou", "WT"), repo: Path = ROOT, cases_csv: str = CASES_CSV,
        matched: bool = False) -> dict:
    """Load both sides, compare them, and return the result (what comparison.json holds)."""
    for side, runs in (("baseline", baseline), ("candidate", candidate)):
        if len(set(runs)) != len(runs):
            raise UserError(f"--{side} names a run twice: {', '.join(runs)}")
    if matched and len(baseline) != len(candidate):
        raise UserError(f"--matched pairs the runs in order: give as many candidates as baselines "
                        f"({len(candidate)} vs {len(baseline)})")
    a = {r: load_run(r, repo, cases_csv) for r in baseline}
    b = {r: load_run(r, repo, cases_csv) for r in candidate}
    cases, rows = compare(a, b, metrics, matched=matched)
    chosen = [r for r in rows if (r["metric"], r["region"]) == primary]
    return {"baseline": {"runs": baseline}, "candidate": {"runs": candidate}, "cases": cases,
            "matched": matched, "level": LEVEL, "method": f"percentile bootstrap over cases, {RESAMPLES} resamples (src/stats.py)",
            "rows": rows, "primary": chosen[0] if chosen else None}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Paired comparison of two models on the same cases, with 95 % "
                                             "intervals and a verdict (better, worse, within noise).")
    ap.add_argument("--baseline", "-a", nargs="+", required=True, metavar="RUN",
                    help="git revision, DVC experiment name, `workspace`, or a per-case CSV/scorer JSON; "
                         "several: replicas (seeds)")
    ap.add_argument("--candidate", "-b", nargs="+", required=True, metavar="RUN", help="as --baseline")
    ap.add_argument("--metrics", nargs="+", choices=ALL_METRICS, default=list(METRICS),
                    help=f"default: {' '.join(METRICS)}")
    ap.add_argument("--primary", default="iou.WT", metavar="METRIC.REGION",
                    help="the comparison decided in advance (default iou.WT)")
    ap.add_argument("--out", type=Path, default=Path("comparison"),
                    help="folder for comparison.json and comparison.png (default ./comparison)")
    ap.add_argument("--matched", action="store_true",
                    help="the candidate runs are the baseline's models in the same order, judged another way "
                         "(other cut-offs or post-processing)")
    ap.add_argument("--cases-csv", default=CASES_CSV,
                    help=f"the per-case file inside a revision, relative to the repository (default {CASES_CSV})")
    args = ap.parse_args(argv)
    metric, _, region = args.primary.partition(".")
    if metric not in ALL_METRICS or region not in REGIONS:
        ap.error(f"--primary {args.primary}: give METRIC.REGION, e.g. iou.WT (metrics {', '.join(ALL_METRICS)}; "
                 f"regions {', '.join(REGIONS)})")
    result = run(args.baseline, args.candidate, tuple(args.metrics), (metric, region), cases_csv=args.cases_csv,
                 matched=args.matched)
    write_json(args.out / "comparison.json", result)
    forest_plot(args.out / "comparison.png", result)
    print(markdown(result))
    print()
    print("\n".join(notes(result)))
    print(f"wrote {args.out / 'comparison.json'} and {args.out / 'comparison.png'}")


if __name__ == "__main__":
    run_stage(main)
