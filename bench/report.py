"""What the real-data benchmarks (real.py, sim2real.py) report of per-case scores: each mean with its
95 % interval over cases, and the means per institution (a figure that holds on one scanner's cases and
not another's is not a result). Shared by those scripts; not part of the pipeline.

Run as a script, it pools the result files of several runs (seeds) of one benchmark:

    python bench/report.py bench/results/real-seed2024.json bench/results/real-seed1.json ... [--out FILE]

prints, per score, the mean ± sd over the runs' means, and the interval over cases and per-institution
means of the run-averaged per-case scores."""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from errors import UserError, run_stage  # noqa: E402
from files import write_json  # noqa: E402
from stats import mean_interval  # noqa: E402

# BraTS 2017-2018 names carry the institution: Brats18_2013_*, Brats18_CBICA_*, Brats18_TCIA01_* ...
SITE = re.compile(r"^Brats1[78]_(2013|CBICA|TCIA\d+)_")


def institution(case: str) -> str:
    """`2013`, `CBICA`, `TCIA01`… for a BraTS 2017-2018 case; `all` for editions whose ids carry none."""
    found = SITE.match(case)
    return found.group(1) if found else "all"


def summarise(per_case: dict[str, dict[str, float]], digits: int = 4) -> dict:
    """{"mean": {key: m}, "ci95": {key: [low, high]}, "institutions": {site: {"cases": n, key: m}}} over
    the numeric keys of the per-case scores."""
    keys = [k for k, v in next(iter(per_case.values())).items() if isinstance(v, float)]
    mean = {k: round(float(np.mean([s[k] for s in per_case.values()])), digits) for k in keys}
    ci = {k: [round(x, digits) for x in mean_interval([s[k] for s in per_case.values()]) or []] or None
          for k in keys}
    sites: dict[str, list[dict]] = {}
    for case, scores in per_case.items():
        sites.setdefault(institution(case), []).append(scores)
    by_site = {site: {"cases": len(rows), **{k: round(float(np.mean([r[k] for r in rows])), digits) for k in keys}}
               for site, rows in sorted(sites.items())}
    return {"mean": mean, "ci95": ci, "institutions": by_site}


def per_case_of(path: Path) -> dict[str, dict[str, float]]:
    """The per-case scores of a real.py or sim2real.py result file."""
    try:
        result = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: cannot be read as a benchmark result ({e})") from None
    per_case = result.get("per_case") or (result.get("score") or {}).get("per_case")
    if not per_case:
        raise UserError(f"{path}: no per-case scores (a bench/real.py or bench/sim2real.py result)")
    return {case: {k: v for k, v in s.items() if isinstance(v, float)} for case, s in per_case.items()}


def pool(runs: dict[str, dict[str, dict[str, float]]]) -> dict:
    """Several runs on the same cases: mean ± sd over the runs' means, and summarise() of the
    run-averaged per-case scores."""
    names = list(runs)
    cases = sorted(runs[names[0]])
    for name in names[1:]:
        if sorted(runs[name]) != cases:
            raise UserError(f"{names[0]} and {name} scored different cases: pool runs of the same cases")
    keys = list(runs[names[0]][cases[0]])
    means = {k: [float(np.mean([runs[n][c][k] for c in cases])) for n in names] for k in keys}
    averaged = {c: {k: float(np.mean([runs[n][c][k] for n in names])) for k in keys} for c in cases}
    return {"runs": names, "cases": len(cases),
            "seed_mean": {k: round(float(np.mean(v)), 4) for k, v in means.items()},
            "seed_sd": {k: round(float(np.std(v, ddof=1)), 4) if len(v) > 1 else None for k, v in means.items()},
            "per_run": {n: {k: round(means[k][i], 4) for k in keys} for i, n in enumerate(names)},
            "pooled": summarise(averaged)}


def main() -> None:
    ap = argparse.ArgumentParser(description="Pool several runs of bench/real.py or bench/sim2real.py.")
    ap.add_argument("results", type=Path, nargs="+", help="result JSON files, one per run (seed)")
    ap.add_argument("--out", type=Path, help="also write the pooled figures here (JSON)")
    args = ap.parse_args()
    out = pool({str(p): per_case_of(p) for p in args.results})
    for k, m in out["seed_mean"].items():
        if k.startswith("dice_"):
            sd = out["seed_sd"][k]
            ci = out["pooled"]["ci95"][k]
            print(f"{k}: {m:.3f}" + (f" ± {sd:.3f} over {len(out['runs'])} runs" if sd is not None else "")
                  + (f", 95 % interval over {out['cases']} cases {ci[0]:.3f}–{ci[1]:.3f}" if ci else ""))
    for site, figures in out["pooled"]["institutions"].items():
        print(f"  {site} ({figures['cases']} cases): " + ", ".join(
            f"{k} {v:.3f}" for k, v in figures.items() if k.startswith("dice_")))
    if args.out:
        write_json(args.out, out)


if __name__ == "__main__":
    run_stage(main)
