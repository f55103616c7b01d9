"""Property-based fuzzing of every reader: any bytes give traces or a TraceError, nothing else."""

from __future__ import annotations

import json
import random
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from analysis.formats import FORMATS
from analysis.formats.base import Context, Problems
from analysis.formats.ingest import read_traces
from analysis.trace import Trace, TraceError

FIX = Path(__file__).resolve().parent / "fixtures" / "formats"
TEXT_FIXTURES = sorted(p for p in FIX.iterdir() if p.suffix in (".jsonl", ".json", ".csv"))
SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def read_all(data: bytes, fmt: str | None, suffix: str = ".jsonl") -> list[Trace]:
    """Every trace of ``data`` read as ``fmt`` (None: detected); TraceError for any problem."""
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"fuzz{suffix}"
        path.write_bytes(data)
        pr = Problems(path.name)
        traces = list(read_traces(path, Context(problems=pr), fmt))
        pr.raise_if_any()
    return traces


def check(data: bytes, fmt: str | None, suffix: str = ".jsonl") -> None:
    try:
        traces = read_all(data, fmt, suffix)
    except TraceError:
        return
    assert all(isinstance(t, Trace) for t in traces)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.floats(allow_nan=True) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12)


def leaves(obj, path=()):
    """Every (path, value) inside a JSON value."""
    yield path, obj
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from leaves(v, path + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from leaves(v, path + (i,))


def replaced(obj, path, value):
    if not path:
        return value
    obj = json.loads(json.dumps(obj, allow_nan=True))
    cur = obj
    for p in path[:-1]:
        cur = cur[p]
    cur[path[-1]] = value
    return obj


@pytest.mark.parametrize("fmt", [None, *FORMATS])
@FUZZ
@given(data=st.binary(max_size=600), suffix=st.sampled_from(SUFFIXES))
def test_any_bytes(fmt, data, suffix):
    check(data, fmt, suffix)


@pytest.mark.parametrize("fixture", [p.name for p in TEXT_FIXTURES])
@FUZZ
@given(cut=st.integers(0, 10**6), flip=st.integers(0, 10**6), byte=st.integers(0, 255), fmt_pick=st.integers(0, 99))
def test_truncated_and_corrupted_fixtures(fixture, cut, flip, byte, fmt_pick):
    data = bytearray((FIX / fixture).read_bytes())
    data = data[: cut % (len(data) + 1)]
    if data:
        data[flip % len(data)] = byte
    fmts = [None, *FORMATS]
    check(bytes(data), fmts[fmt_pick % len(fmts)], Path(fixture).suffix)


JSON_FIXTURES = [p for p in TEXT_FIXTURES if p.suffix in (".jsonl", ".json")
                 and not p.read_text().startswith("data:")]


@pytest.mark.parametrize("fixture", [p.name for p in JSON_FIXTURES])
@FUZZ
@given(value=json_values, pick=st.integers(0, 10**6), fmt_pick=st.integers(0, 99))
def test_any_field_replaced_by_any_json(fixture, value, pick, fmt_pick):
    """Every field of a valid record, swapped for any JSON value, in its own format or detected."""
    text = (FIX / fixture).read_text()
    records = json.loads(text) if text.lstrip().startswith(("[", "{\n")) else [json.loads(x) for x in text.splitlines() if x.strip()]
    if isinstance(records, dict):
        records = [records]
    rng = random.Random(pick)
    i = rng.randrange(len(records))
    spots = list(leaves(records[i]))
    path, _ = spots[pick % len(spots)]
    records[i] = replaced(records[i], path, value)
    data = "\n".join(json.dumps(r, allow_nan=True) for r in records).encode()
    fmt = None if fmt_pick % 2 else None if fixture.startswith("token_table") else _format_of(fixture)
    check(data, fmt)


def _format_of(fixture: str) -> str:
    from analysis.formats import detect
    return detect(FIX / fixture).format


def _parquet_bytes() -> bytes:
    import io

    import pandas as pd
    buf = io.BytesIO()
    pd.read_csv(FIX / "token_table.csv").to_parquet(buf)
    return buf.getvalue()


PARQUET = _parquet_bytes()


@pytest.mark.parametrize("fmt", [None, "token_table", "thinkscope"])
@FUZZ
@given(cut=st.integers(0, 10**6), flip=st.integers(0, 10**6), byte=st.integers(0, 255))
def test_corrupted_parquet(fmt, cut, flip, byte):
    data = bytearray(PARQUET)
    data = data[: max(4, cut % (len(data) + 1))]
    if len(data) > 4:  # keep the magic bytes, so that the file is read as Parquet
        data[4 + flip % (len(data) - 4)] = byte
    check(bytes(data), fmt, ".parquet")


CHAT_FIXTURES = ["openai_chat.jsonl", "split_bytes.jsonl", "xss_tokens.jsonl", "sglang_chat.jsonl",
                 "vllm_reasoning.jsonl", "llamacpp_chat.jsonl"]


@pytest.mark.parametrize("fixture", CHAT_FIXTURES)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=json_values, pick=st.integers(0, 10**6), pick2=st.integers(0, 10**6), value2=json_values)
def test_columnar_reader_equals_the_record_reader(fixture, value, pick, pick2, value2):
    """OpenAI chat JSON Lines with any one or two fields swapped for any JSON value: the columnar
    reader (fastchat) gives exactly the record reader's traces, run-local ids and problems."""
    from analysis.formats import openai_chat
    records = [json.loads(x) for x in (FIX / fixture).read_text().splitlines() if x.strip()]
    for p, v in ((pick, value), (pick2, value2)):
        i = p % len(records)
        spots = list(leaves(records[i]))
        records[i] = replaced(records[i], spots[p % len(spots)][0], v)
    data = "\n".join(json.dumps(r, allow_nan=True) for r in records).encode() + b"\n"
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "chat.jsonl"
        path.write_bytes(data)
        out = []
        for fast in (True, False):
            ctx = Context(problems=Problems(path.name))
            try:
                traces = list(read_traces(path, ctx, openai_chat.NAME, fast=fast))
            except TraceError as e:  # not JSON at all: both say so
                traces = str(e)
            out.append((ctx, traces))
    (fctx, fast), (sctx, slow) = out
    if isinstance(slow, str):
        assert fast == slow
        return
    assert fctx.problems.items == sctx.problems.items
    assert fctx.problems.warnings == sctx.problems.warnings
    assert len(fast) == len(slow)
    for a, b in zip(fast, slow):
        assert a.tokens == b.tokens and a.prompt == b.prompt and a.boundary == b.boundary
        assert a.source_id == b.source_id and a.metadata == b.metadata and a.estimator == b.estimator
        for name in ("logprobs", "token_ids", "topk_ids", "topk_logprobs"):
            x, y = getattr(a, name), getattr(b, name)
            assert (x is None) == (y is None), name
            if x is not None:
                np.testing.assert_array_equal(x, y)
    assert fctx.local.ids == sctx.local.ids
