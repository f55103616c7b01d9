"""Columnar fast path for OpenAI chat completions in JSON Lines (the bulk of real dumps).

Python's ``json`` builds a dict per alternative (20 per token at top-20) and reads about
15-25 MB/s here; pyarrow's JSON reader parses blocks of lines in C++ on every core into
columns. The per-token columns (token, logprob, bytes, alternatives) are cut out of those
columns with numpy, and everything else of a record goes through the very same
``openai_chat.parse`` as the slow path, so both give the same traces.

Whenever the fast path meets something it does not handle exactly like the slow path (a
parse problem, streamed chunks, timestamp-looking strings, ``token_id:N`` tokens, per-token
ids, a schema change between blocks, ...), it raises ``Fallback`` before yielding anything
of the current block; the caller then continues with the slow path from the first record
not yet read, and reports problems with exact line numbers.

pyarrow never sees a block whose lines nest deeper than ``jsonstream.MAX_DEPTH`` (it crashes
the process on very deep JSON) or a line over the per-record size limit: those blocks go to
the record reader, which refuses them with their line.
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj

from ..metrics import SENTINEL_LOGPROB
from ..trace import Trace
from . import openai_chat
from .base import THINKING_FIELDS, Context, Tokens
from .jsonstream import MAX_DEPTH, max_record_bytes, shallow

BLOCK_BYTES = 4 << 20         # lines read and handled at once
PARSE_BLOCK_BYTES = 1 << 20   # pyarrow's unit of parallel parsing
PARSERS = 2                   # blocks parsed at once
AHEAD = 3                     # blocks read and parsing while one becomes traces
_SPACE = b" \t\n\r\x0b\x0c"    # what bytes.isspace() counts as space


def _token_schema() -> pa.Schema:
    """The types of the per-token fields, given to pyarrow so that it does not infer them for
    every block (the rest of a record is still inferred). A value of another type (a number
    for a token, text for a logprob, an object for a list) makes pyarrow fail on the block,
    which then goes to the record reader, which reports it."""
    alt = pa.struct([("token", pa.string()), ("logprob", pa.float64()), ("bytes", pa.list_(pa.int64()))])
    entry = pa.struct([("token", pa.string()), ("logprob", pa.float64()), ("bytes", pa.list_(pa.int64())),
                       ("top_logprobs", pa.list_(alt))])
    choice = pa.struct([("logprobs", pa.struct([("content", pa.list_(entry))])), ("token_ids", pa.list_(pa.int64()))])
    return pa.schema([("choices", pa.list_(choice))])


PARSE_OPTIONS = pj.ParseOptions(explicit_schema=_token_schema(), unexpected_field_behavior="infer")


class Fallback(Exception):
    """The fast path cannot read this block exactly like the slow path."""


def batches(path: Path, ctx: Context, progress: Callable[[int], None] | None = None
            ) -> Iterator[tuple[int, list[Trace]]]:
    """(records read so far, traces of one block of lines); raises Fallback (see above).

    Blocks of about ``BLOCK_BYTES`` of whole lines are parsed separately (pyarrow's own
    streaming reader was measured to grow with the file's size); each block infers the types
    of its other fields, so a field that appears late in a file is no reason to leave the fast
    path. Up to ``AHEAD`` blocks are read and parsed by ``PARSERS`` threads while the current
    one becomes traces (pyarrow parses without the GIL), so both cores keep parsing whenever
    the Python side does not need one.
    """
    records = 0
    with open(path, "rb", buffering=0) as f, ThreadPoolExecutor(PARSERS, thread_name_prefix="thinkscope-parse") as pool:
        blocks = _blocks(f)
        ahead: deque = deque()
        try:
            while True:
                while len(ahead) < AHEAD and (nxt := next(blocks, None)) is not None:
                    data, longest, numbers, done = nxt
                    if data is None:
                        ahead.append((_failed("a line that is not a JSON object"), numbers, done))
                    else:
                        ahead.append((pool.submit(_checked_parse, data, longest), numbers, done))
                if not ahead:
                    return
                future, numbers, done = ahead.popleft()
                table = future.result()
                if isinstance(table, Exception):
                    raise Fallback(str(table)) from table
                if table.num_rows != len(numbers):
                    raise Fallback("rows and lines disagree")
                try:
                    batch = table.combine_chunks().to_batches()[0]
                except (pa.ArrowException, ValueError) as e:  # a key that is not UTF-8, which pyarrow keeps
                    raise Fallback(str(e)) from e
                traces = _block(batch, ctx, numbers)
                records += len(numbers)
                if progress:
                    progress(done)
                yield records, traces
        finally:
            for future, _, _ in ahead:
                future.cancel()


def _blocks(f) -> Iterator[tuple[memoryview | None, int, list[int], int]]:
    """Blocks of about ``BLOCK_BYTES`` of whole lines: (their bytes, or None when a line is not
    a JSON object, the longest line's length, the line numbers of the non-blank lines, bytes
    read so far). Blank-only blocks are skipped.

    ``f`` is an unbuffered file. A block is one read cut after its last newline (the rest is
    read again with the next block), handed on as a view: no line is copied (``readlines``
    builds long lines in small pieces and was measured 6x slower on 700 KB lines).
    """
    line_no = pos = 0
    size = BLOCK_BYTES
    while True:
        f.seek(pos)
        chunk = f.read(size)
        if not chunk:
            return
        cut = chunk.rfind(b"\n") + 1
        if not cut:
            if len(chunk) == size:  # a line longer than a block: read it whole, up to the limit
                if size > max_record_bytes():
                    yield None, size, [line_no + 1], pos
                    return
                size *= 2
                continue
            cut = len(chunk)        # the last line, without a newline
        size = BLOCK_BYTES
        numbers, longest, start, objects = [], 0, 0, True
        skip = bom = len(chunk) - len(chunk.lstrip(b"\xef\xbb\xbf")) if pos == 0 else 0
        while start < cut:
            end = chunk.find(b"\n", start, cut)
            end = cut if end < 0 else end + 1
            line_no += 1
            longest = max(longest, end - start)
            first = chunk[start + bom] if start + bom < end else 32
            if first not in _SPACE or not chunk[start:end].isspace():  # a blank line is no record
                numbers.append(line_no)
                # only objects go to pyarrow: a line "null" crashes its reader when given a schema
                objects = objects and (first == 123 or chunk[start + bom:end].lstrip().startswith(b"{"))
            start, bom = end, 0
        view = memoryview(chunk)[skip:cut]
        pos += cut
        if numbers:
            # a line over the record limit (``longest`` counts its newline) goes to the record
            # reader, which refuses it
            yield (view if objects and longest <= max_record_bytes() + 1 else None), longest, numbers, pos


def _failed(reason: str) -> Future:
    """A parse that failed before it began (for the queue of blocks)."""
    f: Future = Future()
    f.set_result(ValueError(reason))
    return f


def _checked_parse(data: memoryview, longest: int) -> pa.Table | Exception:
    """``_parse``, for a block whose lines nest at most MAX_DEPTH deep and balance; an error
    (for the record reader to locate) without parsing otherwise."""
    if not shallow(data):
        return ValueError(f"a line nested deeper than {MAX_DEPTH} levels, or not JSON")
    return _parse(data, longest)


def _parse(data: memoryview, longest: int) -> pa.Table | Exception:
    """One block parsed by pyarrow, or the error it gave."""
    try:
        # several parse blocks per block, so that pyarrow parses a lone block on all cores;
        # a parse block must hold the longest line. The bytes go in as an Arrow buffer, which
        # pyarrow reads without calling back into Python (and so without the GIL).
        return pj.read_json(pa.BufferReader(pa.py_buffer(data)), parse_options=PARSE_OPTIONS,
                            read_options=pj.ReadOptions(block_size=max(longest + 1, PARSE_BLOCK_BYTES),
                                                        use_threads=True))
    except (pa.ArrowException, ValueError, OSError) as e:
        return e


def _has_list(t: pa.DataType) -> bool:
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return True
    return pa.types.is_struct(t) and any(_has_list(t.field(i).type) for i in range(t.num_fields))


def _sub(t: pa.DataType | None, name: str) -> pa.DataType | None:
    return t.field(name).type if t is not None and pa.types.is_struct(t) and t.get_field_index(name) >= 0 else None


def _garbled_lists_read(schema: pa.Schema, choice: pa.DataType) -> bool:
    """True when a field the record reader reads holds a list whose type pyarrow inferred.

    pyarrow's JSON reader garbles inferred lists that hold nulls ([null, 2] reads as [2, 0],
    measured with pyarrow 26), with no trace in the result; declared types read right. Lists
    no reader looks at (tool calls, annotations, ...) may stay as they are."""
    top = pa.struct(list(schema))
    roots = [top, _sub(top, "request"), _sub(top, "body")]
    if _sub(top, "id") is not None and _has_list(_sub(top, "id")):  # the trace's source id is its text
        return True
    if any(_has_list(t) for r in roots for t in (_sub(r, "prompt"), _sub(r, "input"), _sub(r, "messages")) if t):
        return True
    for m in (_sub(choice, "message"), _sub(choice, "delta")):
        if any(_has_list(t) for t in (_sub(m, f) for f in ("content", *THINKING_FIELDS)) if t):
            return True
    read = (_sub(choice, "finish_reason"), _sub(_sub(choice, "logprobs"), "refusal"))  # kept as they are
    return any(t is not None and _has_list(t) for t in read)


def _has_timestamp(t: pa.DataType) -> bool:
    if pa.types.is_timestamp(t) or pa.types.is_date(t) or pa.types.is_time(t):
        return True
    if pa.types.is_struct(t):
        return any(_has_timestamp(t.field(i).type) for i in range(t.num_fields))
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return _has_timestamp(t.value_type)
    return False


def _field(arr: pa.Array, name: str) -> pa.Array | None:
    if not pa.types.is_struct(arr.type) or arr.type.get_field_index(name) < 0:
        return None
    return pc.struct_field(arr, name)


def _lengths(lists: pa.Array) -> np.ndarray:
    return pc.list_value_length(lists).fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)


def _floats(arr: pa.Array, null: float) -> np.ndarray:
    if not (pa.types.is_floating(arr.type) or pa.types.is_integer(arr.type) or pa.types.is_null(arr.type)):
        raise Fallback(f"numbers of type {arr.type}")
    return np.array(pc.cast(arr, pa.float64()).fill_null(null).to_numpy(zero_copy_only=False), copy=True)


def _block(batch: pa.RecordBatch, ctx: Context, lines: list[int]) -> list[Trace]:
    mark = ctx.local.mark()
    try:
        return _read_block(batch, ctx, lines)
    except Fallback:
        ctx.local.rollback(mark)  # ids given to this block's alternatives were never stored
        raise
    except (pa.ArrowException, ValueError, TypeError, KeyError, IndexError, SystemError) as e:
        # a shape of data this reader did not foresee (or pyarrow failing on it, as its
        # to_pylist does on some odd strings): the record-by-record reader decides
        ctx.local.rollback(mark)
        raise Fallback(f"{type(e).__name__}: {e}") from e


def _read_block(batch: pa.RecordBatch, ctx: Context, lines: list[int]) -> list[Trace]:
    pr = ctx.problems
    if "choices" not in batch.schema.names or any(_has_timestamp(f.type) for f in batch.schema):
        raise Fallback("no choices column, or strings read as timestamps")
    choices = batch.column("choices")
    if not pa.types.is_list(choices.type) or not pa.types.is_struct(choices.type.value_type):
        raise Fallback("choices is not a list of objects")
    if choices.null_count:
        raise Fallback("a record without choices")
    if _garbled_lists_read(batch.schema, choices.type.value_type):
        raise Fallback("lists that pyarrow may have garbled")
    if "object" in batch.schema.names and pc.any(pc.equal(batch.column("object"), "chat.completion.chunk")).as_py():
        raise Fallback("streamed chunks")
    n_choices = _lengths(choices)
    flat = pc.list_flatten(choices)
    logprobs = _field(flat, "logprobs")
    content = _field(logprobs, "content") if logprobs is not None else None
    if content is None or not pa.types.is_list(content.type) or pa.types.is_null(content.type.value_type):
        raise Fallback("no logprobs.content")
    ent = pc.list_flatten(content)
    if _field(ent, "id") is not None:
        raise Fallback("per-token ids")
    tok = _field(ent, "token")
    if tok is None or not pa.types.is_string(tok.type) or tok.null_count:
        raise Fallback("token texts")
    lens = _lengths(content)
    starts = np.concatenate([[0], np.cumsum(lens)])
    tok_py = tok.to_pylist()
    lpv = _floats(_field(ent, "logprob") if _field(ent, "logprob") is not None else pa.nulls(len(ent)), np.nan)
    top = _field(ent, "top_logprobs")
    k_all = 0
    alt = None
    if top is not None and pa.types.is_list(top.type) and not pa.types.is_null(top.type.value_type):
        tl = _lengths(top)
        k_all = int(tl.max(initial=0))
    if k_all:
        alts = pc.list_flatten(top)
        alt_tok = _field(alts, "token")
        if alt_tok is None or not pa.types.is_string(alt_tok.type) or alt_tok.null_count:
            raise Fallback("alternative texts")
        alt_lp = _floats(_field(alts, "logprob") if _field(alts, "logprob") is not None else pa.nulls(len(alts)),
                         -np.inf)
        alt_lp[np.isnan(alt_lp)] = -np.inf
        dead = ~np.isfinite(alt_lp) | (alt_lp <= SENTINEL_LOGPROB)
        live_tok = pc.if_else(pa.array(dead), pa.nulls(len(alt_tok), pa.string()), alt_tok)
        enc = pc.dictionary_encode(live_tok)
        codes = enc.indices.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
        alt_ids = ctx.local.assign(np.asarray(enc.dictionary.to_pylist(), dtype=object))[np.maximum(codes, 0)]
        alt_ids[codes < 0] = -1
        alt = (tl, np.concatenate([[0], np.cumsum(tl)]), alt_lp, alt_ids)
    if "token_id:" in "".join(tok_py) or (k_all and pc.any(pc.starts_with(alt_tok, "token_id:")).as_py()):
        raise Fallback("token_id:N tokens")
    byte_rows_needed = _bytes_disagree(ent, tok)

    # the rest of each record, as Python objects, for openai_chat.parse
    rows = batch.drop_columns(["choices"]).to_pylist()
    ch_fields = {f.name: pc.struct_field(flat, f.name).to_pylist() for f in flat.type if f.name != "logprobs"}
    lp_fields = {f.name: pc.struct_field(logprobs, f.name).to_pylist() for f in logprobs.type if f.name != "content"}
    lp_valid = logprobs.is_valid().to_numpy(zero_copy_only=False)
    content_valid = content.is_valid().to_numpy(zero_copy_only=False)
    bytes_col = _field(ent, "bytes")

    before = (pr.total, len(pr.warnings))
    out: list[Trace] = []
    c = 0
    for r, obj in enumerate(rows):
        chs = []
        for _ in range(int(n_choices[r])):
            ch = {name: vals[c] for name, vals in ch_fields.items()}
            if lp_valid[c]:
                lp = {name: vals[c] for name, vals in lp_fields.items()}
                if content_valid[c]:
                    a, b = int(starts[c]), int(starts[c + 1])
                    lp["content"] = _tokens(a, b, tok_py, lpv, alt, bytes_col if byte_rows_needed else None)
                else:
                    lp["content"] = None
                ch["logprobs"] = lp
            else:
                ch["logprobs"] = None
            chs.append(ch)
            c += 1
        obj["choices"] = chs
        pr.line = lines[r]
        out.extend(openai_chat._safe(obj, ctx))
        ctx.fast_records += 1
        if pr.total != before[0] or len(pr.warnings) != before[1]:
            del pr.items[before[0]:], pr.warnings[before[1]:]
            pr.total = before[0]
            raise Fallback("a record with a problem")
    return out


def _bytes_disagree(ent: pa.Array, tok: pa.Array) -> bool:
    """True when some token's ``bytes`` differ from its text's UTF-8 (a split character)."""
    b = _field(ent, "bytes")
    if b is None or pa.types.is_null(b.type):
        return False
    if not pa.types.is_list(b.type) or not (pa.types.is_integer(b.type.value_type) or pa.types.is_null(b.type.value_type)):
        raise Fallback("bytes of another type")
    vals = pc.list_flatten(b)
    if len(vals) and (vals.null_count or pc.min(vals).as_py() < 0 or pc.max(vals).as_py() > 255):
        raise Fallback("byte values outside 0..255")  # the record reader reports them
    has = b.is_valid()
    blen = _lengths(b)
    tlen = pc.binary_length(tok).to_numpy(zero_copy_only=False)
    hv = has.to_numpy(zero_copy_only=False)
    if (blen[hv] != tlen[hv]).any():
        return True
    if len(vals) == 0:
        return False
    return vals.to_numpy(zero_copy_only=False).astype(np.uint8).tobytes() != _utf8(tok if hv.all() else tok.filter(has))


def _utf8(strings: pa.Array) -> bytes:
    """The UTF-8 bytes of a string array's values, concatenated (its data buffer, no Python strings)."""
    if not len(strings):
        return b""
    _, off, data = strings.buffers()
    offsets = np.frombuffer(off, dtype=np.int32)[strings.offset:strings.offset + len(strings) + 1]
    a, b = int(offsets[0]), int(offsets[-1])
    return data.slice(a, b - a).to_pybytes() if data is not None and b > a else b""


def _tokens(a: int, b: int, tok_py: list, lpv: np.ndarray, alt: tuple | None, bytes_col: pa.Array | None) -> Tokens:
    """The Tokens of one choice: tokens a..b of the block, with their alternatives (as
    run-local ids) and, where a character was split, their bytes (``repair`` rebuilds the text)."""
    n = b - a
    if not n:
        return Tokens.empty()
    top_lp = top_ids = None
    if alt is not None:
        tl, alt_starts, alt_lp, alt_ids = alt
        lens = tl[a:b]
        k = int(lens.max(initial=0))
        lo, hi = int(alt_starts[a]), int(alt_starts[b])
        if k and (lens == k).all():
            top_lp = alt_lp[lo:hi].reshape(n, k).copy()
            top_ids = alt_ids[lo:hi].reshape(n, k).copy()
        elif k:
            mask = np.arange(k)[None, :] < lens[:, None]
            top_lp = np.full((n, k), -np.inf)
            top_ids = np.full((n, k), -1, dtype=np.int64)
            top_lp[mask] = alt_lp[lo:hi]
            top_ids[mask] = alt_ids[lo:hi]
    byte_rows = bytes_col.slice(a, n).to_pylist() if bytes_col is not None else None
    return Tokens(tok_py[a:b], lpv[a:b].copy(), None, None, top_lp, top_ids, byte_rows)
