"""Streaming JSON values out of a file: JSON Lines, one JSON array, or concatenated documents.

Nothing here holds the whole file: JSON Lines are read a line at a time, and an array (or a
pretty-printed document) is decoded element by element from a sliding text buffer. Every
value comes with the line it starts on, for error messages. Server-sent-event dumps
(``data: {...}`` lines, ``data: [DONE]``) are read as JSON Lines.

Two limits guard every reader (and the columnar one in ``fastchat``) against hostile files:
JSON nested deeper than ``MAX_DEPTH`` is refused before a parser descends into it (pyarrow's
JSON reader crashes the process on ~100,000 levels, Python code recurses), and a single record
larger than ``max_record_bytes()`` is refused before it is decoded (decoded, a record takes
about ten times its size in memory).
"""

from __future__ import annotations

import codecs
import json
import re
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from .. import settings
from ..trace import TraceError
from .base import Problems, bad_utf8

CHUNK = 1 << 20
#: arrays and objects nested deeper than this inside one record are refused (traces nest ~10 deep)
MAX_DEPTH = 64
#: a single record (a JSON Lines line, an array element, a document) larger than this is
#: refused; the environment variable THINKSCOPE_MAX_RECORD_MB overrides it
MAX_RECORD_MB = settings.MAX_RECORD_MB.default
RECORD_ENV = settings.MAX_RECORD_MB.name
_WS = " \t\r\n"
_decoder = json.JSONDecoder()


def max_record_bytes() -> int:
    """The per-record size limit in bytes (``MAX_RECORD_MB``, or THINKSCOPE_MAX_RECORD_MB)."""
    try:
        return int(settings.MAX_RECORD_MB.number() * (1 << 20))
    except settings.SettingError as e:  # a reader's problems are TraceErrors
        raise TraceError(str(e)) from None


def _mb(size: float) -> str:
    return f"{size / (1 << 20):,.1f} MB" if size >= 1 << 20 else f"{size / (1 << 20):.2g} MB"


def too_big(size: int, exact: bool = True) -> str:
    """The problem for a record of ``size`` bytes (at least that many unless ``exact``)."""
    limit = max_record_bytes()
    return (f"a single record of {'' if exact else 'more than '}{_mb(size)}, over the limit of {_mb(limit)} "
            f"per record (set {RECORD_ENV} to raise it)")


# --------------------------------------------------------------------------- nesting depth
#
# The check runs at C speed on bytes (1.6 ms of CPU time per MiB, best of 30 runs on a 4 MiB
# block of the ingest benchmark's lines; the import takes about 30): escaped quotes are blanked (numpy finds them next to backslashes), every byte but
# quotes, brackets and newlines is deleted (bytes.translate), and strings go: when every quote
# pairs with its neighbour (no string holds a bracket, the usual case), all quotes at once;
# otherwise adjacent quote pairs first (which keeps every other quote's parity), then the few
# strings that hold brackets. What is left is brackets, whose running sum is the depth. Across
# lines the sum is an upper bound of each line's depth as long as it never drops below zero;
# an unterminated string or a line that closes more than it opened fails the check (its
# reader decides), and broken JSON that passes it is still no deeper than the limit.

_KEEP = b'"[]{}\n'
_DELETE = bytes(b for b in range(256) if b not in _KEEP)
_DELETE_NL = _DELETE + b"\n"
_SQUARE = bytes.maketrans(b"{}", b"[]")
_STRING = re.compile(rb'"[^"\n]*"')


def _escaped_quotes(arr: np.ndarray) -> np.ndarray:
    """Offsets of the quotes that a backslash escapes (after an odd run of backslashes)."""
    bsp = np.flatnonzero(arr == 92)
    if not bsp.size:
        return bsp
    first = np.empty(bsp.size, dtype=bool)
    first[0] = True
    np.not_equal(bsp[1:], bsp[:-1] + 1, out=first[1:])
    starts = np.flatnonzero(first)
    lengths = np.diff(np.append(starts, bsp.size))
    after = bsp[starts] + lengths
    after = after[(lengths & 1).astype(bool) & (after < arr.size)]
    return after[arr[after] == 34]


def _unquoted(data) -> bytes | bytearray:
    """``data`` with its escaped quotes blanked (a copy only when it has some)."""
    arr = np.frombuffer(data, dtype=np.uint8)
    esc = _escaped_quotes(arr)
    if esc.size:
        data = bytearray(data)
        np.frombuffer(data, dtype=np.uint8)[esc] = 32
    return data if isinstance(data, (bytes, bytearray)) else bytes(data)


def shallow(data, lines: bool = True) -> bool:
    """False when some line of ``data`` (UTF-8 bytes, or any buffer of them) may nest deeper than
    MAX_DEPTH (or the whole text as one value, unless ``lines``: newlines are whitespace). True
    means no line does; it may still be broken JSON, which its parser reports."""
    rem = _unquoted(data).translate(None, _DELETE if lines else _DELETE_NL)
    brackets = rem.translate(_SQUARE, b'"')
    if 2 * rem.count(b'""') != len(rem) - len(brackets):
        brackets = _STRING.sub(b"", rem.replace(b'""', b"")).translate(_SQUARE)
        if b'"' in brackets:
            return False
    arr = np.frombuffer(brackets, dtype=np.uint8)
    depth = np.cumsum((arr == 91).view(np.int8) - (arr == 93).view(np.int8), dtype=np.int32)
    return not depth.size or (depth.min() >= 0 and depth.max() <= MAX_DEPTH)


def nesting(data, prefix: bool = False) -> tuple[int, int] | None:
    """(the deepest nesting in ``data``, the offset of its first bracket deeper than MAX_DEPTH
    or -1) for the UTF-8 bytes of one JSON value (newlines are whitespace), or of its beginning
    (``prefix``); None when its quotes or brackets do not balance (not JSON: the parser says
    why). Exact, and slower than ``shallow``."""
    arr = np.frombuffer(data, dtype=np.uint8)
    quote = arr == 34
    quote[_escaped_quotes(arr)] = False
    idx = np.flatnonzero(quote | ((arr | 0x26) == 0x7F))  # quotes and brackets (and Y _ y DEL)
    rem = arr[idx]
    outside = (np.cumsum(quote[idx], dtype=np.int64) & 1) == 0
    opens = ((rem == 91) | (rem == 123)) & outside
    closes = ((rem == 93) | (rem == 125)) & outside
    depth = np.cumsum(opens.view(np.int8) - closes.view(np.int8), dtype=np.int64)
    if not depth.size:
        return 0, -1
    if not prefix and (not outside[-1] or depth.min() < 0 or depth[-1] != 0):
        return None
    deeper = np.flatnonzero(depth > MAX_DEPTH)
    return int(depth.max()), int(idx[deeper[0]]) if deeper.size else -1


def depth_problem(data, prefix: bool = False) -> tuple[int, str] | None:
    """For one record's UTF-8 bytes (or its beginning: ``prefix``) nested deeper than MAX_DEPTH:
    (the newlines in it before the spot, the problem naming its column); None if it is not, or
    if it is not JSON at all (its parser reports that)."""
    if data.count(b"[") + data.count(b"{") <= MAX_DEPTH or (not prefix and shallow(data, lines=False)):
        return None
    found = nesting(data, prefix)
    if found is None or found[1] < 0:
        return None
    before = bytes(data[:found[1]])
    start = before.rfind(b"\n") + 1
    column = len(before[start:].decode("utf-8", "replace")) + 1
    return before.count(b"\n"), f"JSON nested deeper than {MAX_DEPTH} levels (the limit) at column {column}"


def loads(text: str | bytes) -> Any:
    """``json.loads`` for text from a file: ValueError for nesting deeper than MAX_DEPTH (found
    before decoding) and for numbers Python will not convert, as for any bad JSON."""
    data = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
    problem = depth_problem(data)
    if problem:
        raise ValueError(problem[1])
    try:
        return json.loads(text)
    except RecursionError as e:
        raise ValueError(_unreadable(e)) from None


def first_char(path: Path) -> str:
    """The first non-whitespace character of a text file (after a BOM), '' if none; '{' for a
    server-sent-event dump (``data: {...}`` lines)."""
    with open(path, "rb") as f:
        while True:
            chunk = f.read(4096)
            if not chunk:
                return ""
            s = chunk.lstrip(b"\xef\xbb\xbf" + _WS.encode())
            if s:
                if s.startswith(b"data:"):
                    return "{"
                return chr(s[0])


def _read_line(f, limit: int) -> tuple[bytes, int]:
    """The next line of ``f`` and its size in bytes (without its newline); a line longer than
    ``limit`` is read past (in pieces: never held whole) and comes back cut at ``limit + 1``
    bytes, with its full size."""
    raw = f.readline(limit + 1)
    size = len(raw) - raw.endswith(b"\n")
    if size > limit:
        while piece := f.readline(CHUNK):
            size += len(piece) - piece.endswith(b"\n")
            if piece.endswith(b"\n"):
                break
    return raw, size


def _first_line(path: Path) -> bytes:
    """The first non-blank line, stripped (and cut at the record limit)."""
    limit = max_record_bytes()
    with open(path, "rb") as f:
        while True:
            raw, _ = _read_line(f, limit)
            if not raw:
                return b""
            line = raw.strip().lstrip(b"\xef\xbb\xbf")
            if line:
                return line


def is_json_lines(path: Path) -> bool:
    """True for plain JSON Lines: the first line is one complete JSON object (not SSE, not an
    array, not a pretty-printed document)."""
    line = _first_line(path)
    # a whole object on the first line; whether it parses is the reader's business
    return line.startswith(b"{") and line.endswith(b"}")


def iter_values(path: Path, pr: Problems, progress: Callable[[int], None] | None = None,
                limit: int | None = None) -> Iterator[tuple[int, Any]]:
    """Yield (line number, value) for each top-level record; bad ones become problems.

    ``progress`` gets the number of bytes read so far. ``limit`` stops after that many values
    (for previews and format detection).
    """
    c = first_char(path)
    if not c:
        pr.add("the file is empty (no JSON values in it)", line=None)
        return
    if c == "[":
        yield from _iter_document(path, pr, progress, limit, array=True)
        return
    # JSON Lines unless the first line alone is not a complete value (pretty-printed JSON)
    if c == "{" and not _complete(_first_line(path)):
        yield from _iter_document(path, pr, progress, limit, array=False)
        return
    yield from _iter_lines(path, pr, progress, limit)


def _complete(line: bytes) -> bool:
    if line.startswith(b"data:") or (line.startswith(b"{") and line.endswith(b"}")):
        return True
    try:
        loads(line)
        return True
    except ValueError:
        # a first line that is a whole but broken record is still JSON Lines
        return line.rstrip().endswith(b"}")


def _where(msg: str, column: int) -> str:
    """Python's JSON error with its column: its messages either end in "at" ("Invalid control
    character at") or want one ("Expecting value")."""
    return f"{msg} column {column}" if msg.endswith(" at") else f"{msg} at column {column}"


def _iter_lines(path: Path, pr: Problems, progress, limit) -> Iterator[tuple[int, Any]]:
    n = done = lineno = 0
    max_bytes = max_record_bytes()
    with open(path, "rb") as f:
        while True:
            raw, size = _read_line(f, max_bytes)
            if not raw:
                break
            lineno += 1
            done += size + 1
            if progress and lineno % 256 == 0:
                progress(done)
            if size > max_bytes:
                pr.add(too_big(size), line=lineno)
                continue
            line = raw.strip()
            if lineno == 1:
                line = line.lstrip(b"\xef\xbb\xbf")
            if not line:
                continue
            if line.startswith(b"data:"):  # server-sent events
                line = line[5:].strip()
                if line == b"[DONE]" or not line:
                    continue
            elif line.startswith((b"event:", b"id:", b":")):
                continue
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError as e:
                pr.add(bad_utf8(e, f"at column {e.start + 1}"), line=lineno)
                continue
            deep = depth_problem(line)
            if deep:
                pr.add(deep[1], line=lineno)
                continue
            try:
                value = json.loads(text)
            except json.JSONDecodeError as e:
                last = not raw.endswith(b"\n") and not f.peek(1)
                if last:
                    pr.add(f"the last line is cut off: the file ends in the middle of a JSON value "
                           f"({_where(e.msg, e.colno)})", line=lineno)
                else:
                    pr.add(f"not valid JSON: {_where(e.msg, e.colno)}", line=lineno)
                continue
            except (ValueError, RecursionError) as e:  # a number of more digits than Python converts
                pr.add(_unreadable(e), line=lineno)
                continue
            yield lineno, value
            n += 1
            if limit is not None and n >= limit:
                return
            if pr.full:
                return
        if progress:
            progress(done)


def _unreadable(e: Exception) -> str:
    """The problem when Python's json gives up on text without a syntax error: too deep for
    its recursion, or a number of more digits than Python converts."""
    if isinstance(e, RecursionError):
        return f"JSON nested deeper than {MAX_DEPTH} levels (the limit)"
    return f"not valid JSON: {str(e).split(';')[0]}"


def _iter_document(path: Path, pr: Problems, progress, limit, array: bool) -> Iterator[tuple[int, Any]]:
    """Values of one top-level array (array=True) or of whitespace-separated documents."""
    dec = codecs.getincrementaldecoder("utf-8")("strict")
    buf = ""
    pos = 0
    line = 1           # line number at ``pos``
    n = 0
    eof = False
    read_bytes = 0
    opened = not array
    closed = False
    max_bytes = max_record_bytes()

    def buffered_bytes(start: int, stop: int | None = None) -> int:
        """UTF-8 bytes of ``buf[start:stop]`` (of a value, or the part of it read so far)."""
        stop = len(buf) if stop is None else stop
        return stop - start if buf.isascii() else len(buf[start:stop].encode("utf-8", "surrogatepass"))

    with open(path, "rb") as f:
        def more(size: int) -> bool:
            nonlocal buf, pos, eof, read_bytes
            chunk = f.read(size)
            read_bytes += len(chunk)
            if progress:
                progress(read_bytes)
            try:
                text = dec.decode(chunk, final=not chunk)
            except UnicodeDecodeError as e:
                bad = e.object[e.start] if e.start < len(e.object) else None
                what = f"byte 0x{bad:02x}" if bad is not None else "a character cut off"
                pr.add(f"not valid UTF-8 ({what} near byte offset {read_bytes - len(chunk) + e.start})",
                       line=line + buf.count("\n", pos))
                eof = True
                return False
            if not chunk:
                eof = True
                return False
            if pos > CHUNK:
                buf = buf[pos:]
                pos = 0
            buf += text
            if read_bytes == len(chunk):
                buf = buf.lstrip("\ufeff")
            return True

        more(CHUNK)
        while True:
            # skip whitespace and, inside an array, the separators
            while True:
                while pos < len(buf) and buf[pos] in _WS:
                    if buf[pos] == "\n":
                        line += 1
                    pos += 1
                if pos < len(buf):
                    break
                if eof or not more(CHUNK):
                    break
            if pos >= len(buf):
                if array and not closed:
                    pr.add(f"the JSON array never closes: the file ends after {n} element(s) "
                           f"(a ']' is missing)", line=line)
                return
            ch = buf[pos]
            if array:
                if not opened:
                    if ch != "[":
                        pr.add(f"expected '[' at the start of the JSON array, found {ch!r}", line=line)
                        return
                    opened = True
                    pos += 1
                    continue
                if closed:
                    pr.add(f"unexpected text after the end of the JSON array: {buf[pos:pos + 20]!r}", line=line)
                    return
                if ch == "]":
                    closed = True
                    pos += 1
                    continue
                if ch == ",":
                    if n == 0:
                        pr.add("a ',' before the first element of the array", line=line)
                        return
                    pos += 1
                    continue
            start_line = line
            while True:
                try:
                    value, end = _decoder.raw_decode(buf, pos)
                    break
                except json.JSONDecodeError as e:
                    # read on while the value so far is under the record limit (in bytes)
                    so_far = buffered_bytes(pos) if (len(buf) - pos) * 4 > max_bytes else len(buf) - pos
                    if not eof and so_far <= max_bytes:
                        if more(min(max(CHUNK, len(buf) - pos), max_bytes + 1 - so_far + CHUNK)):
                            continue
                    if so_far > max_bytes:
                        pr.add(too_big(so_far, exact=False), line=start_line)
                    elif eof and e.pos >= len(buf) - 1:
                        what = "the JSON array never closes" if array else "the file ends in the middle of a JSON value"
                        pr.add(f"{what}: the last element is cut off ({e.msg})", line=start_line)
                    else:
                        col = e.pos - buf.rfind("\n", 0, e.pos)  # 1-based
                        pr.add(f"not valid JSON: {_where(e.msg, col)}", line=start_line + buf.count("\n", pos, e.pos))
                    return
                except (ValueError, RecursionError) as e:
                    deep = isinstance(e, RecursionError) and depth_problem(
                        buf[pos:].encode("utf-8", "surrogatepass"), prefix=True)
                    pr.add(deep[1] if deep else _unreadable(e), line=start_line + (deep[0] if deep else 0))
                    return
            if (end - pos) * 4 > max_bytes and (size := buffered_bytes(pos, end)) > max_bytes:
                pr.add(too_big(size), line=start_line)
                return
            if buf.count("[", pos, end) + buf.count("{", pos, end) > MAX_DEPTH:
                deep = depth_problem(buf[pos:end].encode("utf-8", "surrogatepass"))
                if deep:
                    pr.add(deep[1], line=start_line + deep[0])
                    return
            line += buf.count("\n", pos, end)
            pos = end
            yield start_line, value
            n += 1
            if (limit is not None and n >= limit) or pr.full:
                return
            if array:
                # the next thing must be ',' or ']'
                while True:
                    while pos < len(buf) and buf[pos] in _WS:
                        if buf[pos] == "\n":
                            line += 1
                        pos += 1
                    if pos < len(buf) or eof or not more(CHUNK):
                        break
                if pos < len(buf) and buf[pos] not in ",]":
                    pr.add(f"expected ',' or ']' after element {n} of the array, found {buf[pos]!r}", line=line)
                    return

