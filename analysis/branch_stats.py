"""Statistics of branching (pure numpy): outcome distributions, distances, fork strength,
hazard and survival (Forking Paths, arXiv 2412.07961), and how well entropy predicts forks.

Outcomes are extracted final answers; "no answer" is an outcome of its own, never "wrong".
With n rollouts per branch a distribution is known only to about 1/sqrt(n), so every
per-position figure comes with a 95 % interval from the posterior of the branches' outcome
distributions: Dirichlet with a Jeffreys prior (1/2 per outcome seen at that position),
sampled; accuracy from Beta(k + 1/2, n - k + 1/2). Unanimous rollouts thus still get an
interval as wide as their number warrants (a bootstrap would give none). Rank correlations,
precision, recall and AUROC over positions get percentile intervals from a bootstrap over
positions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

NO_ANSWER = "no answer"
#: Laplace smoothing of answer counts for KL (Thought Anchors, arXiv 2506.19143)
LAPLACE = 1.0
#: posterior draws behind each interval
DRAWS = 2000
LEVEL = 0.95


def outcome(answer) -> str:
    """The outcome label of an extracted answer (None or blank: ``NO_ANSWER``)."""
    if answer is None or (isinstance(answer, float) and np.isnan(answer)) or str(answer).strip() == "":
        return NO_ANSWER
    return str(answer).strip()


def counts(answers: Sequence, categories: Sequence[str]) -> np.ndarray:
    """Counts of each category among the outcomes of ``answers``."""
    index = {c: i for i, c in enumerate(categories)}
    out = np.zeros(len(categories), np.int64)
    for a in answers:
        out[index[outcome(a)]] += 1
    return out


def total_variation(p, q) -> np.ndarray:
    """Total variation 1/2 Σ |p - q| along the last axis (0 .. 1)."""
    return 0.5 * np.abs(np.asarray(p, float) - np.asarray(q, float)).sum(-1)


def kl_smoothed(counts_p, counts_q, alpha: float = LAPLACE) -> float:
    """KL(P || Q) in nats between Laplace-smoothed answer counts over the same categories:
    P = (c_p + alpha) / (n_p + alpha K), likewise Q; clipped at >= 0 (Thought Anchors)."""
    cp, cq = np.asarray(counts_p, float), np.asarray(counts_q, float)
    p = (cp + alpha) / (cp.sum() + alpha * cp.size)
    q = (cq + alpha) / (cq.sum() + alpha * cq.size)
    return float(max(0.0, np.sum(p * np.log(p / q))))


def wilson_halfwidth(k, n, z: float = 1.96) -> np.ndarray:
    """Half-width of the Wilson score interval of a proportion k / n."""
    k, n = np.asarray(k, float), np.asarray(n, float)
    p = k / n
    return z / (1 + z * z / n) * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))


def known_within(c: np.ndarray, tol: float) -> bool:
    """Adaptive sampling's stopping rule: every outcome's share is known within ``tol`` (the
    half-width of its 95 % Wilson interval). Four unanimous rollouts meet tol = 0.25."""
    n = int(np.sum(c))
    return n > 0 and bool(np.all(wilson_halfwidth(np.asarray(c), n) <= tol))


def adaptive_stop(outcomes: Sequence, tol: float, min_rollouts: int, step: int) -> int:
    """How many of a branch's sequential rollouts adaptive sampling would generate: rounds of
    ``min_rollouts`` then ``step`` until ``known_within`` holds or all are used."""
    labels = [outcome(a) for a in outcomes]
    cats = sorted(set(labels))
    m = min(len(labels), max(1, min_rollouts))
    while m < len(labels) and not known_within(counts(labels[:m], cats), tol):
        m = min(len(labels), m + max(1, step))
    return m


def interval(draws: np.ndarray) -> tuple[float, float]:
    a = (1 - LEVEL) / 2
    d = np.asarray(draws, float)
    d = d[np.isfinite(d)]
    if not d.size:
        return (float("nan"), float("nan"))
    return float(np.quantile(d, a)), float(np.quantile(d, 1 - a))


# --------------------------------------------------------------------------- one position


@dataclass
class BranchOutcomes:
    """The rollouts of one branch at a position: the token forced there and its probability
    under the model at that position (p at the sampling temperature), with each rollout's
    extracted answer and grade (None: ungraded)."""

    kind: str                  # 'original', 'alternative' or 'fresh'
    token_id: int | None
    token: str | None
    p: float
    answers: list = field(default_factory=list)
    correct: list = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.answers)


@dataclass
class PositionStats:
    """Per-position statistics; ``branches`` holds one dict per branch (distribution, TV,
    KL and change in accuracy against the original token's branch, each with its interval)."""

    categories: list[str]
    branches: list[dict]
    fork_strength: float
    fork_interval: tuple[float, float]
    fork_draws: np.ndarray     # posterior draws of the fork strength (for survival's interval)
    eps: float


def _accuracy(correct: Sequence) -> tuple[int, int]:
    graded = [c for c in correct if c is not None and not (isinstance(c, float) and np.isnan(c))]
    return sum(bool(c) for c in graded), len(graded)


def position_stats(branches: Sequence[BranchOutcomes], eps: float = 0.3, seed: int = 0,
                   draws: int = DRAWS) -> PositionStats:
    """Statistics of one position's branches. The fork strength is Σ p(w) over alternatives
    w whose outcome distribution is at total variation >= ``eps`` from the original token's
    branch (Forking Paths' hazard with d = TV); the fresh-sample branch does not count."""
    orig = [b for b in branches if b.kind == "original"]
    if len(orig) != 1:
        raise ValueError(f"a position needs exactly one 'original' branch, got {len(orig)}")
    o = orig[0]
    cats = sorted({outcome(a) for b in branches for a in b.answers})
    rng = np.random.default_rng(seed)
    dist = {id(b): counts(b.answers, cats) for b in branches}
    # posterior draws of every branch's distribution (Dirichlet, Jeffreys prior on the outcomes seen)
    post = {id(b): rng.dirichlet(dist[id(b)] + 0.5, draws) if cats else np.zeros((draws, 0)) for b in branches}
    k_o, n_o = _accuracy(o.correct)
    acc_o = rng.beta(k_o + 0.5, n_o - k_o + 0.5, draws) if n_o else np.full(draws, np.nan)
    rows, fork_draws, fork = [], np.zeros(draws), 0.0
    for b in branches:
        c = dist[id(b)]
        share = c / max(1, c.sum())
        tv = float(total_variation(share, dist[id(o)] / max(1, dist[id(o)].sum())))
        tv_draws = total_variation(post[id(b)], post[id(o)])
        k, n_g = _accuracy(b.correct)
        acc = k / n_g if n_g else float("nan")
        acc_draws = rng.beta(k + 0.5, n_g - k + 0.5, draws) if n_g else np.full(draws, np.nan)
        d_acc = acc - (k_o / n_o if n_o else float("nan"))
        row = {"kind": b.kind, "token_id": b.token_id, "token": b.token, "p": float(b.p), "n": b.n,
               "counts": c.tolist(), "shares": share.tolist(), "tv": tv, "tv_interval": interval(tv_draws),
               "kl": kl_smoothed(c, dist[id(o)]) if cats else 0.0,
               "accuracy": acc, "graded": n_g, "d_accuracy": d_acc,
               "d_accuracy_interval": interval(acc_draws - acc_o), "forks": False}
        if b.kind == "alternative":
            row["forks"] = tv >= eps
            fork += b.p * row["forks"]
            fork_draws += b.p * (tv_draws >= eps)
        rows.append(row)
    return PositionStats(cats, rows, float(fork), interval(fork_draws), fork_draws, float(eps))


def survival(hazard_draws: np.ndarray, hazard: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Survival over positions in order, S_t = Π_{s <= t} (1 - hazard_s) (Forking Paths), with a
    95 % interval from the hazards' posterior draws ([positions, draws]): (S, low, high)."""
    h = np.asarray(hazard, float)
    s = np.cumprod(1 - h)
    if not h.size:
        return s, s.copy(), s.copy()
    sd = np.cumprod(1 - np.asarray(hazard_draws, float), axis=0)
    lo, hi = np.array([interval(r) for r in sd]).T
    return s, lo, hi


# --------------------------------------------------------------------------- does entropy predict forks?


def ranks(x) -> np.ndarray:
    """Ranks 1..n with ties given their average rank."""
    x = np.asarray(x, float)
    if not x.size:
        return np.empty(0)
    order = np.argsort(x, kind="mergesort")
    sx = x[order]
    new = np.concatenate([[True], sx[1:] != sx[:-1]])
    first = np.flatnonzero(new)
    last = np.concatenate([first[1:], [x.size]]) - 1
    r = np.empty(x.size)
    r[order] = ((first + last) / 2 + 1)[np.cumsum(new) - 1]
    return r


def spearman(x, y) -> float:
    """Spearman's rank correlation (Pearson's r of average ranks); NaN when either is constant."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 2:
        return float("nan")
    rx, ry = ranks(x[ok]), ranks(y[ok])
    rx, ry = rx - rx.mean(), ry - ry.mean()
    den = np.sqrt((rx * rx).sum() * (ry * ry).sum())
    return float((rx * ry).sum() / den) if den > 0 else float("nan")


def auroc(score, label) -> float:
    """Area under the ROC curve of ``score`` for the boolean ``label`` (Mann-Whitney U / n1 n0,
    ties count 1/2); NaN without both classes."""
    s, lab = np.asarray(score, float), np.asarray(label, bool)
    ok = np.isfinite(s)
    s, lab = s[ok], lab[ok]
    n1, n0 = int(lab.sum()), int((~lab).sum())
    if not n1 or not n0:
        return float("nan")
    r = ranks(s)
    return float((r[lab].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def precision_recall(flag, label) -> tuple[float, float]:
    """Precision and recall of boolean ``flag`` against ``label`` (NaN when undefined)."""
    f, lab = np.asarray(flag, bool), np.asarray(label, bool)
    tp = int((f & lab).sum())
    prec = tp / f.sum() if f.sum() else float("nan")
    rec = tp / lab.sum() if lab.sum() else float("nan")
    return float(prec), float(rec)


def bootstrap(fn, arrays: Sequence[np.ndarray], draws: int = DRAWS, seed: int = 0) -> tuple[float, float]:
    """95 % percentile interval of ``fn(*arrays)`` over resamples of the rows (positions)."""
    n = len(arrays[0])
    if n < 2:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(draws, n))
    with np.errstate(all="ignore"):
        vals = np.array([fn(*(a[i] for a in arrays)) for i in idx])
    return interval(vals)


def correlation(x, y, seed: int = 0) -> dict:
    """Spearman's rho of x and y with its bootstrap interval and the number of pairs."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    return {"rho": spearman(x, y), "interval": bootstrap(spearman, [x, y], seed=seed), "n": int(x.size)}


def rule_scores(flag, score, label, seed: int = 0) -> dict:
    """Precision, recall (of ``flag``) and AUROC (of ``score``) against ``label``, each with its
    bootstrap interval over positions."""
    f, s, lab = np.asarray(flag, bool), np.asarray(score, float), np.asarray(label, bool)
    prec, rec = precision_recall(f, lab)
    return {"precision": prec, "precision_interval": bootstrap(lambda a, b: precision_recall(a, b)[0], [f, lab], seed=seed),
            "recall": rec, "recall_interval": bootstrap(lambda a, b: precision_recall(a, b)[1], [f, lab], seed=seed),
            "auroc": auroc(s, lab), "auroc_interval": bootstrap(auroc, [s, lab], seed=seed),
            "flagged": int(f.sum()), "forks": int(lab.sum()), "n": int(lab.size)}
