"""How hard the synthetic set is for a single-modality threshold, pooled over several data seeds.

    python bench/hardness.py [--seeds 2024 1 2 3] [--params params.yaml] [--out FILE.json]

For each seed, every case of the synthesize stage's params (patients, visits, grid, spacing from
`--params`) is drawn in memory and scored: the best IoU with the whole tumour of any threshold of any
one modality, inside the head. Printed per seed and pooled over the seeds: the median, the maximum,
the share of cases at 0.7 or more. The verdict is the pooled one, against the 20 public BraTS 2018
cases at 2 mm (REAL: median 0.53, 8 of 20 at 0.7 or more, maximum 0.86): the synthetic set must be at
least as hard, within what its draws can tell (pooled_verdict). One seed is one draw: the per-seed
figures show how far they move.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from brats import MODALITIES, REGIONS  # noqa: E402
from errors import run_stage  # noqa: E402
from files import write_text  # noqa: E402
from params import load_params  # noqa: E402
from synthesize import make_case, plan  # noqa: E402

# The real reference (bench/results/sim2real.json's cases, at 2 mm) that the synthetic set must be at
# least as hard as; tests/test_synthesize.py judges the default generator, pooled over seeds 2024, 1, 2.
REAL = {"median": 0.53, "share_at_0.7": 0.40, "max": 0.86}


def best_threshold_iou(values: np.ndarray, target: np.ndarray) -> float:
    """Best IoU of `values > t` or `values < t` with `target`, over every threshold t."""
    best = 0.0
    for sign in (1.0, -1.0):
        order = np.argsort(-sign * values, kind="stable")
        v, hits = values[order], target[order]
        tp = np.cumsum(hits)
        predicted = np.arange(1, len(v) + 1)
        can_cut = np.r_[v[1:] != v[:-1], True]  # a threshold cannot split equal values
        iou = tp / (target.sum() + predicted - tp)
        best = max(best, float(iou[can_cut].max()))
    return best


def case_hardness(images: np.ndarray, labels: np.ndarray) -> float:
    """The best single-modality threshold IoU of one case's whole tumour, inside the head."""
    brain = images[0] > 0
    wt = np.isin(labels, REGIONS["WT"])[brain]
    return max(best_threshold_iou(images[m][brain], wt) for m in range(len(MODALITIES)))


def summary(best: list[float]) -> dict:
    """Median, maximum and share at 0.7 or more of one draw's cases (rounded for the report)."""
    b = np.asarray(best)
    return {"cases": len(b), "median": round(float(np.median(b)), 4), "max": round(float(b.max()), 4),
            "share_at_0.7": round(float((b >= 0.7).mean()), 4)}


def pooled_verdict(best: list[float]) -> dict:
    """The cases of several seeds pooled, judged against REAL: the synthetic set is easier than the real
    cases only where its pooled figure's 95 % interval (bootstrap over cases) lies wholly above the real
    figure (median; share at 0.7 or more), or where its 95th percentile, the pooled counterpart of the
    largest of 20 real cases, exceeds the real maximum."""
    from stats import mean_interval
    b = np.asarray(best)
    median_ci = mean_interval(b, statistic=np.median)
    share_ci = mean_interval((b >= 0.7).astype(float))
    p95 = float(np.percentile(b, 95))
    holds = {"median": median_ci[0] < REAL["median"], "share_at_0.7": share_ci[0] < REAL["share_at_0.7"],
             "p95_below_real_max": p95 < REAL["max"]}
    return {**summary(best), "median_ci95": [round(x, 4) for x in median_ci],
            "share_at_0.7_ci95": [round(x, 4) for x in share_ci], "p95": round(p95, 4),
            "holds": holds, "limits_hold": all(holds.values())}


def seed_hardness(p, seed: int, progress: bool = True) -> list[float]:
    """The best single-modality threshold IoU of every case one seed draws."""
    return [case_hardness(*make_case(seed, patient, visit, p.grid, p.spacing_mm, p.randomise)[:2])
            for patient, visit in tqdm(plan(p, seed), desc=f"seed {seed}", unit="case", leave=False,
                                       disable=not progress)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[2024, 1, 2, 3])
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    parser.add_argument("--out", type=Path, default=None, help="also write the figures here (JSON)")
    args = parser.parse_args()
    p = load_params(args.params).synthesize
    result = {"params": {"patients": p.patients, "visits": p.visits, "grid": list(p.grid),
                         "spacing_mm": p.spacing_mm}, "real": REAL, "seeds": {}}
    pooled: list[float] = []
    for seed in args.seeds:
        best = seed_hardness(p, seed)
        pooled += best
        result["seeds"][str(seed)] = figures = summary(best)
        print(f"seed {seed}: {figures['cases']} cases, median {figures['median']:.3f}, max {figures['max']:.3f}, "
              f"share >= 0.7 {figures['share_at_0.7']:.2f}", flush=True)
    result["pooled"] = v = pooled_verdict(pooled)
    print(f"pooled: {v['cases']} cases, median {v['median']:.3f} {v['median_ci95']}, share >= 0.7 "
          f"{v['share_at_0.7']:.2f} {v['share_at_0.7_ci95']}, 95th percentile {v['p95']:.3f} (real: median "
          f"{REAL['median']}, share {REAL['share_at_0.7']}, max {REAL['max']}): "
          f"{'at least as hard as the real cases' if v['limits_hold'] else 'easier than the real cases'}")
    if args.out:
        write_text(args.out, json.dumps(result, indent=1) + "\n")   # whole or not at all


if __name__ == "__main__":
    run_stage(main)
