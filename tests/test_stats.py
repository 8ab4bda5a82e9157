"""Intervals over cases and the paired difference (src/stats.py), on answers known by hand."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from stats import Z, mean_interval, paired, verdict


def test_identical_sides_give_zero_and_a_zero_interval():
    scores = np.array([[0.61, 0.74, 0.80, 0.92, 0.55, 0.70, 0.88]])
    d = paired(scores, scores.copy())
    assert d.change == 0 and d.ci == (0.0, 0.0) and d.verdict == "within noise"


@pytest.mark.parametrize("shift", [0.05, -0.2])
def test_a_constant_shift_is_found_exactly_with_a_zero_width_interval(shift):
    base = np.array([0.61, 0.74, 0.80, 0.92, 0.55, 0.70, 0.88])
    d = paired(base, base + shift)
    assert d.change == pytest.approx(shift) and d.ci[0] == pytest.approx(shift) and d.ci[1] == pytest.approx(shift)
    assert d.verdict == ("better" if shift > 0 else "worse")
    # a distance (lower is better) that grows is worse
    assert paired(base, base + abs(shift), higher_is_better=False).verdict == "worse"


def test_hand_computed_percentile_intervals():
    # {0, 0, 0, 1}: the resampled mean is k/4 with k ~ Binomial(4, 1/4): P(k <= 0) = 0.316 > 0.025 and
    # P(k <= 2) = 0.949 < 0.975 <= P(k <= 3) = 0.996, so the interval is [0, 3/4].
    assert mean_interval([0, 0, 0, 1]) == (0.0, 0.75)
    # {0, 1}: means 0, 1/2, 1 with probabilities 1/4, 1/2, 1/4: [0, 1]
    assert mean_interval([0.0, 1.0]) == (0.0, 1.0)


def test_interval_agrees_with_the_exact_bootstrap_distribution():
    """All 5^5 resamples of five cases enumerated: the exact 2.5 % and 97.5 % points of the mean."""
    v = np.array([0.31, 0.52, 0.55, 0.80, 0.93])
    means = np.array([v[list(i)].mean() for i in itertools.product(range(5), repeat=5)])
    exact = np.quantile(means, [0.025, 0.975])
    assert mean_interval(v) == pytest.approx(tuple(exact), abs=0.01)


def test_interval_is_the_same_bytes_on_every_call_and_holds_the_mean():
    rng = np.random.default_rng(3)
    v = rng.uniform(0.3, 0.95, size=12)
    first = mean_interval(v)
    assert first == mean_interval(v.copy())
    assert first[0] < v.mean() < first[1]


def test_too_few_cases_have_no_interval():
    assert mean_interval([0.8]) is None and mean_interval([]) is None
    d = paired([[0.5]], [[0.7]])
    assert d.ci is None and d.verdict == "too few cases"


def test_replicas_widen_the_interval_by_the_seed_spread():
    """Two seeds a side, each seed's run 0.1 above the other on every case: the paired difference is a
    constant 0.05 (a zero-width interval over cases), but the seed spread alone is sd 0.0707 a side."""
    cases = np.array([0.6, 0.7, 0.8, 0.65, 0.75])
    base = np.stack([cases, cases + 0.1])
    cand = np.stack([cases + 0.05, cases + 0.15])
    d = paired(base, cand)
    assert d.ci == pytest.approx((0.05, 0.05))
    sd = math.sqrt(0.005)                       # sd (ddof 1) of two means 0.1 apart
    assert d.seed_sd == pytest.approx((sd, sd))
    half = Z * math.sqrt(sd ** 2 / 2 + sd ** 2 / 2)
    assert d.total_ci == pytest.approx((0.05 - half, 0.05 + half)) and d.verdict == "within noise"
    assert (d.baseline, d.candidate) == pytest.approx((cases.mean() + 0.05, cases.mean() + 0.1))


def test_matched_replicas_take_the_spread_of_their_own_changes():
    """The same two seeds judged two ways: seed 1 gains 0.04 on every case, seed 2 0.06. Each side's
    seed means are 0.1 apart (sd 0.0707), but the changes only 0.02 apart (sd 0.01414): matched, the
    seed term is 1.96 * 0.01414 / sqrt(2) = 0.0196; unmatched it would be 1.96 * 0.0707."""
    cases = np.array([0.6, 0.7, 0.8, 0.65, 0.75])
    base = np.stack([cases, cases + 0.1])
    cand = np.stack([cases + 0.04, cases + 0.16])
    d = paired(base, cand, matched=True)
    assert d.change == pytest.approx(0.05) and d.ci == pytest.approx((0.05, 0.05))
    half = Z * math.sqrt(0.0002) / math.sqrt(2)
    assert d.total_ci == pytest.approx((0.05 - half, 0.05 + half)) and d.verdict == "better"
    assert paired(base, cand).verdict == "within noise"
    with pytest.raises(ValueError, match="as many on both sides"):
        paired(base, cand[:1], matched=True)


def test_verdict_words():
    assert verdict((0.01, 0.03)) == "better" and verdict((-0.03, -0.01)) == "worse"
    assert verdict((-0.01, 0.02)) == "within noise" and verdict((0.0, 0.02)) == "within noise"
    assert verdict((0.01, 0.03), higher_is_better=False) == "worse"


def test_different_case_counts_are_refused():
    with pytest.raises(ValueError, match="same cases"):
        paired([[0.1, 0.2, 0.3]], [[0.1, 0.2]])
