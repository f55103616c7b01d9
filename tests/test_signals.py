"""The signal statistics against hand-worked values and scikit-learn's implementations."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.calibration import calibration_curve
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score, roc_auc_score
from sklearn.metrics import roc_curve as sk_roc_curve

from analysis import signals as sig


# --------------------------------------------------------------------------- AUROC / AUPRC


def test_auroc_hand_worked_with_a_tie():
    # wrong (positive): 0.9, 0.5; right: 0.5, 0.1. Pairs (pos > neg): 0.9>0.5, 0.9>0.1, 0.5>0.1, and
    # 0.5 = 0.5 counts one half: (3 + 0.5) / 4
    assert sig.auroc([0.9, 0.5, 0.5, 0.1], [1, 1, 0, 0]) == pytest.approx(0.875)
    assert sig.auroc([1, 2, 3], [0, 0, 1]) == 1.0
    assert sig.auroc([3, 2, 1], [0, 0, 1]) == 0.0
    assert math.isnan(sig.auroc([1, 2], [1, 1]))


def test_auprc_hand_worked():
    # descending: 0.9 (pos) P=1 R=1/2; 0.8 (neg); 0.7 (pos) P=2/3 R=1: AP = 1/2 * 1 + 1/2 * 2/3
    assert sig.auprc([0.9, 0.8, 0.7], [1, 0, 1]) == pytest.approx(0.5 + 1 / 3)
    # a tie of a positive and a negative at the top: one threshold, P = 1/2, R = 1
    assert sig.auprc([0.5, 0.5], [1, 0]) == pytest.approx(0.5)


@pytest.mark.parametrize("seed", range(6))
def test_auroc_auprc_match_sklearn_with_ties_and_weights(seed):
    rng = np.random.default_rng(seed)
    n = 200
    y = rng.random(n) < 0.35
    s = np.round(rng.normal(size=n) + 0.8 * y, 1)  # rounding makes ties
    w = rng.integers(0, 4, n).astype(float)
    assert sig.auroc(s, y) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert sig.auprc(s, y) == pytest.approx(average_precision_score(y, s), abs=1e-12)
    assert sig.auroc(s, y, w) == pytest.approx(roc_auc_score(y, s, sample_weight=w), abs=1e-12)
    assert sig.auprc(s, y, w) == pytest.approx(average_precision_score(y, s, sample_weight=w), abs=1e-12)


def test_roc_curve_matches_sklearn():
    rng = np.random.default_rng(3)
    y = rng.random(80) < 0.5
    s = np.round(rng.normal(size=80) + y, 1)
    fpr, tpr, _ = sig.roc_curve(s, y)
    f2, t2, _ = sk_roc_curve(y, s, drop_intermediate=False)
    assert np.allclose(fpr, f2) and np.allclose(tpr, t2)
    assert np.trapezoid(tpr, fpr) == pytest.approx(sig.auroc(s, y))


# --------------------------------------------------------------------------- bootstrap


def test_bootstrap_weights_resample_whole_problems():
    groups = np.array(["a", "a", "b", "b", "b", "c"])
    w = sig.bootstrap_weights(groups, 500, seed=1)
    assert w.shape == (500, 6)
    # the traces of one problem always carry the same weight, and three problems are drawn
    assert (w[:, 0] == w[:, 1]).all() and (w[:, 2] == w[:, 3]).all() and (w[:, 3] == w[:, 4]).all()
    assert (w[:, [0, 2, 5]].sum(axis=1) == 3).all()
    # with one trace per problem it is the ordinary bootstrap: n draws per resample
    w1 = sig.bootstrap_weights(np.arange(10), 200, seed=0)
    assert (w1.sum(axis=1) == 10).all()


def test_bootstrap_interval_matches_a_plain_loop_and_covers_the_truth():
    rng = np.random.default_rng(0)
    n = 300
    y = rng.random(n) < 0.4
    s = rng.normal(size=n) + 1.0 * y
    ev = sig.evaluate_signals({"s": s}, y, n_resamples=400, seed=5)
    row = ev.table.iloc[0]
    # the same resamples drawn by hand, each evaluated with scikit-learn
    w = sig.bootstrap_weights(np.arange(n), 400, seed=5)
    loop = [roc_auc_score(y, s, sample_weight=wi) for wi in w]
    lo, hi = np.percentile(loop, [2.5, 97.5])
    assert row["auroc_low"] == pytest.approx(lo, abs=1e-12) and row["auroc_high"] == pytest.approx(hi, abs=1e-12)
    # the population AUROC of N(1, 1) vs N(0, 1) is Phi(1 / sqrt 2) = 0.760
    assert row["auroc_low"] < 0.760 < row["auroc_high"]
    assert row["verdict"] == "better than chance"


def test_verdicts_and_orientation():
    rng = np.random.default_rng(1)
    y = rng.random(400) < 0.5
    strong = y + rng.normal(scale=0.5, size=400)
    noise = rng.normal(size=400)
    specs = {"conf": sig.SignalSpec("conf", "confidence", "fraction", higher_means_wrong=False)}
    ev = sig.evaluate_signals({"strong": strong, "noise": noise, "conf": -strong}, y, specs=specs,
                              n_resamples=300)
    t = ev.table.set_index("signal")
    assert t.loc["strong", "verdict"] == "better than chance"
    assert t.loc["conf", "auroc"] == pytest.approx(t.loc["strong", "auroc"])  # oriented: lower = wrong
    assert t.loc["noise", "verdict"] == "not distinguishable from chance"
    assert ev.table["signal"].iloc[-1] == "noise"  # ranked by AUROC
    rev = sig.evaluate_signals({"r": -strong}, y, n_resamples=200).table.iloc[0]
    assert rev["verdict"] == "reversed (below chance)"


def test_too_few_right_or_wrong_traces_get_no_verdict():
    # one right trace among twelve: a perfect separation, but no verdict on one pair set
    s = np.arange(12.0)
    y = np.ones(12, bool)
    y[0] = False
    row = sig.evaluate_signals({"s": s}, y, n_resamples=200).table.iloc[0]
    assert row["auroc"] == 1.0 and row["verdict"] == "too few to judge (1 right, 11 wrong)"
    # six problems of two samples: few units to resample, and the evaluation says so
    ev = sig.evaluate_signals({"s": s}, y, np.repeat(np.arange(6), 2), n_resamples=200)
    assert ev.by_problem and any("only 6 problems to resample" in n for n in ev.notes)


def test_problem_bootstrap_is_wider_than_the_trace_bootstrap_for_clustered_data():
    rng = np.random.default_rng(2)
    problems = np.repeat(np.arange(40), 8)
    hard = rng.random(40) < 0.5
    y = np.repeat(hard, 8)
    s = np.repeat(rng.normal(size=40) + 0.6 * hard, 8) + 0.05 * rng.normal(size=320)
    by_p = sig.evaluate_signals({"s": s}, y, problems, n_resamples=500).table.iloc[0]
    by_t = sig.evaluate_signals({"s": s}, y, None, n_resamples=500).table.iloc[0]
    assert (by_p["auroc_high"] - by_p["auroc_low"]) > 1.5 * (by_t["auroc_high"] - by_t["auroc_low"])


def test_no_graded_traces_is_a_clear_error():
    with pytest.raises(sig.SignalError, match="no graded traces"):
        sig.evaluate_signals({"s": np.empty(0)}, np.empty(0, bool))


# --------------------------------------------------------------------------- semantic entropy


def test_answer_classes_use_the_graders_equivalence():
    # 19, 19.0, "19." and "$19" are one class; 3/4 and 0.75 one; text by normalised form;
    # every unextractable answer (None, "") is a class of its own
    answers = ["19", "19.0", "19.", "$19", "3/4", "0.75", "Paris", " paris ", None, "", None]
    c = sig.answer_classes(answers)
    assert len(set(c[:4])) == 1 and c[4] == c[5] and c[6] == c[7]
    assert len({c[0], c[4], c[6]}) == 3
    assert len(set(c[8:])) == 3 and not set(c[8:]) & set(c[:8])
    # the tolerance is the grader's
    assert len(set(sig.answer_classes(["1.0", "1.05"], rel_tol=0.1))) == 1
    assert len(set(sig.answer_classes(["1.0", "1.05"]))) == 2


def test_semantic_entropy_hand_worked():
    assert sig.semantic_entropy([0, 0, 0, 0]) == 0.0
    assert sig.semantic_entropy([0, 0, 1, 1]) == pytest.approx(math.log(2))
    # p = (1/2, 1/4, 1/4): -(1/2 ln 1/2 + 2 * 1/4 ln 1/4) = 1.5 ln 2
    assert sig.semantic_entropy([5, 5, 7, 9]) == pytest.approx(1.5 * math.log(2))
    assert sig.self_consistency([5, 5, 7, 9]) == 0.5


def test_sample_signals_per_problem_and_unextractable_answers():
    pids = ["a", "a", "a", "a", "b", "b", "c"]
    answers = ["4", "4", "5", None, None, None, "1"]
    se, sc, size = sig.sample_signals(pids, answers)
    # problem a: classes {4, 4}, {5}, {None}: p = (1/2, 1/4, 1/4)
    assert se[:4] == pytest.approx([1.5 * math.log(2)] * 4) and sc[0] == 0.5
    # problem b: two unextractable answers are two classes: maximal uncertainty, no agreement
    assert se[4] == pytest.approx(math.log(2)) and sc[4] == 0.5
    # problem c has one sample: nothing to compare
    assert math.isnan(se[6]) and math.isnan(sc[6]) and size.tolist() == [4, 4, 4, 4, 2, 2, 1]


# --------------------------------------------------------------------------- calibration


def test_logistic_fit_matches_sklearn():
    rng = np.random.default_rng(4)
    x = rng.normal(size=500)
    y = rng.random(500) < 1 / (1 + np.exp(-(0.3 - 1.2 * x)))
    a, b = sig.fit_logistic(x, y)
    ref = LogisticRegression(C=np.inf, tol=1e-10, max_iter=1000).fit(x[:, None], y)
    assert a == pytest.approx(ref.intercept_[0], abs=1e-4) and b == pytest.approx(ref.coef_[0, 0], abs=1e-4)


def test_reliability_bins_and_ece_hand_worked():
    # bins of width 0.5: [0, 0.5) holds 0.1, 0.3 (mean 0.2), outcomes 0, 1 (0.5); [0.5, 1] holds
    # 0.6, 1.0 (mean 0.8), outcomes 1, 1 (1.0). ECE = 2/4 * 0.3 + 2/4 * 0.2 = 0.25
    bins, ece = sig.reliability_bins([0.1, 0.3, 0.6, 1.0], [0, 1, 1, 1], n_bins=2)
    assert ece == pytest.approx(0.25)
    assert bins["count"].tolist() == [2, 2]
    assert bins["mean_predicted"].tolist() == pytest.approx([0.2, 0.8])
    assert bins["observed"].tolist() == pytest.approx([0.5, 1.0])


def test_reliability_bins_match_sklearn_calibration_curve():
    rng = np.random.default_rng(5)
    p = rng.random(1000)
    y = rng.random(1000) < p ** 1.5
    bins, ece = sig.reliability_bins(p, y, n_bins=10)
    prob_true, prob_pred = calibration_curve(y, p, n_bins=10, strategy="uniform")
    full = bins[bins["count"] > 0]
    assert np.allclose(full["observed"], prob_true) and np.allclose(full["mean_predicted"], prob_pred)
    manual = sum(c / 1000 * abs(o - m) for c, o, m in zip(full["count"], full["observed"], full["mean_predicted"]))
    assert ece == pytest.approx(manual)


def test_calibrate_on_split_by_problem():
    rng = np.random.default_rng(6)
    groups = np.repeat(np.arange(60), 3)
    x = rng.normal(size=180)
    correct = rng.random(180) < 1 / (1 + np.exp(2 * x))
    mask = sig.split_calibration(groups, 0.5, seed=0)
    # no problem is on both sides
    assert not set(groups[mask]) & set(groups[~mask]) and mask.sum() == 90
    c = sig.calibrate(x, correct, mask, n_bins=10, signal="x")
    assert c.b < 0 and c.n_calib == 90 and c.n_held == 90
    assert 0 <= c.ece < 0.2 and c.bins["count"].sum() == 90


def test_wilson_interval_hand_worked():
    lo, hi = sig.wilson_interval(5, 10)
    # p = 0.5, n = 10: 0.5 ± 1.96 sqrt(0.025 + 0.0096) / 1.384 = [0.2366, 0.7634]
    assert lo == pytest.approx(0.2366, abs=1e-4) and hi == pytest.approx(0.7634, abs=1e-4)
    assert all(math.isnan(v) for v in sig.wilson_interval(0, 0))
