"""Shared pieces of the trace-file readers: problem reports, field checks, token columns.

Every reader turns records of its format into canonical ``Trace`` objects. Problems are
collected (up to a cap) with the file, line and JSON path of the bad field, so that a user
sees everything wrong with a file at once; ``Problems.raise_if_any`` turns them into one
``TraceError`` at the end.
"""

from __future__ import annotations

import codecs
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from ..errors import IngestError
from ..metrics import SENTINEL_LOGPROB, logprob_conditions, source_logprob_conditions
from ..settings import THINK_MARKER
from ..trace import Trace

#: problems listed in full before the rest are only counted
MAX_PROBLEMS = 50
#: a logprob above this (nats) is refused; up to it, it is a server's rounding (float32
#: softmax gives +1e-7) and reads as 0
LOGPROB_TOLERANCE = 1e-4
#: the alternatives of one token may sum to this much more than probability 1 (logprobs
#: rounded to one or two decimals) before they are refused
MASS_TOLERANCE = 0.05

#: canonical per-trace metadata fields and the names other tools give them (first match wins)
META_SYNONYMS: dict[str, tuple[str, ...]] = {
    "problem_id": ("problem_id", "question_id", "task_id", "problem_idx", "qid", "unique_id"),
    "question": ("question", "problem"),
    "gold_answer": ("gold_answer", "gold", "reference_answer", "expected_answer", "target", "ground_truth"),
    "level": ("level", "difficulty", "difficulty_level"),
    "correct": ("correct", "is_correct", "correctness", "passed"),
    "pred_answer": ("pred_answer", "predicted_answer", "prediction", "extracted_answer"),
    "sample_idx": ("sample_idx", "sample", "sample_index"),
    "model": ("model", "model_name"),
}
#: sampling settings copied into a trace's metadata when a record carries them
SAMPLING_FIELDS = ("temperature", "top_p", "top_k", "min_p", "max_tokens", "seed", "n",
                   "presence_penalty", "frequency_penalty", "repetition_penalty")
THINKING_FIELDS = ("reasoning", "reasoning_content", "thinking")


class Problems:
    """Collects problems with their location; counts past the cap without keeping them."""

    def __init__(self, file: str, cap: int = MAX_PROBLEMS):
        self.file, self.cap = file, cap
        self.items: list[str] = []
        self.total = 0
        self.line: int | None = None     # line of the record being read
        self.unit = "line"               # what line numbers count ("row" in Parquet files)
        self.warnings: list[str] = []    # not errors: failed batch requests and the like

    def where(self, line: int | None = None) -> str:
        line = self.line if line is None else line
        return f"{self.file} {self.unit} {line}" if line is not None else self.file

    def add(self, message: str, line: int | None = None) -> None:
        self.total += 1
        if len(self.items) < self.cap:
            self.items.append(printable(f"{self.where(line)}: {message}"))

    def at(self, path: str, message: str, line: int | None = None, warn: bool = False) -> None:
        """``path: message``, a problem (or with ``warn`` a warning) of a field whose value alone
        is not the problem (a list's sum, an entry listed twice)."""
        (self.warn if warn else self.add)(f"{path}: {message}", line)

    def bad(self, path: str, value: Any, expected: str, line: int | None = None) -> None:
        """``path is <value>, expected <expected>`` at the current line (or ``line``)."""
        self.add(f"{path} is {show(value)}, expected {expected}", line)

    def missing(self, path: str, what: str = "") -> None:
        self.add(f"{path} is missing" + (f" ({what})" if what else ""))

    def warn(self, message: str, line: int | None = None) -> None:
        if len(self.warnings) < self.cap:
            self.warnings.append(printable(f"{self.where(line)}: {message}"))

    @property
    def full(self) -> bool:
        """True once the cap is reached: readers may stop early (the count is then a minimum)."""
        return self.total >= self.cap * 4

    def raise_if_any(self) -> None:
        if self.total:
            raise IngestError(self.file, self.items, self.total)


def show(value: Any, limit: int = 40) -> str:
    """A short JSON rendering of a bad value for an error message."""
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    try:
        text = printable(json.dumps(value, ensure_ascii=False, allow_nan=True))
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def printable(text: str) -> str:
    """``text`` with lone surrogates written as ``\\udXXX`` escapes: a message about text
    that is not UTF-8 must itself be writable (to a terminal, DuckDB, a page)."""
    if text.isascii():
        return text
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def lone_surrogate(text: str) -> int | None:
    """Index of the first lone UTF-16 surrogate in ``text`` (a JSON escape such as ``\\ud800``
    that is half of a pair decodes to one), or None when the text is UTF-8 encodable."""
    if text.isascii():
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        return e.start
    return None


def text_expected(text: str, at: int) -> str:
    """What ``Problems.bad`` says was expected of text with a lone surrogate at index ``at``."""
    return f"text (its \\u{ord(text[at]):04x} is half of a UTF-16 surrogate pair, not a character)"


def bad_utf8(e: UnicodeDecodeError, where: str = "") -> str:
    """The message for bytes that are not UTF-8 (the offending byte, and where if known)."""
    obj = e.object if isinstance(e.object, (bytes, bytearray)) else b""
    what = f"byte 0x{obj[e.start]:02x}" if e.start < len(obj) else "a character cut off at the end"
    return f"not valid UTF-8 ({what}{', ' + where if where else ''})"


class Skip(Exception):
    """Internal: the current record is unusable; its problems are already recorded."""


def guarded(pr: "Problems", fn, *args, **kwargs):
    """Run a record parser; a record whose structure surprises it becomes a problem of that
    record (with the exception's words) instead of a crash, and the reading goes on."""
    try:
        return fn(*args, **kwargs)
    except Skip:
        return None
    except (TypeError, AttributeError, KeyError, IndexError, ValueError, OverflowError) as e:
        pr.add(f"the record does not have the expected structure ({type(e).__name__}: {str(e)[:120]})")
        return None


def each_record(values, ctx: "Context", parse) -> Iterator["Trace"]:
    """Traces of formats whose records stand alone: ``parse(obj, ctx)`` gives a trace, a list
    of traces, or None, one record at a time, each under ``guarded``."""
    for line, obj in values:
        ctx.problems.line = line
        out = guarded(ctx.problems, parse, obj, ctx)
        if isinstance(out, list):
            yield from out
        elif out is not None:
            yield out


# --------------------------------------------------------------------------- field access


def get(obj: Any, key: str, path: str, pr: Problems, expected: type | tuple = dict,
        required: bool = True, what: str = "") -> Any:
    """obj[key] checked to be of ``expected`` type; records a problem and raises Skip if not."""
    if not isinstance(obj, dict):
        pr.bad(path.rsplit(".", 1)[0] if "." in path else path, obj, "an object")
        raise Skip
    v = obj.get(key)
    if v is None:
        if required:
            pr.missing(path, what)
            raise Skip
        return None
    if not isinstance(v, expected) or (expected is not bool and isinstance(v, bool) and bool not in _tuple(expected)):
        pr.bad(path, v, _expected_name(expected))
        raise Skip
    return v


def _tuple(t) -> tuple:
    return t if isinstance(t, tuple) else (t,)


def _expected_name(t) -> str:
    names = {dict: "an object", list: "a list", str: "a string", int: "an integer", float: "a number",
             bool: "a boolean"}
    return " or ".join(dict.fromkeys(names.get(x, x.__name__) for x in _tuple(t)))


def is_number(v: Any) -> bool:
    return (type(v) is float or type(v) is int)


# --------------------------------------------------------------------------- token columns


@dataclass
class Keys:
    """Field names of one token entry and of its alternatives in a given format."""

    token: str = "token"
    logprob: str = "logprob"
    top: str = "top_logprobs"
    alt_token: str = "token"
    alt_logprob: str = "logprob"
    bytes: str | None = "bytes"
    id: str | None = None           # per-token id field (llama.cpp, Ollama's OpenAI route)
    probs: bool = False             # values are linear probabilities (llama.cpp post-sampling)


@dataclass
class Tokens:
    """Per-token columns read from a record, before byte repair and id parsing."""

    tokens: list[str]
    logprobs: np.ndarray                        # [T] nats, NaN where unknown
    token_ids: np.ndarray | None = None         # [T] -1 where unknown
    top_tokens: list[list[str]] | None = None   # [T][<=k]
    top_logprobs: np.ndarray | None = None      # [T, k], -inf padded
    top_ids: np.ndarray | None = None           # [T, k], -1 padded
    byte_rows: list | None = None               # [T] list of ints or None

    @property
    def n(self) -> int:
        return len(self.tokens)

    @classmethod
    def empty(cls) -> "Tokens":
        return cls([], np.empty(0))

    def concat(self, other: "Tokens") -> "Tokens":
        """This token run followed by ``other`` (streamed pieces of one response)."""
        if not self.n:
            return other
        if not other.n:
            return self
        k = max(self.k, other.k)
        def pad(a, fill, rows):
            if a is None:
                return np.full((rows, k), fill)
            return np.pad(a, ((0, 0), (0, k - a.shape[1])), constant_values=fill) if a.shape[1] < k else a
        tl = ti = tt = None
        if k:
            tl = np.vstack([pad(self.top_logprobs, -np.inf, self.n), pad(other.top_logprobs, -np.inf, other.n)])
            if self.top_ids is not None or other.top_ids is not None:
                ti = np.vstack([pad(self.top_ids, -1, self.n), pad(other.top_ids, -1, other.n)]).astype(np.int64)
            tt = (self.top_tokens or [[] for _ in range(self.n)]) + (other.top_tokens or [[] for _ in range(other.n)])
        ids = None
        if self.token_ids is not None or other.token_ids is not None:
            ids = np.concatenate([self.token_ids if self.token_ids is not None else np.full(self.n, -1),
                                  other.token_ids if other.token_ids is not None else np.full(other.n, -1)])
        br = None
        if self.byte_rows is not None or other.byte_rows is not None:
            br = (self.byte_rows or [None] * self.n) + (other.byte_rows or [None] * other.n)
        return Tokens(self.tokens + other.tokens, np.concatenate([self.logprobs, other.logprobs]), ids,
                      tt, tl, ti, br)

    @property
    def k(self) -> int:
        return 0 if self.top_logprobs is None else int(self.top_logprobs.shape[1])


_TOKEN_ID_RE = re.compile(r"^token_id:(-?\d+)$")
_NUM_OR_NONE = {float, int, type(None)}


@dataclass(frozen=True)
class Where:
    """Where a reader found a token's fields, for messages: templates of ``i`` (the token),
    ``j`` (the alternative), ``text`` (the alternative's text, shown as JSON) and ``name``
    (``names[j]``: the alternative's column in a table). ``lines``: token ``i`` is on line
    ``lines[i]`` (tables); otherwise all are on the record's line."""

    token: str                        # the token's text
    value: str                        # its logprob (or probability)
    alts: str                         # its list of alternatives
    alt: str                          # one alternative
    alt_token: str                    # that alternative's text
    alt_value: str                    # and its logprob
    probs: bool = False               # the file holds probabilities, not logprobs
    lines: Any = None
    names: Any = None

    @classmethod
    def of(cls, path: str, keys: "Keys") -> "Where":
        """The places of ``read_tokens``' per-token objects at ``path``."""
        entry, alt = f"{path}[{{i}}]", f"{path}[{{i}}].{keys.top}[{{j}}]"
        return cls(f"{entry}.{keys.token}", f"{entry}.{keys.logprob}", f"{entry}.{keys.top}", alt,
                   f"{alt}.{keys.alt_token}", f"{alt}.{keys.alt_logprob}", keys.probs)

    def line(self, i: int) -> int | None:
        return None if self.lines is None else int(self.lines[i])

    def path(self, template: str, t: "Tokens", i: int, j: int = 0) -> str:
        """One of the templates, for token ``i`` (and alternative ``j``) of ``t``."""
        return template.format(i=i, j=j, text=_alt_text(t, i, j), name=self.names[j] if self.names else "")


def read_tokens(entries: Any, path: str, pr: Problems, keys: Keys = Keys()) -> Tokens:
    """Token columns from a list of per-token objects (OpenAI-style ``logprobs.content``),
    checked by ``check_tokens``. ``entries`` may be the columns already cut out (``Tokens``, from
    the columnar reader), which get the same checks.

    The common case runs on list comprehensions and one numpy conversion; only when that
    fails does a slow walk find and report every bad field with its path.
    """
    if isinstance(entries, Tokens):
        check_tokens(entries, pr, Where.of(path, keys))
        return entries
    if not isinstance(entries, list):
        pr.bad(path, entries, "a list")
        raise Skip
    if not entries:
        return Tokens.empty()
    try:
        t = _read_tokens_fast(entries, keys)
    except (KeyError, TypeError, AttributeError, ValueError, _Bad):
        _report_tokens(entries, path, pr, keys)
        raise Skip
    check_tokens(t, pr, Where.of(path, keys))
    return t


def check_tokens(t: Tokens, pr: Problems, where: Where) -> None:
    """Refuse values no distribution has, and texts that are not text; raise Skip after
    recording them at ``where``'s places.

    - a logprob above ``LOGPROB_TOLERANCE`` (a probability above 1): an error; up to it, it reads as 0;
    - alternatives of one token whose probabilities sum to more than 1 + ``MASS_TOLERANCE``: an error;
    - one token id twice among a token's alternatives: an error; one text twice with the same
      value: a warning (one alternative listed twice, or two tokens that print alike; both count);
    - a lone surrogate in the text of a token or an alternative: an error.
    """
    before = pr.total
    what = "a probability <= 1" if where.probs else "a log-probability <= 0"
    shown = (lambda v: float(f"{math.exp(v):.12g}")) if where.probs else float
    for i in _first(np.flatnonzero(t.logprobs > LOGPROB_TOLERANCE), pr):
        pr.bad(where.path(where.value, t, i), shown(t.logprobs[i]), what, where.line(i))
    if lone_surrogate("".join(t.tokens)) is not None:
        for i, x in enumerate(t.tokens):
            at = lone_surrogate(x)
            if at is not None:
                pr.bad(where.path(where.token, t, i), x, text_expected(x, at), where.line(i))
    if t.k:
        top = t.top_logprobs
        high = top > LOGPROB_TOLERANCE
        any_high = bool(high.any())
        for i, j in _first(np.argwhere(high), pr) if any_high else ():
            pr.bad(where.path(where.alt_value, t, i, j), shown(top[i, j]), what, where.line(i))
        # sentinels (<= -9999) and -inf padding are probability 0 here too
        p = np.exp(top, where=~high, out=np.zeros_like(top)) if any_high else np.exp(top)
        mass = p.sum(axis=1)
        for i in _first(np.flatnonzero(mass > 1.0 + MASS_TOLERANCE), pr):
            pr.at(where.path(where.alts, t, i), f"the alternatives' probabilities sum to {mass[i]:.4g}, but those of "
                  f"one token sum to at most 1", where.line(i))
        _check_repeats(t, p, pr, where)
        rows = t.top_tokens or ()
        if rows and lone_surrogate(_joined(rows)) is not None:
            for i, row in enumerate(rows):
                for j, x in enumerate(row):
                    at = lone_surrogate(x) if x else None
                    if at is not None:
                        pr.bad(where.path(where.alt_token, t, i, j), x, text_expected(x, at), where.line(i))
    if pr.total > before:
        raise Skip


def _joined(rows: list[list[str | None]]) -> str:
    """The alternatives' texts joined (a row padded with None is joined without it)."""
    try:
        return "".join(map("".join, rows))   # C loops: half the time of one generator
    except TypeError:
        return "".join(x for row in rows for x in row if x)


def _first(found: np.ndarray, pr: Problems) -> list:
    """The first places of one kind of problem, as many as are listed; the rest are only counted."""
    room = max(pr.cap - len(pr.items), 1)
    pr.total += max(len(found) - room, 0)
    return found[:room].tolist()


def _alt_text(t: Tokens, i: int, j: int) -> str:
    rows = t.top_tokens
    return show(rows[i][j]) if rows is not None and i < len(rows) and j < len(rows[i]) else str(j)


def _check_repeats(t: Tokens, p: np.ndarray, pr: Problems, where: Where) -> None:
    """Alternatives listed twice for one token (see ``check_tokens``): by id where the file gives
    ids, else by text (as run-local ids are given); those without probability (``p``) are not
    compared."""
    from ..store import LOCAL_ID_BASE
    top = t.top_logprobs
    if t.top_ids is not None:
        s = np.sort(t.top_ids, axis=1)
        twice = ((s[:, 1:] == s[:, :-1]) & (s[:, 1:] >= 0)).any(axis=1)

        def row_ids(i: int) -> list[int]:
            return t.top_ids[i].tolist()
    elif t.top_tokens is not None:
        # a text listed twice is reported only with the same value, so only rows where two live
        # alternatives share a logprob can hold one (comparing every text was a tenth of a read)
        live = np.sort(np.where(p > 0, top, np.nan), axis=1)   # NaN sorts last and equals nothing
        twice = (live[:, 1:] == live[:, :-1]).any(axis=1)
        def row_ids(i: int) -> list[int]:
            codes: dict[str, int] = {}
            return [-1 if x is None else LOCAL_ID_BASE + codes.setdefault(x, len(codes))
                    for x in _pad_rows([t.top_tokens[i]], t.k)[0]]
    else:
        return
    for i in np.flatnonzero(twice).tolist():
        seen: dict[int, int] = {}
        for j, x in enumerate(row_ids(i)):
            if x < 0 or p[i, j] == 0:
                continue
            j0 = seen.setdefault(x, j)
            if j0 == j:
                continue
            here = where.path(where.alt, t, i, j)
            first = where.path(where.alt, t, i, j0)
            if x < LOCAL_ID_BASE:
                pr.at(here, f"token id {x} is listed again (first at {first}); each alternative is listed once",
                      where.line(i))
            elif top[i, j] == top[i, j0]:
                pr.at(here, f"repeats {first} (the same text and logprob {top[i, j]:g}): one alternative listed "
                      f"twice, or two tokens that print alike; both count", where.line(i), warn=True)


class _Bad(Exception):
    pass


def _to_logprob(values: list, probs: bool, allowed=_NUM_OR_NONE) -> np.ndarray:
    if not set(map(type, values)) <= allowed:
        raise _Bad
    arr = np.array([np.nan if v is None else v for v in values] if None in values else values, dtype=np.float64)
    if probs:
        if (arr < 0).any():
            raise _Bad  # reported by _report_pair
        with np.errstate(divide="ignore"):
            arr = np.log(arr)
    return arr


def _read_tokens_fast(entries: list, keys: Keys) -> Tokens:
    tk, lk = keys.token, keys.logprob
    toks = [e[tk] for e in entries]
    if not set(map(type, toks)) <= {str}:
        raise _Bad
    lps = _to_logprob([e.get(lk) for e in entries], keys.probs)
    ids = None
    if keys.id:
        raw = [e.get(keys.id) for e in entries]
        if not set(map(type, raw)) <= {int, type(None)}:
            raise _Bad
        ids = np.array([-1 if v is None else v for v in raw], dtype=np.int64)
    byte_rows = [e.get(keys.bytes) for e in entries] if keys.bytes else None
    if byte_rows is not None and not all(b is None or _is_byte_list(b) for b in byte_rows):
        raise _Bad
    tops = [e.get(keys.top) or () for e in entries]
    if not set(map(type, tops)) <= {list, tuple}:
        raise _Bad
    k = max(map(len, tops))
    if not k:
        return Tokens(toks, lps, ids, None, None, None, byte_rows)
    at, al = keys.alt_token, keys.alt_logprob
    alt_toks = [[a[at] for a in row] for row in tops]
    flat_tok = [x for row in alt_toks for x in row]
    if not set(map(type, flat_tok)) <= {str}:
        raise _Bad
    as_ids = None
    if "token_id:" in "".join(flat_tok):
        # vLLM's return_tokens_as_token_ids: "token_id:N"; the text is only in the bytes
        as_ids = [int(m.group(1)) if (m := _TOKEN_ID_RE.match(x)) else -1 for x in flat_tok]
        if keys.bytes:
            alt_toks = [[_bytes_text(a, keys.bytes) if a[at].startswith("token_id:") else a[at] for a in row]
                        for row in tops]
    flat_lp = [a[al] for row in tops for a in row]
    vals = _to_logprob(flat_lp, keys.probs, _NUM_OR_NONE)
    vals[np.isnan(vals)] = -np.inf  # an alternative without a value carries no probability
    lens = np.fromiter(map(len, tops), dtype=np.int64, count=len(tops))
    if (lens == k).all():
        top_lp = vals.reshape(len(tops), k)
    else:
        top_lp = np.full((len(tops), k), -np.inf)
        top_lp[np.arange(k)[None, :] < lens[:, None]] = vals
    top_ids = None
    if as_ids is not None and min(as_ids) >= 0:
        top_ids = np.full((len(tops), k), -1, dtype=np.int64)
        top_ids[np.arange(k)[None, :] < lens[:, None]] = as_ids
    elif keys.id and all(keys.id in a for row in tops for a in row):
        raw = [a[keys.id] for row in tops for a in row]
        if set(map(type, raw)) <= {int}:
            top_ids = np.full((len(tops), k), -1, dtype=np.int64)
            top_ids[np.arange(k)[None, :] < lens[:, None]] = raw
    return Tokens(toks, lps, ids, alt_toks, top_lp, top_ids, byte_rows)


def _bytes_text(alt: dict, key: str) -> str:
    b = alt.get(key)
    return bytes(b).decode("utf-8", errors="replace") if _is_byte_list(b) else alt["token"]


def _report_tokens(entries: list, path: str, pr: Problems, keys: Keys) -> None:
    """Walk token entries and record every bad field with its JSON path."""
    for i, e in enumerate(entries):
        p = f"{path}[{i}]"
        if not isinstance(e, dict):
            pr.bad(p, e, "an object")
            continue
        _report_pair(e, p, keys.token, keys.logprob, keys.probs, pr)
        if keys.id and e.get(keys.id) is not None and type(e.get(keys.id)) is not int:
            pr.bad(f"{p}.{keys.id}", e[keys.id], "an integer")
        if keys.bytes and e.get(keys.bytes) is not None and not _is_byte_list(e[keys.bytes]):
            pr.bad(f"{p}.{keys.bytes}", e[keys.bytes], "a list of byte values 0..255")
        tops = e.get(keys.top)
        if tops is None:
            continue
        if not isinstance(tops, list):
            pr.bad(f"{p}.{keys.top}", tops, "a list")
            continue
        for j, a in enumerate(tops):
            q = f"{p}.{keys.top}[{j}]"
            if not isinstance(a, dict):
                pr.bad(q, a, "an object")
                continue
            _report_pair(a, q, keys.alt_token, keys.alt_logprob, keys.probs, pr)


def _report_pair(obj: dict, path: str, token_key: str, value_key: str, probs: bool, pr: Problems) -> None:
    """A token entry or an alternative: its text must be a string, its value a number
    (a non-negative one when the source gives probabilities)."""
    if token_key not in obj:
        pr.missing(f"{path}.{token_key}")
    elif not isinstance(obj[token_key], str):
        pr.bad(f"{path}.{token_key}", obj[token_key], "a string")
    v = obj.get(value_key)
    if not (v is None or is_number(v)) or (probs and is_number(v) and v < 0):
        pr.bad(f"{path}.{value_key}", v, "a probability" if probs else "a number")


def _is_byte_list(v: Any) -> bool:
    return isinstance(v, list) and all(type(b) is int and 0 <= b < 256 for b in v)


# --------------------------------------------------------------------------- text repair

def repair(t: Tokens) -> Tokens:
    """Rebuild token text from ``bytes`` where a character was split between tokens, and
    read vLLM's ``token_id:N`` tokens as ids.

    A split character leaves each token with bytes that are not valid UTF-8 alone; decoding
    the byte stream incrementally gives the character to the token that completes it (the
    earlier ones get ''), so the joined text is exactly the decoded completion.
    """
    toks = t.tokens
    if "token_id:" in "".join(toks):
        ids = t.token_ids.copy() if t.token_ids is not None else np.full(t.n, -1, dtype=np.int64)
        toks = list(toks)
        for i, s in enumerate(toks):
            m = _TOKEN_ID_RE.match(s)
            if m:
                ids[i] = int(m.group(1))
                if t.byte_rows is None or t.byte_rows[i] is None:
                    toks[i] = ""  # the text is unknown; the id is kept
        t = Tokens(toks, t.logprobs, ids, t.top_tokens, t.top_logprobs, t.top_ids, t.byte_rows)
    if t.top_tokens is not None and t.top_ids is None and \
            "token_id:" in "".join(s for row in t.top_tokens for s in row if s):
        ids = np.full((t.n, t.k), -1, dtype=np.int64)
        rows = []
        for i, row in enumerate(t.top_tokens):
            out = []
            for j, s in enumerate(row):
                m = _TOKEN_ID_RE.match(s)
                if m:
                    ids[i, j] = int(m.group(1))
                out.append(s)
            rows.append(out)
        if (ids[np.isfinite(t.top_logprobs)] >= 0).all():
            t = Tokens(t.tokens, t.logprobs, t.token_ids, rows, t.top_logprobs, ids, t.byte_rows)
    br = t.byte_rows
    if br is None or all(b is None for b in br):
        return t
    if not all(b is None or _is_byte_list(b) for b in br):
        return t  # reported by the caller's checks; keep the text
    # the text needs rebuilding unless every token's bytes are exactly its text's encoding:
    # same concatenation and same lengths means the same pieces
    pieces = [bytes(b) if b is not None else s.encode("utf-8", "surrogatepass") for s, b in zip(t.tokens, br)]
    if b"".join(pieces) == "".join(t.tokens).encode("utf-8", "surrogatepass") and \
            [len(x) for x in pieces] == [len(s.encode("utf-8", "surrogatepass")) for s in t.tokens]:
        return t
    dec = codecs.getincrementaldecoder("utf-8")(errors="replace")
    out = []
    for piece in pieces:
        out.append(dec.decode(piece))
    tail = dec.decode(b"", final=True)
    if tail and out:
        out[-1] += tail
    return Tokens(out, t.logprobs, t.token_ids, t.top_tokens, t.top_logprobs, t.top_ids, br)


# --------------------------------------------------------------------------- traces

_WORD_RE = re.compile(r"\s*\S+|\s+")


def text_pieces(text: str) -> list[str]:
    """Word-sized pieces whose concatenation is ``text`` (for text that came without tokens)."""
    return _WORD_RE.findall(text)


def with_thinking(t: Tokens, thinking: str | None, answer: str | None,
                  marker: str = THINK_MARKER) -> tuple[Tokens, int | None, dict]:
    """One token sequence and the first answer token, for a server that split the thinking
    into its own field.

    Three cases (whether a server's logprobs cover the thinking is not documented):
    the tokens contain the marker (SGLang's raw output: the marker splits); the tokens
    start with the thinking text (thinking covered: split where it ends); or the tokens
    cover only the answer (the thinking text is prepended as word pieces without
    logprobs, so its entropy is unknown and shown as such).
    """
    if not thinking:
        return t, None, {}
    joined = "".join(t.tokens)
    if marker and marker in joined:
        return t, None, {"thinking_source": "inline"}
    th = thinking.strip()
    stripped = joined.lstrip()
    if th and stripped.startswith(th):
        end = len(joined) - len(stripped) + len(th)
        starts = np.cumsum([0] + [len(s) for s in t.tokens])
        b = int(np.searchsorted(starts, end, side="left"))
        # the whitespace after the thinking text still belongs to it
        while b < t.n and not t.tokens[b].strip():
            b += 1
        return t, min(b, t.n), {"thinking_source": "field", "thinking_logprobs": True}
    pieces = text_pieces(thinking)
    if not pieces:
        return t, None, {}
    m = len(pieces)
    if answer and t.n == 0:
        return t, None, {}
    pre = Tokens(pieces, np.full(m, np.nan), None, [[] for _ in range(m)] if t.k else None,
                 np.full((m, t.k), -np.inf) if t.k else None, None, None)
    if t.top_ids is not None:
        pre.top_ids = np.full((m, t.k), -1, dtype=np.int64)
    if t.byte_rows is not None:
        pre.byte_rows = [None] * m
    return pre.concat(t), m, {"thinking_source": "field", "thinking_logprobs": False}


class LocalIds:
    """Run-local ids (from ``LOCAL_ID_BASE``) for alternatives known only by their text.

    Assigned in order of first appearance, exactly as ``store.build_batch`` would assign them,
    but vectorised (a pandas factorize per trace instead of a dict lookup per alternative).
    New (id, text) pairs wait in ``new`` until the caller writes them as vocab rows.
    """

    def __init__(self) -> None:
        from ..store import LOCAL_ID_BASE
        self.ids: dict[str, int] = {}
        self.next = LOCAL_ID_BASE
        self.new: list[tuple[int, str]] = []

    def assign(self, texts: np.ndarray) -> np.ndarray:
        """ids for an object array of texts (None -> -1)."""
        import pandas as pd
        codes, uniques = pd.factorize(texts, use_na_sentinel=True)
        lut = np.empty(len(uniques), dtype=np.int64)
        for j, text in enumerate(uniques.tolist()):
            i = self.ids.get(text)
            if i is None:
                i = self.ids[text] = self.next
                self.new.append((i, text))
                self.next += 1
            lut[j] = i
        return np.where(codes >= 0, lut[np.maximum(codes, 0)] if len(lut) else -1, -1)

    def mark(self) -> tuple[int, int]:
        return self.next, len(self.new)

    def rollback(self, mark: tuple[int, int]) -> None:
        """Forget the ids given out since ``mark`` (they were never stored)."""
        nxt, n_new = mark
        for i, text in self.new[n_new:]:
            del self.ids[text]
        del self.new[n_new:]
        self.next = nxt

    def text(self) -> dict[int, str]:
        return {i: s for s, i in self.ids.items()}


def check_text(pr: Problems, texts: Iterable[tuple[str, Any]], line: int | None = None) -> None:
    """Record a problem (at ``line``, else the record's) for each (what, value) whose text holds
    a lone surrogate (which no store, terminal or page can write); values may be lists or
    objects of texts (keys too). Raise Skip if there was one."""
    before = pr.total
    for what, v in texts:
        _check_text_value(pr, what, v, line)
    if pr.total > before:
        raise Skip


def _check_text_value(pr: Problems, what: str, v: Any, line: int | None) -> None:
    if isinstance(v, str):
        at = lone_surrogate(v)
        if at is not None:
            pr.bad(what, v, text_expected(v, at), line)
    elif isinstance(v, dict):
        for k, x in v.items():
            name = f"{what}.{printable(str(k))}"
            _check_text_value(pr, f"the name of {name}", k, line)
            _check_text_value(pr, name, x, line)
    elif isinstance(v, (list, tuple)):
        for i, x in enumerate(v):
            _check_text_value(pr, f"{what}[{i}]", x, line)


def _trace_texts(t: Tokens, prompt: str, source_id: Any, metadata: dict | None) -> Iterator[tuple[str, Any]]:
    """What ``to_trace`` checks with ``check_text``: the texts not checked with the tokens' fields
    (thinking text added as pieces, the prompt, the id, the metadata fields)."""
    if lone_surrogate("".join(t.tokens)) is not None:
        yield from ((f"token {i} of the trace (from the thinking text)", x) for i, x in enumerate(t.tokens))
    yield "the prompt", prompt
    yield "the record's id", source_id
    for k, v in (metadata or {}).items():
        yield f"the name of the metadata field {printable(str(k))}", k
        yield f"the metadata field {printable(str(k))}", v


def to_trace(t: Tokens, *, prompt: str = "", boundary: int | None = None, marker: str | None = THINK_MARKER,
             source_id: str | None = None, metadata: dict | None = None,
             vocab: dict[int, str] | None = None, local: LocalIds | None = None,
             problems: Problems | None = None) -> Trace:
    """A canonical Trace from token columns. Alternatives with real ids put their text in
    ``vocab``; alternatives known by text get run-local ids from ``local`` when given. With
    ``problems``, text that is not text (``check_text``) is recorded there and raises Skip."""
    if problems is not None:
        check_text(problems, _trace_texts(t, prompt, source_id, metadata))
    top_ids = t.top_ids
    if t.k and top_ids is None and t.top_tokens is not None and local is not None:
        flat = np.empty(t.n * t.k, dtype=object)
        rows = _pad_rows(t.top_tokens, t.k)
        flat[:] = [x for r in rows for x in r]
        # alternatives with probability 0 (sentinels, NaN) are not stored: they take no id
        flat[(~np.isfinite(t.top_logprobs) | (t.top_logprobs <= SENTINEL_LOGPROB)).ravel()] = None
        ids = local.assign(flat).reshape(t.n, t.k)
        return Trace(prompt=prompt or "", tokens=t.tokens, logprobs=t.logprobs,
                     token_ids=None if t.token_ids is None or (t.token_ids < 0).all() else t.token_ids,
                     topk_ids=ids, topk_logprobs=t.top_logprobs, boundary=boundary, marker=marker,
                     source_id=source_id, metadata=metadata or {})
    if top_ids is not None and vocab is not None and t.top_tokens is not None:
        for row_ids, row_toks in zip(top_ids.tolist(), t.top_tokens):
            for i, s in zip(row_ids, row_toks):
                if i >= 0 and i not in vocab:
                    vocab[i] = s
    if top_ids is not None and vocab is None:
        top_ids = None
    top_tokens = t.top_tokens
    if t.k and top_ids is None and top_tokens is not None:
        # alternatives with probability 0 (sentinels, NaN) are not stored: give them no text, so
        # that they take no run-local id either
        dead = np.argwhere(~np.isfinite(t.top_logprobs) | (t.top_logprobs <= SENTINEL_LOGPROB))
        if dead.size:
            top_tokens = [list(r) for r in top_tokens]
            for i, j in dead.tolist():
                if j < len(top_tokens[i]):
                    top_tokens[i][j] = None
    ids = t.token_ids
    if ids is not None and (ids < 0).all():
        ids = None
    tr = Trace(prompt=prompt or "", tokens=t.tokens, logprobs=t.logprobs, token_ids=ids,
               topk_ids=top_ids if t.k else None,
               topk_tokens=None if (top_ids is not None or not t.k) else _pad_rows(top_tokens, t.k),
               topk_logprobs=t.top_logprobs if t.k else None, boundary=boundary, marker=marker,
               source_id=source_id, metadata=metadata or {})
    return tr


def _pad_rows(rows: list[list[str]] | None, k: int) -> list[list[str | None]]:
    if rows is None:
        return [[None] * k]
    return [r if len(r) == k else list(r) + [None] * (k - len(r)) for r in rows]


# --------------------------------------------------------------------------- metadata


def prompt_from(obj: dict) -> str:
    """The prompt when a dump carries it: ``prompt``, ``messages`` or ``request.{prompt,messages}``."""
    for src in (obj, obj.get("request") if isinstance(obj.get("request"), dict) else None,
                obj.get("body") if isinstance(obj.get("body"), dict) else None):
        if not src:
            continue
        p = src.get("prompt")
        if isinstance(p, str):
            return p
        if isinstance(p, list) and p and isinstance(p[0], str):
            return p[0]
        msgs = src.get("messages") or src.get("input")
        if isinstance(msgs, list):
            return render_messages(msgs)
        if isinstance(msgs, str):
            return msgs
    return ""


def render_messages(msgs: list) -> str:
    parts = []
    for m in msgs:
        if not isinstance(m, dict):
            continue
        c = m.get("content")
        if isinstance(c, list):  # content parts
            c = "".join(p.get("text", "") for p in c if isinstance(p, dict))
        if isinstance(c, str):
            parts.append(c if len(msgs) == 1 else f"{m.get('role', '?')}: {c}")
    return "\n".join(parts)


def choices_record(obj: Any, ctx: Context, what: str, skip: Iterable[str], source_id: str | None = None,
                   request: dict | None = None, request_skip: Iterable[str] = ()) -> tuple[list, str, dict, Any]:
    """What the choices of an OpenAI-shaped record share: (choices, prompt, metadata, id).

    ``what`` names the record in the error for one that is not an object; ``skip`` are the
    fields that are not metadata; a Batch API ``request`` adds its fields as ``request.*``."""
    pr = ctx.problems
    if not isinstance(obj, dict):
        pr.bad("the record", obj, f"a JSON object ({what})")
        raise Skip
    choices = get(obj, "choices", "choices", pr, list)
    prompt = prompt_from(obj) or (prompt_from(request) if request else "")
    fields = flat_fields(obj, skip)
    if request:
        fields.update({f"request.{k}": v for k, v in flat_fields(request, request_skip).items()})
    rid = source_id if source_id is not None else obj.get("id")
    return choices, prompt, map_metadata(fields, ctx.field_map), rid


def choice_trace(t: Tokens, ctx: Context, *, prompt: str, boundary: int | None, meta: dict, ch: dict,
                 i: int, n: int, rid: Any) -> Trace:
    """The trace of choice ``i`` of ``n``: its finish reason (and index, among several) join the
    record's metadata; its source id is the record's id (``id:i`` among several)."""
    m = dict(meta)
    if ch.get("finish_reason") is not None:
        m["finish_reason"] = ch["finish_reason"]
    if n > 1:
        m["choice"] = i
    sid = None if rid is None else (str(rid) if n == 1 else f"{rid}:{i}")
    return to_trace(t, prompt=prompt, boundary=boundary, marker=ctx.marker, source_id=sid, metadata=m,
                    vocab=ctx.vocab, local=ctx.local, problems=ctx.problems)


def flat_fields(obj: dict, skip: Iterable[str] = ()) -> dict[str, Any]:
    """Scalar fields a user might map to metadata: top-level and ``metadata.*`` / ``request.*``."""
    out: dict[str, Any] = {}
    skip = set(skip)
    for k, v in obj.items():
        if k in skip:
            continue
        if isinstance(v, (str, int, float, bool)) or v is None:
            out[k] = v
        elif isinstance(v, dict) and k in ("metadata", "meta", "request", "extra", "info"):
            for k2, v2 in v.items():
                if isinstance(v2, (str, int, float, bool)) or v2 is None:
                    out[f"{k}.{k2}"] = v2
    return out


def map_metadata(fields: dict[str, Any], field_map: dict[str, str] | None) -> dict[str, Any]:
    """Canonical metadata from a record's fields: the user's mapping first, then the synonyms.

    ``field_map`` maps a canonical name (``problem_id``, ``gold_answer``, ``level``,
    ``correct``, ...) to the field's name in the file (``metadata.qid``); an empty value
    turns the automatic match off for that name. Other ``metadata.*`` fields are kept as is.
    """
    field_map = field_map or {}
    meta: dict[str, Any] = {}
    used: set[str] = set()
    for canon, names in META_SYNONYMS.items():
        if canon in field_map:
            cands = (field_map[canon],) if field_map[canon] else ()
        else:
            cands = tuple(n for base in names for n in (base, f"metadata.{base}", f"meta.{base}", f"request.{base}"))
        for name in cands:
            if name in fields and fields[name] is not None:
                v = coerce_meta(canon, fields[name])
                if v is not None:
                    meta[canon] = v
                    used.add(name)
                    break
    for name, v in fields.items():
        if name in used or v is None:
            continue
        if name.startswith(("metadata.", "meta.")):
            meta.setdefault(name.split(".", 1)[1], v)
        elif name.split(".")[-1] in SAMPLING_FIELDS:
            meta.setdefault(name.split(".")[-1], v)
    return meta


def coerce_meta(canon: str, v: Any) -> Any:
    """A metadata value in the column's type (None when it cannot be read as that type)."""
    if canon == "level":
        if isinstance(v, bool):
            return None
        if isinstance(v, (int, float)):
            return float(v)
        m = re.search(r"-?\d+(\.\d+)?", str(v))
        return float(m.group()) if m else None
    if canon == "correct":
        if isinstance(v, bool):
            return v
        if isinstance(v, (int, float)) and v in (0, 1):
            return bool(v)
        s = str(v).strip().lower()
        return {"true": True, "yes": True, "1": True, "correct": True, "false": False, "no": False,
                "0": False, "wrong": False, "incorrect": False}.get(s)
    if canon == "sample_idx":
        try:
            return int(v)
        except (TypeError, ValueError):
            return None
    return v if isinstance(v, str) else str(v)


@dataclass
class Context:
    """Per-file reading options shared by the readers."""

    problems: Problems
    field_map: dict[str, str] | None = None
    marker: str = THINK_MARKER
    vocab: dict[int, str] = field(default_factory=dict)   # real token id -> text, from the file
    lm: Any = None                                        # a LoadedModel where a reader needs one
    score_settings: Any = None
    requests: dict[str, dict] | None = None               # batch input: custom_id -> request body
    local: LocalIds = field(default_factory=LocalIds)      # run-local ids of text alternatives
    fast_used: bool = False                                # the columnar reader was tried
    fast_records: int = 0                                  # records it read
    progress: Callable[[int, int], None] | None = None
    #: (temperature or None, truncation or None) of the logprobs read, as the readers learn it
    logprobs_at: set = field(default_factory=set)

    def logprob_settings(self, fmt: str) -> dict:
        """The run-settings entries for this file's logprobs: what its readers saw when they saw
        one kind, what the format always gives otherwise (llama.cpp: T = 1), else unknown."""
        if len(self.logprobs_at) == 1:
            return logprob_conditions(*next(iter(self.logprobs_at)))
        if self.logprobs_at:
            return logprob_conditions(None, "mixed in this file")
        return source_logprob_conditions(fmt)
