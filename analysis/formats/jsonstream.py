"""Streaming JSON values out of a file: JSON Lines, one JSON array, or concatenated documents.

Nothing here holds the whole file: JSON Lines are read a line at a time, and an array (or a
pretty-printed document) is decoded element by element from a sliding text buffer. Every
value comes with the line it starts on, for error messages. Server-sent-event dumps
(``data: {...}`` lines, ``data: [DONE]``) are read as JSON Lines.
"""

from __future__ import annotations

import codecs
import json
from pathlib import Path
from typing import Any, Callable, Iterator

from .base import Problems, bad_utf8

CHUNK = 1 << 20
#: a single JSON value larger than this (in characters) is refused rather than buffered
MAX_VALUE_CHARS = 256 << 20
_WS = " \t\r\n"
_decoder = json.JSONDecoder()


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


def is_json_lines(path: Path) -> bool:
    """True for plain JSON Lines: the first line is one complete JSON object (not SSE, not an
    array, not a pretty-printed document)."""
    with open(path, "rb") as f:
        for raw in f:
            line = raw.strip().lstrip(b"\xef\xbb\xbf")
            if not line:
                continue
            # a whole object on the first line; whether it parses is the reader's business
            return line.startswith(b"{") and line.endswith(b"}")
    return False


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
    with open(path, "rb") as f:
        head = b""
        for raw in f:
            head = raw.strip().lstrip(b"\xef\xbb\xbf")
            if head:
                break
    if c == "{" and not _complete(head):
        yield from _iter_document(path, pr, progress, limit, array=False)
        return
    yield from _iter_lines(path, pr, progress, limit)


def _complete(line: bytes) -> bool:
    if line.startswith(b"data:") or (line.startswith(b"{") and line.endswith(b"}")):
        return True
    try:
        json.loads(line)
        return True
    except ValueError:
        # a first line that is a whole but broken record is still JSON Lines
        return line.rstrip().endswith(b"}")


def _where(msg: str, column: int) -> str:
    """Python's JSON error with its column: its messages either end in "at" ("Invalid control
    character at") or want one ("Expecting value")."""
    return f"{msg} column {column}" if msg.endswith(" at") else f"{msg} at column {column}"


def _iter_lines(path: Path, pr: Problems, progress, limit) -> Iterator[tuple[int, Any]]:
    n = done = 0
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            done += len(raw)
            if progress and lineno % 256 == 0:
                progress(done)
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
            except RecursionError:
                pr.add("JSON nested too deeply", line=lineno)
                continue
            yield lineno, value
            n += 1
            if limit is not None and n >= limit:
                return
            if pr.full:
                return
        if progress:
            progress(done)


def _iter_document(path: Path, pr: Problems, progress, limit, array: bool) -> Iterator[tuple[int, Any]]:
    """Values of one top-level array (array=True) or of whitespace-separated documents."""
    dec = codecs.getincrementaldecoder("utf-8")("strict")
    buf = ""
    pos = 0
    line = 1           # line number at ``pos``
    n = 0
    eof = False
    read_bytes = 0
    want = CHUNK
    opened = not array
    closed = False
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
                    if not eof and len(buf) - pos < MAX_VALUE_CHARS:
                        want = max(CHUNK, len(buf) - pos)
                        if more(want):
                            continue
                    if eof and e.pos >= len(buf) - 1:
                        what = "the JSON array never closes" if array else "the file ends in the middle of a JSON value"
                        pr.add(f"{what}: the last element is cut off ({e.msg})", line=start_line)
                    elif len(buf) - pos >= MAX_VALUE_CHARS:
                        pr.add(f"a single JSON value larger than {MAX_VALUE_CHARS >> 20} MB; "
                               f"split the file into JSON Lines", line=start_line)
                    else:
                        col = e.pos - buf.rfind("\n", 0, e.pos)  # 1-based
                        pr.add(f"not valid JSON: {_where(e.msg, col)}", line=start_line + buf.count("\n", pos, e.pos))
                    return
                except RecursionError:
                    pr.add("JSON nested too deeply", line=start_line)
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

