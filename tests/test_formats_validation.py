"""Values no distribution has and text that is not text: refused with file, line and field.

Every reader checks the same things (``base.check_tokens``, ``base.check_text``); the OpenAI
chat reader is checked on both of its paths (columnar and record by record), and the
estimators are bounded whatever reaches them.
"""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from analysis.formats import ingest_file, read_traces
from analysis.formats.base import Context, Problems
from analysis.metrics import all_topk_entropies
from analysis.trace import TraceError

ROOT = Path(__file__).resolve().parent.parent


def chat(tokens: list[dict], model: str = "m", rid: str = "r1") -> dict:
    """A chat completion with the given logprobs.content entries."""
    return {"id": rid, "object": "chat.completion", "model": model,
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": "".join(t["token"] for t in tokens)},
                         "logprobs": {"content": tokens}}]}


def entry(token: str, logprob: float, alts: list[tuple[str, float]]) -> dict:
    return {"token": token, "logprob": logprob, "top_logprobs": [{"token": a, "logprob": v} for a, v in alts]}


GOOD = [entry("a", -0.1, [("a", -0.1), ("b", -2.5)]), entry(" b", -0.2, [(" b", -0.2), (" c", -1.9)])]


def write(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, allow_nan=True) + "\n" for r in records))
    return path


def problems(path: Path, fast: bool = True) -> tuple[list[str], list[str]]:
    """(problems, warnings) of reading ``path`` with the reader API."""
    pr = Problems(path.name)
    list(read_traces(path, Context(problems=pr), fast=fast))
    return pr.items, pr.warnings


def refused(store, path: Path) -> list[str]:
    """The problems of an import that must fail, checked to leave the store empty; the record
    reader (fast=False) must report the very same."""
    with pytest.raises(TraceError) as e:
        ingest_file(store, path)
    assert store.counts()["runs"] == 0
    listed = getattr(e.value, "problems", [str(e.value)])
    assert problems(path, fast=False)[0] == listed
    return listed


# --------------------------------------------------------------------------- impossible logprobs


@pytest.mark.parametrize("value", [0.5, 3.0, 1e308, math.inf])
def test_a_positive_logprob_is_refused_with_its_field(store, tmp_path, value):
    rec = chat([GOOD[0], entry(" b", value, [(" c", -1.9)])])
    p = write(tmp_path / "pos.jsonl", [chat(GOOD, rid="r0"), rec])
    shown = "inf" if math.isinf(value) else json.dumps(value)
    assert refused(store, p) == [f"pos.jsonl line 2: choices[0].logprobs.content[1].logprob is {shown}, "
                                 f"expected a log-probability <= 0"]


def test_a_positive_alternative_is_refused_with_its_field(store, tmp_path):
    p = write(tmp_path / "alt.jsonl", [chat([entry("a", -0.1, [("a", -0.1), ("z", 3.0)])])])
    assert refused(store, p) == ["alt.jsonl line 1: choices[0].logprobs.content[0].top_logprobs[1].logprob is 3.0, "
                                 "expected a log-probability <= 0"]


def test_rounding_noise_above_zero_is_read_as_zero(store, tmp_path):
    p = write(tmp_path / "noise.jsonl", [chat([entry("a", 1e-7, [("a", 1e-7), ("b", -20.0)])])])
    res = ingest_file(store, p)
    tok = store.tokens(int(store.traces(res.run_id).trace_id.iloc[0]))
    assert tok["logprob"].iloc[0] == 0.0
    assert list(tok["topk_logprobs"].iloc[0])[0] == 0.0
    assert 0.0 <= tok["entropy_topk_renorm"].iloc[0] < 1e-6


@pytest.mark.parametrize("alts, total", [
    ([("a", -0.1)] + [("x", -1.0)] * 150, "56.09"),                    # one alternative listed 150 times
    ([(f"t{i}", -1.0) for i in range(1000)], "367.9"),                 # 1,000 of probability 0.37 each
])
def test_alternatives_summing_far_above_one_are_refused(store, tmp_path, alts, total):
    p = write(tmp_path / "sum.jsonl", [chat([GOOD[0], entry("a", -0.1, alts)])])
    assert refused(store, p) == [f"sum.jsonl line 1: choices[0].logprobs.content[1].top_logprobs: the alternatives' "
                                 f"probabilities sum to {total}, but those of one token sum to at most 1"]


def test_an_alternative_listed_twice_is_a_warning_with_its_place(store, tmp_path):
    # small enough not to break the sum; the same text can be two tokens that print alike
    p = write(tmp_path / "twice.jsonl", [chat([entry("a", -0.1, [("a", -0.1), ("q", -6.0), ("q", -6.0)])])])
    res = ingest_file(store, p)
    assert res.warnings == ["twice.jsonl line 1: choices[0].logprobs.content[0].top_logprobs[2]: repeats "
                            "choices[0].logprobs.content[0].top_logprobs[1] (the same text and logprob -6): one "
                            "alternative listed twice, or two tokens that print alike; both count"]
    assert problems(p, fast=False)[1] == res.warnings
    # two tokens that print alike, with their own values: nothing to say
    q = write(tmp_path / "alike.jsonl", [chat([entry("a", -0.1, [("a", -0.1), ("\ufffd", -6.0), ("\ufffd", -7.0)])])])
    assert ingest_file(store, q).warnings == []


def test_one_token_id_twice_is_refused(store, tmp_path):
    # vLLM's return_tokens_as_token_ids: the alternatives are known by id
    rec = chat([entry("a", -0.1, [("token_id:7", -0.1), ("token_id:9", -3.0), ("token_id:9", -4.0)])])
    p = write(tmp_path / "ids.jsonl", [rec])
    assert refused(store, p) == ["ids.jsonl line 1: choices[0].logprobs.content[0].top_logprobs[2]: token id 9 is "
                                 "listed again (first at choices[0].logprobs.content[0].top_logprobs[1]); each "
                                 "alternative is listed once"]


def test_other_readers_refuse_impossible_values_at_their_fields(store, tmp_path):
    completions = {"id": "c1", "object": "text_completion", "choices": [{"index": 0, "text": "ab", "logprobs": {
        "tokens": ["a", "b"], "token_logprobs": [-0.1, 0.5], "top_logprobs": [{"a": -0.1}, {"b": 2.0, "c": -3.0}]}}]}
    assert refused(store, write(tmp_path / "c.jsonl", [completions])) == [
        "c.jsonl line 1: choices[0].logprobs.token_logprobs[1] is 0.5, expected a log-probability <= 0",
        'c.jsonl line 1: choices[0].logprobs.top_logprobs[1]["b"] is 2.0, expected a log-probability <= 0']
    llama = {"content": "ab", "completion_probabilities": [
        {"id": 1, "token": "a", "bytes": [97], "prob": 0.9, "top_probs": [{"id": 1, "token": "a", "bytes": [97], "prob": 1.5}]}]}
    assert refused(store, write(tmp_path / "l.jsonl", [llama])) == [
        "l.jsonl line 1: completion_probabilities[0].top_probs[0].prob is 1.5, expected a probability <= 1"]
    llama["completion_probabilities"][0]["top_probs"][0]["prob"] = -0.5
    assert refused(store, write(tmp_path / "n.jsonl", [llama])) == [
        "n.jsonl line 1: completion_probabilities[0].top_probs[0].prob is -0.5, expected a probability"]
    sglang = {"text": "ab", "meta_info": {"id": "s1", "output_token_logprobs": [[-0.1, 5, "a"], [0.25, 6, "b"]],
                                          "output_top_logprobs": [[[-0.1, 5, "a"]], [[-1.5, 6, "b"], [-2.0, 6, "b"]]]}}
    assert refused(store, write(tmp_path / "s.jsonl", [sglang])) == [
        "s.jsonl line 1: meta_info.output_token_logprobs[1][0] is 0.25, expected a log-probability <= 0",
        "s.jsonl line 1: meta_info.output_top_logprobs[1][1]: token id 6 is listed again (first at "
        "meta_info.output_top_logprobs[1][0]); each alternative is listed once"]


def test_batch_output_names_the_field_under_the_response_body(store, tmp_path):
    body = chat([entry("a", -0.1, [("a", -0.1)] + [("x", -0.5)] * 3)])
    line = {"id": "b1", "custom_id": "q1", "response": {"status_code": 200, "request_id": "r", "body": body}, "error": None}
    assert refused(store, write(tmp_path / "b.jsonl", [line])) == [
        "b.jsonl line 1: response.body.choices[0].logprobs.content[0].top_logprobs: the alternatives' probabilities "
        "sum to 2.724, but those of one token sum to at most 1"]


K = st.integers(1, 300)


@settings(max_examples=200, deadline=None)
@given(k=K, data=st.data())
def test_no_topk_estimator_exceeds_ln_k_plus_1(k, data):
    """Whatever logprobs reach the estimators (positive, huge, repeated, sentinels), k of them
    give at most ln(k + 1) nats."""
    value = st.one_of(st.floats(-50, 5), st.sampled_from([0.0, -1.0, 1e308, -9999.0, math.nan, math.inf, -math.inf]))
    rows = data.draw(st.lists(st.lists(value, min_size=k, max_size=k), min_size=1, max_size=4))
    h = all_topk_entropies(np.array(rows, dtype=np.float64))
    for name, v in h.items():
        ok = v[~np.isnan(v)]
        assert (ok >= 0).all() and (ok <= math.log(k + 1)).all(), (name, ok.max(), math.log(k + 1))


def test_the_estimators_keep_their_values_for_a_distribution():
    p = np.array([0.5, 0.25])
    h = all_topk_entropies(np.log(p)[None, :])
    epr = -(p * np.log(p)).sum()
    assert h["epr"][0] == pytest.approx(epr) and h["topk_tail"][0] == pytest.approx(epr - 0.25 * math.log(0.25))
    # a small excess (rounded logprobs) is scaled away: all three are the entropy of the scaled distribution
    over = all_topk_entropies(np.log([[0.6, 0.42]]))
    q = np.array([0.6, 0.42]) / 1.02
    for name in ("topk_renorm", "topk_tail", "epr"):
        assert over[name][0] == pytest.approx(-(q * np.log(q)).sum())


# --------------------------------------------------------------------------- lone surrogates


def test_a_lone_surrogate_in_a_token_is_refused_with_its_field(store, tmp_path):
    p = write(tmp_path / "sur.jsonl", [chat([GOOD[0], entry("b\ud800", -0.2, [("c", -1.9)])])])
    listed = refused(store, p)
    assert listed == ['sur.jsonl line 1: choices[0].logprobs.content[1].token is "b\\ud800", expected text (its '
                      '\\ud800 is half of a UTF-16 surrogate pair, not a character)']
    listed[0].encode("utf-8")  # the message itself can be written anywhere
    alt = write(tmp_path / "alt.jsonl", [chat([entry("b", -0.2, [("b", -0.2), ("\udfff", -1.9)])])])
    assert refused(store, alt) == ['alt.jsonl line 1: choices[0].logprobs.content[0].top_logprobs[1].token is '
                                   '"\\udfff", expected text (its \\udfff is half of a UTF-16 surrogate pair, not a '
                                   'character)']


def test_a_lone_surrogate_in_the_model_name_or_metadata_is_refused(store, tmp_path):
    p = write(tmp_path / "m.jsonl", [chat(GOOD, model="gpt\ud83d")])
    assert refused(store, p) == ['m.jsonl line 1: the metadata field model is "gpt\\ud83d", expected text (its '
                                 '\\ud83d is half of a UTF-16 surrogate pair, not a character)']
    rec = {**chat(GOOD), "metadata": {"qid\udc80": "x"}}
    assert refused(store, write(tmp_path / "k.jsonl", [rec])) == [
        'k.jsonl line 1: the name of the metadata field qid\\udc80 is "qid\\udc80", expected text (its \\udc80 is '
        'half of a UTF-16 surrogate pair, not a character)']


def test_a_surrogate_pair_is_text(store, tmp_path):
    p = tmp_path / "pair.jsonl"
    # json.dumps writes the emoji as the escaped pair \ud83d\ude00: one character
    write(p, [chat([entry("\U0001F600", -0.1, [("\U0001F600", -0.1)])])])
    assert "\\ud83d\\ude00" in p.read_text()
    res = ingest_file(store, p)
    assert store.tokens(int(store.traces(res.run_id).trace_id.iloc[0]))["token"].tolist() == ["\U0001F600"]


def cli_ingest(tmp_path: Path, path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "analysis.cli", "ingest", "--store", str(tmp_path / "s.duckdb"),
                           str(path)], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_the_cli_says_one_line_for_a_surrogate(tmp_path):
    p = write(tmp_path / "model.jsonl", [chat(GOOD, model="m\ud800")])
    out = cli_ingest(tmp_path, p)
    assert out.returncode == 2, out.stderr
    lines = [x for x in out.stderr.splitlines() if x.startswith("thinkscope")]
    assert lines == ['thinkscope: error: model.jsonl line 1: the metadata field model is "m\\ud800", expected text '
                     '(its \\ud800 is half of a UTF-16 surrogate pair, not a character)']
    assert "Traceback" not in out.stderr


# --------------------------------------------------------------------------- exports


@pytest.fixture
def exported(store, tmp_path):
    """A run imported from a chat file and exported in every format: (store, {fmt: path})."""
    from analysis.formats.thinkscope import export_run
    run = ingest_file(store, ROOT / "tests" / "fixtures" / "formats" / "openai_chat.jsonl").run_id
    return store, {fmt: export_run(store, run, tmp_path / f"run.{fmt}") for fmt in ("parquet", "csv", "jsonl")}


def refused_export(tmp_path: Path, path: Path) -> list[str]:
    from analysis.store import Store
    dst = Store(tmp_path / "dst.duckdb")
    with pytest.raises(TraceError) as e:
        ingest_file(dst, path)
    assert dst.counts()["runs"] == 0
    return getattr(e.value, "problems", [str(e.value)])


def test_a_parquet_export_with_wrong_column_types_is_refused(exported, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    t = pq.read_table(exported[1]["parquet"])
    meta = t.schema.metadata
    t = t.set_column(t.schema.get_field_index("token"), "token", pa.array(range(len(t)), pa.int64()))
    t = t.set_column(t.schema.get_field_index("logprob"), "logprob", pa.array(["-0.1"] * len(t)))
    t = t.set_column(t.schema.get_field_index("topk_logprobs"), "topk_logprobs", pa.array(["[]"] * len(t)))
    pq.write_table(t.replace_schema_metadata(meta), tmp_path / "bad.parquet")
    assert refused_export(tmp_path, tmp_path / "bad.parquet") == [
        "bad.parquet: column token holds int64, expected a string",
        "bad.parquet: column logprob holds string, expected a number",
        "bad.parquet: column topk_logprobs holds string, expected a list of numbers"]
    missing = pq.read_table(exported[1]["parquet"]).drop_columns(["logprob"])
    pq.write_table(missing, tmp_path / "short.parquet")
    assert refused_export(tmp_path, tmp_path / "short.parquet") == [
        "short.parquet: no column logprob (a thinkscope export has trace_idx, token, logprob)"]


def test_a_parquet_export_row_with_impossible_values_names_its_row(exported, tmp_path):
    import pyarrow.parquet as pq
    df = pq.read_table(exported[1]["parquet"]).to_pandas()
    meta = pq.read_schema(exported[1]["parquet"]).metadata
    df.loc[3, "logprob"] = 2.5
    df.loc[6, "entropy_topk_renorm"] = 352.0
    k = len(df.at[8, "topk_logprobs"])
    df.at[8, "topk_ids"] = np.arange(k + 1, dtype=np.int32) + (1 << 30)
    import pyarrow as pa
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False).replace_schema_metadata(meta), tmp_path / "v.parquet")
    assert refused_export(tmp_path, tmp_path / "v.parquet") == [
        "v.parquet row 4: logprob is 2.5, expected a log-probability <= 0",
        f"v.parquet row 9: topk_ids has {k + 1} entries and topk_logprobs {k}",
        "v.parquet row 7: entropy_topk_renorm is 352.0, expected an entropy from 0 to ln(2 + 1) nats (from its 2 "
        "alternatives)"]


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_text_exports_with_bad_values_name_line_and_field(exported, tmp_path, fmt):
    text = exported[1][fmt].read_text()
    if fmt == "csv":
        import pandas as pd
        df = pd.read_csv(exported[1]["csv"], dtype=str, keep_default_na=False)
        df.loc[1, "logprob"] = "abc"
        df.loc[2, "topk_logprobs"] = '["x"]'
        df.loc[4, "correct"] = "maybe"
        df.to_csv(tmp_path / "bad.csv", index=False)
        path, want = tmp_path / "bad.csv", ['bad.csv line 3: logprob is "abc", expected a number',
                                           'bad.csv line 4: topk_logprobs is ["x"], expected a list of numbers',
                                           'bad.csv line 6: correct is "maybe", expected True, False or empty']
    else:
        lines = text.splitlines()
        rec = json.loads(lines[2])
        rec["logprob"][1] = "abc"
        rec["metadata"] = [1, 2]
        rec["topk_ids"][0] = [1.5]
        path = tmp_path / "bad.jsonl"
        path.write_text("\n".join([lines[0], lines[1], json.dumps(rec)]) + "\n")
        want = ["bad.jsonl line 3: metadata is [1, 2], expected a JSON object",
                'bad.jsonl line 3: logprob[1] is "abc", expected a number',
                "bad.jsonl line 3: topk_ids[0] is [1.5], expected a list of integers"]
    assert sorted(refused_export(tmp_path, path)) == sorted(want)


@pytest.mark.parametrize("fmt", ["parquet", "csv", "jsonl"])
def test_export_run_info_that_is_not_an_object_is_one_line(exported, tmp_path, fmt):
    src = exported[1][fmt]
    if fmt == "parquet":
        import pyarrow.parquet as pq
        t = pq.read_table(src)
        pq.write_table(t.replace_schema_metadata({**t.schema.metadata, b"thinkscope_run": b"[1, 2]"}), tmp_path / "l.parquet")
        path, want = tmp_path / "l.parquet", "l.parquet: the Parquet metadata thinkscope_run is [1, 2], expected an " \
                                             "object (the run's name, source, model and settings)"
    elif fmt == "jsonl":
        lines = src.read_text().splitlines()
        path = tmp_path / "l.jsonl"
        path.write_text("\n".join(['{"thinkscope_run": [1, 2]}', *lines[1:]]) + "\n")
        want = "l.jsonl line 1: thinkscope_run is [1, 2], expected an object (the run's name, source, model and settings)"
    else:
        import pandas as pd
        df = pd.read_csv(src, dtype=str, keep_default_na=False)
        df["run_settings"] = "[1, 2]"
        path = tmp_path / "l.csv"
        df.to_csv(path, index=False)
        want = "l.csv line 2: the run_ columns: settings is [1, 2], expected an object"
    assert refused_export(tmp_path, path) == [want]
    out = cli_ingest(tmp_path, path)
    assert out.returncode == 2 and out.stderr.strip().splitlines()[-1] == f"thinkscope: error: {want}"
    assert "Traceback" not in out.stderr
    from analysis.formats.ingest import read_export
    from analysis.formats import preview
    with pytest.raises(TraceError, match="expected an object"):
        read_export(path)
    assert preview(path).problems == [want]  # what the Upload page shows before an import


def test_a_lone_surrogate_in_a_jsonl_export_is_refused(exported, tmp_path):
    lines = exported[1]["jsonl"].read_text().splitlines()
    rec = json.loads(lines[1])
    rec["token"][2] = "x\udc00"
    head = json.loads(lines[0])
    head["thinkscope_run"]["model"] = "m\ud800"
    path = tmp_path / "s.jsonl"
    path.write_text("\n".join([lines[0], json.dumps(rec), *lines[2:]]) + "\n")
    assert refused_export(tmp_path, path) == ['s.jsonl line 2: token[2] is "x\\udc00", expected text (its \\udc00 is '
                                              'half of a UTF-16 surrogate pair, not a character)']
    path.write_text("\n".join([json.dumps(head), *lines[1:]]) + "\n")
    assert refused_export(tmp_path, path) == ['s.jsonl line 1: thinkscope_run: model is "m\\ud800", expected text (its '
                                              '\\ud800 is half of a UTF-16 surrogate pair, not a character)']


# --------------------------------------------------------------------------- CSV formulas

FORMULAS = ['=HYPERLINK("http://x.example","click")', "+cmd|' /C calc'!A0", "@SUM(1+1)*cmd|' /C calc'!A0",
            "-2+3", "\t=1+1", "\r=1+1", "'quoted", "''", "=", ""]


def chat_file(path: Path, texts: list[str], model: str) -> Path:
    tokens = [entry(s, -0.5, [(s, -0.5), (s + "!", -1.5)]) for s in texts]
    return write(path, [chat(tokens, model=model)])


def test_csv_export_neutralises_formulas_and_reads_them_back(store, tmp_path):
    import csv
    from analysis.formats.ingest import read_export
    from analysis.formats.thinkscope import FORMULA_START, export_run, run_frame
    run = ingest_file(store, chat_file(tmp_path / "f.jsonl", FORMULAS, FORMULAS[1]), run_name="=HYPERLINK(\"x\")").run_id
    path = export_run(store, run, tmp_path / "f.csv")
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    cells = [c for r in rows[1:] for c in r]
    numeric = {"logprob", "pos", "token_id", "trace_idx", "boundary", *[c for c in rows[0] if c.startswith("entropy")]}
    texts = [c for r in rows[1:] for name, c in zip(rows[0], r) if name not in numeric]
    assert not [c for c in texts if c.startswith(FORMULA_START[:-1])], "a text cell a spreadsheet would evaluate"
    assert "'=HYPERLINK(\"x\")" in cells and "'-2+3" in cells and "''quoted" in cells
    # numbers stay numbers: a negative logprob is no formula
    assert any(c.startswith("-0.5") for c in cells)
    info, traces = read_export(path)
    assert info["name"] == "=HYPERLINK(\"x\")" and info["model"] == FORMULAS[1]
    assert traces[0].tokens == FORMULAS
    from analysis.store import Store
    dst = Store(tmp_path / "dst.duckdb")
    back = ingest_file(dst, path).run_id
    a, b = run_frame(store, run)[1], run_frame(dst, back)[1]
    assert a["token"].tolist() == b["token"].tolist() and a["topk_tokens"].map(list).tolist() == \
        b["topk_tokens"].map(list).tolist()
    assert export_run(dst, back, tmp_path / "again.csv").read_bytes() == path.read_bytes()


@settings(max_examples=300, deadline=None)
@given(text=st.text())
def test_csv_text_cells_round_trip_and_never_start_a_formula(text):
    from analysis.formats.thinkscope import FORMULA_START, csv_text, csv_text_back
    cell = csv_text(text)
    assert csv_text_back(cell) == text
    assert not cell.startswith(FORMULA_START[:-1])


@settings(max_examples=8, deadline=None)
@given(texts=st.lists(st.text(max_size=12), min_size=1, max_size=5), name=st.text(min_size=1, max_size=12))
@example(texts=["\r=1+1", "'", "-", "a\rb"], name="@x")
def test_any_text_round_trips_through_the_csv_export(tmp_path_factory, texts, name):
    from analysis.formats.ingest import read_export
    from analysis.formats.thinkscope import export_run
    from analysis.store import Store
    d = tmp_path_factory.mktemp("csv")
    src = Store(d / "s.duckdb")
    run = ingest_file(src, chat_file(d / "t.jsonl", texts, name), run_name=name).run_id
    info, traces = read_export(export_run(src, run, d / "t.csv"))
    assert (info["name"], info["model"]) == (name, name) and traces[0].metadata["model"] == name
    assert traces[0].tokens == texts and [r[0] for r in traces[0].topk_tokens] == texts


def test_parquet_run_info_that_is_not_json_is_one_line(exported, tmp_path):
    import pyarrow.parquet as pq
    t = pq.read_table(exported[1]["parquet"])
    pq.write_table(t.replace_schema_metadata({**t.schema.metadata, b"thinkscope_run": b"{oops"}), tmp_path / "j.parquet")
    assert refused_export(tmp_path, tmp_path / "j.parquet") == [
        "j.parquet: the Parquet metadata thinkscope_run is \"{oops\", expected an object (the run's name, source, "
        "model and settings)"]


JSON_FIXTURES = sorted(p.name for p in (ROOT / "tests" / "fixtures" / "formats").iterdir()
                       if p.suffix in (".jsonl", ".json") and not p.read_text().startswith("data:")
                       and p.name != "batch_input.jsonl")


def leaves(obj, path=()):
    """Every (path, value) inside a JSON value."""
    yield path, obj
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
    for k, v in items:
        yield from leaves(v, path + (k,))


def _texts(t) -> list:
    """Every text of a trace that reaches the store (its vocab included)."""
    rows = t.topk_tokens or []
    return [*t.tokens, t.prompt, t.source_id, json.dumps(t.metadata, ensure_ascii=False),
            *(x for r in rows for x in r if x)]


@pytest.mark.parametrize("fixture", JSON_FIXTURES)
@settings(max_examples=25, deadline=None)
@given(pick=st.integers(0, 10**6), surrogate=st.integers(0xD800, 0xDFFF), key=st.booleans())
def test_a_lone_surrogate_anywhere_is_refused_or_never_reaches_the_store(fixture, pick, surrogate, key):
    """Any text of any record (a value or a key) given a lone surrogate: the reader names it,
    or what it reads holds none (the field is not read): never text DuckDB cannot write."""
    text = (ROOT / "tests" / "fixtures" / "formats" / fixture).read_text()
    records = json.loads(text) if text.lstrip().startswith(("[", "{\n")) else [json.loads(x) for x in text.splitlines() if x.strip()]
    records = [records] if isinstance(records, dict) else records
    rec = records[random.Random(pick).randrange(len(records))]
    spots = [(p, v) for p, v in leaves(rec) if p and (isinstance(v, str) or key)]
    path, value = spots[pick % len(spots)]
    parent = rec
    for p in path[:-1]:
        parent = parent[p]
    bad = chr(surrogate)
    if key and isinstance(parent, dict):
        parent[path[-1] + bad] = parent.pop(path[-1])
    elif isinstance(value, str):
        parent[path[-1]] = value[: pick % (len(value) + 1)] + bad + value[pick % (len(value) + 1):]
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / f"s{Path(fixture).suffix}"
        p.write_text("\n".join(json.dumps(r) for r in records) + "\n")
        pr = Problems(p.name)
        try:
            traces = list(read_traces(p, Context(problems=pr)))
        except TraceError as e:
            str(e).encode("utf-8")
            return
    for message in pr.items + pr.warnings:
        message.encode("utf-8")
    if not pr.total:
        for t in traces:
            for x in _texts(t):
                if isinstance(x, str):
                    x.encode("utf-8")
