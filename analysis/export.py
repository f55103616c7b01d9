"""The project's own export format: a run as Parquet, CSV or JSONL, and back.

Every format holds one row per token with its trace's fields repeated (Parquet keeps
them dictionary-encoded, so that costs little); the run's name, source, model and
settings travel in the Parquet key-value metadata, or in a leading ``{"thinkscope_run":
...}`` JSONL line, or in columns prefixed ``run_`` in CSV. Re-importing an export gives
back the same traces, token for token and value for value.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .store import ENTROPY_COLUMNS, TRACE_META_COLUMNS, Store, StoreError, json_settings
from .trace import Trace, TraceError

FORMAT_NAME = "thinkscope"
FORMAT_VERSION = 1
TRACE_FIELDS = ("trace_idx", "source_id", "prompt", "boundary", *TRACE_META_COLUMNS, "metadata")
TOKEN_FIELDS = ("pos", "token_id", "token", "logprob", *ENTROPY_COLUMNS.values(),
                "topk_ids", "topk_tokens", "topk_logprobs")


def run_frame(store: Store, run_id: int) -> tuple[dict, pd.DataFrame]:
    """(run info, one row per token with trace fields) for a run."""
    runs = store.query("SELECT * FROM runs WHERE run_id = ?", [run_id])
    if runs.empty:
        raise StoreError(f"{store.path}: no run with id {run_id}")
    r = runs.iloc[0]
    info = {"name": r["name"], "source": r["source"], "model": r["model"],
            "settings": json_settings(r["settings"]), "format": FORMAT_NAME, "version": FORMAT_VERSION}
    cols = ", ".join(f"t.{c}" for c in ("source_id", "prompt", "boundary", *TRACE_META_COLUMNS, "metadata"))
    df = store.query(f"""
        SELECT t.idx AS trace_idx, {cols}, k.pos, k.token_id, k.token, k.logprob,
               {", ".join(f"k.{c}" for c in ENTROPY_COLUMNS.values())},
               k.topk_ids, k.topk_logprobs
        FROM traces t JOIN tokens k USING (trace_id)
        WHERE t.run_id = ? ORDER BY t.idx, k.pos""", [run_id])
    vocab = dict(store.query("SELECT token_id, text FROM vocab WHERE run_id = ?", [run_id])
                 .itertuples(index=False, name=None))
    df["topk_tokens"] = [None if ids is None else [vocab.get(int(i), f"<id {int(i)}>") for i in ids]
                         for ids in df["topk_ids"]]
    empty = store.query("SELECT idx FROM traces WHERE run_id = ? AND n_tokens = 0", [run_id])
    if not empty.empty:  # traces without tokens still travel, as one row with pos NULL
        extra = store.query(f"""SELECT t.idx AS trace_idx, {cols} FROM traces t
                                WHERE t.run_id = ? AND t.n_tokens = 0""", [run_id])
        df = pd.concat([df, extra], ignore_index=True).sort_values(["trace_idx", "pos"], na_position="first")
    return info, df.reset_index(drop=True)


def export_run(store: Store, run_id: int, path: str | Path, fmt: str | None = None) -> Path:
    """Write a run to ``path`` as parquet, csv or jsonl (from the suffix when fmt is None)."""
    path = Path(path)
    fmt = (fmt or path.suffix.lstrip(".")).lower()
    info, df = run_frame(store, run_id)
    if fmt == "parquet":
        table = pa.Table.from_pandas(df, preserve_index=False)
        table = table.replace_schema_metadata({**(table.schema.metadata or {}),
                                               b"thinkscope_run": json.dumps(info, default=str).encode()})
        pq.write_table(table, path)
    elif fmt == "csv":
        out = df.copy()
        for c in ("topk_ids", "topk_tokens", "topk_logprobs"):
            out[c] = [json.dumps(list(v) if v is not None else None, default=float) for v in out[c]]
        for key, value in info.items():
            out[f"run_{key}"] = json.dumps(value, default=str) if key == "settings" else value
        out.to_csv(path, index=False)
    elif fmt == "jsonl":
        with path.open("w", encoding="utf-8") as f:
            f.write(json.dumps({"thinkscope_run": info}, default=str) + "\n")
            for trace in traces_from_frame(df):
                f.write(json.dumps(trace_to_json(trace), allow_nan=True) + "\n")
    else:
        raise StoreError(f"{path}: unknown export format {fmt!r}; use parquet, csv or jsonl")
    return path


# --------------------------------------------------------------------------- back to traces


def _none_if_nan(v):
    if v is None:
        return None
    if isinstance(v, float) and np.isnan(v):
        return None
    if v is pd.NA or v is pd.NaT:
        return None
    return v


def traces_from_frame(df: pd.DataFrame, where: str = "export") -> Iterator[Trace]:
    """Rebuild traces from a one-row-per-token frame in the export layout."""
    missing = [c for c in ("trace_idx", "token", "logprob") if c not in df.columns]
    if missing:
        raise TraceError(f"{where}: missing column(s) {', '.join(missing)}")
    for _, g in df.groupby("trace_idx", sort=True):
        g = g[g["pos"].notna()] if "pos" in g.columns else g
        first = df.loc[g.index[0]] if len(g) else df[df["trace_idx"] == _].iloc[0]
        if "pos" in g.columns and len(g):
            g = g.sort_values("pos")
        n = len(g)
        meta = json_settings(_none_if_nan(first.get("metadata")))
        for c in TRACE_META_COLUMNS:
            v = _none_if_nan(first.get(c)) if c in df.columns else None
            if v is not None:
                meta[c] = v.item() if hasattr(v, "item") else v
        ids = lp = toks = None
        if "topk_logprobs" in g.columns and n:
            rows_lp = [list(v) if v is not None and not (isinstance(v, float)) else [] for v in g["topk_logprobs"]]
            k = max((len(r) for r in rows_lp), default=0)
            if k:
                lp = np.full((n, k), -np.inf)
                for i, r in enumerate(rows_lp):
                    lp[i, : len(r)] = r
                rows_tok = [list(v) if v is not None and not isinstance(v, float) else []
                            for v in g.get("topk_tokens", [None] * n)]
                toks = [r + [None] * (k - len(r)) for r in rows_tok]
        ent = {}
        for est, col in ENTROPY_COLUMNS.items():
            if col in g.columns and n and g[col].notna().any():
                ent[est] = g[col].to_numpy(dtype=np.float64, na_value=np.nan)
        boundary = _none_if_nan(first.get("boundary"))
        token_ids = g["token_id"].to_numpy(dtype=np.int64) if "token_id" in g.columns and n else None
        if token_ids is not None and (token_ids < 0).all():
            token_ids = None
        yield Trace(
            prompt=_none_if_nan(first.get("prompt")) or "",
            tokens=[str(t) if t is not None else "" for t in g["token"]],
            logprobs=g["logprob"].to_numpy(dtype=np.float64, na_value=np.nan),
            token_ids=token_ids, topk_tokens=toks, topk_logprobs=lp,
            entropy_full=ent.get("full"), entropy_full_t1=ent.get("full_t1"),
            boundary=int(boundary) if boundary is not None else None,
            source_id=_none_if_nan(first.get("source_id")), metadata=meta)


def trace_to_json(t: Trace) -> dict:
    """One trace as a JSON-able dict in the export layout (columns as lists)."""
    d = {"source_id": t.source_id, "prompt": t.prompt, "boundary": t.boundary,
         "metadata": t.metadata, "token": t.tokens, "logprob": t.logprobs.tolist(),
         "token_id": t.token_ids.tolist() if t.token_ids is not None else None}
    if t.entropy_full is not None:
        d["entropy_full"] = t.entropy_full.tolist()
    if t.entropy_full_t1 is not None:
        d["entropy_full_t1"] = t.entropy_full_t1.tolist()
    if t.k:
        finite = np.isfinite(t.topk_logprobs)
        d["topk_logprobs"] = [row[m].tolist() for row, m in zip(t.topk_logprobs, finite)]
        d["topk_tokens"] = [[x for x, ok in zip(row, m) if ok] for row, m in zip(t.topk_tokens, finite)]
    return d


def read_export(path: str | Path) -> tuple[dict, list[Trace]]:
    """(run info, traces) from a file written by ``export_run``."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        table = pq.read_table(path)
        meta = (table.schema.metadata or {}).get(b"thinkscope_run")
        if meta is None:
            raise TraceError(f"{path.name}: a Parquet file without thinkscope run metadata")
        return json.loads(meta), list(traces_from_frame(table.to_pandas(), path.name))
    if suffix == ".jsonl":
        with path.open(encoding="utf-8") as f:
            head = json.loads(f.readline())
            if "thinkscope_run" not in head:
                raise TraceError(f"{path.name} line 1: expected a thinkscope_run header")
            traces = []
            for lineno, line in enumerate(f, 2):
                d = json.loads(line)
                lp = d.get("topk_logprobs")
                k = max((len(r) for r in lp), default=0) if lp else 0
                arr = toks = None
                if k:
                    arr = np.full((len(lp), k), -np.inf)
                    for i, r in enumerate(lp):
                        arr[i, : len(r)] = r
                    toks = [r + [None] * (k - len(r)) for r in d["topk_tokens"]]
                traces.append(Trace(
                    prompt=d["prompt"], tokens=d["token"], logprobs=np.asarray(d["logprob"], dtype=np.float64),
                    token_ids=d.get("token_id"), topk_tokens=toks, topk_logprobs=arr,
                    entropy_full=d.get("entropy_full"), entropy_full_t1=d.get("entropy_full_t1"),
                    boundary=d.get("boundary"), source_id=d.get("source_id"), metadata=d.get("metadata") or {}))
            return head["thinkscope_run"], traces
    raise TraceError(f"{path.name}: not a thinkscope export (.parquet or .jsonl)")


def import_export(store: Store, path: str | Path, name: str | None = None) -> int:
    """Store a thinkscope export as a new run (one transaction); return the run id."""
    info, traces = read_export(path)
    run_id = store.create_run(name or info.get("name") or Path(path).stem, info.get("source") or "import",
                              info.get("model"), info.get("settings"), status="running")
    try:
        store.add_traces(run_id, traces)
    except BaseException:
        store.delete_run(run_id)
        raise
    store.finish_run(run_id)
    return run_id
