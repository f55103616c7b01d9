"""Branching statistics against hand-worked small examples."""

from __future__ import annotations

import math

import numpy as np
import pytest

from analysis import branch_stats as bs


def test_total_variation_and_smoothed_kl_by_hand():
    assert bs.total_variation([2 / 3, 1 / 3, 0], [0, 1 / 3, 2 / 3]) == pytest.approx(2 / 3)
    assert bs.total_variation([1, 0], [1, 0]) == 0
    # counts (2, 0) vs (0, 2), Laplace +1: P = (3/4, 1/4), Q = (1/4, 3/4): KL = 1/2 ln 3
    assert bs.kl_smoothed([2, 0], [0, 2]) == pytest.approx(0.5 * math.log(3))
    assert bs.kl_smoothed([3, 1], [3, 1]) == 0.0


def test_outcomes_keep_no_answer_apart():
    assert bs.outcome(None) == bs.NO_ANSWER and bs.outcome("  ") == bs.NO_ANSWER and bs.outcome(" 7 ") == "7"
    assert bs.counts(["7", None, "7", ""], ["7", bs.NO_ANSWER]).tolist() == [2, 2]


def test_survival_is_the_product_of_one_minus_hazard():
    s, lo, hi = bs.survival(np.array([[0.2] * 5, [0.5] * 5]), np.array([0.2, 0.5]))
    np.testing.assert_allclose(s, [0.8, 0.4])
    np.testing.assert_allclose(lo, [0.8, 0.4])
    np.testing.assert_allclose(hi, [0.8, 0.4])


def test_spearman_auroc_precision_recall_by_hand():
    # d = (0, 1, -1, 0): rho = 1 - 6 * 2 / (4 * 15) = 0.8
    assert bs.spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    assert bs.spearman([1, 2, 2, 3], [1, 2, 2, 3]) == pytest.approx(1.0)  # ties: average ranks
    assert math.isnan(bs.spearman([1, 1, 1], [1, 2, 3]))
    np.testing.assert_allclose(bs.ranks([3, 1, 3, 2]), [3.5, 1, 3.5, 2])
    # positives 0.35, 0.8 vs negatives 0.1, 0.4: 3 of 4 pairs ordered
    assert bs.auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
    assert bs.auroc([1, 1], [1, 0]) == pytest.approx(0.5)
    assert math.isnan(bs.auroc([1, 2], [1, 1]))
    assert bs.precision_recall([1, 1, 0, 0], [1, 0, 1, 0]) == (0.5, 0.5)


def test_bootstrap_interval_brackets_the_estimate():
    rng = np.random.default_rng(1)
    x = rng.normal(size=60)
    y = x + rng.normal(scale=0.5, size=60)
    c = bs.correlation(x, y)
    assert c["interval"][0] < c["rho"] < c["interval"][1] and c["n"] == 60
    assert c["interval"][0] > 0.5


def test_position_stats_by_hand():
    b = [bs.BranchOutcomes("original", 1, "a", 0.6, ["3"] * 4, [True] * 4),
         bs.BranchOutcomes("alternative", 2, "b", 0.3, ["7"] * 4, [False] * 4),
         bs.BranchOutcomes("alternative", 3, "c", 0.1, ["3", "3", "7", "3"], [True, True, False, True]),
         bs.BranchOutcomes("fresh", None, None, 1.0, ["3", "7", None, "3"], [True, False, None, True])]
    ps = bs.position_stats(b, eps=0.3)
    rows = {r["token"] or "fresh": r for r in ps.branches}
    assert ps.categories == ["3", "7", bs.NO_ANSWER]
    assert rows["b"]["tv"] == 1.0 and rows["c"]["tv"] == pytest.approx(0.25)
    assert rows["fresh"]["tv"] == pytest.approx(0.5) and rows["fresh"]["counts"] == [2, 1, 1]
    assert rows["b"]["d_accuracy"] == -1.0 and rows["c"]["d_accuracy"] == pytest.approx(-0.25)
    assert rows["fresh"]["graded"] == 3  # "no answer" is ungraded, not wrong
    assert ps.fork_strength == pytest.approx(0.3)  # only b forks at eps 0.3; fresh never counts
    lo, hi = ps.fork_interval
    assert 0 <= lo <= 0.3 <= hi <= 0.4  # 4 rollouts: c might fork too


def test_adaptive_stop_rule():
    assert bs.wilson_halfwidth(4, 4) == pytest.approx(0.2450, abs=1e-4)
    assert bs.adaptive_stop(["3"] * 8, tol=0.25, min_rollouts=4, step=2) == 4
    assert bs.adaptive_stop(["3", "7"] * 4, tol=0.25, min_rollouts=4, step=2) == 8
    assert bs.adaptive_stop(["3"] * 3, tol=0.25, min_rollouts=4, step=2) == 3
