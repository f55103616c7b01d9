"""Uncertainty signals judged as predictors of a wrong answer: pure numpy statistics.

A signal is a number per trace (mean token entropy, EPR, window-entropy maximum, ...) or per
problem (semantic entropy, self-consistency over the samples of one problem). It is judged by
how well it separates wrong answers from right ones on a graded run:

- AUROC: the probability that a random wrong trace scores above a random right one (ties
  count one half; Mann-Whitney). 0.5 is chance.
- AUPRC: average precision for "wrong" (the step-wise area, as scikit-learn's
  ``average_precision_score``). Chance is the share of wrong traces.
- Bootstrap 95 % percentile intervals. With several samples per problem the samples are not
  independent, so whole problems are resampled (a cluster bootstrap); otherwise traces are.
  Every signal is evaluated on the same resamples, so their intervals are comparable.
- Calibration (EPR, arXiv 2509.04492): P(correct) = sigmoid(a + b * signal) fitted on a
  calibration split, then a reliability diagram and the expected calibration error (ECE) on
  the held-out traces.

Semantic entropy (Farquhar et al., Nature 2024): the extracted answers of a problem's N
samples are put into classes by the grader's own equivalence (numbers within its tolerance,
choice letters, normalised text), p_c = count_c / N, SE = -sum p_c ln p_c (nats). An answer
that cannot be extracted is its own class per sample: a model that never answers is maximally
uncertain, not certain. Self-consistency is the share of samples in the largest class.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from .errors import SignalError

#: two-sided 95 % interval from the bootstrap's percentiles
CI_LEVEL = 0.95
#: right and wrong traces a signal needs, each, for a verdict: with fewer, the percentile
#: interval rests on a handful of pairs and on resamples that happen to contain them
MIN_CLASS = 5
#: fewer resampling units (problems or traces) than this make the bootstrap interval rough
FEW_CLUSTERS = 10


# --------------------------------------------------------------------------- ranking metrics


def _tie_groups(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(order, starts): the ascending sort order of ``scores`` and the start of each run of
    equal scores in it (for np.add.reduceat)."""
    order = np.argsort(scores, kind="mergesort")
    s = scores[order]
    starts = np.flatnonzero(np.concatenate([[True], s[1:] != s[:-1]]))
    return order, starts


def _weighted_auroc(order, starts, pos, weights) -> np.ndarray:
    """AUROC for each row of ``weights`` [B, n] (case weights, e.g. bootstrap counts), with the
    sort order and tie groups of the scores computed once for all rows."""
    w = weights[:, order]
    p = pos[order]
    wp = np.add.reduceat(w * p, starts, axis=1)
    wn = np.add.reduceat(w * (~p), starts, axis=1)
    below = np.cumsum(wn, axis=1) - wn  # negative weight strictly below each tie group
    tp, tn = wp.sum(axis=1), wn.sum(axis=1)
    num = (wp * (below + 0.5 * wn)).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((tp > 0) & (tn > 0), num / (tp * tn), np.nan)


def _weighted_ap(order, starts, pos, weights) -> np.ndarray:
    """Average precision for each row of ``weights`` [B, n]: sum over thresholds (descending,
    a tie group at a time) of the recall step times the precision there."""
    w = weights[:, order]
    p = pos[order]
    wp = np.add.reduceat(w * p, starts, axis=1)[:, ::-1]
    wa = np.add.reduceat(w, starts, axis=1)[:, ::-1]
    tp = np.cumsum(wp, axis=1)
    alln = np.cumsum(wa, axis=1)
    total = tp[:, -1]
    with np.errstate(invalid="ignore", divide="ignore"):
        prec = np.where(alln > 0, tp / alln, 0.0)
        ap = (wp * prec).sum(axis=1) / total
    return np.where((total > 0) & (total < alln[:, -1]), ap, np.nan)


def _clean(scores, labels) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels)
    if s.shape != y.shape or s.ndim != 1:
        raise SignalError(f"scores and labels must be 1-D of one length, got {s.shape} and {y.shape}")
    return s, y.astype(bool)


def auroc(scores, labels, weights=None) -> float:
    """Area under the ROC curve of ``scores`` for the positive class (``labels`` True).

    Ties count one half. NaN when either class is empty. ``weights``: case weights."""
    s, y = _clean(scores, labels)
    w = np.ones((1, s.size)) if weights is None else np.asarray(weights, np.float64)[None, :]
    if s.size == 0:
        return float("nan")
    order, starts = _tie_groups(s)
    return float(_weighted_auroc(order, starts, y, w)[0])


def auprc(scores, labels, weights=None) -> float:
    """Average precision of ``scores`` for the positive class (scikit-learn's definition)."""
    s, y = _clean(scores, labels)
    w = np.ones((1, s.size)) if weights is None else np.asarray(weights, np.float64)[None, :]
    if s.size == 0:
        return float("nan")
    order, starts = _tie_groups(s)
    return float(_weighted_ap(order, starts, y, w)[0])


def roc_curve(scores, labels) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(false positive rate, true positive rate, thresholds), from the highest threshold down,
    one point per distinct score, starting at (0, 0)."""
    s, y = _clean(scores, labels)
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last = np.flatnonzero(np.concatenate([s[1:] != s[:-1], [True]])) if s.size else np.empty(0, int)
    tp = np.cumsum(y)[last]
    fp = np.cumsum(~y)[last]
    npos, nneg = max(int(y.sum()), 1), max(int((~y).sum()), 1)
    return (np.concatenate([[0.0], fp / nneg]), np.concatenate([[0.0], tp / npos]),
            np.concatenate([[np.inf], s[last]]))


# --------------------------------------------------------------------------- bootstrap


def bootstrap_counts(groups, n_resamples: int = 1000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(counts [B, K], cluster index [n]): how often each of the K clusters (problems) was drawn
    in each of ``n_resamples`` resamples of K clusters with replacement, and each trace's cluster."""
    g = np.asarray(groups)
    _, gi = np.unique(g, return_inverse=True)
    k = int(gi.max()) + 1 if gi.size else 0
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, k, size=(n_resamples, k))
    counts = np.bincount((draws + (np.arange(n_resamples) * k)[:, None]).ravel(),
                         minlength=n_resamples * k).reshape(n_resamples, k)
    return counts, gi.ravel()


def bootstrap_weights(groups, n_resamples: int = 1000, seed: int = 0) -> np.ndarray:
    """Case weights [B, n] of ``n_resamples`` bootstrap resamples of the traces.

    ``groups`` gives each trace's cluster (its problem): whole clusters are drawn with
    replacement, and a trace's weight is the number of times its cluster was drawn. With one
    trace per cluster this is the ordinary bootstrap of traces.
    """
    counts, gi = bootstrap_counts(groups, n_resamples, seed)
    return counts[:, gi].astype(np.float64)


#: resamples handled at once by ``_bootstrap_auc_ap`` (a [traces x chunk] block stays in cache)
BOOT_CHUNK = 32


def _bootstrap_auc_ap(s: np.ndarray, y: np.ndarray, gi: np.ndarray, chunks: list[np.ndarray]
                      ) -> tuple[np.ndarray, np.ndarray]:
    """AUROC and average precision of every resample, from cluster counts given as blocks
    [K, chunk] (``chunks``) and each trace's cluster ``gi``.

    With the positives and negatives each sorted once by score, a resample needs only prefix
    sums of weights: the negative weight strictly below a positive (and tied with it) gives
    AUROC, the positive weight at or above it and the negative weight at or above it give its
    precision. Traces become rows, resamples columns, so each weight gather copies whole rows;
    the weights are counts, exact in float32 (half the memory traffic of float64).
    """
    order = np.argsort(s, kind="mergesort")
    pos_i = order[y[order]]
    neg_i = order[~y[order]]
    sp, sn = s[pos_i], s[neg_i]
    below = np.searchsorted(sn, sp, "left")       # negatives strictly below each positive
    upto = np.searchsorted(sn, sp, "right")       # ... and those tied with it
    ties = bool((upto != below).any())
    pos_below = np.searchsorted(sp, sp, "left")   # positives strictly below each positive
    pos_ties = not np.array_equal(pos_below, np.arange(sp.size))
    gp, gn = gi[pos_i], gi[neg_i]
    aucs, aps = [], []
    for c in chunks:
        wn = np.empty((sn.size + 1, c.shape[1]), np.float32)
        wn[0] = 0
        np.cumsum(np.take(c, gn, axis=0), axis=0, out=wn[1:])
        wp = np.take(c, gp, axis=0)
        cp = np.empty((sp.size + 1, c.shape[1]), np.float32)
        cp[0] = 0
        np.cumsum(wp, axis=0, out=cp[1:])
        tot_p, tot_n = cp[-1].astype(np.float64), wn[-1].astype(np.float64)
        nb = np.take(wn, below, axis=0)
        auc_num = np.einsum("ij,ij->j", wp, nb, dtype=np.float64)
        if ties:
            auc_num += 0.5 * np.einsum("ij,ij->j", wp, np.take(wn, upto, axis=0) - nb, dtype=np.float64)
        # precision at each positive: tp / (tp + fp), both "at or above" its score
        fp = np.subtract(wn[-1], nb, out=nb)
        tp = np.subtract(cp[-1], np.take(cp, pos_below, axis=0) if pos_ties else cp[:-1])
        fp += tp
        np.maximum(fp, np.float32(1e-30), out=fp)  # 0 / 0 where a positive has weight 0 in this resample
        np.divide(tp, fp, out=tp)
        ap_num = np.einsum("ij,ij->j", wp, tp, dtype=np.float64)
        ok = (tot_p > 0) & (tot_n > 0)
        with np.errstate(invalid="ignore", divide="ignore"):
            aucs.append(np.where(ok, auc_num / (tot_p * tot_n), np.nan))
            aps.append(np.where(ok, ap_num / tot_p, np.nan))
    return np.concatenate(aucs), np.concatenate(aps)


@dataclass
class Interval:
    """A statistic with its bootstrap percentile interval and how many resamples gave a value."""

    value: float
    low: float
    high: float
    resamples: int


def percentile_interval(point: float, boot: np.ndarray, level: float = CI_LEVEL) -> Interval:
    ok = boot[~np.isnan(boot)]
    if not ok.size:
        return Interval(point, float("nan"), float("nan"), 0)
    lo, hi = np.percentile(ok, [50 * (1 - level), 50 * (1 + level)])
    return Interval(float(point), float(lo), float(hi), int(ok.size))


def wilson_interval(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """95 % Wilson score interval of a proportion k / n; (NaN, NaN) for n = 0."""
    if n <= 0:
        return float("nan"), float("nan")
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return max(0.0, c - h), min(1.0, c + h)


def verdict(iv: Interval, chance: float = 0.5) -> str:
    """'better than chance' when the interval lies above ``chance``, 'reversed' when below,
    'not distinguishable from chance' when it holds it, 'no interval' without one."""
    if not iv.resamples or math.isnan(iv.low):
        return "no interval"
    if iv.low > chance:
        return "better than chance"
    if iv.high < chance:
        return "reversed (below chance)"
    return "not distinguishable from chance"


# --------------------------------------------------------------------------- evaluation


@dataclass
class SignalSpec:
    """A signal, the direction in which it is expected to mean "wrong", and its unit."""

    name: str
    label: str
    unit: str
    higher_means_wrong: bool = True
    level: str = "trace"      # 'trace' or 'problem' (computed across samples)


@dataclass
class Evaluation:
    """AUROC and AUPRC for "wrong" of every signal over the same bootstrap resamples."""

    table: "object"          # pandas DataFrame, one row per signal, best AUROC first
    n: int
    n_wrong: int
    n_groups: int
    resamples: int
    by_problem: bool
    notes: list[str] = field(default_factory=list)


def evaluate_signals(values: dict[str, np.ndarray], wrong, groups=None, specs: dict[str, SignalSpec] | None = None,
                     n_resamples: int = 1000, seed: int = 0) -> Evaluation:
    """Evaluate signals (name -> per-trace values) as predictors of ``wrong`` (bool per trace).

    Each signal is oriented by its spec (a signal whose high values mean confidence is negated)
    so that AUROC > 0.5 means it works in its expected direction. Traces where a signal is NaN
    are left out of that signal only (its n says how many remain). ``groups`` (a problem id per
    trace) makes the bootstrap resample problems. Returns a table with columns signal, label,
    unit, direction, n, n_wrong, auroc, auroc_low, auroc_high, auprc, auprc_low, auprc_high,
    auprc_chance, verdict.
    """
    import pandas as pd

    y = np.asarray(wrong, dtype=bool)
    n = y.size
    if n == 0:
        raise SignalError("no graded traces: a signal needs right and wrong answers to be judged")
    g = np.arange(n) if groups is None else np.asarray(groups)
    by_problem = groups is not None and np.unique(g).size < n
    if not by_problem:
        g = np.arange(n)
    counts, gi = bootstrap_counts(g, n_resamples, seed)
    chunks = [np.ascontiguousarray(counts[b:b + BOOT_CHUNK].T, dtype=np.float32)
              for b in range(0, n_resamples, BOOT_CHUNK)]
    specs = specs or {}

    def one_signal(name: str, v) -> dict:
        spec = specs.get(name, SignalSpec(name, name, ""))
        x = np.asarray(v, dtype=np.float64)
        if x.shape != (n,):
            raise SignalError(f"signal {name!r} has shape {x.shape}, expected ({n},)")
        s = x if spec.higher_means_wrong else -x
        ok = ~np.isnan(s)
        s, yy = s[ok], y[ok]
        row = {"signal": name, "label": spec.label, "unit": spec.unit, "level": spec.level,
               "direction": "higher = wrong" if spec.higher_means_wrong else "lower = wrong",
               "n": int(ok.sum()), "n_wrong": int(yy.sum())}
        if yy.all() or not yy.any():
            row.update(auroc=np.nan, auroc_low=np.nan, auroc_high=np.nan, auprc=np.nan, auprc_low=np.nan,
                       auprc_high=np.nan, auprc_chance=float(yy.mean()) if yy.size else np.nan,
                       resamples=0, verdict="no interval")
            return row
        order, starts = _tie_groups(s)
        one = np.ones((1, s.size))
        boot_auc, boot_ap = _bootstrap_auc_ap(s, yy, gi[ok], chunks)
        a = percentile_interval(_weighted_auroc(order, starts, yy, one)[0], boot_auc)
        p = percentile_interval(_weighted_ap(order, starts, yy, one)[0], boot_ap)
        right, wrong_n = int((~yy).sum()), int(yy.sum())
        judged = verdict(a) if min(right, wrong_n) >= MIN_CLASS else f"too few to judge ({right} right, {wrong_n} wrong)"
        row.update(auroc=a.value, auroc_low=a.low, auroc_high=a.high, auprc=p.value, auprc_low=p.low,
                   auprc_high=p.high, auprc_chance=float(yy.mean()), resamples=a.resamples, verdict=judged)
        return row

    # numpy's gathers, prefix sums and products release the GIL: signals run side by side
    with ThreadPoolExecutor(max(1, min(len(values), os.cpu_count() or 1, 4))) as pool:
        rows = list(pool.map(lambda kv: one_signal(*kv), values.items()))
    table = pd.DataFrame(rows)
    if not table.empty:
        table = table.sort_values("auroc", ascending=False, na_position="last", kind="mergesort").reset_index(drop=True)
    notes = []
    if by_problem:
        notes.append(f"bootstrap over {np.unique(g).size} problems (samples of one problem are not independent)")
    if np.unique(g).size < FEW_CLUSTERS:
        notes.append(f"only {np.unique(g).size} {'problems' if by_problem else 'traces'} to resample: the intervals "
                     "are rough (a resample can draw only so many distinct sets)")
    return Evaluation(table, n, int(y.sum()), int(np.unique(g).size), n_resamples, by_problem, notes)


# --------------------------------------------------------------------------- semantic entropy


def answer_key(pred, rel_tol: float = 1e-6, abs_tol: float = 1e-9):
    """What the grader compares an extracted answer by: ('num', value), ('text', normalised),
    or None when nothing was extracted."""
    from .grading import normalise_text, numbers_in, parse_number

    if pred is None or (isinstance(pred, float) and math.isnan(pred)):
        return None
    s = str(pred)
    if not s.strip():
        return None
    v = parse_number(s)
    if v is None:
        nums = numbers_in(s.rsplit("=", 1)[1] if "=" in s else s)
        v = parse_number(nums[0]) if len(nums) == 1 and nums[0].strip() == s.strip() else None
    if v is not None and math.isfinite(v):
        return ("num", float(v))
    return ("text", normalise_text(s))


def answer_classes(answers: Sequence, rel_tol: float = 1e-6, abs_tol: float = 1e-9) -> np.ndarray:
    """A class number per answer: answers equal under the grader's equivalence share a class
    (numbers within ``math.isclose(rel_tol, abs_tol)`` of the class's first member, text after
    the grader's normalisation); an answer that cannot be extracted is a class of its own."""
    reps: list = []
    out = np.empty(len(answers), dtype=np.int64)
    for i, a in enumerate(answers):
        k = answer_key(a, rel_tol, abs_tol)
        found = -1
        if k is not None:
            for c, r in enumerate(reps):
                if r is None or r[0] != k[0]:
                    continue
                same = (math.isclose(r[1], k[1], rel_tol=rel_tol, abs_tol=abs_tol) if k[0] == "num"
                        else r[1] == k[1])
                if same:
                    found = c
                    break
        if found < 0:
            reps.append(k)
            found = len(reps) - 1
        out[i] = found
    return out


def semantic_entropy(classes) -> float:
    """Discrete semantic entropy (nats) of one problem's samples from their class numbers:
    -sum_c p_c ln p_c with p_c = count_c / N. NaN for no samples."""
    c = np.asarray(classes)
    if c.size == 0:
        return float("nan")
    p = np.bincount(np.unique(c, return_inverse=True)[1]) / c.size
    return float(-(p * np.log(p)).sum())


def self_consistency(classes) -> float:
    """Share of a problem's samples in its largest answer class (NaN for no samples)."""
    c = np.asarray(classes)
    if c.size == 0:
        return float("nan")
    return float(np.bincount(np.unique(c, return_inverse=True)[1]).max() / c.size)


def sample_signals(problem_ids, answers, rel_tol: float = 1e-6, abs_tol: float = 1e-9
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per trace: semantic entropy (nats) and self-consistency of its problem's samples, and
    the number of samples of that problem. A problem with one sample gets NaN for both (there
    is nothing to disagree with)."""
    pid = np.asarray([str(p) if p is not None else None for p in problem_ids], dtype=object)
    ans = list(answers)
    se = np.full(len(ans), np.nan)
    sc = np.full(len(ans), np.nan)
    size = np.ones(len(ans), dtype=np.int64)
    groups: dict = {}
    for i, p in enumerate(pid):
        if p is not None:
            groups.setdefault(p, []).append(i)
    for idx in groups.values():
        size[idx] = len(idx)
        if len(idx) < 2:
            continue
        cls = answer_classes([ans[i] for i in idx], rel_tol, abs_tol)
        se[idx] = semantic_entropy(cls)
        sc[idx] = self_consistency(cls)
    return se, sc, size


# --------------------------------------------------------------------------- calibration


def split_calibration(groups, fraction: float = 0.5, seed: int = 0) -> np.ndarray:
    """True for the traces in the calibration split: a ``fraction`` of the groups (problems),
    drawn with ``seed``, so no problem is in both splits."""
    g = np.asarray(groups)
    uniq, gi = np.unique(g, return_inverse=True)
    rng = np.random.default_rng(seed)
    k = int(round(fraction * uniq.size))
    k = min(max(k, 1), max(uniq.size - 1, 1))
    chosen = np.zeros(uniq.size, bool)
    chosen[rng.permutation(uniq.size)[:k]] = True
    return chosen[gi]


def fit_logistic(x, y, ridge: float = 1e-6, iters: int = 100) -> tuple[float, float]:
    """(a, b) of P(y = 1) = sigmoid(a + b x) by maximum likelihood (Newton's method), with a tiny
    ridge on b so that perfectly separated data still gives a finite fit."""
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    if x.size < 2:
        raise SignalError(f"a logistic fit needs at least 2 traces, got {x.size}")
    mu, sd = x.mean(), x.std()
    sd = sd if sd > 0 else 1.0
    z = (x - mu) / sd  # standardised for a well-conditioned Newton step
    X = np.column_stack([np.ones_like(z), z])
    beta = np.zeros(2)
    pen = np.diag([0.0, ridge])
    for _ in range(iters):
        eta = X @ beta
        p = 1.0 / (1.0 + np.exp(-eta))
        grad = X.T @ (y - p) - pen @ beta
        hess = (X * (p * (1 - p))[:, None]).T @ X + pen + 1e-12 * np.eye(2)
        step = np.linalg.solve(hess, grad)
        beta += step
        if np.abs(step).max() < 1e-10:
            break
    b = beta[1] / sd
    return float(beta[0] - b * mu), float(b)


def sigmoid(x) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(x, np.float64)))


def reliability_bins(prob, y, n_bins: int = 10):
    """Equal-width bins on the predicted probability [0, 1]: per bin (the last one closed) the
    count, mean predicted probability and observed frequency; and the expected calibration
    error ECE = sum_b (n_b / N) |frequency_b - mean prediction_b|.

    Returns (DataFrame with columns bin_low, bin_high, count, mean_predicted, observed, ece).
    """
    import pandas as pd

    p = np.asarray(prob, np.float64)
    t = np.asarray(y, np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    b = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, n_bins - 1)
    count = np.bincount(b, minlength=n_bins)
    sp = np.bincount(b, p, minlength=n_bins)
    st = np.bincount(b, t, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mp = np.where(count > 0, sp / count, np.nan)
        ob = np.where(count > 0, st / count, np.nan)
    ece = float(np.nansum(count * np.abs(ob - mp)) / max(p.size, 1)) if p.size else float("nan")
    df = pd.DataFrame({"bin_low": edges[:-1], "bin_high": edges[1:], "count": count,
                       "mean_predicted": mp, "observed": ob})
    return df, ece


def expected_calibration_error(prob, y, n_bins: int = 10) -> float:
    """ECE with ``n_bins`` equal-width bins (see ``reliability_bins``)."""
    return reliability_bins(prob, y, n_bins)[1]


@dataclass
class Calibration:
    """A logistic calibration of one signal: fitted on one split, judged on the other."""

    signal: str
    a: float
    b: float
    n_calib: int
    n_held: int
    ece: float
    bins: "object"          # reliability_bins DataFrame on the held-out traces
    held_prob: np.ndarray
    held_correct: np.ndarray


def calibrate(x, correct, calib_mask, n_bins: int = 10, signal: str = "") -> Calibration:
    """Fit P(correct) = sigmoid(a + b * x) on the calibration traces; reliability diagram and
    ECE on the held-out ones. Traces with NaN x are left out."""
    x = np.asarray(x, np.float64)
    c = np.asarray(correct, bool)
    m = np.asarray(calib_mask, bool)
    ok = ~np.isnan(x)
    cal, held = ok & m, ok & ~m
    if cal.sum() < 2 or held.sum() < 1:
        raise SignalError(f"calibration needs at least 2 calibration and 1 held-out traces with a value of "
                          f"{signal or 'the signal'}, got {int(cal.sum())} and {int(held.sum())}")
    a, b = fit_logistic(x[cal], c[cal])
    prob = sigmoid(a + b * x[held])
    bins, ece = reliability_bins(prob, c[held], n_bins)
    return Calibration(signal, a, b, int(cal.sum()), int(held.sum()), ece, bins, prob, c[held])
