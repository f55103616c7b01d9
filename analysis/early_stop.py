"""Early stopping on entropy (Think Just Enough, arXiv 2510.08146): thresholds, curves, replay.

Two rules, both on per-token entropy (nats) of one estimator:

- **confidence gate** (checkpoint): after a budget of ``budget`` tokens, take the sequence
  entropy of that prefix (the "short answer"); if it is <= tau, stop there and answer,
  otherwise spend the full reasoning budget (the recorded trace).
- **streaming stop**: stop at the first position t (with at least ``min_tokens`` tokens
  and a full window) where the running mean entropy of the last ``k`` tokens is <= tau.

Thresholds come from a few labelled traces (``calibrate``), on the signal the rule compares
with tau: the gate's prefix mean, or, for the streaming stop, each trace's lowest running
mean of k tokens from ``min_tokens`` on (a trace stops at tau exactly when that is <= tau).
tau_mean = mean signal of the correct ones; tau_info = mu_c + sigma_c ln(1 + |d|) with d
Cohen's d between the signals of the correct and incorrect ones (arXiv 2510.08146). The paper
reports 25-50% fewer tokens at the same accuracy for post-trained reasoning models and no
signal in a plain instruction-tuned one; a negative d (wrong answers calmer than right ones)
is reported as a reversed signal (``reversed_signal_note``).

Accuracy at a stop needs the answer the model would give there. A **replay** forces it with
the model (append an answer cue, decode a few tokens, grade: ``analysis.stopping``). Without a
model, the figure is an **estimate**: a stopped trace counts as correct when it was correct in
full and its graded final answer already appears in the text before the stop.

This module is numpy only; generation with the rule and replay (torch) are in
``analysis.stopping``.

Curves over every threshold are computed from sorted arrays (searchsorted on cumulative
sums), so a slider move costs O(log N) and a whole curve O(G log N) after one O(tokens) pass.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from .errors import EarlyStopError
from .metrics import estimator_temperature, temperature_text

MODES = ("gate", "streaming")
DEFAULT_CUE = "\nFinal answer:"
CONFIG_KIND = "thinkscope.early_stop"
CONFIG_VERSION = 1


# --------------------------------------------------------------------------- thresholds


@dataclass(frozen=True)
class Thresholds:
    """Thresholds (nats) from labelled entropies, with the numbers they were computed from."""

    tau_mean: float
    tau_info: float
    mu_correct: float
    sigma_correct: float
    mu_incorrect: float
    cohens_d: float
    n_correct: int
    n_incorrect: int


def cohens_d(correct: np.ndarray, incorrect: np.ndarray) -> float:
    """Cohen's d = (mean_incorrect - mean_correct) / pooled SD (ddof 1); NaN if undefined."""
    a, b = np.asarray(correct, float), np.asarray(incorrect, float)
    a, b = a[~np.isnan(a)], b[~np.isnan(b)]
    if a.size < 1 or b.size < 1 or a.size + b.size < 3:
        return float("nan")
    va = a.var(ddof=1) if a.size > 1 else 0.0
    vb = b.var(ddof=1) if b.size > 1 else 0.0
    pooled = math.sqrt(((a.size - 1) * va + (b.size - 1) * vb) / (a.size + b.size - 2))
    return float((b.mean() - a.mean()) / pooled) if pooled > 0 else float("nan")


def thresholds(entropy: np.ndarray, correct: np.ndarray) -> Thresholds:
    """tau_mean and tau_info (arXiv 2510.08146) from labelled sequence entropies (nats).

    tau_mean = mu_c; tau_info = mu_c + sigma_c * ln(1 + |d|), with mu_c, sigma_c (ddof 1) the
    mean and SD of the correct examples' entropies and d Cohen's d against the incorrect ones.
    With no incorrect example d is undefined and tau_info = tau_mean.
    """
    h = np.asarray(entropy, float)
    c = np.asarray(correct, dtype=object)
    ok = ~np.isnan(h) & pd.notna(c)
    h, c = h[ok], c[ok].astype(bool)
    hc, hi = h[c], h[~c]
    if hc.size == 0:
        raise EarlyStopError("no correct example among the labelled traces: tau_mean is undefined "
                             "(label more traces, or check the grading)")
    mu = float(hc.mean())
    sd = float(hc.std(ddof=1)) if hc.size > 1 else 0.0
    d = cohens_d(hc, hi)
    info = mu + sd * math.log1p(abs(d)) if not math.isnan(d) else mu
    return Thresholds(mu, info, mu, sd, float(hi.mean()) if hi.size else float("nan"), d,
                      int(hc.size), int(hi.size))


def calibration_split(n: int, n_calib: int, seed: int = 0) -> np.ndarray:
    """Boolean mask of ``n_calib`` calibration items out of ``n`` (random, reproducible)."""
    if not 0 <= n_calib <= n:
        raise EarlyStopError(f"calibration size {n_calib} must be between 0 and {n}")
    mask = np.zeros(n, bool)
    mask[np.random.default_rng(seed).permutation(n)[:n_calib]] = True
    return mask


# --------------------------------------------------------------------------- per-token data


@dataclass
class RunTokens:
    """Per-token entropies of a run's traces, concatenated (trace order = ``trace_ids``).

    ``h`` in nats (NaN where unknown); trace i owns h[offsets[i] : offsets[i] + lengths[i]].
    ``correct`` is 1/0/NaN per trace (NaN: ungraded); ``answer_pos`` the token index at which
    the graded final answer is first complete in the text (-1: never).
    """

    trace_ids: np.ndarray
    lengths: np.ndarray
    h: np.ndarray
    correct: np.ndarray
    answer_pos: np.ndarray
    estimator: str = "full"

    def __post_init__(self) -> None:
        self.lengths = np.asarray(self.lengths, np.int64)
        self.h = np.asarray(self.h, np.float64)
        self.correct = np.asarray(self.correct, np.float64)
        self.answer_pos = np.asarray(self.answer_pos, np.int64)
        n = len(self.trace_ids)
        if self.lengths.shape != (n,) or self.correct.shape != (n,) or self.answer_pos.shape != (n,):
            raise EarlyStopError(f"per-trace arrays must have {n} rows: lengths {self.lengths.shape}, "
                                 f"correct {self.correct.shape}, answer_pos {self.answer_pos.shape}")
        if self.h.shape != (int(self.lengths.sum()),):
            raise EarlyStopError(f"h has {self.h.shape[0]} tokens, lengths sum to {int(self.lengths.sum())}")
        self.offsets = np.concatenate([[0], np.cumsum(self.lengths)[:-1]]).astype(np.int64)
        self.seg = np.repeat(np.arange(n), self.lengths)
        self.pos = np.arange(self.h.size) - np.repeat(self.offsets, self.lengths)

    @property
    def n(self) -> int:
        return len(self.trace_ids)

    def subset(self, mask: np.ndarray) -> "RunTokens":
        mask = np.asarray(mask, bool)
        keep = np.repeat(mask, self.lengths)
        return RunTokens(self.trace_ids[mask], self.lengths[mask], self.h[keep], self.correct[mask],
                         self.answer_pos[mask], self.estimator)

    def trace_entropy(self, i: int) -> np.ndarray:
        o = self.offsets[i]
        return self.h[o: o + self.lengths[i]]


def _segment_cumsum(x: np.ndarray, offsets: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Inclusive cumulative sum restarted at each trace."""
    cs = np.cumsum(x)
    base = np.concatenate([[0.0], cs])[offsets]
    return cs - np.repeat(base, lengths)


def running_mean(rt: RunTokens, k: int) -> np.ndarray:
    """Mean entropy (nats) of the last k tokens at every position (NaN entropies ignored;
    NaN before a full window of k tokens or when the window holds no known value)."""
    if k < 1:
        raise EarlyStopError(f"window k must be >= 1, got {k}")
    ok = ~np.isnan(rt.h)
    # one global cumulative sum suffices: a full window never crosses into the previous trace
    cs = np.concatenate([[0.0], np.cumsum(np.where(ok, rt.h, 0.0))])
    cc = np.concatenate([[0], np.cumsum(ok)])
    hi = np.arange(1, rt.h.size + 1)
    lo = np.maximum(hi - k, 0)
    cnt = cc[hi] - cc[lo]
    out = cs[hi] - cs[lo]
    with np.errstate(invalid="ignore", divide="ignore"):
        out /= cnt
    out[(rt.pos < k - 1) | (cnt == 0)] = np.nan
    return out


def prefix_entropy(rt: RunTokens, budget: int) -> np.ndarray:
    """Sequence entropy (nats) of each trace's first ``budget`` tokens (the gate's signal);
    the whole trace when it is shorter; NaN when empty."""
    ok = ~np.isnan(rt.h) & (rt.pos < budget)
    s = np.bincount(rt.seg[ok], weights=rt.h[ok], minlength=rt.n)
    c = np.bincount(rt.seg[ok], minlength=rt.n)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(c > 0, s / np.maximum(c, 1), np.nan)


# --------------------------------------------------------------------------- stop rules


@dataclass(frozen=True)
class StopRule:
    """An early-stop rule. ``mode`` 'gate': check once after ``budget`` tokens;
    'streaming': running mean over ``k`` tokens, from ``min_tokens`` on. ``tau`` in nats."""

    mode: str = "streaming"
    tau: float = 1.0
    k: int = 16
    min_tokens: int = 32
    budget: int = 64

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise EarlyStopError(f"unknown early-stop mode {self.mode!r}; use {' or '.join(MODES)}")
        if self.k < 1 or self.min_tokens < 0 or self.budget < 1:
            raise EarlyStopError(f"need k >= 1, min_tokens >= 0, budget >= 1; got k={self.k}, "
                                 f"min_tokens={self.min_tokens}, budget={self.budget}")

    @property
    def first_check(self) -> int:
        """Earliest token index at which the streaming rule may stop (0-based)."""
        return max(self.min_tokens, self.k) - 1


class StopModel:
    """Precomputed per-run arrays for one rule's shape (mode, k, min_tokens, budget).

    ``stops(tau)`` gives every trace's stop position; ``point(tau)`` and ``curve(taus)`` give
    tokens saved and the *estimated* accuracy (see module docstring); ``replay_accuracy``
    gives the measured one from replayed answers.
    """

    def __init__(self, rt: RunTokens, rule: StopRule):
        self.rt, self.rule = rt, rule
        self.total_tokens = float(rt.lengths.sum())
        graded = ~np.isnan(rt.correct)
        self.graded = graded
        self.correct_full = np.where(graded, rt.correct, 0.0) > 0.5
        if rule.mode == "gate":
            b = rule.budget
            self.signal = prefix_entropy(rt, b)
            can = (rt.lengths > b) & ~np.isnan(self.signal)
            self.can_stop = can
            # traces that would stop: the signal is their threshold
            self.stop_tau = np.where(can, self.signal, np.inf)
            self.saving = np.where(can, rt.lengths - b, 0).astype(np.float64)
            answered = (rt.answer_pos >= 0) & (rt.answer_pos <= b - 1)
            # correct at tau  <=>  not stopped (tau < stop_tau) or answer already there
            self.theta = np.where(~self.correct_full, -np.inf, np.where(answered, np.inf, self.stop_tau))
            order = np.argsort(self.stop_tau, kind="stable")
            self._sorted_tau = self.stop_tau[order]
            self._cum_saving = np.concatenate([[0.0], np.cumsum(self.saving[order])])
        else:
            start = rule.first_check
            r = running_mean(rt, rule.k)
            elig = rt.pos >= start
            r = np.where(elig & ~np.isnan(r), r, np.inf)
            # running minimum within each trace (exact; pandas' grouped cummin runs in C)
            m = pd.Series(r).groupby(rt.seg).cummin().to_numpy() if r.size else r
            m = np.where(elig, m, np.nan)
            self.m = m
            self.elig = elig
            self._m_search = np.where(elig, m, np.inf) if m.size else np.array([np.inf])
            last = rt.offsets + rt.lengths - 1
            has = rt.lengths > start
            self.trace_min = np.where(has, m[np.maximum(last, 0)], np.inf) if m.size else np.full(rt.n, np.inf)
            self.trace_min = np.where(np.isnan(self.trace_min), np.inf, self.trace_min)
            self.start = np.minimum(start, rt.lengths)
            self._sorted_m = np.sort(m[elig & np.isfinite(m)])
            self._n_inf_m = int((elig & ~np.isfinite(m)).sum())
            self._sorted_min = np.sort(self.trace_min)
            a = rt.answer_pos
            before_start = (a >= 0) & (a <= start)
            at = rt.offsets + np.clip(a - 1, 0, None)
            m_at = np.where((a >= 1) & (a - 1 >= start) & (a < rt.lengths), m[np.minimum(at, rt.h.size - 1)]
                            if rt.h.size else 0.0, np.nan)
            theta = np.where(before_start, np.inf, np.where(np.isnan(m_at), self.trace_min, m_at))
            self.theta = np.where(self.correct_full, theta, -np.inf)
        self._sorted_theta = np.sort(self.theta[graded])
        self.n_graded = int(graded.sum())
        self.base_correct = int((self.correct_full & graded).sum())

    # ---------------------------------------------------------------- per trace
    def stops(self, tau: float) -> np.ndarray:
        """Stop position (0-based index of the last kept token) per trace; -1: no early stop."""
        rt = self.rt
        if self.rule.mode == "gate":
            return np.where(self.stop_tau <= tau, self.rule.budget - 1, -1)
        # the running minimum is non-increasing inside a trace: binary-search every trace at
        # once for its first position with M <= tau (O(traces x log length), not O(tokens))
        lo = rt.offsets + self.start
        hi = rt.offsets + rt.lengths
        end = hi.copy()
        m = self._m_search
        while True:
            todo = lo < hi
            if not todo.any():
                break
            mid = (lo + hi) // 2
            le = m[np.minimum(mid, m.size - 1)] <= tau
            hi = np.where(todo & le, mid, hi)
            lo = np.where(todo & ~le, mid + 1, lo)
        return np.where(lo < end, lo - rt.offsets, -1)

    def tokens_used(self, tau: float) -> np.ndarray:
        s = self.stops(tau)
        return np.where(s >= 0, s + 1, self.rt.lengths)

    # ---------------------------------------------------------------- aggregates
    def _used_total(self, taus: np.ndarray) -> np.ndarray:
        if self.rule.mode == "gate":
            k = np.searchsorted(self._sorted_tau, taus, side="right")
            return self.total_tokens - self._cum_saving[k]
        # sum_i used_i = sum_i (start_i + c_i + 1) - #{i: never stops}, c_i = #{eligible t: M_t > tau}
        above = (self._sorted_m.size - np.searchsorted(self._sorted_m, taus, side="right")) + self._n_inf_m
        never = self._sorted_min.size - np.searchsorted(self._sorted_min, taus, side="right")
        return float(self.start.sum() + self.rt.n) + above - never

    def _correct_total(self, taus: np.ndarray) -> np.ndarray:
        # a graded trace is correct at tau iff tau < theta_i (theta = -inf for wrong ones)
        return self._sorted_theta.size - np.searchsorted(self._sorted_theta, taus, side="right")

    def curve(self, taus: np.ndarray | None = None, grid: int = 256) -> pd.DataFrame:
        """Tokens saved (%) and accuracy for every tau in ``taus`` (default: every threshold
        where the result changes for the gate, a grid of ``grid`` values for streaming)."""
        if taus is None:
            taus = self.default_taus(grid)
        taus = np.asarray(taus, np.float64)
        used = self._used_total(taus)
        corr = self._correct_total(taus)
        acc = corr / self.n_graded if self.n_graded else np.full(taus.shape, np.nan)
        base = self.base_correct / self.n_graded if self.n_graded else float("nan")
        with np.errstate(invalid="ignore", divide="ignore"):
            kept = np.where(base > 0, 100.0 * acc / base, np.nan) if self.n_graded else acc
        return pd.DataFrame({"tau": taus,
                             "tokens_saved_pct": 100.0 * (1.0 - used / self.total_tokens) if self.total_tokens
                             else np.zeros(taus.shape),
                             "accuracy": acc, "baseline_accuracy": base, "accuracy_kept_pct": kept})

    def point(self, tau: float) -> dict:
        """The curve at one tau, plus how many traces stop early."""
        row = self.curve(np.array([tau])).iloc[0].to_dict()
        row["stopped"] = int((self.stops(tau) >= 0).sum())
        row["n"] = self.rt.n
        return row

    def default_taus(self, grid: int = 256) -> np.ndarray:
        if self.rule.mode == "gate":
            finite = self._sorted_tau[np.isfinite(self._sorted_tau)]
            lo = finite[0] - 1e-9 if finite.size else 0.0
            return np.unique(np.concatenate([[lo], finite]))
        vals = self._sorted_m
        if not vals.size:
            return np.array([0.0])
        return np.linspace(vals[0] - 1e-9, vals[-1], grid)


# --------------------------------------------------------------------------- calibration


def default_n_calib(n_graded: int) -> int:
    """Labelled traces used to calibrate unless told: a quarter of the graded ones, at least two
    (the rest is held out to check the threshold)."""
    return min(max(2, n_graded // 4), n_graded)


def rule_signal(rt: RunTokens, rule: StopRule) -> tuple[np.ndarray, str]:
    """Per trace, the value the rule compares with tau (nats; NaN where it never checks), and
    its name. Gate: the mean entropy of the first ``budget`` tokens. Streaming: the lowest
    running mean of the last ``k`` tokens at the positions where it may stop (from token
    ``max(min_tokens, k)`` on); the trace stops at tau exactly when this is <= tau."""
    if rule.mode == "gate":
        return prefix_entropy(rt, rule.budget), f"mean entropy of the first {rule.budget} tokens"
    r = running_mean(rt, rule.k)
    r = np.where(rt.pos >= rule.first_check, r, np.nan)
    lowest = pd.Series(r).groupby(rt.seg).min().reindex(np.arange(rt.n)).to_numpy(np.float64) if r.size \
        else np.full(rt.n, np.nan)
    return lowest, (f"lowest running mean of {rule.k} tokens from token {rule.first_check + 1} on "
                    "(the streaming rule's signal)")


@dataclass
class Calibration:
    """Thresholds from a calibration split of a run's graded traces, on the rule's signal.

    ``calib`` and ``held`` are masks over ``rt``'s traces (graded ones only); ``signal`` is
    per trace of ``rt`` (nats). ``thresholds`` is None when they are undefined, with
    ``problem`` saying why.
    """

    rt: RunTokens
    rule: StopRule
    signal: np.ndarray
    signal_name: str
    calib: np.ndarray
    held: np.ndarray
    n_calib: int
    seed: int
    thresholds: Thresholds | None
    problem: str | None = None

    def note(self) -> str | None:
        """A sentence when the signal is reversed (see ``reversed_signal_note``)."""
        return None if self.thresholds is None else reversed_signal_note(self.thresholds)

    def record(self) -> dict:
        """What a threshold file keeps of the calibration."""
        th = self.thresholds
        if th is None:
            return {"n_calib": self.n_calib, "seed": self.seed, "signal": self.signal_name}
        return {"tau_mean": th.tau_mean, "tau_info": th.tau_info, "cohens_d": th.cohens_d,
                "n_correct": th.n_correct, "n_incorrect": th.n_incorrect, "n_calib": self.n_calib,
                "seed": self.seed, "signal": self.signal_name}


def calibrate(rt: RunTokens, rule: StopRule, n_calib: int | None = None, seed: int = 0) -> Calibration:
    """Split the graded traces of ``rt`` (``n_calib`` for calibration, default
    ``default_n_calib``; the rest held out) and compute tau_mean and tau_info on the signal
    ``rule`` applies (``rule_signal``). ``rule.tau`` is not used."""
    graded = np.flatnonzero(~np.isnan(rt.correct))
    if graded.size < 2:
        raise EarlyStopError(f"{graded.size} graded trace(s): calibration needs traces graded correct/incorrect "
                             "(generate with --problems, or re-grade the run)")
    n = default_n_calib(graded.size) if n_calib is None else int(n_calib)
    if not 1 <= n <= graded.size:
        raise EarlyStopError(f"calibration traces: {n} asked, the run has {graded.size} graded traces")
    calib = np.zeros(rt.n, bool)
    calib[graded[calibration_split(graded.size, n, seed)]] = True
    held = np.zeros(rt.n, bool)
    held[graded] = True
    held &= ~calib
    signal, name = rule_signal(rt, rule)
    try:
        th, problem = thresholds(signal[calib], rt.correct[calib]), None
    except EarlyStopError as e:
        th, problem = None, str(e)
    return Calibration(rt, rule, signal, name, calib, held, n, seed, th, problem)


def reversed_signal_note(th: Thresholds) -> str | None:
    """When Cohen's d is negative (the wrong answers' signal is lower than the right ones'),
    the sentence that says so; None otherwise."""
    if math.isnan(th.cohens_d) or th.cohens_d >= 0:
        return None
    return (f"Cohen's d is {th.cohens_d:.2f}: the wrong answers have lower entropy than the right ones, so low "
            "entropy does not mean a right answer here (a reversed signal); τ_info's ln(1 + |d|) still raises "
            "the threshold above τ_mean, which stops more traces, wrong ones among them")


def threshold_config(cal: Calibration, tau: float, model: str | None, run_settings: dict, source_run: int,
                     answer_cue: str = DEFAULT_CUE, answer_tokens: int = 12) -> "EarlyStopConfig":
    """The threshold file of a calibration at ``tau`` (nats), for ``generate --early-stop``. The
    temperature recorded is the one the run's entropies were taken at (1 for greedy runs)."""
    temperature = estimator_temperature(cal.rt.estimator, run_settings)
    r = cal.rule
    return EarlyStopConfig(model or "unknown", cal.rt.estimator, StopRule(r.mode, float(tau), r.k, r.min_tokens,
                                                                           r.budget),
                           answer_cue=answer_cue, answer_tokens=int(answer_tokens), temperature=temperature,
                           calibration=cal.record(), source_run=int(source_run))


def tau_range(model: StopModel) -> tuple[float, float]:
    """(lowest, highest) tau where anything changes (nats)."""
    t = model.default_taus()
    return float(t.min()), float(t.max())


# --------------------------------------------------------------------------- loading from a store


def answer_char_end(completion: str, pred: str | None, gold: str | None) -> int:
    """Character index just after the first appearance of the graded answer in the text;
    -1 when neither the extracted nor the gold answer appears."""
    if not completion:
        return -1
    best = -1
    for cand in (pred, gold):
        if not cand or not str(cand).strip():
            continue
        c = str(cand).strip()
        pat = (r"(?<![\w.])" + re.escape(c) + r"(?![\d])") if re.match(r"[-\d$.]", c) else re.escape(c)
        m = re.search(pat, completion)
        if m and (best < 0 or m.end() < best):
            best = m.end()
    return best


def load_run_tokens(store, run_id: int, estimator: str = "full") -> RunTokens:
    """Per-token entropies, correctness and answer positions of a stored run (one query each)."""
    store.entropy_column(estimator)  # an unknown estimator is refused before any query
    tr = store.completions(run_id)
    if tr.empty:
        raise EarlyStopError(f"run {run_id} has no traces")
    tok = store.run_token_entropies(run_id, estimator)
    lengths = tr["n_tokens"].to_numpy(np.int64)
    h = tok["h"].to_numpy(np.float64, na_value=np.nan)
    if h.size != lengths.sum():
        raise EarlyStopError(f"run {run_id}: {h.size} token rows for {int(lengths.sum())} tokens")
    if np.isnan(h).all() and h.size:
        raise EarlyStopError(f"run {run_id} has no {estimator!r} entropies")
    # token index where the answer is complete: searchsorted on global cumulative characters
    clen = np.cumsum(tok["len"].to_numpy(np.int64))
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    char_base = np.concatenate([[0], clen])[offsets]
    ends = np.array([answer_char_end(c if isinstance(c, str) else "", p if isinstance(p, str) else None,
                                     g if isinstance(g, str) else None)
                     for c, p, g in zip(tr["completion"], tr["pred_answer"], tr["gold_answer"])], np.int64)
    glob = np.searchsorted(clen, char_base + ends, side="left")
    answer_pos = np.where(ends > 0, glob - offsets, -1)
    correct = tr["correct"].map(lambda v: np.nan if v is None or pd.isna(v) else float(bool(v))).to_numpy(np.float64)
    return RunTokens(tr["trace_id"].to_numpy(np.int64), lengths, h, correct, answer_pos, estimator)


# --------------------------------------------------------------------------- config files


@dataclass
class EarlyStopConfig:
    """Exported early-stop settings: the rule, and the model/estimator it was calibrated for."""

    model: str
    estimator: str
    rule: StopRule
    answer_cue: str = DEFAULT_CUE
    answer_tokens: int = 12
    temperature: float | None = None
    calibration: dict = field(default_factory=dict)
    source_run: int | None = None

    def to_json(self) -> str:
        d = {"kind": CONFIG_KIND, "version": CONFIG_VERSION, "model": self.model, "estimator": self.estimator,
             "unit": "nats", **asdict(self.rule), "answer_cue": self.answer_cue,
             "answer_tokens": self.answer_tokens, "temperature": self.temperature,
             # the temperature the calibrated entropies were taken at (null: unknown)
             "logprob_temperature": self.temperature,
             "calibration": self.calibration, "source_run": self.source_run}
        return json.dumps(d, indent=2, default=float)

    @classmethod
    def from_json(cls, text: str, where: str = "threshold file") -> "EarlyStopConfig":
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise EarlyStopError(f"{where} line {e.lineno}: invalid JSON ({e.msg})") from None
        if not isinstance(d, dict) or d.get("kind") != CONFIG_KIND:
            raise EarlyStopError(f"{where}: not a thinkscope early-stop file (kind must be {CONFIG_KIND!r})")
        if d.get("version", 0) > CONFIG_VERSION:
            raise EarlyStopError(f"{where}: version {d.get('version')} is newer than this thinkscope "
                                 f"understands ({CONFIG_VERSION})")
        if d.get("unit", "nats") != "nats":
            raise EarlyStopError(f"{where}: thresholds must be in nats, got {d.get('unit')!r}")
        missing = [k for k in ("model", "estimator", "tau") if d.get(k) is None]
        if missing:
            raise EarlyStopError(f"{where}: missing field(s) {', '.join(missing)}")
        try:
            rule = StopRule(mode=d.get("mode", "streaming"), tau=float(d["tau"]), k=int(d.get("k", 16)),
                            min_tokens=int(d.get("min_tokens", 32)), budget=int(d.get("budget", 64)))
        except (TypeError, ValueError) as e:
            raise EarlyStopError(f"{where}: {e}") from None
        return cls(str(d["model"]), str(d["estimator"]), rule, d.get("answer_cue", DEFAULT_CUE),
                   int(d.get("answer_tokens", 12)), _temperature(d.get("logprob_temperature")),
                   d.get("calibration") or {}, d.get("source_run"))

    def check_compatible(self, model: str, estimator: str, temperature: float | None = None) -> str | None:
        """Refuse a threshold made for another model, estimator or temperature (the one this
        run's ``estimator`` values are taken at, None: unknown), saying which and why. Returns
        a warning when either temperature is unknown, else None."""
        problems = []
        if self.model != model:
            problems.append(f"it was calibrated on model {self.model!r}, this is {model!r}")
        if self.estimator != estimator:
            problems.append(f"it uses estimator {self.estimator!r}, this uses {estimator!r}")
        if temperature is not None and self.temperature is not None and \
                not math.isclose(float(self.temperature), float(temperature), rel_tol=1e-6):
            problems.append(f"its {self.estimator} entropies were taken at {temperature_text(self.temperature)}, "
                            f"this run's at {temperature_text(temperature)}")
        if problems:
            raise EarlyStopError("threshold file refused: " + "; ".join(problems) +
                                 ". Entropy scales differ between models, estimators and temperatures, so a "
                                 "tau calibrated on one does not transfer; calibrate on this model.")
        if self.temperature is None:
            return ("the threshold file does not say at which temperature its entropies were taken; "
                    f"this run's {estimator} is at {temperature_text(temperature)}: tau may not transfer")
        if temperature is None:
            return (f"the threshold was calibrated on {self.estimator} at {temperature_text(self.temperature)}; "
                    "this run's temperature is unknown: tau may not transfer")
        return None


def _temperature(value) -> float | None:
    """A recorded temperature, None when missing or not a number above 0."""
    try:
        t = float(value)
    except (TypeError, ValueError):
        return None
    return t if math.isfinite(t) and t > 0 else None


def load_config(path: str | Path, model: str | None = None, estimator: str | None = None) -> EarlyStopConfig:
    """Read an exported config; with ``model``/``estimator`` given, refuse one made for others."""
    p = Path(path)
    if not p.is_file():
        raise EarlyStopError(f"{p}: no such threshold file")
    cfg = EarlyStopConfig.from_json(p.read_text(encoding="utf-8"), p.name)
    if model is not None or estimator is not None:
        cfg.check_compatible(model if model is not None else cfg.model,
                             estimator if estimator is not None else cfg.estimator)
    return cfg


# --------------------------------------------------------------------------- replay


@dataclass
class ReplayResult:
    trace_id: int
    stop: int            # index of the last kept token
    answer: str          # what the model wrote after the cue
    pred: str | None
    correct: bool | None


def replay_items(store, run_id: int, stops: dict[int, int]) -> list[dict]:
    """What a replay needs per stopped trace: prompt text, kept token ids, gold answer.

    Raises EarlyStopError when the run has no token ids (an uploaded text run)."""
    if not stops:
        return []
    ids = sorted(int(t) for t in stops)
    tr = store.prompts(ids)
    tok = store.token_ids(ids)
    if (tok["token_id"] < 0).any() or tok["token_id"].isna().any():
        raise EarlyStopError(f"run {run_id} has no token ids (an uploaded run?): it cannot be replayed; "
                             "the accuracy shown is an estimate")
    by = {t: g["token_id"].to_numpy(np.int64) for t, g in tok.groupby("trace_id")}
    out = []
    for r in tr.itertuples():
        s = int(stops[int(r.trace_id)])
        out.append({"trace_id": int(r.trace_id), "prompt": r.prompt, "gold": r.gold_answer,
                    "ids": by.get(int(r.trace_id), np.empty(0, np.int64))[: s + 1], "stop": s})
    return out


def replay_accuracy(model: StopModel, tau: float, results: Sequence[ReplayResult]) -> dict:
    """Accuracy at ``tau`` with replayed answers for the traces that stop early.

    Traces that do not stop keep their full-trace grade; stopped traces use the replayed
    grade (ungraded replays leave the accuracy's denominator). ``coverage`` is the share of
    stopped traces that have a replay (1.0 when the replay finished).
    """
    rt = model.rt
    stops = model.stops(tau)
    by = {r.trace_id: r for r in results}
    ok = n = covered = n_stopped = 0
    for i, tid in enumerate(rt.trace_ids.tolist()):
        if stops[i] >= 0:
            n_stopped += 1
            r = by.get(tid)
            if r is None or r.stop != stops[i]:
                continue
            covered += 1
            if r.correct is None:
                continue
            n += 1
            ok += bool(r.correct)
        elif not np.isnan(rt.correct[i]):
            n += 1
            ok += rt.correct[i] > 0.5
    return {"accuracy": ok / n if n else float("nan"), "graded": n, "stopped": n_stopped,
            "replayed": covered, "coverage": covered / n_stopped if n_stopped else 1.0}
