"""Difficulty bins and the U-shape of sequence entropy (DiffAdapt, arXiv 2510.19669).

DiffAdapt reports mean trace entropy that is high on easy problems, lower on medium ones and
high again on hard ones (a 22-25% drop from easy to medium). Difficulty comes either from a
level the problem set gives, or from the empirical pass rate over the n samples of the same
problem (ARES, arXiv 2510.08457: pass rate >= 2/3 easy, >= 1/3 medium, else hard).

Everything here is vectorised over a per-trace DataFrame (one row per trace, from
``Store.trace_stats``); entropies are in nats.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import pandas as pd

from .errors import DifficultyError
from . import metrics
from .metrics import PHASES

#: ARES buckets on the pass rate over n samples (arXiv 2510.08457): [lower edge, label]
ARES_BUCKETS = ((2 / 3, "easy"), (1 / 3, "medium"), (0.0, "hard"))
AXES = ("level", "pass_rate")

#: two-sided 95% Student t quantiles for 1..30 degrees of freedom (no scipy dependency)
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
         2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
         2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def t975(dof: np.ndarray) -> np.ndarray:
    """The 97.5% quantile of Student's t (for a two-sided 95% interval), NaN for dof < 1.

    Exact table to 30 degrees of freedom, then the Cornish-Fisher expansion (error < 1e-3).
    """
    d = np.asarray(dof, dtype=np.float64)
    z = 1.959963984540054
    with np.errstate(divide="ignore", invalid="ignore"):
        cf = z + (z ** 3 + z) / (4 * d) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * d ** 2)
    table = np.asarray(_T975)
    idx = np.clip(np.nan_to_num(d, nan=1.0), 1, 30).astype(np.int64) - 1
    out = np.where(d <= 30, table[idx], cf)
    return np.where(d >= 1, out, np.nan)


def trace_frame(stats: pd.DataFrame, estimator: str, phase: str = "all") -> pd.DataFrame:
    """One row per trace with its sequence entropy for ``estimator`` and ``phase``.

    ``stats`` is ``Store.trace_stats(run_ids)``. Columns out: run_id, trace_id, problem_id,
    sample_idx, level, correct, n_tokens, entropy (nats), n (tokens in the phase).
    """
    if phase not in PHASES:
        raise DifficultyError(f"unknown phase {phase!r}; use one of {', '.join(PHASES)}")
    d = stats[(stats["estimator"] == estimator) & (stats["phase"] == phase)]
    cols = ["run_id", "trace_id", "problem_id", "sample_idx", "level", "correct", "n_tokens", "n"]
    out = d[cols].copy()
    out["entropy"] = d["mean_entropy"].astype(np.float64)
    return out.reset_index(drop=True)


def pass_rates(df: pd.DataFrame) -> pd.DataFrame:
    """Per (run_id, problem_id): samples, graded samples, correct ones and the pass rate
    (correct / graded; NaN when no sample of the problem could be graded)."""
    if df["problem_id"].isna().all():
        raise DifficultyError("these traces have no problem ids, so there is no pass rate over samples; "
                              "generate with --problems, or use the level axis")
    return metrics.pass_rates(df, ["run_id", "problem_id"], dropna=True)


@dataclass(frozen=True)
class Binning:
    """How traces are put into difficulty bins.

    axis 'level': each distinct level is a bin, or ``edges`` group levels into ranges
    [e0, e1), [e1, e2), ... (last one closed). axis 'pass_rate': ARES buckets by default,
    or ``edges`` on the pass rate in [0, 1] (bins ordered easy -> hard, i.e. high -> low pass
    rate). ``labels`` name the bins made by ``edges``.
    """

    axis: str = "level"
    edges: tuple[float, ...] | None = None
    labels: tuple[str, ...] | None = None
    min_samples: int = 1            # pass-rate axis: problems with fewer graded samples are left out

    def __post_init__(self) -> None:
        if self.axis not in AXES:
            raise DifficultyError(f"unknown difficulty axis {self.axis!r}; use {' or '.join(AXES)}")
        if self.edges is not None:
            e = list(self.edges)
            if len(e) < 2 or any(b <= a for a, b in zip(e, e[1:])):
                raise DifficultyError(f"bin edges must be at least two increasing numbers, got {e}")
            if self.labels is not None and len(self.labels) != len(e) - 1:
                raise DifficultyError(f"{len(e) - 1} bins need {len(e) - 1} labels, got {len(self.labels)}")


def parse_edges(text: str | None, what: str = "bin edges") -> tuple[float, ...] | None:
    """'0, 0.5, 1' or '0; 0.5; 1' -> (0.0, 0.5, 1.0); empty or None -> None (the default bins).
    A part that is not a number is a DifficultyError naming it."""
    if not text or not text.strip():
        return None
    parts = [p.strip() for p in text.replace(";", ",").split(",") if p.strip()]
    out = []
    for p in parts:
        try:
            x = float(p)
        except ValueError:
            x = float("nan")
        if x != x or x in (float("inf"), float("-inf")):
            raise DifficultyError(f"{what} {text!r}: {p!r} is not a number; expected numbers separated by "
                                  "commas or semicolons, e.g. 0, 0.5, 1")
        out.append(x)
    return tuple(out) or None


def parse_labels(text: str | None) -> tuple[str, ...] | None:
    """'easy, hard' (commas or semicolons) -> ('easy', 'hard'); empty or None -> None."""
    if not text:
        return None
    return tuple(x.strip() for x in text.replace(";", ",").split(",") if x.strip()) or None


def _edge_labels(edges: Sequence[float]) -> list[str]:
    return [f"[{a:g}, {b:g}{']' if i == len(edges) - 2 else ')'}" for i, (a, b) in enumerate(zip(edges, edges[1:]))]


def assign_bins(df: pd.DataFrame, binning: Binning = Binning()) -> pd.DataFrame:
    """``df`` (from ``trace_frame``) with columns ``bin`` (label), ``bin_order`` (0 = easiest)
    and, on the pass-rate axis, ``pass_rate``. Traces that fall in no bin get bin NaN."""
    out = df.copy()
    if binning.axis == "level":
        if out["level"].isna().all():
            raise DifficultyError("these traces have no difficulty level; use the pass-rate axis "
                                  "(needs several graded samples per problem)")
        x = out["level"].astype(np.float64)
        if binning.edges is None:
            levels = np.sort(x.dropna().unique())
            order = pd.Series(np.arange(len(levels)), index=levels)
            out["bin_order"] = x.map(order)
            out["bin"] = x.map(lambda v: f"level {v:g}" if pd.notna(v) else np.nan)
        else:
            _cut(out, x.to_numpy(), binning, ascending=True)
        return out
    pr = pass_rates(out)
    if not (pr["graded"] >= 2).any():
        raise DifficultyError("pass rates need several graded samples per problem, and no problem here has more "
                              "than one (a pass rate over one sample is 0 or 1): generate with --samples 4 or "
                              "more, or use the level axis")
    pr = pr[pr["graded"] >= binning.min_samples]
    out = out.merge(pr[["run_id", "problem_id", "pass_rate"]], on=["run_id", "problem_id"], how="left")
    x = out["pass_rate"].to_numpy(np.float64)
    if binning.edges is None:
        order = np.full(x.shape, np.nan)
        labels = np.full(x.shape, np.nan, dtype=object)
        done = np.isnan(x)
        for k, (lo, name) in enumerate(ARES_BUCKETS):
            hit = ~done & (x >= lo - 1e-12)
            order[hit], labels[hit] = k, name
            done |= hit
        out["bin_order"], out["bin"] = order, labels
    else:
        _cut(out, x, binning, ascending=False)
    return out


def _cut(out: pd.DataFrame, x: np.ndarray, binning: Binning, ascending: bool) -> None:
    edges = np.asarray(binning.edges, dtype=np.float64)
    labels = list(binning.labels or _edge_labels(edges))
    k = np.searchsorted(edges, x, side="right") - 1
    k = np.where(x == edges[-1], len(edges) - 2, k)  # the last bin is closed
    ok = ~np.isnan(x) & (k >= 0) & (k < len(edges) - 1)
    order = k if ascending else (len(edges) - 2 - k)  # pass rate: high (easy) first
    out["bin_order"] = np.where(ok, order, np.nan)
    out["bin"] = np.where(ok, np.asarray(labels, dtype=object)[np.clip(k, 0, len(labels) - 1)], np.nan)


def bin_summary(binned: pd.DataFrame) -> pd.DataFrame:
    """Per (run_id, bin): count, mean sequence entropy (nats) with a 95% t-interval
    (ci_low, ci_high), standard deviation, accuracy over graded traces (NaN if none), graded,
    mean length in tokens. Sorted by run and bin order (easiest first)."""
    d = binned[binned["bin"].notna() & binned["entropy"].notna()]
    d = d.assign(_graded=d["correct"].notna(), _ok=d["correct"].fillna(False).astype(bool))
    g = d.groupby(["run_id", "bin_order", "bin"], sort=True)
    s = g.agg(count=("entropy", "size"), mean_entropy=("entropy", "mean"), sd=("entropy", "std"),
              graded=("_graded", "sum"), correct=("_ok", "sum"), mean_tokens=("n_tokens", "mean"))
    s = s.reset_index()
    half = t975(s["count"].to_numpy() - 1) * s["sd"].to_numpy() / np.sqrt(s["count"].to_numpy())
    s["ci_low"], s["ci_high"] = s["mean_entropy"] - half, s["mean_entropy"] + half
    s["accuracy"] = s["correct"] / s["graded"].where(s["graded"] > 0)
    return s


@dataclass
class UShape:
    """Per-run verdict on the U-shape, with the easy -> medium entropy change.

    ``change_pct`` = 100 (H_medium - H_easy) / H_easy; negative is a drop (DiffAdapt: -22..-25%).
    ``u_shape`` is True when the lowest bin is interior and both end bins' 95% intervals lie
    above its interval; None when there are fewer than three bins.
    """

    run_id: int
    easy: str | None
    medium: str | None
    change_pct: float
    u_shape: bool | None
    lowest: str | None
    notes: list[str] = field(default_factory=list)


def u_shape(summary: pd.DataFrame, run_id: int, easy: str | None = None, medium: str | None = None) -> UShape:
    """The easy -> medium change and the U-shape verdict for one run of a ``bin_summary``.

    Default bins: 'easy' and 'medium' when present (ARES buckets); otherwise the easiest bin
    and the middle bin of the ordered bins (the lower one of two middles).
    """
    s = summary[summary["run_id"] == run_id].sort_values("bin_order").reset_index(drop=True)
    if s.empty:
        return UShape(run_id, None, None, float("nan"), None, None, ["no binned traces"])
    labels = s["bin"].tolist()
    if easy is None:
        easy = "easy" if "easy" in labels else labels[0]
    if medium is None:
        medium = "medium" if "medium" in labels else labels[(len(labels) - 1) // 2]
    notes = []
    he = s.loc[s["bin"] == easy, "mean_entropy"]
    hm = s.loc[s["bin"] == medium, "mean_entropy"]
    change = float("nan")
    if len(he) and len(hm) and he.iloc[0] > 0 and easy != medium:
        change = 100.0 * (hm.iloc[0] - he.iloc[0]) / he.iloc[0]
    lowest_i = int(s["mean_entropy"].to_numpy().argmin())
    verdict = None
    if len(s) >= 3:
        low = s.iloc[lowest_i]
        interior = 0 < lowest_i < len(s) - 1
        ends_above = bool(s.iloc[0]["ci_low"] > low["ci_high"] and s.iloc[-1]["ci_low"] > low["ci_high"])
        verdict = bool(interior and ends_above)
        if interior and not ends_above:
            notes.append("the lowest bin is interior but the 95% intervals overlap: not significant")
        if not interior:
            notes.append(f"the lowest entropy is at an end bin ({low['bin']}), not in the middle")
    else:
        notes.append("fewer than three bins: no U-shape to test")
    small = s.loc[s["count"] < 5, "bin"].tolist()
    if small:
        notes.append(f"bins with fewer than 5 traces: {', '.join(map(str, small))}")
    return UShape(run_id, easy, medium, change, verdict, labels[lowest_i], notes)


def difficulty_table(stats: pd.DataFrame, estimator: str, phase: str = "all",
                     binning: Binning = Binning()) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(binned per-trace frame, per-bin summary) for the runs in ``stats``."""
    df = trace_frame(stats, estimator, phase)
    if df.empty:
        raise DifficultyError(f"no sequence entropies for estimator {estimator!r}, phase {phase!r}")
    binned = assign_bins(df, binning)
    return binned, bin_summary(binned)


def available_estimators(stats: pd.DataFrame) -> list[str]:
    """Estimators with at least one non-NaN sequence entropy, best first."""
    return metrics.best_first(stats.loc[stats["mean_entropy"].notna(), "estimator"].unique())
