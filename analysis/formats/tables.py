"""Token tables (Parquet or CSV, one row per token) and the project's own export format.

A token table needs a trace column, a token column and a logprob column; a position column
orders the rows of a trace, and the top-k alternatives come either as list columns
(``topk_tokens`` / ``topk_logprobs``, JSON lists in CSV) or as numbered columns
(``top1_token``, ``top1_logprob``, ``top2_token``, ...). Any other column that is constant
within a trace is trace metadata (mapped onto problem_id, gold_answer, level, ... by name or
by the user's field mapping). Rows are read in batches; the rows of a trace must be together.

The project's own export (``analysis.export``) is recognised by its run metadata and read
back value for value, including real tokenizer ids of the alternatives and the stored
entropies.
"""

from __future__ import annotations

import contextlib
import math
import re
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ..export import LAYER_COLUMNS, csv_text_back
from ..store import ENTROPY_COLUMNS, TRACE_META_COLUMNS, json_settings
from ..settings import THINK_MARKER
from ..trace import Trace, TraceError
from .base import (Context, Problems, Skip, Tokens, Where, bad_utf8, check_text, check_tokens, map_metadata,
                   show)
from .jsonstream import loads

TABLE = "token_table"
TABLE_TITLE = "Token table (Parquet or CSV, one row per token)"
EXPORT = "thinkscope"
EXPORT_TITLE = "thinkscope export (Parquet, CSV or JSON Lines)"
BATCH_ROWS = 65536
#: what pandas and pyarrow raise for a file that is not a readable table
TABLE_ERRORS = (ValueError, TypeError, KeyError, IndexError, OSError, pa.ArrowException, UnicodeDecodeError)

COLUMN_SYNONYMS: dict[str, tuple[str, ...]] = {
    "trace": ("trace_id", "trace", "trace_idx", "sequence_id", "seq_id", "sample_id", "completion_id",
              "custom_id", "response_id", "id"),
    "pos": ("pos", "position", "token_index", "token_idx", "token_pos", "step", "index", "t"),
    "token": ("token", "token_text", "token_str", "text", "piece"),
    "logprob": ("logprob", "log_prob", "logp", "token_logprob", "chosen_logprob", "lp"),
    "token_id": ("token_id", "tok_id", "id_token"),
    "topk_tokens": ("topk_tokens", "top_tokens", "top_k_tokens", "alt_tokens"),
    "topk_logprobs": ("topk_logprobs", "top_logprobs", "top_k_logprobs", "alt_logprobs"),
    "prompt": ("prompt",),
}
_WIDE_RE = re.compile(r"^(?:top|alt|topk|top_k)_?(\d+)_(token|text|tok|logprob|log_prob|logp|lp)$", re.I)


# --------------------------------------------------------------------------- opening


def parquet_export_info(path: Path) -> Any:
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


def columns(path: Path) -> list[str]:
    if path.suffix.lower() == ".parquet" or _is_parquet(path):
        return list(pq.ParquetFile(path).schema_arrow.names)
    header = pd.read_csv(path, nrows=0, encoding="utf-8-sig")
    return [str(c) for c in header.columns]


def _is_parquet(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"PAR1"


def sniff_columns(cols: list[str]) -> tuple[str | None, float]:
    """(format, score) from a table's column names."""
    low = {c.lower() for c in cols}
    if "run_format" in low and "trace_idx" in low:
        return EXPORT, 1.0
    found = resolve(cols, {})
    if found.get("token") and found.get("logprob"):
        return TABLE, 1.0 if found.get("trace") else 0.8
    return None, 0.0


def resolve(cols: list[str], field_map: dict[str, str]) -> dict[str, str]:
    """Canonical role -> column name, the user's mapping first."""
    by_lower = {c.lower(): c for c in cols}
    out = {}
    for role, names in COLUMN_SYNONYMS.items():
        if field_map.get(role):
            if field_map[role] in cols:
                out[role] = field_map[role]
            continue
        for n in names:
            if n in by_lower and by_lower[n] not in out.values():
                out[role] = by_lower[n]
                break
    return out


def frames(path: Path, pr: Problems, progress=None, csv_dtypes: dict | None = None) -> Iterator[tuple[int, pd.DataFrame]]:
    """(first line number, DataFrame) per batch of rows; CSV cells stay strings unless typed."""
    total = path.stat().st_size
    if _is_parquet(path):
        pf = pq.ParquetFile(path)
        row = 0
        n_rows = max(pf.metadata.num_rows, 1)
        for batch in pf.iter_batches(batch_size=BATCH_ROWS):
            df = batch.to_pandas()
            yield row + 1, df
            row += len(df)
            if progress:
                progress(int(total * row / n_rows))
        return
    try:
        reader = pd.read_csv(path, chunksize=BATCH_ROWS, dtype=csv_dtypes or str, keep_default_na=False,
                             encoding="utf-8-sig", encoding_errors="strict")
        row = 0
        with reader:
            for df in reader:
                yield row + 2, df  # line 1 is the header
                row += len(df)
                if progress:
                    progress(min(total, int(total * row / max(row + 1, 1))))
    except UnicodeDecodeError as e:
        pr.add(bad_utf8(e))
    except (pd.errors.ParserError, ValueError) as e:
        pr.add(f"not a readable CSV table: {str(e).splitlines()[0]}")


def group_traces(path: Path, key: str, pr: Problems, progress=None, csv_dtypes=None) -> Iterator[tuple[int, pd.DataFrame]]:
    """(first line, rows of one trace): contiguous runs of the same key, across batches."""
    seen: dict[Any, int] = {}
    carry: tuple[int, pd.DataFrame] | None = None
    for first_line, df in frames(path, pr, progress, csv_dtypes):
        if key not in df.columns:
            pr.missing(f"column {key!r}")
            return
        keys = df[key].to_numpy()
        change = np.flatnonzero(pd.Series(keys).ne(pd.Series(keys).shift()).to_numpy())
        bounds = list(change) + [len(df)]
        for a, b in zip(bounds[:-1], bounds[1:]):
            part = df.iloc[a:b]
            k = keys[a]
            if carry is not None and _same(carry[1][key].iloc[0], k):
                carry = (carry[0], pd.concat([carry[1], part]))
                continue
            if carry is not None:
                yield carry
            if k in seen:
                pr.add(f"rows of trace {show(k)} are not together (its rows also start at line {seen[k]}); "
                       f"sort the table by {key}", line=first_line + a)
                carry = None
                continue
            seen[k] = first_line + a
            carry = (first_line + a, part)
    if carry is not None:
        yield carry


def _same(a, b) -> bool:
    return a == b or (a != a and b != b)


# --------------------------------------------------------------------------- token tables


def _numbers(values: pd.Series, name: str, first_line: int, pr: Problems, allow_empty: bool = True) -> np.ndarray:
    """A numeric column; every cell that is not a number is reported with its line."""
    if values.dtype.kind in "fiu":
        return values.to_numpy(dtype=np.float64)
    s = values.astype(object)
    text = s.map(lambda v: v.strip() if isinstance(v, str) else v)
    lowered = text.map(lambda v: v.lower() if isinstance(v, str) else v)
    special = {"nan": np.nan, "-inf": -np.inf, "-infinity": -np.inf, "inf": np.inf, "infinity": np.inf,
               "": np.nan, "null": np.nan, "none": np.nan}
    out = np.array(pd.to_numeric(text.where(~lowered.isin(list(special)), np.nan), errors="coerce"),
                   dtype=np.float64, copy=True)
    for i, v in enumerate(lowered):
        if isinstance(v, str) and v in special:
            out[i] = special[v]
            if v == "" and not allow_empty:
                pr.add(f"{name} is empty, expected a number", line=first_line + i)
    bad = np.isnan(out) & ~lowered.map(lambda v: (isinstance(v, str) and v in special) or v is None
                                       or (isinstance(v, float) and np.isnan(v))).to_numpy(dtype=bool)
    for i in np.flatnonzero(bad)[:20]:
        pr.add(f"{name} is {show(s.iloc[i])}, expected a number", line=first_line + int(i))
    return out


def _list_cell(v: Any, name: str, line: int, pr: Problems) -> list | None:
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return None
    if isinstance(v, (list, tuple, np.ndarray)):
        return list(v)
    if isinstance(v, str):
        if not v.strip():
            return None
        try:
            x = loads(v)
        except ValueError:
            pr.add(f"{name} is {show(v)}, expected a JSON list", line=line)
            raise Skip
        if x is None or isinstance(x, list):
            return x
    pr.add(f"{name} is {show(v)}, expected a list", line=line)
    raise Skip


def table_traces(path: Path, ctx: Context, progress=None) -> Iterator[Trace]:
    pr = ctx.problems
    if _is_parquet(path):
        pr.unit = "row"
    fm = ctx.field_map or {}
    cols = columns(path)
    role = resolve(cols, fm)
    missing = [r for r in ("token", "logprob") if r not in role]
    if missing:
        pr.add(f"no {' or '.join(missing)} column (columns: {', '.join(cols[:20])}); map them with the field mapping")
        return
    wide: dict[int, dict[str, str]] = {}
    for c in cols:
        m = _WIDE_RE.match(c)
        if m:
            kind = "logprob" if m.group(2).lower() in ("logprob", "log_prob", "logp", "lp") else "token"
            wide.setdefault(int(m.group(1)), {})[kind] = c
    wide_k = sorted(i for i, d in wide.items() if "logprob" in d)
    used = set(role.values()) | {c for d in wide.values() for c in d.values()}
    meta_cols = [c for c in cols if c not in used]
    key = role.get("trace")
    if key is None:  # one trace for the whole table
        key = "__trace__"
    for first_line, g in _groups(path, key, pr, progress):
        try:
            yield _table_trace(g, first_line, role, wide, wide_k, meta_cols, ctx)
        except Skip:
            continue


def _groups(path, key, pr, progress):
    if key != "__trace__":
        yield from group_traces(path, key, pr, progress)
        return
    parts = []
    first = None
    for line, df in frames(path, pr, progress):
        first = line if first is None else first
        parts.append(df)
    if parts:
        yield first, pd.concat(parts)


def _table_trace(g: pd.DataFrame, first_line: int, role: dict, wide: dict, wide_k: list, meta_cols: list,
                 ctx: Context) -> Trace:
    pr = ctx.problems
    n = len(g)
    before = pr.total
    order = np.arange(n)
    if "pos" in role:
        pos = _numbers(g[role["pos"]], role["pos"], first_line, pr, allow_empty=False)
        if pr.total == before:
            order = np.argsort(pos, kind="stable")
            if len(np.unique(pos)) != n:
                dup = pos[np.flatnonzero(np.diff(np.sort(pos)) == 0)[0]]
                pr.add(f"position {dup:g} appears twice in trace {show(g[role.get('trace', role['pos'])].iloc[0])}",
                       line=first_line)
                raise Skip
            g = g.iloc[order]
    lp = _numbers(g[role["logprob"]], role["logprob"], first_line, pr)
    toks = [("" if (v is None or (isinstance(v, float) and np.isnan(v))) else str(v)) for v in g[role["token"]]]
    token_ids = None
    if "token_id" in role:
        ti = _numbers(g[role["token_id"]], role["token_id"], first_line, pr)
        token_ids = np.where(np.isnan(ti), -1, ti).astype(np.int64)
    top_tok = top_lp = None
    if "topk_logprobs" in role:
        rows_lp = [_list_cell(v, role["topk_logprobs"], first_line + i, pr) or []
                   for i, v in enumerate(g[role["topk_logprobs"]])]
        rows_tok = ([_list_cell(v, role["topk_tokens"], first_line + i, pr) or [] for i, v in enumerate(g[role["topk_tokens"]])]
                    if "topk_tokens" in role else [[f"<alt {j}>" for j in range(len(r))] for r in rows_lp])
        k = max((len(r) for r in rows_lp), default=0)
        if k:
            top_lp = np.full((n, k), -np.inf)
            for i, (r, rt) in enumerate(zip(rows_lp, rows_tok)):
                if len(rt) != len(r):
                    pr.add(f"{role['topk_tokens']} has {len(rt)} entries and {role['topk_logprobs']} {len(r)}",
                           line=first_line + i)
                    continue
                for j, v in enumerate(r):
                    if v is None:
                        continue
                    if type(v) not in (int, float) and not isinstance(v, np.floating):
                        pr.add(f"{role['topk_logprobs']}[{j}] is {show(v)}, expected a number", line=first_line + i)
                        continue
                    top_lp[i, j] = v
            top_tok = [[str(x) if x is not None else None for x in r] + [None] * (k - len(r)) for r in rows_tok]
    elif wide_k:
        k = len(wide_k)
        top_lp = np.full((n, k), -np.inf)
        top_tok = [[None] * k for _ in range(n)]
        for j, i in enumerate(wide_k):
            col = wide[i]["logprob"]
            vals = _numbers(g[col], col, first_line, pr)
            top_lp[:, j] = np.where(np.isnan(vals), -np.inf, vals)
            if "token" in wide[i]:
                for r, v in enumerate(g[wide[i]["token"]]):
                    top_tok[r][j] = None if v is None or (isinstance(v, float) and np.isnan(v)) else str(v)
            else:
                for r in range(n):
                    top_tok[r][j] = f"<alt {i}>"
    if pr.total > before:
        raise Skip
    if "topk_logprobs" in role:
        col = role["topk_logprobs"]
        where = Where(role["token"], role["logprob"], col, f"{col}[{{j}}]", f"{role.get('topk_tokens', col)}[{{j}}]",
                      f"{col}[{{j}}]", lines=first_line + order)
    else:
        where = Where(role["token"], role["logprob"], "the top-k columns", "{name}", "the text of {name}", "{name}",
                      lines=first_line + order, names=[wide[i]["logprob"] for i in wide_k])
    check_tokens(Tokens(toks, lp, token_ids, top_tok, top_lp), pr, where)
    first = g.iloc[0]
    fields = {c: _scalar(first[c]) for c in meta_cols}
    meta = map_metadata({f"metadata.{k}": v for k, v in fields.items()}, _prefixed(ctx.field_map))
    prompt = str(first[role["prompt"]]) if "prompt" in role and _scalar(first[role["prompt"]]) is not None else ""
    sid = None
    if "trace" in role:
        sid = _scalar(first[role["trace"]])
        sid = None if sid is None else str(sid)
    return Trace(prompt=prompt, tokens=toks, logprobs=lp, token_ids=token_ids, topk_tokens=top_tok,
                 topk_logprobs=top_lp, marker=ctx.marker, source_id=sid, metadata=meta)


def _prefixed(field_map: dict | None) -> dict | None:
    """A column mapping in terms of the ``metadata.<column>`` names the table fields get."""
    if not field_map:
        return field_map
    return {k: (f"metadata.{v}" if v else v) for k, v in field_map.items()}


def _scalar(v: Any) -> Any:
    if v is None or (isinstance(v, float) and np.isnan(v)) or v is pd.NA:
        return None
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, str) and v == "":
        return None
    return v


# --------------------------------------------------------------------------- the project's own export

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
#: columns with one value per trace (the value of a trace's first row is read)
_PER_TRACE = ("trace_idx", "source_id", "prompt", "boundary", *TRACE_META_COLUMNS, "metadata")
_EXPORT_NUMERIC = tuple(c for c, kind in EXPORT_COLUMNS.items() if kind in ("int", "number"))
_EXPORT_LISTS = ("topk_ids", "topk_tokens", "topk_logprobs")
_EXPECTED = {"int": "an integer", "number": "a number", "text": "a string", "bool": "true or false",
             "json": "a JSON object", "list int": "a list of integers", "list number": "a list of numbers",
             "list text": "a list of strings"}
_RUN_INFO = "an object (the run's name, source, model and settings)"
#: entropies may be this far below 0 or above ln(k + 1) (float32 rounding of the stored values)
ENTROPY_TOLERANCE = 1e-4


def export_info(path: Path, container: str, problems: Problems | None = None) -> dict:
    """The run info (name, source, model, settings) an export carries, checked: what is not an
    object of such fields is a problem naming the file and the field, recorded in ``problems``
    (the info is then {}), or without them raised as a TraceError."""
    pr = problems if problems is not None else Problems(path.name)
    before = pr.total
    info: Any = {}
    if container == "parquet":
        info = _checked_info(parquet_export_info(path), "the Parquet metadata thinkscope_run", None, pr)
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
        from .jsonstream import iter_values
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
    (without the quote that ``export.csv_text`` puts before text a spreadsheet would evaluate).
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
        return (column if i is None or column in _PER_TRACE else f"{column}[{i}]"), None

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
        col = g[c].iloc[:1] if c in _PER_TRACE else g[c]
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
    from ..store import LOCAL_ID_BASE

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
    from .jsonstream import iter_values
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
        for c in ("trace_idx", "source_id", "prompt", "boundary", *TRACE_META_COLUMNS, "metadata"):
            g[c] = pd.Series([d.get(c)] * len(g), dtype=object)  # as it is: a list stays one value, to report
        try:
            yield _checked_export_trace(g, ctx, _RecordAt())
        except Skip:
            continue
