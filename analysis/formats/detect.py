"""Which format a file is in: from its first bytes and first records, or the user's override."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..trace import TraceError
from . import batch, completions, llamacpp, ollama, openai_chat, plaintext, responses, sglang, tables, thinkscope
from .base import Problems, bad_utf8
from .jsonstream import first_char, iter_values

#: JSON readers in the order ties are broken (most specific first)
JSON_READERS = (batch, sglang, llamacpp, ollama, responses, completions, openai_chat, plaintext)
#: every format name -> a one-line description
FORMATS: dict[str, str] = {
    **{m.NAME: m.TITLE for m in JSON_READERS},
    tables.TABLE: tables.TABLE_TITLE,
    thinkscope.NAME: thinkscope.TITLE,
}
PEEK_RECORDS = 5


@dataclass
class Detection:
    """The detected format, how sure (1 = the file has everything the format needs), and the
    other formats the file resembles (name -> score)."""

    format: str | None
    score: float
    resembles: dict[str, float] = field(default_factory=dict)
    container: str = "json"          # 'json', 'parquet' or 'csv'
    note: str = ""


def sniff_columns(cols: list[str]) -> tuple[str | None, float]:
    """(format, score) from a table's column names: an export's, else a token table's."""
    return (thinkscope.NAME, 1.0) if thinkscope.sniff_columns(cols) else tables.sniff_columns(cols)


def sniff_records(records: list[Any]) -> Detection:
    scores: dict[str, float] = {}
    for obj in records:
        if isinstance(obj, dict) and "thinkscope_run" in obj:
            return Detection(thinkscope.NAME, 1.0)
        if batch.sniff_input(obj):
            return Detection(batch.INPUT_NAME, 1.0, note="a Batch API input file (requests, no outputs)")
        for m in JSON_READERS:
            s = m.sniff(obj)
            if s > scores.get(m.NAME, 0):
                scores[m.NAME] = s
    ranked = sorted(scores.items(), key=lambda kv: -kv[1])
    ranked = [(n, s) for n, s in ranked if s > 0]
    if ranked and ranked[0][1] >= 1.0:
        return Detection(ranked[0][0], 1.0, dict(ranked[1:]))
    # a chat completion without logprobs is plain text to score, when nothing fits better
    if ranked and ranked[0][0] == plaintext.NAME:
        return Detection(plaintext.NAME, ranked[0][1], dict(ranked[1:]))
    return Detection(None, ranked[0][1] if ranked else 0.0, dict(ranked))


def detect(path: str | Path, name: str | None = None) -> Detection:
    """Detect a file's format. Raises TraceError for a file that cannot be read at all."""
    path = Path(path)
    name = name or path.name
    if path.stat().st_size == 0:
        raise TraceError(f"{name}: the file is empty")
    if tables.is_parquet(path):
        try:
            info = thinkscope.parquet_info(path)
            if info is not None:
                return Detection(thinkscope.NAME, 1.0, container="parquet")
            fmt, score = sniff_columns(tables.columns(path))
        except tables.TABLE_ERRORS as e:
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise TraceError(f"{name}: not a readable Parquet file ({reason})") from e
        return Detection(fmt, score, container="parquet")
    c = first_char(path)
    if c in ("{", "["):
        pr = Problems(name)
        records = []
        for _, v in iter_values(path, pr, limit=PEEK_RECORDS):
            records.append(v)
            d = sniff_records(records)
            if d.score >= 1.0:  # decided by the first records: big lines are costly to parse
                return d
        if not records:
            if pr.items:
                raise TraceError(pr.items[0])
            raise TraceError(f"{name}: no JSON records in the file")
        return sniff_records(records)
    # anything else is read as CSV: a token table or plain-text traces
    try:
        cols = tables.columns(path)
    except UnicodeDecodeError as e:
        raise TraceError(f"{name}: {bad_utf8(e, f'at byte offset {e.start}')}") from e
    except tables.TABLE_ERRORS as e:
        raise TraceError(f"{name}: neither JSON nor a readable CSV table ({str(e).splitlines()[0]})") from e
    fmt, score = sniff_columns(cols)
    if fmt:
        return Detection(fmt, score, container="csv")
    row = dict.fromkeys(cols, "")
    s = plaintext.sniff({c: "" for c in row})
    if s:
        return Detection(plaintext.NAME, s, container="csv")
    return Detection(None, 0.0, container="csv", note=f"CSV columns: {', '.join(cols[:12])}")


def describe_unknown(name: str, d: Detection) -> str:
    """The error for a file no reader accepts, naming the formats it resembles."""
    if d.resembles:
        near = ", ".join(f"{n} ({FORMATS.get(n, n)})" for n in d.resembles)
        hint = (f"it resembles {near}, but lacks what those need (usually the logprobs: the request must ask "
                f"for them)")
    else:
        hint = "it resembles none of the known formats"
    extra = f"; {d.note}" if d.note else ""
    return (f"{name}: unknown trace format: {hint}{extra}. Known formats: {', '.join(FORMATS)}; "
            f"choose one with --format")
