"""Shared dashboard state: the store, cached queries, and the units toggle.

Cached loaders take the store path and its version (which changes whenever the file does)
as ordinary arguments, so a cache entry can never outlive the data it was read from.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from analysis import metrics
from analysis.store import Store, default_store_path


def store() -> Store:
    return Store(st.session_state.get("store.path") or default_store_path())


def sidebar_store() -> None:
    """Sidebar: the store in use and the display unit."""
    s = store()
    with st.sidebar:
        st.caption(f"Store: `{s.path}`")
        st.radio("Entropy unit", ["nats", "bits"], horizontal=True, key="unit",
                 help="Stored in nats; bits = nats / ln 2.")


def unit() -> str:
    return st.session_state.get("unit", "nats")


def convert(values, to_unit: str | None = None):
    """nats -> the display unit."""
    u = to_unit or unit()
    v = np.asarray(values, dtype=np.float64)
    return v / metrics.LN2 if u == "bits" else v


@st.cache_data(show_spinner=False, max_entries=64)
def runs(path: str, version: int) -> pd.DataFrame:
    return Store(path).runs()


@st.cache_data(show_spinner=False, max_entries=64)
def traces(path: str, version: int, run_id: int) -> pd.DataFrame:
    return Store(path).traces(run_id)


@st.cache_data(show_spinner=False, max_entries=32)
def tokens(path: str, version: int, trace_id: int) -> pd.DataFrame:
    return Store(path).tokens(trace_id)


@st.cache_data(show_spinner=False, max_entries=16)
def run_window_entropy(path: str, version: int, run_id: int, estimator: str, w: int) -> np.ndarray:
    return Store(path).run_window_entropy(run_id, estimator, w)


def cached(fn, *args):
    """Call a cached loader with the current store's path and version."""
    s = store()
    return fn(str(s.path), s.version(), *args)


def run_label(row) -> str:
    return f"#{row.run_id} · {row.name} ({int(row.n_traces)} traces)"


def select_run(key: str, df: pd.DataFrame | None = None) -> int | None:
    """A run picker shared by pages; remembers the choice under ``key``."""
    df = cached(runs) if df is None else df
    if df.empty:
        st.info("The store has no runs yet. Load the demo traces with `thinkscope demo`, "
                "generate with `thinkscope generate`, or upload a trace file.")
        return None
    ids = df["run_id"].tolist()
    labels = {r.run_id: run_label(r) for r in df.itertuples()}
    default = st.session_state.get("selected.run_id")
    index = ids.index(default) if default in ids else len(ids) - 1
    run_id = st.selectbox("Run", ids, index=index, format_func=labels.get, key=key)
    st.session_state["selected.run_id"] = run_id
    return run_id


@st.cache_data(show_spinner=False, max_entries=16)
def trace_stats_all(path: str, version: int) -> pd.DataFrame:
    """Sequence entropy (phase 'all', each trace's best estimator) of every trace."""
    return Store(path).query("""
        SELECT t.run_id, t.trace_id, s.estimator, s.mean_entropy
        FROM traces t JOIN trace_stats s ON s.trace_id = t.trace_id
             AND s.estimator = t.estimator AND s.phase = 'all'""")


def trace_label(row, with_entropy: bool = True) -> str:
    """One line describing a trace row of ``Store.traces``: index, problem, level, grade, size."""
    bits = [f"#{int(row.idx)}"]
    if isinstance(row.problem_id, str):
        bits.append(row.problem_id)
    if pd.notna(row.level):
        bits.append(f"level {row.level:g}")
    if pd.notna(row.correct):
        bits.append("✓ correct" if row.correct else "✗ wrong")
    bits.append(f"{int(row.n_tokens)} tokens")
    if with_entropy and pd.notna(getattr(row, "mean_entropy", None)):
        bits.append(f"H̄ {convert(row.mean_entropy):.3f} {unit()}")
    return " · ".join(bits)


def select_trace(traces: pd.DataFrame, key: str, with_entropy: bool = True):
    """A trace picker over ``traces`` that follows the explorer's current trace."""
    ids = traces["trace_id"].tolist()
    by_id = {r.trace_id: r for r in traces.itertuples()}
    wanted = st.session_state.get("explorer.trace_id")
    return st.selectbox("Trace", ids, index=ids.index(wanted) if wanted in ids else 0,
                        format_func=lambda t: trace_label(by_id[t], with_entropy), key=key)
