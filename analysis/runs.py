"""A stored run as a whole: its details and settings, its traces, deleting it (the Runs page
and ``thinkscope show / traces / delete``)."""

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
