"""The signals of a stored run: one row per trace, then their evaluation for "wrong".

Everything is read with the store's verbs (``traces``, ``trace_stats``, ``run_window_entropy``,
``run_token_values``) and computed with numpy over the whole run at once; the statistics are
``analysis.signals``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from . import signals as sig
from .metrics import ESTIMATORS, PHASES, unit_scale
from .store import ENTROPY_COLUMNS, json_settings

#: share of a run's tokens called "high-entropy" (Beyond the 80/20 rule, arXiv 2506.01939)
TOP_SHARE = 0.20
#: window size for window entropy and forking points (ARES, arXiv 2510.08457)
WINDOW = 4
#: per-trace percentiles of window entropy offered as signals
WINDOW_PERCENTILES = (50, 90, 95)


_IN_NATS = re.compile(r"(\d+(?:\.\d+)?) nats\b")


def in_unit(label: str, unit: str) -> str:
    """A signal's label (built in nats) with its entropy thresholds in ``unit``."""
    if unit == "nats":
        return label
    scale = unit_scale(unit)
    return _IN_NATS.sub(lambda m: f"{float(m.group(1)) * scale:.3f} {unit}", label)


@dataclass
class RunSignals:
    """Per-trace signal values of a run, their specs, and what the run allows."""

    run_id: int
    frame: pd.DataFrame                       # one row per trace: ids, grades, every signal
    specs: dict[str, sig.SignalSpec]
    estimator: str                            # the run's best estimator (token-level signals)
    samples_per_problem: float                # mean number of samples per problem
    high_threshold: float                     # nats: the run's top-20 % token entropy threshold
    fork_threshold: float                     # nats: the run's top-20 % window entropy threshold
    notes: list[str] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        return list(self.specs)

    def graded(self) -> pd.DataFrame:
        return self.frame[self.frame["correct"].notna()].reset_index(drop=True)


def grouped_percentile(values: np.ndarray, groups: np.ndarray, n_groups: int, q: float) -> np.ndarray:
    """The ``q``-th percentile (linear interpolation, as numpy's default) of ``values`` within
    each group 0..n_groups-1, NaN values left out; NaN for a group with none. One sort for all."""
    ok = ~np.isnan(values)
    v, g = values[ok], groups[ok]
    order = np.lexsort((v, g))
    v, g = v[order], g[order]
    counts = np.bincount(g, minlength=n_groups)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    out = np.full(n_groups, np.nan)
    has = counts > 0
    pos = (counts[has] - 1) * (q / 100.0)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, counts[has] - 1)
    frac = pos - lo
    base = starts[has]
    out[has] = v[base + lo] * (1 - frac) + v[base + hi] * frac
    return out


def _grouped(values: np.ndarray, groups: np.ndarray, n_groups: int, how: str) -> np.ndarray:
    ok = ~np.isnan(values)
    cnt = np.bincount(groups[ok], minlength=n_groups).astype(np.float64)
    if how == "mean":
        s = np.bincount(groups[ok], values[ok], minlength=n_groups)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(cnt > 0, s / cnt, np.nan)
    if how == "max":
        out = np.full(n_groups, -np.inf)
        np.maximum.at(out, groups[ok], values[ok])
        return np.where(cnt > 0, out, np.nan)
    raise ValueError(how)


def grading_tolerance(settings) -> tuple[float, float]:
    """(rel_tol, abs_tol) of the rule the run was graded with (the grader's defaults otherwise)."""
    g = json_settings(settings).get("grading") or {}
    return float(g.get("rel_tol", 1e-6)), float(g.get("abs_tol", 1e-9))


def run_signals(store, run_id: int) -> RunSignals:
    """Every signal of every trace of a run (graded or not; the evaluation keeps the graded).

    Token-level signals use the run's best estimator; mean entropies come for every estimator
    and phase the run has. Semantic entropy and self-consistency need several samples of a
    problem: with one sample per problem they are NaN and a note says so.
    """
    run_id = int(run_id)
    tr = store.traces(run_id)
    if tr.empty:
        raise sig.SignalError(f"run {run_id} has no traces")
    tr = tr.sort_values("trace_id").reset_index(drop=True)
    runs = store.runs()
    settings = runs.loc[runs["run_id"] == run_id, "settings"]
    rel_tol, abs_tol = grading_tolerance(settings.iloc[0] if len(settings) else None)
    est = str(tr["estimator"].mode().iloc[0])
    frame = pd.DataFrame({"trace_id": tr["trace_id"].astype(np.int64), "idx": tr["idx"],
                          "problem_id": tr["problem_id"], "sample_idx": tr["sample_idx"], "level": tr["level"],
                          "correct": tr["correct"].astype("boolean"), "pred_answer": tr["pred_answer"],
                          "n_tokens": tr["n_tokens"].astype(np.int64)})
    specs: dict[str, sig.SignalSpec] = {}
    notes: list[str] = []

    # sequence entropy per estimator and phase (trace_stats), EPR among them
    stats = store.trace_stats([run_id])
    if not stats.empty:
        wide = stats.pivot_table(index="trace_id", columns=["estimator", "phase"], values="mean_entropy",
                                 aggfunc="first")
        for e in ENTROPY_COLUMNS:
            for ph in PHASES:
                if (e, ph) not in wide.columns:
                    continue
                v = frame["trace_id"].map(wide[(e, ph)]).to_numpy(np.float64)
                if np.isnan(v).all():
                    continue
                name = f"mean_H.{e}.{ph}"
                frame[name] = v
                label = ("EPR (mean epr estimator, whole trace)" if (e, ph) == ("epr", "all")
                         else f"mean token entropy, {e}, {ph} tokens")
                specs[name] = sig.SignalSpec(name, label, "nats")

    tok = store.run_token_values(run_id, "best")
    tid = tok["trace_id"]
    gi = np.searchsorted(frame["trace_id"].to_numpy(), tid)
    n = len(frame)
    h = tok["entropy"]
    high = float("nan")
    fork = float("nan")
    if h.size and not np.isnan(h).all():
        win = store.run_window_entropy(run_id, "best", WINDOW)
        high = float(np.nanquantile(h, 1 - TOP_SHARE))
        fork = float(np.nanquantile(win, 1 - TOP_SHARE)) if not np.isnan(win).all() else float("nan")
        frame["window_H.max"] = _grouped(win, gi, n, "max")
        specs["window_H.max"] = sig.SignalSpec("window_H.max", f"window entropy maximum (w={WINDOW}, {est})", "nats")
        for q in WINDOW_PERCENTILES:
            name = f"window_H.p{q}"
            frame[name] = grouped_percentile(win, gi, n, q)
            specs[name] = sig.SignalSpec(name, f"window entropy {q}th percentile (w={WINDOW}, {est})", "nats")
        ok = ~np.isnan(h)
        cnt = np.bincount(gi[ok], minlength=n)
        above = np.bincount(gi[ok], (h[ok] >= high).astype(np.float64), minlength=n)
        with np.errstate(invalid="ignore", divide="ignore"):
            frame["high_share"] = np.where(cnt > 0, above / cnt, np.nan)
        specs["high_share"] = sig.SignalSpec(
            "high_share", f"share of tokens with H ≥ {high:.3f} nats (the run's top 20 %, {est})", "fraction")
        if not np.isnan(fork):
            frame["forking_points"] = np.bincount(gi, np.nan_to_num(win, nan=-np.inf) >= fork, minlength=n)
            specs["forking_points"] = sig.SignalSpec(
                "forking_points", f"forking points (window entropy ≥ {fork:.3f} nats, the run's top 20 %)", "count")
    lp = tok["logprob"]
    if lp.size and not np.isnan(lp).all():
        frame["mean_logprob"] = _grouped(lp, gi, n, "mean")
        specs["mean_logprob"] = sig.SignalSpec("mean_logprob", "mean chosen-token logprob (log perplexity × −1)",
                                               "nats", higher_means_wrong=False)
    specs["n_tokens"] = sig.SignalSpec("n_tokens", "length", "tokens")

    se, sc, size = sig.sample_signals(frame["problem_id"].tolist(), frame["pred_answer"].tolist(), rel_tol, abs_tol)
    frame["samples_of_problem"] = size
    per_problem = float(size.mean()) if n else 0.0
    if np.isnan(se).all():
        notes.append("semantic entropy and self-consistency are unavailable: every problem has one sample "
                     "(they compare the answers of several samples of the same problem; generate with --samples N)"
                     if frame["problem_id"].notna().any() else
                     "semantic entropy and self-consistency are unavailable: the traces have no problem ids "
                     "to group their samples by")
    else:
        frame["semantic_entropy"] = se
        frame["self_consistency"] = sc
        specs["semantic_entropy"] = sig.SignalSpec(
            "semantic_entropy", "discrete semantic entropy over extracted answers (unextractable: own class)",
            "nats", level="problem")
        specs["self_consistency"] = sig.SignalSpec(
            "self_consistency", "self-consistency (share of samples in the majority answer)", "fraction",
            higher_means_wrong=False, level="problem")
    return RunSignals(run_id, frame, specs, est, per_problem, high, fork, notes)


def evaluate_run(rs: RunSignals, n_resamples: int = 1000, seed: int = 0) -> sig.Evaluation:
    """AUROC / AUPRC for "wrong" of every signal of a run over its graded traces."""
    g = rs.graded()
    if g.empty:
        raise sig.SignalError(f"run {rs.run_id} has no graded traces: grade it first (thinkscope grade RUN)")
    wrong = ~g["correct"].astype(bool).to_numpy()
    if wrong.all() or not wrong.any():
        raise sig.SignalError(f"run {rs.run_id}: all {len(g)} graded traces are "
                              f"{'wrong' if wrong.all() else 'right'}, so no signal can separate right from wrong")
    groups = g["problem_id"].fillna(pd.Series(np.arange(len(g)), index=g.index).astype(str)).astype(str).to_numpy()
    ev = sig.evaluate_signals({k: g[k].to_numpy(np.float64) for k in rs.specs}, wrong, groups, rs.specs,
                              n_resamples, seed)
    ev.notes = rs.notes + ev.notes
    return ev


def roc_curves(rs: RunSignals, names=None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """ROC curve for "wrong" (false and true positive rates) of each signal over the graded traces,
    oriented as in the evaluation; traces where a signal is NaN are left out of it."""
    g = rs.graded()
    wrong = ~g["correct"].astype(bool).to_numpy()
    out = {}
    for name in names if names is not None else rs.specs:
        x = g[name].to_numpy(np.float64)
        ok = ~np.isnan(x)
        s = x[ok] if rs.specs[name].higher_means_wrong else -x[ok]
        if ok.any() and wrong[ok].any() and not wrong[ok].all():
            fpr, tpr, _ = sig.roc_curve(s, wrong[ok])
            out[name] = (fpr, tpr)
    return out


def roc_table(rs: RunSignals) -> pd.DataFrame:
    """Every signal's ROC points: signal, false_positive_rate, true_positive_rate."""
    parts = [pd.DataFrame({"signal": k, "false_positive_rate": f, "true_positive_rate": t})
             for k, (f, t) in roc_curves(rs).items()]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(
        columns=["signal", "false_positive_rate", "true_positive_rate"])


def calibrate_signal(rs: RunSignals, name: str, fraction: float = 0.5, seed: int = 0, n_bins: int = 10
                     ) -> sig.Calibration:
    """Logistic calibration of one signal on a split of the run's problems (``fraction`` of them
    for the fit), judged on the held-out rest."""
    g = rs.graded()
    groups = g["problem_id"].fillna(g["trace_id"].astype(str)).astype(str).to_numpy()
    mask = sig.split_calibration(groups, fraction, seed)
    return sig.calibrate(g[name].to_numpy(np.float64), g["correct"].astype(bool).to_numpy(), mask, n_bins, name)


def describe_estimators(rs: RunSignals) -> dict[str, str]:
    """Estimator name -> description, for those the run's signals use."""
    used = {k.split(".")[1] for k in rs.specs if k.startswith("mean_H.")} | {rs.estimator}
    return {e: ESTIMATORS[e] for e in ESTIMATORS if e in used}
