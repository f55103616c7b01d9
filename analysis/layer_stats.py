"""Analysis of per-layer records (see :mod:`analysis.layers`): the anchor/explorer split,
difficulty bins and group profiles. Plain numpy and pandas, so that the dashboard can use
them without importing torch (seconds on a cold start).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

#: labels of the attention-entropy split (arXiv 2605.07660)
SPLIT_LABELS = ("anchor", "middle", "explorer")


def split_anchors_explorers(attn_entropy: np.ndarray, percent: float = 20.0) -> np.ndarray:
    """Label tokens by their attention entropy within one trace (arXiv 2605.07660).

    Tokens at or below the ``percent``-th percentile are anchors (concentrated support),
    those at or above the (100 - percent)-th are explorers (diffuse support), the rest
    'middle'; NaN values are 'none'. The paper splits response tokens this way; it fixes no
    percentile, so it is a parameter.
    """
    a = np.asarray(attn_entropy, dtype=np.float64)
    out = np.full(a.shape, "none", dtype=object)
    ok = np.isfinite(a)
    if not ok.any():
        return out
    if not 0 < percent <= 50:
        raise ValueError(f"percent must be in (0, 50], got {percent}")
    lo, hi = np.percentile(a[ok], [percent, 100 - percent])
    out[ok] = "middle"
    out[ok & (a >= hi)] = "explorer"
    out[ok & (a <= lo)] = "anchor"  # a tie of lo and hi (constant values) counts as anchor
    return out


def difficulty_bins(traces: pd.DataFrame) -> pd.Series:
    """A difficulty label per trace: the problem set's level when given, else the pass rate.

    Pass-rate buckets follow ARES (arXiv 2510.08457): the share of correct samples of the
    same problem, >= 2/3 easy, >= 1/3 medium, else hard. Traces with neither: 'unknown'.
    """
    out = pd.Series("unknown", index=traces.index, dtype=object)
    if "level" in traces and traces["level"].notna().any():
        has = traces["level"].notna()
        out[has] = traces.loc[has, "level"].map(lambda v: f"level {v:g}")
        return out
    if {"problem_id", "correct"} <= set(traces.columns):
        graded = traces["correct"].notna() & traces["problem_id"].notna()
        if graded.any():
            rate = traces[graded].groupby("problem_id")["correct"].mean()
            r = traces.loc[graded, "problem_id"].map(rate)
            out[graded] = np.where(r >= 2 / 3, "easy", np.where(r >= 1 / 3, "medium", "hard"))
    return out


def profile_groups(profiles: pd.DataFrame, groups: pd.Series, layers: Sequence[int]) -> pd.DataFrame:
    """Mean entropy profile per group of traces with a 95% interval over traces.

    ``profiles``: Store.layer_profiles rows (trace_id, k, mean); ``groups``: a label per
    trace_id; ``layers``: the layer number of each list index k. Each trace counts once
    (its mean over tokens), so long traces do not dominate. Returns group, layer, mean,
    lo, hi (mean -/+ 1.96 standard errors; NaN for a single trace), n (traces).
    """
    if profiles.empty:
        return pd.DataFrame(columns=["group", "layer", "mean", "lo", "hi", "n"])
    df = profiles[["trace_id", "k", "mean"]].copy()
    df["group"] = df["trace_id"].map(groups)
    df = df.dropna(subset=["group", "mean"])
    layer_of = dict(enumerate(layers))
    df["layer"] = df["k"].map(layer_of)
    agg = df.groupby(["group", "layer"], sort=True)["mean"].agg(["mean", "std", "count"]).reset_index()
    half = 1.96 * agg["std"] / np.sqrt(agg["count"])
    return pd.DataFrame({"group": agg["group"], "layer": agg["layer"], "mean": agg["mean"],
                         "lo": agg["mean"] - half, "hi": agg["mean"] + half, "n": agg["count"]})


#: per-layer entropy fields and what they are
PROFILE_FIELDS = {"lens_entropy": "logit-lens entropy", "attn_entropy": "attention entropy (mean over heads)",
                  "attn_entropy_norm": "attention entropy / ln(visible positions)"}
GROUPINGS = ("trace", "difficulty", "correct")


def run_profiles(store, run_id: int, field: str = "lens_entropy", by: str = "trace") -> pd.DataFrame:
    """Mean per-layer profile of a run's traces with layer records, grouped ``by`` trace,
    difficulty (level, else pass-rate bucket) or correctness (the Layers page's comparison):
    group, layer (1-based model layer), mean, lo, hi (95% interval over traces), n."""
    import json

    from .errors import ThinkscopeError
    if field not in PROFILE_FIELDS:
        raise ThinkscopeError(f"unknown layer field {field!r}; use {', '.join(PROFILE_FIELDS)}")
    if by not in GROUPINGS:
        raise ThinkscopeError(f"unknown grouping {by!r}; use {', '.join(GROUPINGS)}")
    ids = store.layer_trace_ids(int(run_id))
    if not ids:
        raise ThinkscopeError(f"run {run_id} has no per-layer records (generate with --logit-lens or "
                              "--attention-entropy)")
    traces = store.traces(int(run_id))
    traces = traces[traces["trace_id"].isin(ids)].reset_index(drop=True)
    prof = store.layer_profiles(int(run_id), field)
    meta = traces["metadata"].iloc[0] if "metadata" in traces and len(traces) else None
    info = (json.loads(meta) if isinstance(meta, str) else meta or {}).get("layer_info", {})
    n_k = int(prof["k"].max()) + 1 if len(prof) else 0
    layers = info.get("lens_layers" if field == "lens_entropy" else "attn_layers") or list(range(1, n_k + 1))
    return profile_groups(prof, group_labels(traces, by), layers)


def group_labels(traces: pd.DataFrame, by: str) -> pd.Series:
    """A group label per trace_id: 'trace N', its difficulty bin (``difficulty_bins``) or
    'correct'/'incorrect' (ungraded traces left out)."""
    ids = traces["trace_id"].astype(int)
    if by == "trace":
        return pd.Series([f"trace {t}" for t in ids], index=ids)
    if by == "difficulty":
        return pd.Series(difficulty_bins(traces).values, index=ids)
    return pd.Series(traces["correct"].map({True: "correct", False: "incorrect"}).values, index=ids).dropna()


def trace_anchors(store, run_id: int, trace_id: int, layer: int | None = None, normalised: bool = True,
                  percent: float = 20.0) -> tuple[pd.DataFrame, str, str]:
    """The Layers page's anchor/explorer split of one trace: per token its position, token,
    attention entropy (mean over heads, of ``layer`` or of every layer when None; divided by
    ln(visible positions) when ``normalised``), group (``split_anchors_explorers``) and token
    entropy (nats). Returns (table, attention quantity's name, token entropy estimator)."""
    import json

    from .errors import ThinkscopeError
    from .runs import check_trace
    from .store import ENTROPY_COLUMNS
    check_trace(store, run_id, trace_id)
    lay = store.token_layers(int(trace_id))
    col = "attn_entropy_norm" if normalised else "attn_entropy"
    if col not in lay or not len(lay) or lay[col].isna().all():
        raise ThinkscopeError(f"trace {trace_id} has no attention entropy per layer (generate with "
                              "--attention-entropy)")
    a = np.stack([np.asarray(v, np.float64) for v in lay[col]])
    meta = store.trace(int(trace_id))["metadata"]
    info = (json.loads(meta) if isinstance(meta, str) else meta or {}).get("layer_info", {})
    layer_ids = info.get("attn_layers") or list(range(1, a.shape[1] + 1))
    if layer is None:
        with np.errstate(all="ignore"):
            values = np.nanmean(a, axis=1)
        where = "mean over heads and layers"
    elif layer in layer_ids:
        values, where = a[:, layer_ids.index(layer)], f"mean over heads, layer {layer}"
    else:
        raise ThinkscopeError(f"layer {layer} has no attention record; recorded: {layer_ids[0]}..{layer_ids[-1]}")
    tok = store.tokens(int(trace_id), with_alternatives=False)
    est = "full_t1" if "entropy_full_t1" in tok and tok["entropy_full_t1"].notna().any() else "best"
    h = tok[ENTROPY_COLUMNS.get(est, "entropy")].to_numpy(np.float64, na_value=np.nan)
    name = ("attention entropy / ln(visible positions)" if normalised else "attention entropy") + f" ({where})"
    table = pd.DataFrame({"position": np.arange(len(values)), "token": tok["token"].fillna("").tolist()[:len(values)],
                          "group": split_anchors_explorers(values, percent), "attention": values,
                          "token_entropy": h[:len(values)]})
    return table, name, est
