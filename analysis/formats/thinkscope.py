"""The project's own format, in one place: its layout, its writer and its reader.

A run travels as Parquet, CSV or JSON Lines with one row per token and its trace's fields
repeated (Parquet keeps them dictionary-encoded, so that costs little); the run's name,
source, model and settings travel in the Parquet key-value metadata ``thinkscope_run``, in a
leading ``{"thinkscope_run": ...}`` JSON Lines record, or in columns prefixed ``run_`` in CSV.
Reading an export back gives the same traces, token for token and value for value: real
tokenizer ids of the alternatives and the stored entropies are kept, so export -> import ->
export gives the same file contents. Every column and row is checked as it is read.
"""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ..settings import THINK_MARKER
from ..store import (ENTROPY_COLUMNS, LAYER_FIELDS, LOCAL_ID_BASE, RUN_TRACE_FIELDS, TRACE_META_COLUMNS, Store,
                     StoreError, json_settings)
from ..trace import Trace
from .base import Context, Problems, Skip, Tokens, Where, check_text, check_tokens, show
from .jsonstream import iter_values, loads
from .tables import _list_cell, _numbers, _scalar, columns, group_traces

# --------------------------------------------------------------------------- layout

NAME = "thinkscope"
TITLE = "thinkscope export (Parquet, CSV or JSON Lines)"
VERSION = 1
#: columns with one value per trace (the value of a trace's first row is read)
TRACE_FIELDS = RUN_TRACE_FIELDS
TOKEN_FIELDS = ("pos", "token_id", "token", "logprob", *ENTROPY_COLUMNS.values(),
                "topk_ids", "topk_tokens", "topk_logprobs")
#: per-layer list columns (logit lens, attention entropy) carried by Parquet exports
LAYER_COLUMNS = tuple(LAYER_FIELDS)
#: what each column of an export holds: "int", "number", "text", "bool", "json" (an object;
#: JSON text in Parquet and CSV) or "list <kind>"
EXPORT_COLUMNS: dict[str, str] = {
    "trace_idx": "int", "source_id": "text", "prompt": "text", "boundary": "int",
    **{c: {"VARCHAR": "text", "DOUBLE": "number", "BOOLEAN": "bool", "INTEGER": "int"}[t]
       for c, t in TRACE_META_COLUMNS.items()},
    "metadata": "json", "pos": "int", "token_id": "int", "token": "text", "logprob": "number",
    **{c: "number" for c in ENTROPY_COLUMNS.values()},
    "topk_ids": "list int", "topk_tokens": "list text", "topk_logprobs": "list number",
    **{c: "list number" for c in LAYER_COLUMNS}, "lens_top1": "list int", "lens_top1_tokens": "list text",
}
EXPORT_REQUIRED = ("trace_idx", "token", "logprob")
_EXPORT_NUMERIC = tuple(c for c, kind in EXPORT_COLUMNS.items() if kind in ("int", "number"))
_EXPORT_LISTS = ("topk_ids", "topk_tokens", "topk_logprobs")
_EXPECTED = {"int": "an integer", "number": "a number", "text": "a string", "bool": "true or false",
             "json": "a JSON object", "list int": "a list of integers", "list number": "a list of numbers",
             "list text": "a list of strings"}
_RUN_INFO = "an object (the run's name, source, model and settings)"
#: entropies may be this far below 0 or above ln(k + 1) (float32 rounding of the stored values)
ENTROPY_TOLERANCE = 1e-4


def sniff_columns(cols: list[str]) -> bool:
    """Whether a table's column names are those of a CSV export (its run_ columns and trace_idx)."""
    low = {c.lower() for c in cols}
    return "run_format" in low and "trace_idx" in low


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


# --------------------------------------------------------------------------- writer


def run_frame(store: Store, run_id: int) -> tuple[dict, pd.DataFrame]:
    """(run info, one row per token with trace fields) for a run."""
    r = store.run(run_id)
    info = {"name": r["name"], "source": r["source"], "model": r["model"],
            "settings": json_settings(r["settings"]), "format": NAME, "version": VERSION}
    df = store.run_token_rows(run_id)
    vocab = store.run_vocab(run_id)
    df["topk_tokens"] = [None if ids is None else [vocab.get(int(i), f"<id {int(i)}>") for i in ids]
                         for ids in df["topk_ids"]]
    df = _with_layers(store, run_id, df, vocab)
    extra = store.run_empty_traces(run_id)
    if not extra.empty:  # traces without tokens still travel, as one row with pos NULL
        df = pd.concat([df, extra], ignore_index=True).sort_values(["trace_idx", "pos"], na_position="first")
    return info, df.reset_index(drop=True)


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


# --------------------------------------------------------------------------- reader


def parquet_info(path: Path) -> Any:
    """The run info of a Parquet export as its JSON reads (``export_info`` checks it; text that is
    not JSON is returned as it is), or None for a file without it (not an export)."""
    meta = pq.ParquetFile(path).schema_arrow.metadata or {}
    raw = meta.get(b"thinkscope_run")
    if raw is None:
        return None
    try:
        return loads(raw)
    except ValueError:
        return raw.decode("utf-8", "replace")


def export_info(path: Path, container: str, problems: Problems | None = None) -> dict:
    """The run info (name, source, model, settings) an export carries, checked: what is not an
    object of such fields is a problem naming the file and the field, recorded in ``problems``
    (the info is then {}), or without them raised as a TraceError."""
    pr = problems if problems is not None else Problems(path.name)
    before = pr.total
    info: Any = {}
    if container == "parquet":
        info = _checked_info(parquet_info(path), "the Parquet metadata thinkscope_run", None, pr)
    elif container == "csv":
        head = pd.read_csv(path, nrows=1, dtype=str, keep_default_na=False, encoding="utf-8-sig")
        info = {c[4:]: csv_text_back(head[c].iloc[0]) for c in head.columns if c.startswith("run_")} if len(head) else {}
        try:
            info["settings"] = loads(info["settings"]) if info.get("settings") else None
        except ValueError:
            pr.bad("run_settings", info["settings"], "a JSON object", line=2)
        for key in ("model", "source"):
            if info.get(key) == "":
                info[key] = None
        info = _checked_info(info, "the run_ columns", 2, pr) if pr.total == before else {}
    else:
        for _, head in iter_values(path, Problems(path.name), limit=1):
            if isinstance(head, dict) and "thinkscope_run" in head:
                info = _checked_info(head["thinkscope_run"], "thinkscope_run", 1, pr)
    if problems is None:
        pr.raise_if_any()
    return info if pr.total == before else {}


def _checked_info(info: Any, where: str, line: int | None, pr: Problems) -> dict:
    if not isinstance(info, dict):
        pr.bad(where, info, _RUN_INFO, line)
        return {}
    for key in ("name", "source", "model"):
        if info.get(key) is not None and not isinstance(info[key], str):
            pr.bad(f"{where}: {key}", info[key], "a string", line)
    if info.get("settings") is not None and not isinstance(info["settings"], dict):
        pr.bad(f"{where}: settings", info["settings"], "an object", line)
    with contextlib.suppress(Skip):
        check_text(pr, [(f"{where}: {key}", info.get(key)) for key in ("name", "source", "model", "settings")], line)
    return info


def export_traces(path: Path, ctx: Context, progress=None, container: str = "parquet") -> Iterator[Trace]:
    """Traces of a thinkscope export, value for value (see ``export_trace``), every column and
    row checked first: problems name the file, the line (a Parquet file's row) and the column."""
    pr = ctx.problems
    if container == "parquet":
        pr.unit = "row"
    before = pr.total
    export_info(path, container, pr)
    if pr.total > before:
        return
    if container == "json":
        yield from _export_jsonl(path, ctx, progress)
        return
    if not _export_columns_ok(path, container, pr):
        return
    for first_line, g in group_traces(path, "trace_idx", pr, progress):
        pr.line = first_line
        lines = first_line + np.arange(len(g))
        before = pr.total
        try:
            if container == "csv":
                g = _typed_export_csv(g, first_line, pr)
            yield _checked_export_trace(g, ctx, _TableAt(lines), before)
        except Skip:
            continue


def _export_columns_ok(path: Path, container: str, pr: Problems) -> bool:
    """Whether the export has the columns it needs, each of its type (Parquet); else the problems."""
    before = pr.total
    if container == "parquet":
        schema = pq.ParquetFile(path).schema_arrow
        cols = schema.names
        for f in schema:
            kind = EXPORT_COLUMNS.get(f.name)
            if kind is not None and not _arrow_holds(kind, f.type):
                pr.add(f"column {f.name} holds {f.type}, expected {_EXPECTED[kind]}")
    else:
        cols = columns(path)
    for c in EXPORT_REQUIRED:
        if c not in cols:
            pr.add(f"no column {c} (a thinkscope export has {', '.join(EXPORT_REQUIRED)})")
    return pr.total == before


def _arrow_holds(kind: str, t: pa.DataType) -> bool:
    if pa.types.is_dictionary(t):
        t = t.value_type
    if pa.types.is_null(t):
        return True
    if kind.startswith("list "):
        return (pa.types.is_list(t) or pa.types.is_large_list(t)) and _arrow_holds(kind[5:], t.value_type)
    if kind == "int":
        return pa.types.is_integer(t)
    if kind == "number":
        return pa.types.is_integer(t) or pa.types.is_floating(t)
    if kind == "bool":
        return pa.types.is_boolean(t)
    return pa.types.is_string(t) or pa.types.is_large_string(t)  # text, and JSON as text


def _typed_export_csv(g: pd.DataFrame, first_line: int, pr: Problems) -> pd.DataFrame:
    """A CSV export's cells as the values they stand for: numbers, lists (JSON), booleans, text
    (without the quote that ``csv_text`` puts before text a spreadsheet would evaluate).
    Cells that are none of these are recorded as problems (and read as empty)."""
    g = g.copy()
    for c in g.columns:
        kind = EXPORT_COLUMNS.get(c)
        if kind in ("int", "number"):
            g[c] = _numbers(g[c], c, first_line, pr)
        elif kind is not None and kind.startswith("list "):
            g[c] = [_list_cell(v, c, first_line + i, pr) for i, v in enumerate(g[c])]
        elif kind == "bool":
            known = {"True": True, "False": False, "true": True, "false": False, "": None}
            for i, v in enumerate(g[c]):
                if v not in known:
                    pr.bad(c, v, "True, False or empty", first_line + i)
            g[c] = g[c].map(known)
        elif c == "token":  # an empty token is a token; an empty trace field is none
            g[c] = g[c].map(csv_text_back)
        elif kind in ("text", "json"):
            g[c] = g[c].map(lambda v: None if v == "" else csv_text_back(v))
    return g


class _TableAt:
    """Places in a table: a column on a row's line."""

    def __init__(self, lines: np.ndarray):
        self.lines = lines

    def __call__(self, column: str, i: int = 0) -> tuple[str, int]:
        return column, int(self.lines[i])

    def where(self, order: np.ndarray) -> Where:
        alt = "topk_logprobs[{j}]"
        return Where("token", "logprob", "topk_logprobs", alt, "topk_tokens[{j}]", alt, lines=self.lines[order])


class _RecordAt:
    """Places in a JSON Lines export: a trace's field, or entry i of a per-token list, on its line."""

    def __call__(self, column: str, i: int | None = None) -> tuple[str, None]:
        return (column if i is None or column in TRACE_FIELDS else f"{column}[{i}]"), None

    def where(self, order: np.ndarray) -> Where:
        alt = "topk_logprobs[{i}][{j}]"
        return Where("token[{i}]", "logprob[{i}]", "topk_logprobs[{i}]", alt, "topk_tokens[{i}][{j}]", alt)


def _checked_export_trace(g: pd.DataFrame, ctx: Context, at, before: int | None = None) -> Trace:
    """``export_trace`` of rows checked column by column and row by row (``at`` names a cell's
    place); problems (also those since ``before``, of reading the cells) are recorded and raise Skip."""
    pr = ctx.problems
    before = pr.total if before is None else before
    g = g.reset_index(drop=True)
    for c in g.columns:
        kind = EXPORT_COLUMNS.get(c)
        col = g[c].iloc[:1] if c in TRACE_FIELDS else g[c]
        if kind is None or _column_holds(kind, col):
            continue
        bad = [i for i, v in enumerate(col) if not _holds(kind, v)]
        for i in bad[:20]:
            v = col.iat[i]
            _bad(pr, at(c, i), v.tolist() if isinstance(v, np.ndarray) else v, _EXPECTED[kind])
    if pr.total > before:
        raise Skip
    order = _check_export_values(g, at, pr)
    if pr.total > before:
        raise Skip
    tr = export_trace(g, ctx.vocab, ctx.marker)
    check_tokens(Tokens(tr.tokens, tr.logprobs, tr.token_ids, tr.topk_tokens, tr.topk_logprobs, tr.topk_ids),
                 pr, at.where(order))
    meta = {k: v for k, v in tr.metadata.items() if k not in TRACE_META_COLUMNS}
    check_text(pr, [("prompt", tr.prompt), ("source_id", tr.source_id), ("metadata", meta),
                    *((c, tr.metadata.get(c)) for c in TRACE_META_COLUMNS)])
    return tr


def _bad(pr: Problems, place: tuple[str, int | None], value: Any, expected: str) -> None:
    pr.bad(place[0], value, expected, place[1])


def _column_holds(kind: str, col: pd.Series) -> bool:
    """Whether every cell of a column holds a value of ``kind``: vectorised where the column's
    type decides it (a numeric column, Arrow's strings), else cell by cell."""
    dt = col.dtype
    if kind in ("int", "number") and dt.kind in "iuf":
        if kind == "number" or dt.kind in "iu":
            return True
        x = col.to_numpy(dtype=np.float64)
        return bool((np.isnan(x) | (np.mod(x, 1) == 0)).all())
    if kind == "bool" and dt.kind == "b":
        return True
    if kind == "text":
        return pd.api.types.infer_dtype(col, skipna=True) in ("string", "empty")
    return all(_holds(kind, v) for v in col)


def _holds(kind: str, v: Any) -> bool:
    """Whether one cell holds a value of ``kind`` (an empty cell always does)."""
    if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)):
        return True
    if kind.startswith("list "):
        if not isinstance(v, (list, tuple, np.ndarray)):
            return False
        each = kind[5:]
        if isinstance(v, np.ndarray) and v.dtype.kind in "iu":
            return each in ("int", "number")
        if isinstance(v, np.ndarray) and v.dtype.kind == "f":
            return each == "number" or (each == "int" and bool(np.all(np.mod(v, 1) == 0)))
        if each == "text":
            return pd.api.types.infer_dtype(v, skipna=True) in ("string", "empty")
        return all(_number(x) and (each == "number" or math.isfinite(x) and float(x).is_integer()) for x in v)
    if kind in ("int", "number"):
        return _number(v) and (kind == "number" or math.isfinite(v) and float(v).is_integer())
    if kind == "text":
        return isinstance(v, str)
    if kind == "bool":
        return isinstance(v, (bool, np.bool_))
    if isinstance(v, dict):  # json: an object (JSON Lines), or its JSON text
        return True
    try:
        return isinstance(v, str) and isinstance(loads(v), dict)
    except ValueError:
        return False


def _number(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))


def _check_export_values(g: pd.DataFrame, at, pr: Problems) -> np.ndarray:
    """Checks across cells of one trace's rows (types already checked): positions, the boundary,
    list lengths, entropies in their range. Returns the rows' order by position."""
    n = len(g)
    pos = pd.to_numeric(g["pos"], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan) \
        if "pos" in g.columns else np.arange(n, dtype=np.float64)
    empty = np.isnan(pos)
    if empty.any() and n > 1:  # only a trace without tokens has one row without a position
        _bad(pr, at("pos", int(np.flatnonzero(empty)[0])), None, "a position (an integer >= 0)")
        return np.arange(n)
    if empty.all():
        return np.arange(n)
    if (pos < 0).any():
        i = int(np.flatnonzero(pos < 0)[0])
        _bad(pr, at("pos", i), pos[i], "a position (an integer >= 0)")
    order = np.argsort(pos, kind="stable")
    same = np.flatnonzero(np.diff(pos[order]) == 0)
    if same.size:
        path, line = at("pos", int(order[same[0] + 1]))
        pr.add(f"{path} {pos[order[same[0]]]:g} appears twice in trace {show(_scalar(g['trace_idx'].iat[0]))}", line)
    b = _scalar(g["boundary"].iat[0]) if "boundary" in g.columns else None
    if b is not None and not 0 <= b <= n:
        _bad(pr, at("boundary", 0), b, f"a token position from 0 to {n} (the number of tokens)")
    lens = {c: [None if v is None or (isinstance(v, float) and math.isnan(v)) else len(v) for v in g[c]]
            for c in _EXPORT_LISTS if c in g.columns}
    if "topk_logprobs" in lens:
        for c in ("topk_ids", "topk_tokens"):
            for i, (a, k) in enumerate(zip(lens.get(c, ()), lens["topk_logprobs"])):
                if a is not None and k is not None and a != k:
                    path, line = at(c, i)
                    pr.add(f"{path} has {a} entries and topk_logprobs {k}", line)
                    break
    if "token" in g.columns and any(v is None for v in g["token"]):
        i = next(i for i, v in enumerate(g["token"]) if v is None)
        _bad(pr, at("token", i), None, "a string (the token's text)")
    k = np.array([x or 0 for x in lens.get("topk_logprobs", [0] * n)], dtype=np.float64)
    for est, c in ENTROPY_COLUMNS.items():
        if c not in g.columns:
            continue
        h = pd.to_numeric(g[c], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        topk = est in ("topk_renorm", "topk_tail", "epr")
        top = np.log(k + 1.0) if topk else np.full(n, np.inf)
        bad = np.flatnonzero((h < -ENTROPY_TOLERANCE) | (h > top + ENTROPY_TOLERANCE) | np.isposinf(h))
        for i in bad[:1].tolist():
            _bad(pr, at(c, i), float(h[i]), f"an entropy from 0 to ln({int(k[i])} + 1) nats (from its "
                   f"{int(k[i])} alternatives)" if topk else "an entropy >= 0 nats")
    for c in LAYER_COLUMNS:
        if c in g.columns:
            widths = {len(v) for v in g[c] if isinstance(v, (list, tuple, np.ndarray))}
            if len(widths) > 1:
                path, line = at(c, 0)
                pr.add(f"{path} has lists of {' and '.join(map(str, sorted(widths)))} layers in one trace", line)
    return order


def export_trace(g: pd.DataFrame, vocab: dict[int, str], marker: str | None = THINK_MARKER) -> Trace:
    """One trace from its rows in the export layout.

    Alternatives that carry real tokenizer ids keep them (their text goes to ``vocab``);
    run-local ids (>= LOCAL_ID_BASE) are dropped and the text is stored again, which gives the
    same local ids when the traces come back in the same order. Stored entropies are kept as
    they are, so that a re-export is identical.
    """
    first = g.iloc[0]
    if "pos" in g.columns:
        g = g[g["pos"].notna()].sort_values("pos")
    n = len(g)
    meta = json_settings(_scalar(first.get("metadata")))
    for c in TRACE_META_COLUMNS:
        v = _scalar(first.get(c)) if c in g.columns else None
        if v is not None:
            meta[c] = v
    lp = top_ids = top_tok = None
    if n and "topk_logprobs" in g.columns:
        rows = [list(v) if isinstance(v, (list, tuple, np.ndarray)) else [] for v in g["topk_logprobs"]]
        k = max((len(r) for r in rows), default=0)
        if k:
            lp = np.full((n, k), -np.inf)
            for i, r in enumerate(rows):
                lp[i, : len(r)] = r
            id_rows = ([list(v) if isinstance(v, (list, tuple, np.ndarray)) else [] for v in g["topk_ids"]]
                       if "topk_ids" in g.columns else None)
            tok_rows = ([list(v) if isinstance(v, (list, tuple, np.ndarray)) else [] for v in g["topk_tokens"]]
                        if "topk_tokens" in g.columns else [[] for _ in range(n)])
            real = id_rows is not None and all(0 <= int(x) < LOCAL_ID_BASE for r in id_rows for x in r) \
                and all(len(a) == len(b) for a, b in zip(id_rows, rows))
            if real:
                top_ids = np.full((n, k), -1, dtype=np.int64)
                for i, (r, tr) in enumerate(zip(id_rows, tok_rows)):
                    top_ids[i, : len(r)] = r
                    for x, text in zip(r, tr):
                        vocab.setdefault(int(x), text)
            else:
                top_tok = [[None if x is None else str(x) for x in r] + [None] * (k - len(r)) for r in tok_rows]
    ent: dict[str, np.ndarray] = {}
    for est, col in ENTROPY_COLUMNS.items():
        if col in g.columns and n:
            v = pd.to_numeric(g[col], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
            if not np.isnan(v).all():
                ent[est] = v
    token_ids = None
    if "token_id" in g.columns and n:
        ti = pd.to_numeric(g["token_id"], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        ti = np.where(np.isnan(ti), -1, ti).astype(np.int64)
        token_ids = None if (ti < 0).all() else ti
    boundary = _scalar(first.get("boundary"))
    prompt = _scalar(first.get("prompt"))
    layers = _export_layers(g, vocab) if n else None
    return Trace(
        prompt=prompt or "", tokens=["" if not isinstance(t, str) else t for t in g["token"]],
        logprobs=pd.to_numeric(g["logprob"], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan),
        token_ids=token_ids, topk_ids=top_ids, topk_tokens=top_tok, topk_logprobs=lp,
        entropy_full=ent.get("full"), entropy_full_t1=ent.get("full_t1"),
        entropy_topk={e: ent[e] for e in ("topk_renorm", "topk_tail", "epr") if e in ent} or None,
        boundary=int(boundary) if boundary is not None else None, marker=marker,
        source_id=None if _scalar(first.get("source_id")) is None else str(first.get("source_id")),
        metadata=meta, layers=layers)


def _export_layers(g: pd.DataFrame, vocab: dict[int, str]) -> dict[str, np.ndarray] | None:
    """Per-layer arrays [T, L] from a Parquet export's layer columns (None when absent)."""
    out: dict[str, np.ndarray] = {}
    for c in LAYER_COLUMNS:
        if c not in g.columns:
            continue
        rows = [v for v in g[c]]
        if any(not isinstance(v, (list, tuple, np.ndarray)) for v in rows):
            continue  # a trace recorded without this layer quantity
        out[c] = np.asarray([np.asarray(v) for v in rows])
    if "lens_top1" in out and "lens_top1_tokens" in g.columns:
        for ids, texts in zip(out["lens_top1"], g["lens_top1_tokens"]):
            if isinstance(texts, (list, tuple, np.ndarray)):
                for i, text in zip(ids, texts):
                    vocab.setdefault(int(i), str(text))
    return out or None


def _export_jsonl(path: Path, ctx: Context, progress) -> Iterator[Trace]:
    """Traces of a JSON Lines export: one record per trace, its per-token fields as lists."""
    pr = ctx.problems
    for line, d in iter_values(path, pr, progress):
        pr.line = line
        if line == 1 or (isinstance(d, dict) and "thinkscope_run" in d):
            continue
        if not isinstance(d, dict) or not isinstance(d.get("token"), list):
            pr.bad("token", d.get("token") if isinstance(d, dict) else d, "a list of token strings")
            continue
        n = len(d["token"])
        rows = {"token": d["token"], "logprob": d.get("logprob"), "token_id": d.get("token_id") or [-1] * n}
        for c in (*ENTROPY_COLUMNS.values(), *_EXPORT_LISTS):
            if d.get(c) is not None:
                rows[c] = d[c]
        bad = [c for c, v in rows.items() if not isinstance(v, list) or len(v) != n]
        if bad:
            for c in bad:
                pr.bad(c, rows[c], f"a list of {n} values (one per token)")
            continue
        g = pd.DataFrame({"pos": np.arange(n), **{c: pd.Series(v, dtype=object) for c, v in rows.items()}}) if n \
            else pd.DataFrame({"pos": [np.nan], "token": [None], "logprob": [np.nan]})
        for c in TRACE_FIELDS:
            g[c] = pd.Series([d.get(c)] * len(g), dtype=object)  # as it is: a list stays one value, to report
        try:
            yield _checked_export_trace(g, ctx, _RecordAt())
        except Skip:
            continue
