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
from dashboard.text import md


def store() -> Store:
    return Store(st.session_state.get("store.path") or default_store_path())


def sidebar_store() -> None:
    """Sidebar: the store in use and the display unit."""
    s = store()
    with st.sidebar:
        st.caption("Store: " + md(s.path))
        st.radio("Entropy unit", list(metrics.UNITS), horizontal=True, key="unit",
                 help="Stored in nats; bits = nats / ln 2.")


def unit() -> str:
    return st.session_state.get("unit", "nats")


def convert(values, to_unit: str | None = None):
    """nats -> the display unit."""
    return metrics.convert(values, to_unit or unit())


# a short ttl: a run whose writer was killed changes status without the file changing
@st.cache_data(show_spinner=False, max_entries=64, ttl=5)
def runs(path: str, version: int) -> pd.DataFrame:
    return Store(path).runs()


@st.cache_data(show_spinner=False, max_entries=64)
def traces(path: str, version: int, run_id: int) -> pd.DataFrame:
    return Store(path).traces(run_id)


@st.cache_data(show_spinner=False, max_entries=64)
def run_settings(path: str, version: int, run_id: int) -> dict:
    return Store(path).run_settings(run_id)


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
    """'#3 · name (12 traces)' for a row of ``Store.runs`` (an itertuples row or a Series)."""
    name = row["name"] if isinstance(row, pd.Series) else row.name  # a Series' .name is its index
    return f"#{row.run_id} · {name} ({int(row.n_traces)} traces)"


# ---------------------------------------------------------------- the shared run and trace
#
# The run and trace a user picked are shared by every page and written to the URL
# (``?run=3&trace=12``), so a link opens the same view. A page's own picker is seeded from
# the shared choice before it is drawn and writes back to it only when the user changes it,
# so a page's default (the newest run, the run with most grades) never becomes the choice
# of the other pages. A URL value this session never wrote is a link being opened (any value
# it wrote is an echo: the browser's URL can lag a run behind, and a page switch carries the
# query string the browser last sent).

SHARED_RUN, SHARED_TRACE = "selected.run_id", "selected.trace_id"
_WRITTEN = "selected.url_written"  # {param: every value this session wrote to the URL}


def _url_int(param: str) -> int | None | str:
    """The URL's integer ``param``; None when absent; the raw text when it is not an integer."""
    raw = st.query_params.get(param)
    if raw is None or raw == "":
        return None
    try:
        return int(raw)
    except ValueError:
        return raw


def _write_url(**values: int | None) -> None:
    written = st.session_state.setdefault(_WRITTEN, {})
    for param, v in values.items():
        if v is None:
            if param in st.query_params:
                del st.query_params[param]
        else:
            if st.query_params.get(param) != str(v):
                st.query_params[param] = str(v)
            written.setdefault(param, set()).add(str(v))


def _from_link(param: str):
    """The URL's value of ``param`` when it comes from a link (not written by this session)."""
    v = _url_int(param)
    if v is None or str(v) in st.session_state.get(_WRITTEN, {}).get(param, ()):
        return None
    return v


def share(run_id: int | None = None, trace_id: int | None = None) -> None:
    """Make a run (and optionally a trace of it) the choice of every page, e.g. before switch_page."""
    if run_id is not None:
        st.session_state[SHARED_RUN] = int(run_id)
    if trace_id is not None:
        st.session_state[SHARED_TRACE] = int(trace_id)
    elif run_id is not None:
        st.session_state.pop(SHARED_TRACE, None)


def forget() -> None:
    """No shared run or trace any more (the run was deleted): pages fall back to their defaults."""
    st.session_state.pop(SHARED_RUN, None)
    st.session_state.pop(SHARED_TRACE, None)


def open_page(page: str, run_id: int, trace_id: int | None = None) -> None:
    """Switch to ``page`` on a run (and trace), shared, with them in the new page's URL."""
    share(run_id, trace_id)
    params = {"run": str(int(run_id))} | ({} if trace_id is None else {"trace": str(int(trace_id))})
    for param, v in params.items():
        st.session_state.setdefault(_WRITTEN, {}).setdefault(param, set()).add(v)
    st.switch_page(page, query_params=params)


@st.cache_data(show_spinner=False, max_entries=64)
def trace_run(path: str, version: int, trace_id: int) -> int | None:
    return Store(path).trace_run(int(trace_id))


@st.cache_data(show_spinner=False, max_entries=16)
def graded_counts(path: str, version: int) -> dict[int, int]:
    """run_id -> number of its traces graded correct or wrong."""
    return Store(path).graded_counts()


def most_graded_run(df: pd.DataFrame) -> int | None:
    """The run with the most graded traces (the newest among equals); None when none is graded."""
    counts = cached(graded_counts)
    best = max(df["run_id"].tolist(), key=lambda r: (counts.get(int(r), 0), int(r)), default=None)
    return None if best is None or counts.get(int(best), 0) == 0 else int(best)


def _take_link() -> None:
    """Adopt a link's run and trace as the shared choice (once, when the URL is opened)."""
    run = _from_link("run")
    trace = _from_link("trace")
    if isinstance(run, str):
        st.warning(f"The link's run {md(repr(run))} is not a run number; showing another run.")
        run = None
    if isinstance(trace, str):
        st.warning(f"The link's trace {md(repr(trace))} is not a trace number.")
        trace = None
    if trace is not None:
        owner = cached(trace_run, trace)
        if owner is None:
            st.warning(f"The link's trace #{trace} is not in this store.")
            trace = None
        elif run is not None and owner != run:
            st.warning(f"The link's trace #{trace} belongs to run #{owner}, not to run #{run}; showing run "
                       f"#{run}.")
            trace = None
        else:
            run = owner
    if run is not None:
        share(run, trace)


def _picked_run(key: str) -> None:
    share(st.session_state[key])


def _picked_trace(key: str, run_id: int) -> None:
    share(run_id, st.session_state[key])


def seed(key: str, value) -> None:
    """Set a widget's value before it is drawn. Always written, never only when it differs: a
    widget drawn anew (another page, other parameters) takes its value from a write, not
    from what session state happens to hold under its key."""
    st.session_state[key] = value


def select_run(key: str, df: pd.DataFrame | None = None, default: int | None = None,
               label: str = "Run") -> int | None:
    """The run picker of a page: shows the shared run (a link's, else the user's last pick), else
    ``default``, else the newest run; a pick becomes the shared run and goes into the URL."""
    df = cached(runs) if df is None else df
    _take_link()
    if df.empty:
        st.info("The store has no runs yet. Load the demo traces with `thinkscope demo`, "
                "generate with `thinkscope generate`, or upload a trace file.")
        return None
    ids = [int(r) for r in df["run_id"]]
    labels = {int(r.run_id): run_label(r) for r in df.itertuples()}
    shared = st.session_state.get(SHARED_RUN)
    if shared is not None and shared not in ids:
        st.warning(f"Run #{shared} is not in this store (deleted, or a link to another store); "
                   "showing another run.")
        forget()
        shared = None
    wanted = shared if shared is not None else default if default in ids else ids[-1]
    seed(key, wanted)
    run_id = st.selectbox(label, ids, format_func=labels.get, key=key, on_change=_picked_run,
                          args=(key,))
    _write_url(run=run_id, trace=st.session_state.get(SHARED_TRACE))
    return run_id


@st.cache_data(show_spinner=False, max_entries=16)
def trace_stats_all(path: str, version: int) -> pd.DataFrame:
    """Sequence entropy (phase 'all', each trace's best estimator) of every trace."""
    return Store(path).best_trace_stats()


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
    """A trace picker over ``traces`` (one run's) showing the shared trace, else the first; a pick
    becomes the shared trace and goes into the URL. Its key is scoped by run and unit, since its
    labels depend on both."""
    ids = [int(t) for t in traces["trace_id"]]
    labels = {int(r.trace_id): trace_label(r, with_entropy) for r in traces.itertuples()}  # in this run's unit
    run_id = int(traces["run_id"].iloc[0])
    scoped = f"{key}.{run_id}.{unit() if with_entropy else ''}"
    shared = st.session_state.get(SHARED_TRACE)
    seed(scoped, shared if shared in ids else ids[0])  # a page may offer a subset (Layers)
    trace_id = st.selectbox("Trace", ids, format_func=labels.get,
                            key=scoped, on_change=_picked_trace, args=(scoped, run_id))
    _write_url(run=run_id, trace=trace_id)
    return trace_id


def valid_selection(key: str, options) -> bool:
    """Keep only the remembered values of a multiselect that are among its current options
    (written back, see ``seed``); False when nothing is remembered (the widget takes its default)."""
    if key not in st.session_state:
        return False
    allowed = set(options)
    seed(key, [v for v in st.session_state[key] if v in allowed])
    return True


def valid_choice(key: str, options) -> None:
    """Forget a widget's remembered value when it is not among its current options."""
    if key in st.session_state and st.session_state[key] not in set(options):
        del st.session_state[key]
