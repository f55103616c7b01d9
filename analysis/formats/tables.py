"""Token tables (Parquet or CSV, one row per token), read in batches the way the project's own
format (``thinkscope``) reads its tables too.

A token table needs a trace column, a token column and a logprob column; a position column
orders the rows of a trace, and the top-k alternatives come either as list columns
(``topk_tokens`` / ``topk_logprobs``, JSON lists in CSV) or as numbered columns
(``top1_token``, ``top1_logprob``, ``top2_token``, ...). Any other column that is constant
within a trace is trace metadata (mapped onto problem_id, gold_answer, level, ... by name or
by the user's field mapping). Rows are read in batches; the rows of a trace must be together.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ..trace import Trace
from .base import (Context, Problems, Skip, Tokens, Where, bad_utf8, check_tokens, map_metadata,
                   show)
from .jsonstream import loads

TABLE = "token_table"
TABLE_TITLE = "Token table (Parquet or CSV, one row per token)"
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


def columns(path: Path) -> list[str]:
    if path.suffix.lower() == ".parquet" or is_parquet(path):
        return list(pq.ParquetFile(path).schema_arrow.names)
    header = pd.read_csv(path, nrows=0, encoding="utf-8-sig")
    return [str(c) for c in header.columns]


def is_parquet(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"PAR1"


def sniff_columns(cols: list[str]) -> tuple[str | None, float]:
    """(format, score) from a table's column names."""
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
    if is_parquet(path):
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
    if is_parquet(path):
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
