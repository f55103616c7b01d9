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

from .store import ENTROPY_COLUMNS, LAYER_FIELDS, RUN_TRACE_FIELDS, Store, StoreError, json_settings
from .trace import Trace, TraceError

FORMAT_NAME = "thinkscope"
FORMAT_VERSION = 1
TRACE_FIELDS = RUN_TRACE_FIELDS
TOKEN_FIELDS = ("pos", "token_id", "token", "logprob", *ENTROPY_COLUMNS.values(),
                "topk_ids", "topk_tokens", "topk_logprobs")
#: a CSV cell that starts with one of these is a formula to a spreadsheet (OWASP's list for CSV
#: injection); such a text cell is written with a quote in front, and so is one that starts with
#: the quote itself, so that reading drops exactly one leading quote (``csv_text_back``)
FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "'")


def csv_text(text: str) -> str:
    """A text cell as the CSV export writes it (see ``FORMULA_START``)."""
    return "'" + text if text.startswith(FORMULA_START) else text


def csv_text_back(cell: str) -> str:
    """The text of a cell ``csv_text`` wrote."""
    return cell[1:] if cell.startswith("'") else cell


def run_frame(store: Store, run_id: int) -> tuple[dict, pd.DataFrame]:
    """(run info, one row per token with trace fields) for a run."""
    r = store.run(run_id)
    info = {"name": r["name"], "source": r["source"], "model": r["model"],
            "settings": json_settings(r["settings"]), "format": FORMAT_NAME, "version": FORMAT_VERSION}
    df = store.run_token_rows(run_id)
    vocab = store.run_vocab(run_id)
    df["topk_tokens"] = [None if ids is None else [vocab.get(int(i), f"<id {int(i)}>") for i in ids]
                         for ids in df["topk_ids"]]
    df = _with_layers(store, run_id, df, vocab)
    extra = store.run_empty_traces(run_id)
    if not extra.empty:  # traces without tokens still travel, as one row with pos NULL
        df = pd.concat([df, extra], ignore_index=True).sort_values(["trace_idx", "pos"], na_position="first")
    return info, df.reset_index(drop=True)


#: per-layer list columns (logit lens, attention entropy) carried by Parquet exports
LAYER_COLUMNS = tuple(LAYER_FIELDS)


def _with_layers(store: Store, run_id: int, df: pd.DataFrame, vocab: dict[int, str]) -> pd.DataFrame:
    """Add the run's per-layer columns (and the lens top-1 tokens' text), if it has any."""
    layers = store.run_layer_rows(run_id)
    if layers.empty:
        return df
    layers["lens_top1_tokens"] = [None if ids is None else [vocab.get(int(i), f"<id {int(i)}>") for i in ids]
                                  for ids in layers["lens_top1"]]
    return df.merge(layers, on=["trace_idx", "pos"], how="left")


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
        out = out.drop(columns=[c for c in (*LAYER_COLUMNS, "lens_top1_tokens") if c in out])
        for c in ("topk_ids", "topk_tokens", "topk_logprobs"):
            out[c] = [json.dumps(list(v) if v is not None else None, default=float) for v in out[c]]
        for key, value in info.items():
            out[f"run_{key}"] = json.dumps(value, default=str) if key == "settings" else value
        for c in out.columns:
            if out[c].dtype.kind not in "biuf":  # text cells (numbers, and lists as JSON, start no formula)
                out[c] = out[c].map(lambda v: csv_text(v) if isinstance(v, str) else v)
        # lines end in CRLF (RFC 4180): pandas quotes a cell that holds a CR only when the line
        # terminator has one, and a bare CR in a cell would end its row when read
        out.to_csv(path, index=False, lineterminator="\r\n")
    elif fmt == "jsonl":
        with path.open("w", encoding="utf-8") as f:
            f.write(json.dumps({"thinkscope_run": info}, default=str) + "\n")
            for record in trace_records(df):
                f.write(json.dumps(record, allow_nan=True, default=float) + "\n")
    else:
        raise StoreError(f"{path}: unknown export format {fmt!r}; use parquet, csv or jsonl")
    return path


# --------------------------------------------------------------------------- back to traces
# Reading an export back goes through the trace-file readers (analysis.formats), which keep
# real tokenizer ids of the alternatives and the stored entropies, so that export -> import
# -> export gives the same file contents, and which import atomically.


def _json_value(v):
    if v is None or v is pd.NA or (isinstance(v, float) and np.isnan(v)):
        return None
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    return v


def trace_records(df: pd.DataFrame) -> Iterator[dict]:
    """One JSON-able dict per trace of a ``run_frame``: its fields, then one list per token column."""
    token_cols = [c for c in TOKEN_FIELDS if c in df.columns and c != "pos"]
    for _, g in df.groupby("trace_idx", sort=True):
        first = g.iloc[0]
        g = g[g["pos"].notna()]
        rec = {c: _json_value(first.get(c)) for c in TRACE_FIELDS if c != "metadata"}
        rec["metadata"] = json_settings(_json_value(first.get("metadata")))
        for c in token_cols:
            rec[c] = [_json_value(v) for v in g[c]]
        yield rec


def traces_from_frame(df: pd.DataFrame, where: str = "export") -> Iterator[Trace]:
    """Rebuild traces from a one-row-per-token frame in the export layout."""
    from .formats.tables import export_trace
    missing = [c for c in ("trace_idx", "token", "logprob") if c not in df.columns]
    if missing:
        raise TraceError(f"{where}: missing column(s) {', '.join(missing)}")
    vocab: dict[int, str] = {}
    for _, g in df.groupby("trace_idx", sort=True):
        yield export_trace(g, vocab)


def read_export(path: str | Path) -> tuple[dict, list[Trace]]:
    """(run info, traces) from a file written by ``export_run`` (Parquet, CSV or JSON Lines)."""
    from .formats.base import Context, Problems
    from .formats.detect import detect
    from .formats.tables import EXPORT, export_info, export_traces

    path = Path(path)
    d = detect(path)
    if d.format != EXPORT:
        raise TraceError(f"{path.name}: not a thinkscope export (detected {d.format or 'no known format'})")
    pr = Problems(path.name)
    traces = list(export_traces(path, Context(problems=pr), container=d.container))
    pr.raise_if_any()
    return export_info(path, d.container), traces


def import_export(store: Store, path: str | Path, name: str | None = None) -> int:
    """Store a thinkscope export as a new run, atomically; return the run id."""
    from .formats import ingest_file
    return ingest_file(store, path, format=FORMAT_NAME, run_name=name, allow_duplicate=True).run_id
