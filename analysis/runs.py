"""A stored run as a whole: its details and settings, its traces and their tokens, deleting it
(the Runs page, the explorer's token view and ``thinkscope show / traces / tokens / delete``)."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from .errors import RunError


@dataclass(frozen=True)
class RunInfo:
    """One row of ``Store.runs`` with its settings decoded."""

    run_id: int
    name: str
    source: str | None
    model: str | None
    status: str
    n_traces: int
    n_tokens: int
    settings: dict


def run_info(store, run_id: int) -> RunInfo:
    """The run ``run_id``; RunError naming the store when there is none."""
    from .store import json_settings
    runs = store.runs()
    row = runs[runs["run_id"] == int(run_id)]
    if row.empty:
        raise RunError(f"no run {run_id} in {store.path}")
    r = row.iloc[0]
    return RunInfo(int(r["run_id"]), str(r["name"]), None if pd.isna(r["source"]) else str(r["source"]),
                   None if pd.isna(r["model"]) else str(r["model"]), str(r["status"]), int(r["n_traces"]),
                   int(r["n_tokens"]), json_settings(r["settings"]))


def delete_run(store, run_id: int) -> RunInfo:
    """Remove a run and all its traces from the store (one transaction); return what it was."""
    info = run_info(store, run_id)
    store.delete_run(info.run_id)
    return info


def run_traces(store, run_id: int) -> pd.DataFrame:
    """The traces of a run (checked to exist) with their sequence entropies by phase (nats,
    each trace's best estimator)."""
    run_info(store, run_id)
    return store.traces(int(run_id))


def check_trace(store, run_id: int, trace_id: int) -> None:
    """RunError unless trace ``trace_id`` is in run ``run_id``."""
    owner = store.trace_run(int(trace_id))
    if owner is None:
        raise RunError(f"no trace {trace_id} in {store.path}")
    if owner != int(run_id):
        raise RunError(f"trace {trace_id} belongs to run {owner}, not run {run_id}")


def trace_tokens(store, run_id: int, trace_id: int, alternatives: int = 5) -> pd.DataFrame:
    """One row per token of a trace of run ``run_id``: position, token, logprob, the entropy
    of every estimator it has (nats) and its first ``alternatives`` top-k alternatives as
    'text (probability)' (what the explorer shows on hover)."""
    import numpy as np

    from .store import ENTROPY_COLUMNS
    check_trace(store, run_id, trace_id)
    tok = store.tokens(int(trace_id), with_alternatives=alternatives > 0)
    out = pd.DataFrame({"position": tok["pos"].astype(int), "token": tok["token"].fillna(""),
                        "logprob": tok["logprob"].astype(float)})
    for est, col in ENTROPY_COLUMNS.items():
        if col in tok and tok[col].notna().any():
            out[f"H_{est}"] = tok[col].astype(float)
    if alternatives > 0 and "topk_tokens" in tok:
        def alts(texts, lps):
            if texts is None or lps is None:
                return ""
            pairs = [(t, lp) for t, lp in zip(texts, lps) if lp is not None and np.isfinite(lp)][:alternatives]
            return " | ".join(f"{t} ({np.exp(lp):.3f})" for t, lp in pairs)
        shown = [alts(t, lp) for t, lp in zip(tok["topk_tokens"], tok["topk_logprobs"])]
        if any(shown):  # a trace without alternatives gets no empty column
            out["alternatives"] = shown
    return out
