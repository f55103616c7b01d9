"""Hostile input: nesting depth and record size limits in every reader, and adversarial JSON fed
to every format, which gives a clean import or an error located in the file, never another
exception; the deepest files go through the real CLI in a subprocess, so that a crash of the
process fails the test instead of killing the test run."""

from __future__ import annotations

import csv
import io
import json
import os
import random
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from analysis.formats import FORMATS, ingest_file, jsonstream
from analysis.formats.base import Context, IngestError, Problems
from analysis.formats.ingest import read_traces
from analysis.store import Store
from analysis.trace import Trace, TraceError

ROOT = Path(__file__).resolve().parent.parent
FIX = ROOT / "tests" / "fixtures" / "formats"
CHAT = [json.loads(x) for x in (FIX / "openai_chat.jsonl").read_text().splitlines() if x.strip()]
LIMIT = jsonstream.MAX_DEPTH


def nested(n: int, kind: str) -> str:
    """JSON text of ``n`` arrays (or objects) inside each other, without recursing to build it."""
    return "[" * n + "]" * n if kind == "array" else '{"a": ' * n + "1" + "}" * n


def chat_line(i: int = 0) -> str:
    return json.dumps({**CHAT[i % len(CHAT)], "id": f"chatcmpl-hostile-{i}"})


def cli(store: Path, path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "analysis.cli", "ingest", "--store", str(store), str(path)],
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
                          timeout=300)


def store_rows(path: Path) -> tuple:
    s = Store(path)
    return s.counts(), s.runs()[["run_id", "name", "n_traces", "n_tokens"]].to_dict("records")


# --------------------------------------------------------------------------- nesting depth


@pytest.mark.parametrize("n, kind, form", [
    (100_000, "array", "jsonl"),    # the reported file: 201 KB
    (100_000, "object", "jsonl"),   # pyarrow's reader crashed the process on this one
    (5_000, "object", "jsonl"),     # a RecursionError traceback
    (100_000, "object", "array"),
    (1_200, "array", "document"),
])
def test_deep_file_is_refused_by_the_cli(tmp_path, n, kind, form):
    store = tmp_path / "store.duckdb"
    good = tmp_path / "good.jsonl"
    good.write_text(chat_line(0) + "\n")
    ingest_file(Store(store), good)
    before = store_rows(store)
    path = tmp_path / ("deep.jsonl" if form == "jsonl" else "deep.json")
    if form == "jsonl":
        path.write_text(chat_line(1) + "\n" + nested(n, kind) + "\n")
    elif form == "array":
        path.write_text("[" + chat_line(1) + ",\n" + nested(n, kind) + "]\n")
    else:
        path.write_text(json.dumps(CHAT[0], indent=1)[:-1] + ',\n"x": ' + nested(n, kind) + "}\n")
    out = cli(store, path)
    assert out.returncode == 2, out.stderr[-3000:]
    assert "Traceback" not in out.stderr
    errors = [line for line in out.stderr.splitlines() if "error" in line]
    line = 2 if form != "document" else json.dumps(CHAT[0], indent=1).count("\n") + 2
    assert len(errors) == 1 and re.fullmatch(rf"thinkscope: error: {path.name} line {line}: JSON nested deeper "
                                             rf"than {LIMIT} levels \(the limit\) at column \d+", errors[0]), errors
    assert store_rows(store) == before


@pytest.mark.parametrize("depth", [LIMIT - 1, LIMIT, LIMIT + 1, 3_000])
@pytest.mark.parametrize("fast", [True, False])
def test_depth_limit_is_exact_on_both_chat_readers(tmp_path, depth, fast):
    """A record ``depth`` levels deep in all (its own object counting as one) imports up to the
    limit and is refused past it, by the columnar reader and the record reader alike."""
    rec = chat_line(1)[:-1] + ', "extra": ' + nested(depth - 1, "object") + "}"
    path = tmp_path / "f.jsonl"
    path.write_text(chat_line(0) + "\n\n" + rec + "\n")
    ctx = Context(problems=Problems(path.name))
    traces = list(read_traces(path, ctx, "openai_chat", fast=fast))
    if depth <= LIMIT:
        assert not ctx.problems.items and len(traces) == 2
    else:
        assert ctx.problems.items == [f"f.jsonl line 3: JSON nested deeper than {LIMIT} levels (the limit) "
                                      f"at column {len(chat_line(1)) + 11 + 6 * (LIMIT - 1)}"]


def test_depth_in_strings_and_escapes_is_not_nesting(tmp_path):
    """Brackets inside strings (escaped quotes around them included) do not count; a record that
    hides real nesting behind such strings is still refused."""
    ok = json.loads(chat_line(0))
    ok["choices"][0]["message"]["content"] = '"]]]]" [[[[{{{{ "\\' * 40
    deep: list = []
    cur = deep
    for _ in range(LIMIT + 5):
        cur.append('"]"')
        cur.append([])
        cur = cur[-1]
    bad = {**json.loads(chat_line(1)), "extra": deep}
    path = tmp_path / "f.jsonl"
    path.write_text(json.dumps(ok) + "\n" + json.dumps(bad) + "\n")
    for fast in (True, False):
        ctx = Context(problems=Problems(path.name))
        list(read_traces(path, ctx, "openai_chat", fast=fast))
        assert len(ctx.problems.items) == 1
        assert ctx.problems.items[0].startswith(f"f.jsonl line 2: JSON nested deeper than {LIMIT} levels")


def test_deep_json_in_a_csv_cell_is_a_located_problem(tmp_path):
    path = tmp_path / "t.csv"
    text = (FIX / "token_table_lists.csv").read_text().splitlines()
    rows = list(csv.reader(text))
    rows[2][rows[0].index("topk_tokens")] = nested(5_000, "array")
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    path.write_text(buf.getvalue())
    ctx = Context(problems=Problems(path.name))
    list(read_traces(path, ctx))
    assert len(ctx.problems.items) == 1 and ctx.problems.items[0].startswith("t.csv line 3: topk_tokens")


# --------------------------------------------------------------------------- record size


def big_chat_line(i: int, size: int) -> str:
    """A chat completion of at least ``size`` bytes (its token list repeated)."""
    rec = json.loads(chat_line(i))
    content = rec["choices"][0]["logprobs"]["content"]
    unit = len(json.dumps(content))
    rec["choices"][0]["logprobs"]["content"] = content * (size // unit + 1)
    rec["choices"][0]["message"]["content"] = "".join(c["token"] for c in rec["choices"][0]["logprobs"]["content"])
    return json.dumps(rec)


@pytest.mark.parametrize("form", ["jsonl", "jsonl-record-reader", "sse", "array", "document"])
def test_record_over_the_limit_is_refused_before_decoding(tmp_path, monkeypatch, form):
    """A record over THINKSCOPE_MAX_RECORD_MB, in every container form, is refused with its line,
    the limit and how to change it; the store is not touched, and no parser gets the record."""
    monkeypatch.setenv("THINKSCOPE_MAX_RECORD_MB", "0.5")
    big = big_chat_line(1, 3 << 19)  # 1.5 MiB: more than a read of the array reader
    small = chat_line(0)
    path = tmp_path / ("f.json" if form in ("array", "document") else "f.jsonl")
    if form == "array":
        path.write_text("[" + small + ",\n" + big + "]")
    elif form == "document":
        path.write_text(json.dumps(json.loads(small), indent=1) + "\n" + json.dumps(json.loads(big), indent=1))
    elif form == "sse":
        path.write_text(f"data: {small}\n\ndata: {big}\n\ndata: [DONE]\n")
    else:
        path.write_text(small + "\n" + big + "\n")
    decoded = []
    real_loads, real_decode = json.loads, jsonstream._decoder.raw_decode
    monkeypatch.setattr(json, "loads", lambda s, *a, **k: decoded.append(len(s)) or real_loads(s, *a, **k))
    monkeypatch.setattr(jsonstream._decoder, "raw_decode",
                        lambda s, pos=0: (lambda r: decoded.append(r[1] - pos) or r)(real_decode(s, pos)))
    from analysis.formats import fastchat
    real_parse = fastchat._parse
    monkeypatch.setattr(fastchat, "_parse", lambda data, longest: decoded.append(longest) or real_parse(data, longest))
    if form == "jsonl-record-reader":
        def no_fast(*a, **k):
            raise fastchat.Fallback("the record reader only")
            yield
        monkeypatch.setattr(fastchat, "batches", no_fast)
    store = Store(tmp_path / "s.duckdb")
    with pytest.raises(IngestError) as e:
        ingest_file(store, path)
    line = {"sse": 3, "document": json.dumps(json.loads(small), indent=1).count("\n") + 2}.get(form, 2)
    assert e.value.problems == [e.value.problems[0]] and e.value.problems[0].startswith(f"f.json{'l' * (path.suffix == '.jsonl')} line {line}: a single record of ")
    assert "over the limit of 0.5 MB per record (set THINKSCOPE_MAX_RECORD_MB to raise it)" in str(e.value)
    assert max(decoded) < 1 << 19
    assert store.counts()["runs"] == 0


def test_record_limit_setting_is_checked(tmp_path, monkeypatch):
    path = tmp_path / "f.jsonl"
    path.write_text(chat_line(0) + "\n")
    monkeypatch.setenv("THINKSCOPE_MAX_RECORD_MB", "lots")
    with pytest.raises(TraceError, match="THINKSCOPE_MAX_RECORD_MB is 'lots'; expected a size in MB above 0"):
        list(read_traces(path, Context(problems=Problems(path.name))))
    monkeypatch.setenv("THINKSCOPE_MAX_RECORD_MB", "300")
    assert len(list(read_traces(path, Context(problems=Problems(path.name))))) == 1


# --------------------------------------------------------------------------- property test

JSON_FIXTURES = sorted(p for p in FIX.iterdir() if p.suffix in (".jsonl", ".json")
                       and not p.read_text().startswith("data:"))
HOSTILE = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MARK = "\u0000hostile\u0000"

leaf = (st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=True)
        | st.text(max_size=8) | st.sampled_from(["\ud800", "a\udfffb", "\ud83d", "\udc00\ud800", "[", "\"]}"]))
value = st.recursive(leaf, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner,
                                                                                       max_size=4), max_leaves=10)
#: JSON text that json.dumps cannot write: numbers past Python's conversion limits, very deep values
raw = st.one_of(
    st.sampled_from(["1" * 5000, "-" + "9" * 4400, "1e999", "-1e-999", "NaN", "-Infinity", "1.5e308", "-0"]),
    st.tuples(st.integers(0, 3_000), st.sampled_from(["array", "object"])).map(lambda t: nested(*t)),
    st.integers(1, 200_000).map(lambda n: json.dumps("x" * n)),
)


@st.composite
def hostile_file(draw):
    """(bytes, suffix, deepest nesting put in): a fixture's records with one field replaced by
    adversarial JSON, written as JSON Lines, an array, server-sent events or one document."""
    fixture = draw(st.sampled_from(JSON_FIXTURES))
    text = fixture.read_text()
    records = (json.loads(text) if text.lstrip().startswith(("[", "{\n"))
               else [json.loads(x) for x in text.splitlines() if x.strip()])
    records = records if isinstance(records, list) else [records]
    rng = random.Random(draw(st.integers(0, 2**32)))
    i = rng.randrange(len(records))
    spots = list(_paths(records[i]))
    path = spots[rng.randrange(len(spots))]
    if draw(st.booleans()):
        piece, depth = draw(raw), 0
        depth = piece.count("[") + piece.count("{") if piece[:1] in "[{" else 0
        ascii_ = True
    else:
        v = draw(value)
        ascii_ = draw(st.booleans())
        piece = json.dumps(v, ensure_ascii=ascii_, allow_nan=True)
        depth = 0
    records[i] = _replaced(records[i], path, MARK)
    depth += len(path)  # the levels above the field
    lines = [json.dumps(r, ensure_ascii=ascii_).replace(json.dumps(MARK, ensure_ascii=ascii_), piece) for r in records]
    form = draw(st.sampled_from(["jsonl", "array", "sse", "document"]))
    if form == "array":
        out, suffix = "[" + ",\n".join(lines) + "]", ".json"
    elif form == "sse":
        out, suffix = "".join(f"data: {x}\n\n" for x in lines) + "data: [DONE]\n", ".jsonl"
    elif form == "document":
        out, suffix = "\n".join(lines), ".json"
    else:
        out, suffix = "\n".join(lines) + "\n", ".jsonl"
    return out.encode("utf-8", "surrogatepass"), suffix, depth


def _paths(obj, path=()):
    yield path
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, path + (k,))
    elif isinstance(obj, list):
        for j, v in enumerate(obj):
            yield from _paths(v, path + (j,))


def _replaced(obj, path, new):
    if not path:
        return new
    obj = json.loads(json.dumps(obj))
    cur = obj
    for p in path[:-1]:
        cur = cur[p]
    cur[path[-1]] = new
    return obj


def located(message: str, name: str) -> bool:
    """An error names the file (and the line, for a problem of a record)."""
    return re.match(rf"{re.escape(name)}(:| line \d+:) ", message) is not None


@pytest.mark.parametrize("fmt", [None, *FORMATS])
@HOSTILE
@given(case=hostile_file())
def test_every_reader_gives_traces_or_a_located_error(fmt, case):
    data, suffix, depth = case
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"hostile{suffix}"
        path.write_bytes(data)
        pr = Problems(path.name)
        try:
            traces = list(read_traces(path, Context(problems=pr), fmt))
            pr.raise_if_any()
        except IngestError as e:
            assert e.problems and all(located(p, path.name) for p in e.problems), e.problems
            return
        except TraceError as e:
            assert located(str(e), path.name), str(e)
            return
    assert all(isinstance(t, Trace) for t in traces)
    assert depth <= LIMIT, "a record nested deeper than the limit was read"


@pytest.mark.parametrize("fast", [True, False])
def test_a_key_that_is_not_utf8_is_located(tmp_path, fast):
    """pyarrow keeps such a key (and failed on its name later): both readers locate it."""
    path = tmp_path / "f.jsonl"
    line = chat_line(0).encode()
    path.write_bytes(line + b"\n" + line.replace(b'"model"', b'"\x80odel"', 1).replace(b"hostile-0", b"hostile-1") + b"\n")
    ctx = Context(problems=Problems(path.name))
    list(read_traces(path, ctx, "openai_chat", fast=fast))
    column = line.index(b'"model"') + 2
    assert ctx.problems.items == [f"f.jsonl line 2: not valid UTF-8 (byte 0x80, at column {column})"]


@pytest.mark.parametrize("text", [nested(5_000, "array"), '{"prompt": "hi", "x": ' + nested(100_000, "object") + "}",
                                  '{"prompt": "hi", "n": ' + "1" * 5000 + "}",
                                  '{"prompt": "hi", "choices": "' + "[" * 5000 + '"}'])
def test_prompt_files_refuse_hostile_json_with_a_located_error(tmp_path, text):
    from analysis.problems import read_problems
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "What is 1 + 1?"}\n' + text + "\n")
    with pytest.raises(TraceError, match=r"^p\.jsonl line 2: "):
        read_problems(path)
