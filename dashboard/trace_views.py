"""Per-trace results cached for the explorer and Layers pages.

They are ``st.cache_resource`` entries (one shared object, read-only by contract: arrays
are marked non-writeable) rather than ``st.cache_data``, which would unpickle a fresh copy
of, say, an 8,000-token trace's 160,000 alternatives at every rerun. Every loader takes the
store path and its version as arguments, so no entry outlives the file it was read from.
Defined in a module, not in a page, so that they are not re-created at each rerun.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import streamlit as st

from analysis.store import ENTROPY_COLUMNS, Store
from dashboard import charts, state
from dashboard import tokens as token_text


@st.cache_resource(show_spinner=False, max_entries=8)
def trace_text(path: str, version: int, trace_id: int) -> token_text.TraceText:
    return token_text.trace_text(Store(path).tokens(trace_id), ENTROPY_COLUMNS)


def _vmax(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(np.percentile(finite, 99)) if finite.size else 1.0


@st.cache_resource(show_spinner=False, max_entries=16)
def text_html(path: str, version: int, trace_id: int, estimator: str, start: int, stop: int,
              boundary: int) -> tuple[token_text.Markup, float]:
    """The coloured text of tokens start..stop and the colour scale's top (99th percentile of
    the whole trace, nats). The same in either unit: each hover card gives the entropy in nats
    and in bits, and the colours are relative to the scale's top, so a unit toggle leaves the
    text as it is (the browser does not lay out 1,500 spans again)."""
    tt = trace_text(path, version, trace_id)
    values = tt.entropy[estimator]
    vmax = _vmax(values)
    return token_text.token_spans(tt.tokens[start:stop], values[start:stop], vmax, "nats", estimator,
                                  tt.alternatives_in(start, stop), boundary, offset=start,
                                  also=[("bits", state.convert(values[start:stop], "bits"))]), vmax


@st.cache_resource(show_spinner=False, max_entries=8)
def comparison_figure(path: str, version: int, trace_id: int, unit: str):
    """Each top-k estimator against the full entropy (st.plotly_chart copies it; never mutated)."""
    tt = trace_text(path, version, trace_id)
    return charts.estimator_comparison(pd.DataFrame({e: state.convert(v, unit) for e, v in tt.entropy.items()}),
                                       unit)


# ---------------------------------------------------------------- Layers


@dataclass(frozen=True)
class TraceLayers:
    """One trace's per-layer records as [T, L] arrays (nats; None when not recorded), the text
    of each lens layer's top-1 token [T, L], and the tokens with their entropy."""

    tokens: list[str]
    token_h: np.ndarray           # [T] token entropy (nats) of ``token_est``
    token_est: str
    lens: np.ndarray | None
    attn: np.ndarray | None
    attn_norm: np.ndarray | None
    heads: np.ndarray | None
    top1: np.ndarray | None       # [T, L] text of each lens layer's top-1 token

    @property
    def n(self) -> int:
        return len(self.tokens)


def _matrix(df: pd.DataFrame, col: str) -> np.ndarray | None:
    """A list column of equal-length lists -> [T, L] array (None if absent)."""
    if col not in df or df[col].isna().all():
        return None
    return np.stack([np.asarray(v) for v in df[col]])


@st.cache_resource(show_spinner=False, max_entries=8)
def trace_layers(path: str, version: int, trace_id: int) -> TraceLayers:
    store = Store(path)
    lay = store.token_layers(trace_id)
    tok = store.tokens(trace_id, with_alternatives=False)
    tokens = tok["token"].fillna("").astype(str).tolist()
    has_t1 = "entropy_full_t1" in tok and tok["entropy_full_t1"].notna().any()
    token_est = "full_t1" if has_t1 else "best"
    token_h = tok[ENTROPY_COLUMNS.get(token_est, "entropy")].to_numpy(dtype=np.float64, na_value=np.nan)
    arrays = {c: _matrix(lay, c) for c in ("lens_entropy", "attn_entropy", "attn_entropy_norm", "attn_head_entropy")}
    arrays = {c: None if a is None else a.astype(np.float64) for c, a in arrays.items()}
    top1 = None
    if "lens_top1_text" in lay and len(lay) and arrays["lens_entropy"] is not None:
        top1 = np.empty(arrays["lens_entropy"].shape, dtype=object)
        top1[:] = lay["lens_top1_text"].tolist()
    for a in (token_h, top1, *arrays.values()):
        if a is not None:
            a.flags.writeable = False
    return TraceLayers(tokens, token_h, token_est, arrays["lens_entropy"], arrays["attn_entropy"],
                       arrays["attn_entropy_norm"], arrays["attn_head_entropy"], top1)
