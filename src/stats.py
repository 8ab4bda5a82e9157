"""Confidence intervals over cases, and the paired difference of two models scored on the same cases.

Every quality figure here is a mean over a handful of cases, so it comes with the 95 % interval of
that mean: a percentile bootstrap over cases (`scipy.stats.bootstrap`, 10,000 resamples, a fixed
seed, so that a rerun writes the same bytes). Percentile rather than BCa: BCa estimates its bias
correction from the share of resampled means below the observed one, and per-case segmentation scores
tie heavily (a region absent from both masks scores exactly 1, a missed one exactly 0; paired
differences are often exactly 0), which on 5-30 cases makes that estimate jump or come out undefined.
The percentile interval stays inside the scores' range and handles ties; its known weakness is being
a little narrow on very few cases (the bootstrap variance of a mean is (n-1)/n of the usual one).

A comparison (`paired`) pairs the cases by id, averages each side's replicas (training seeds) per
case, and bootstraps the mean per-case difference. With two or more replicas a side, the spread of
the replicas' means (the training-seed noise, which resampling cases cannot see) widens the interval:
half-widths add in quadrature with 1.96 standard errors of the difference of the two seed means.
When the same replicas score both sides (`matched`: one model per seed, judged two ways, such as at
two probability cut-offs), the seed noise is that of each replica's own change instead: 1.96
standard errors of the per-replica mean differences.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

LEVEL = 0.95
RESAMPLES = 10_000
SEED = 20240                 # fixed: the same interval, to the bit, on every rerun
Z = 1.959963984540054        # the normal quantile of a two-sided 95 % interval


def mean_interval(values, level: float = LEVEL, statistic=np.mean) -> tuple[float, float] | None:
    """The bootstrap interval of the mean (or another `statistic` that takes `axis`) of `values`, one per
    case; None for fewer than 2 values."""
    from scipy.stats import bootstrap
    v = np.asarray(values, dtype=np.float64)
    if v.size < 2:
        return None
    if np.ptp(v) <= 1e-12 * max(1.0, float(np.abs(v).max())):   # every case the same (to rounding)
        return float(statistic(v)), float(statistic(v))
    res = bootstrap((v,), statistic, n_resamples=RESAMPLES, confidence_level=level, method="percentile",
                    vectorized=True, rng=np.random.default_rng(SEED))
    low, high = res.confidence_interval
    return float(low), float(high)


def intervals(per_case: list[dict], keys: tuple[str, ...], regions: tuple[str, ...],
              digits: int = 4) -> dict[str, dict[str, dict[str, float | None]]]:
    """{key: {region: {"low": l, "high": h}}} of per-case scores ({region: {key: value}}), rounded: two
    numbers, so that `dvc metrics diff` shows how each bound moved (None for fewer than 2 cases)."""
    out: dict[str, dict[str, dict[str, float | None]]] = {}
    for key in keys:
        out[key] = {}
        for region in regions:
            ci = mean_interval([case[region][key] for case in per_case])
            out[key][region] = {"low": None if ci is None else round(ci[0], digits),
                                "high": None if ci is None else round(ci[1], digits)}
    return out


@dataclass(frozen=True)
class Difference:
    """Candidate minus baseline of one metric, over the cases both sides were scored on."""
    baseline: float                     # mean over cases of the replica-averaged scores
    candidate: float
    change: float                       # mean paired difference (candidate - baseline)
    ci: tuple[float, float] | None      # bootstrap over cases
    seed_sd: tuple[float | None, float | None]   # sd of the replicas' means, per side (None: one replica)
    total_ci: tuple[float, float] | None   # ci widened by the seed noise, when both sides have replicas
    verdict: str                        # "better" | "worse" | "within noise" | "too few cases"

    @property
    def judged_on(self) -> tuple[float, float] | None:
        return self.total_ci or self.ci


def verdict(ci: tuple[float, float] | None, higher_is_better: bool = True) -> str:
    """better / worse when the interval excludes 0, within noise when it holds 0."""
    if ci is None:
        return "too few cases"
    low, high = ci
    if low > 0 or high < 0:
        return "better" if (low > 0) == higher_is_better else "worse"
    return "within noise"


def paired(baseline: np.ndarray, candidate: np.ndarray, higher_is_better: bool = True,
           matched: bool = False) -> Difference:
    """Compare per-case scores of shape (replicas, cases), the cases in the same order on both sides;
    `matched`: row i of both sides is the same replica (the same trained model)."""
    a, b = np.atleast_2d(np.asarray(baseline, np.float64)), np.atleast_2d(np.asarray(candidate, np.float64))
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"paired scores need the same cases on both sides ({a.shape[1]} vs {b.shape[1]})")
    if matched and a.shape[0] != b.shape[0]:
        raise ValueError(f"matched replicas need as many on both sides ({a.shape[0]} vs {b.shape[0]})")
    diff = b.mean(axis=0) - a.mean(axis=0)                 # per case, replica-averaged
    change = float(diff.mean())
    ci = mean_interval(diff)
    if ci is not None:          # the mean itself (not the bootstrap's rounding) sits inside its interval
        ci = (min(ci[0], change), max(ci[1], change))
    sds = tuple(float(x.mean(axis=1).std(ddof=1)) if x.shape[0] > 1 else None for x in (a, b))
    total = None
    if ci is not None and sds[0] is not None and sds[1] is not None:
        if matched:
            seed_half = Z * float((b - a).mean(axis=1).std(ddof=1)) / math.sqrt(a.shape[0])
        else:
            seed_half = Z * math.sqrt(sds[0] ** 2 / a.shape[0] + sds[1] ** 2 / b.shape[0])
        total = (change - math.hypot(change - ci[0], seed_half), change + math.hypot(ci[1] - change, seed_half))
    return Difference(float(a.mean()), float(b.mean()), change, ci, sds, total,
                      verdict(total or ci, higher_is_better))
