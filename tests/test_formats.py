"""Reading trace files people already have: every format and variant, and the edge cases."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis.formats import detect, ingest_file, ingest_files, preview
from analysis.formats.base import IngestError
from analysis.formats.ingest import DuplicateFileError
from analysis.trace import TraceError

FIX = Path(__file__).resolve().parent / "fixtures" / "formats"

#: fixture -> (format, traces, tokens)
EXPECTED = {
    "openai_chat.jsonl": ("openai_chat", 2, 10),
    "openai_chat_array.json": ("openai_chat", 2, 10),
    "openai_chat_stream.jsonl": ("openai_chat", 1, 2),
    "vllm_reasoning.jsonl": ("openai_chat", 2, 12),
    "sglang_chat.jsonl": ("openai_chat", 1, 4),
    "answer_only_reasoning.jsonl": ("openai_chat", 1, 11),
    "llamacpp_chat.jsonl": ("openai_chat", 1, 3),
    "split_bytes.jsonl": ("openai_chat", 1, 5),
    "xss_tokens.jsonl": ("openai_chat", 1, 3),
    "openai_completions.jsonl": ("openai_completions", 2, 4),
    "batch_output.jsonl": ("openai_batch", 2, 2),
    "vllm_batch_completions.jsonl": ("openai_batch", 1, 1),
    "llamacpp_completion.json": ("llamacpp", 1, 5),
    "llamacpp_post_sampling.jsonl": ("llamacpp", 1, 2),
    "llamacpp_old_probs.jsonl": ("llamacpp", 1, 2),
    "llamacpp_stream.jsonl": ("llamacpp", 1, 2),
    "ollama_generate.jsonl": ("ollama", 1, 4),
    "ollama_chat_stream.jsonl": ("ollama", 1, 3),
    "sglang_generate.json": ("sglang", 2, 5),
    "openai_responses.json": ("openai_responses", 1, 1),
    "token_table.csv": ("token_table", 2, 5),
    "token_table_lists.csv": ("token_table", 2, 3),
}


def tokens_of(store, run_id: int, idx: int = 0) -> pd.DataFrame:
    tr = store.traces(run_id)
    return store.tokens(int(tr.trace_id.iloc[idx]))


def trace_row(store, run_id: int, idx: int = 0) -> pd.Series:
    return store.traces(run_id).iloc[idx]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_fixture_imports(store, name):
    fmt, n_traces, n_tokens = EXPECTED[name]
    assert detect(FIX / name).format == fmt
    res = ingest_file(store, FIX / name)
    assert (res.format, res.n_traces, res.n_tokens) == (fmt, n_traces, n_tokens)
    runs = store.runs()
    row = runs.loc[runs.run_id == res.run_id].iloc[0]
    assert row["source"] == f"upload:{fmt}" and row["status"] == "complete"
    assert int(row["n_traces"]) == n_traces and int(row["n_tokens"]) == n_tokens
    tr = store.traces(res.run_id, with_completion=True)
    # top-k dumps keep the top-k estimator: `full` only when the whole distribution was known
    assert set(tr["estimator"]) == {"topk_renorm"}
    assert tr["completion"].str.len().sum() > 0


def test_openai_chat_values_metadata_and_sentinels(store):
    res = ingest_file(store, FIX / "openai_chat.jsonl")
    row = trace_row(store, res.run_id)
    assert (row.source_id, row.problem_id, row.gold_answer, row.level, bool(row.correct), row.model) == \
        ("chatcmpl-A1", "add-1", "19", 1.0, True, "gpt-4o-mini-2024-07-18")
    tok = tokens_of(store, res.run_id)
    assert tok["token"].tolist() == ["12", " +", " 7", " =", " 19"]
    assert tok["logprob"].iloc[0] == pytest.approx(-0.01)
    # -9999 means "not in the top-k": dropped from the alternatives, never averaged
    assert tok["topk_tokens"].iloc[2] == [" 7"]
    p = np.exp([-0.01, -4.8])
    p = p / p.sum()
    assert tok["entropy_topk_renorm"].iloc[0] == pytest.approx(-(p * np.log(p)).sum(), rel=1e-5)
    # the inline <think> splits: the answer starts after </think>
    second = trace_row(store, res.run_id, 1)
    assert int(second.boundary) == 4


def test_json_array_gives_the_same_as_json_lines(store):
    a = ingest_file(store, FIX / "openai_chat.jsonl")
    b = ingest_file(store, FIX / "openai_chat_array.json")
    for i in range(2):
        ta, tb = tokens_of(store, a.run_id, i), tokens_of(store, b.run_id, i)
        pd.testing.assert_frame_equal(ta.drop(columns=["trace_id"]), tb.drop(columns=["trace_id"]))


def test_reasoning_field_covered_by_logprobs_splits_where_thinking_ends(store):
    res = ingest_file(store, FIX / "vllm_reasoning.jsonl")
    row = trace_row(store, res.run_id)
    tok = tokens_of(store, res.run_id)
    assert "".join(tok["token"]) == "Add them: 2+2=4.\n\n4"
    assert int(row.boundary) == 5 and tok["token"].iloc[5] == "4"
    assert tok["token_id"].tolist() == [2212, 1105, 25, 220, 271, 19]  # vLLM return_token_ids
    assert json.loads(row.metadata)["thinking_logprobs"] is True


def test_token_id_tokens_take_text_from_bytes(store):
    res = ingest_file(store, FIX / "vllm_reasoning.jsonl")
    tok = tokens_of(store, res.run_id, 1)
    last = tok.iloc[-1]
    assert (last["token"], int(last["token_id"])) == ("9", 24)
    assert last["topk_tokens"] == ["9", "8"] and list(last["topk_ids"]) == [24, 23]


def test_answer_only_logprobs_prepend_thinking_without_entropy(store):
    res = ingest_file(store, FIX / "answer_only_reasoning.jsonl")
    row = trace_row(store, res.run_id)
    tok = tokens_of(store, res.run_id)
    assert "".join(tok["token"]) == "Six minus two is four, so the answer is four.4"
    assert int(row.boundary) == 10
    assert tok["entropy"].iloc[:10].isna().all() and np.isfinite(tok["entropy"].iloc[10])
    assert json.loads(row.metadata)["thinking_logprobs"] is False


def test_sglang_raw_output_splits_at_the_marker(store):
    res = ingest_file(store, FIX / "sglang_chat.jsonl")
    assert int(trace_row(store, res.run_id).boundary) == 3
    res = ingest_file(store, FIX / "sglang_generate.json")
    tok = tokens_of(store, res.run_id)
    assert int(trace_row(store, res.run_id).boundary) == 3
    assert tok["token_id"].tolist() == [151667, 17, 151668, 21]
    assert list(tok["topk_ids"].iloc[3]) == [21, 22]  # real tokenizer ids kept


def test_split_characters_rebuilt_from_bytes(store):
    res = ingest_file(store, FIX / "split_bytes.jsonl")
    tok = tokens_of(store, res.run_id)
    assert "".join(tok["token"]) == "東京 😀"
    assert tok["token"].tolist() == ["", "東", "京", " ", "😀"]


def test_legacy_completions_alternatives_and_echo(store):
    res = ingest_file(store, FIX / "openai_completions.jsonl")
    first = trace_row(store, res.run_id)
    assert (first.problem_id, first.gold_answer) == ("add-1", "19")
    tok = tokens_of(store, res.run_id)
    assert tok["topk_tokens"].iloc[2] == [" Done", " The"]
    # the echoed prompt "2+2=" is dropped: only the completion remains
    tok2 = tokens_of(store, res.run_id, 1)
    assert tok2["token"].tolist() == [" 4"]
    assert trace_row(store, res.run_id, 1).prompt == "2+2="


def test_batch_joins_on_custom_id_and_reports_failed_requests(store):
    res = ingest_files(store, [FIX / "batch_output.jsonl", FIX / "batch_input.jsonl"])
    assert len(res) == 1
    r = res[0]
    assert r.n_traces == 2 and len(r.warnings) == 2
    assert "req-3 failed" in r.warnings[0] and "status 400" in r.warnings[1]
    tr = store.traces(r.run_id, with_completion=True).set_index("source_id")
    assert tr.loc["req-1", "prompt"] == "What is 12 + 7?"
    assert tr.loc["req-2", "completion"] == "8"
    settings = json.loads(store.runs().iloc[0]["settings"])
    assert len(settings["warnings"]) == 2
    assert json.loads(tr.loc["req-1", "metadata"])["temperature"] == 0.7


def test_batch_input_alone_is_refused(store):
    with pytest.raises(TraceError, match="Batch API input file"):
        ingest_file(store, FIX / "batch_input.jsonl")


def test_llamacpp_shapes(store):
    cur = ingest_file(store, FIX / "llamacpp_completion.json")
    tok = tokens_of(store, cur.run_id)
    assert int(trace_row(store, cur.run_id).boundary) == 4
    # the lowest float means probability 0: the alternative is dropped
    assert tok["topk_tokens"].iloc[0] == ["<think>"]
    assert trace_row(store, cur.run_id).prompt == "What is 3 + 4?"
    post = ingest_file(store, FIX / "llamacpp_post_sampling.jsonl")
    tok = tokens_of(store, post.run_id)
    assert tok["logprob"].iloc[0] == pytest.approx(math.log(0.9), rel=1e-6)
    assert "post-sampling" in json.loads(trace_row(store, post.run_id).metadata)["probabilities"]
    old = ingest_file(store, FIX / "llamacpp_old_probs.jsonl")
    tok = tokens_of(store, old.run_id)
    assert tok["token"].tolist() == [" se", "ven"]
    assert tok["logprob"].tolist() == pytest.approx([math.log(0.6), math.log(0.99)], rel=1e-6)
    stream = ingest_file(store, FIX / "llamacpp_stream.jsonl")
    assert "".join(tokens_of(store, stream.run_id)["token"]) == " 7."


def test_ollama_streamed_pieces_join_and_thinking_splits(store):
    res = ingest_file(store, FIX / "ollama_chat_stream.jsonl")
    tok = tokens_of(store, res.run_id)
    assert "".join(tok["token"]) == "Three plus four.7"
    assert int(trace_row(store, res.run_id).boundary) == 2
    gen = ingest_file(store, FIX / "ollama_generate.jsonl")
    assert trace_row(store, gen.run_id).model == "qwen3:0.6b"


def test_responses_api_reasoning_summary_kept(store):
    res = ingest_file(store, FIX / "openai_responses.json")
    row = trace_row(store, res.run_id)
    assert int(row.boundary) == 0 and row.problem_id == "add-1"
    assert json.loads(row.metadata)["reasoning_summary"] == "Adding twelve and seven."


def test_token_tables_order_rows_and_map_metadata(store, tmp_path):
    res = ingest_file(store, FIX / "token_table.csv")
    tr = store.traces(res.run_id, with_completion=True)
    assert tr["problem_id"].tolist() == ["q1", "q2"] and tr["level"].tolist() == [3.0, 5.0]
    assert tr["correct"].tolist() == [True, False]
    assert tokens_of(store, res.run_id, 1)["token"].tolist() == ["Hmm", "."]  # sorted by position
    lists = ingest_file(store, FIX / "token_table_lists.csv")
    tok = tokens_of(store, lists.run_id)
    assert tok["token_id"].tolist() == [42, 11] and tok["topk_tokens"].iloc[1] == [",", "!"]
    # the same table as Parquet
    df = pd.read_csv(FIX / "token_table.csv")
    pq_path = tmp_path / "table.parquet"
    df.to_parquet(pq_path)
    pq_res = ingest_file(store, pq_path)
    assert (pq_res.format, pq_res.n_traces, pq_res.n_tokens) == ("token_table", 2, 5)
    assert store.traces(pq_res.run_id)["problem_id"].tolist() == ["q1", "q2"]


def test_field_mapping_overrides_names(store, tmp_path):
    p = tmp_path / "custom.jsonl"
    rec = json.loads((FIX / "openai_chat.jsonl").read_text().splitlines()[0])
    rec["metadata"] = {"qid": "Q-7", "answer_key": "19", "grade": "hard 3"}
    p.write_text(json.dumps(rec) + "\n")
    res = ingest_file(store, p, field_map={"problem_id": "metadata.qid", "gold_answer": "metadata.answer_key",
                                           "level": "metadata.grade"})
    row = trace_row(store, res.run_id)
    assert (row.problem_id, row.gold_answer, row.level) == ("Q-7", "19", 3.0)
    mapped = ingest_file(store, FIX / "token_table.csv", field_map={"problem_id": ""}, allow_duplicate=True)
    assert store.traces(mapped.run_id)["problem_id"].isna().all()


def test_plain_text_scored_by_a_local_model(store, tiny_lm):
    res = ingest_file(store, FIX / "plain_text.jsonl", lm=tiny_lm)
    tr = store.traces(res.run_id, with_completion=True)
    assert res.format == "plain_text" and res.n_traces == 2
    assert set(tr["estimator"]) == {"full"}  # the whole distribution is known
    assert tr["source_id"].tolist() == ["p1", "p2"]
    assert tr["gold_answer"].iloc[0] == "19" and tr["level"].iloc[0] == 1.0 and bool(tr["correct"].iloc[1])
    tok = tokens_of(store, res.run_id)
    assert "".join(tok["token"]) == "<think> 12 + 7 = 19. </think> The answer is 19."
    assert 0 < int(tr["boundary"].iloc[0]) < int(tr["n_tokens"].iloc[0])
    assert tok["entropy_full"].notna().all()
    # the thinking field is joined to the answer with the marker
    assert "</think>" in tr["completion"].iloc[1] and int(tr["boundary"].iloc[1]) < int(tr["n_tokens"].iloc[1])
    csv = ingest_file(store, FIX / "plain_text.csv", lm=tiny_lm)
    assert csv.n_traces == 2 and store.traces(csv.run_id)["gold_answer"].tolist() == ["19", "8"]


# --------------------------------------------------------------------------- bad input


def problems_of(store, path, **kw) -> list[str]:
    with pytest.raises(TraceError) as e:
        ingest_file(store, path, **kw)
    assert store.counts()["runs"] == 0, "a bad file must leave nothing behind"
    return getattr(e.value, "problems", [str(e.value)])


def test_bad_value_names_file_line_and_json_path(store, tmp_path):
    lines = (FIX / "openai_chat.jsonl").read_text().splitlines()
    rec = json.loads(lines[1])
    rec["choices"][0]["logprobs"]["content"][3]["top_logprobs"][1]["logprob"] = "abc"
    rec["choices"][0]["logprobs"]["content"][0]["logprob"] = "x"
    p = tmp_path / "traces.jsonl"
    p.write_text(lines[0] + "\n" + json.dumps(rec) + "\n")
    probs = problems_of(store, p)
    assert 'traces.jsonl line 2: choices[0].logprobs.content[3].top_logprobs[1].logprob is "abc", ' \
           'expected a number' in probs
    assert 'traces.jsonl line 2: choices[0].logprobs.content[0].logprob is "x", expected a number' in probs


def test_all_problems_reported_up_to_a_cap(store, tmp_path):
    rec = json.loads((FIX / "openai_chat.jsonl").read_text().splitlines()[0])
    rec["choices"][0]["logprobs"]["content"][1]["logprob"] = "bad"
    p = tmp_path / "many.jsonl"
    p.write_text("\n".join(json.dumps({**rec, "id": f"r{i}"}) for i in range(300)) + "\n")
    with pytest.raises(IngestError) as e:
        ingest_file(store, p)
    assert len(e.value.problems) == 50 and e.value.total >= 50
    assert e.value.problems[0].startswith("many.jsonl line 1: ") and e.value.problems[1].startswith("many.jsonl line 2: ")
    assert "problems (showing the first 50)" in str(e.value)


def test_empty_file(store, tmp_path):
    p = tmp_path / "empty.jsonl"
    p.write_bytes(b"")
    assert "empty" in problems_of(store, p)[0]
    p.write_bytes(b"\n  \n")
    assert "empty" in problems_of(store, p)[0]


def test_non_utf8_bytes(store, tmp_path):
    lines = (FIX / "openai_chat.jsonl").read_bytes().splitlines()
    p = tmp_path / "latin1.jsonl"
    p.write_bytes(lines[0] + b"\n" + lines[1].replace(b"Tom", b"T\xf6m") + b"\n")
    probs = problems_of(store, p)
    assert probs == ["latin1.jsonl line 2: not valid UTF-8 (byte 0xf6 at column 136)"] or \
        (len(probs) == 1 and "line 2: not valid UTF-8 (byte 0xf6" in probs[0])


def test_broken_json_names_its_column(store, tmp_path):
    """Python's messages that end in "at" get their column, not a dangling word."""
    p = tmp_path / "broken.jsonl"
    p.write_text('{"id": "a", "choices": [{"text": "no\nnewline"}]}\n')  # the line break splits a string
    assert problems_of(store, p) == ["broken.jsonl line 1: not valid JSON: Invalid control character at column 37"]
    q = tmp_path / "pretty.json"
    q.write_text('{"a": 1,\n "b": x}\n')
    assert problems_of(store, q) == ["pretty.json line 2: not valid JSON: Expecting value at column 7"]


def test_truncated_last_line(store, tmp_path):
    data = (FIX / "openai_chat.jsonl").read_bytes()
    p = tmp_path / "cut.jsonl"
    p.write_bytes(data[: len(data) - 200])
    probs = problems_of(store, p)
    assert len(probs) == 1 and "cut.jsonl line 2: the last line is cut off" in probs[0]


def test_json_array_that_never_closes(store, tmp_path):
    data = (FIX / "openai_chat_array.json").read_text().rstrip()
    p = tmp_path / "open.json"
    p.write_text(data[:-1])  # drop the closing ]
    assert "never closes" in problems_of(store, p)[0]
    p.write_text(data[: len(data) // 2])
    assert "never closes" in problems_of(store, p)[0]


def test_unknown_format_says_what_it_resembles(store, tmp_path):
    p = tmp_path / "nologprobs.jsonl"
    rec = json.loads((FIX / "openai_chat.jsonl").read_text().splitlines()[0])
    rec["choices"][0].pop("logprobs")
    rec["choices"][0]["message"] = {"role": "assistant", "content": None}
    p.write_text(json.dumps(rec) + "\n")
    msg = problems_of(store, p)[0]
    assert "unknown trace format" in msg and "openai_chat" in msg and "--format" in msg
    q = tmp_path / "other.jsonl"
    q.write_text('{"hello": 1}\n')
    assert "resembles none" in problems_of(store, q)[0]
    with pytest.raises(TraceError, match="unknown format 'nope'"):
        ingest_file(store, q, format="nope")


def test_wrong_format_override_reports_problems(store):
    probs = problems_of(store, FIX / "ollama_generate.jsonl", format="openai_chat")
    assert probs[0].startswith("ollama_generate.jsonl line 1: choices is missing")


def test_nan_infinity_and_sentinels_are_probability_zero(store, tmp_path):
    rec = json.loads((FIX / "openai_chat.jsonl").read_text().splitlines()[0])
    content = rec["choices"][0]["logprobs"]["content"]
    content[0]["top_logprobs"][1]["logprob"] = float("nan")
    content[1]["top_logprobs"][1]["logprob"] = float("-inf")
    content[3]["top_logprobs"][1]["logprob"] = -3.4028234663852886e38
    p = tmp_path / "nan.jsonl"
    p.write_text(json.dumps(rec, allow_nan=True) + "\n")
    assert "NaN" in p.read_text() and "-Infinity" in p.read_text()
    res = ingest_file(store, p)
    tok = tokens_of(store, res.run_id)
    for i in (0, 1, 3):
        assert len(tok["topk_tokens"].iloc[i]) == 1
        assert tok["entropy_topk_renorm"].iloc[i] == pytest.approx(0.0, abs=1e-6)
    assert np.isfinite(tok["entropy"]).all()


def test_duplicate_trace_ids(store, tmp_path):
    line = (FIX / "openai_chat.jsonl").read_text().splitlines()[0]
    p = tmp_path / "dup.jsonl"
    p.write_text(line + "\n" + line + "\n")
    assert problems_of(store, p) == ["dup.jsonl line 2: duplicate trace id 'chatcmpl-A1' (also at line 1)"]


def test_same_file_twice_detected_by_content_hash(store, tmp_path):
    first = ingest_file(store, FIX / "openai_chat.jsonl")
    copy = tmp_path / "renamed.jsonl"
    copy.write_bytes((FIX / "openai_chat.jsonl").read_bytes())
    with pytest.raises(DuplicateFileError) as e:
        ingest_file(store, copy)
    assert e.value.run_id == first.run_id and "already imported as run #1" in str(e.value)
    assert store.counts()["runs"] == 1


def test_file_over_the_size_limit(store):
    with pytest.raises(TraceError, match="over the limit"):
        ingest_file(store, FIX / "openai_chat.jsonl", max_bytes=100)


def test_token_table_problems(store, tmp_path):
    p = tmp_path / "t.csv"
    p.write_text("trace_id,pos,token,logprob\na,0,x,-0.1\na,1,y,abc\nb,0,z,-0.2\na,2,w,-0.3\n")
    probs = problems_of(store, p)
    assert 't.csv line 3: logprob is "abc", expected a number' in probs
    assert any("rows of trace \"a\" are not together" in x for x in probs)
    q = tmp_path / "nolog.csv"
    q.write_text("trace_id,token\na,x\n")
    assert "unknown trace format" in problems_of(store, q)[0]


def test_preview_counts_without_storing(store):
    pv = preview(FIX / "openai_chat.jsonl")
    assert (pv.n_traces, pv.n_tokens, pv.n_problems) == (2, 10, 0)
    assert pv.traces[0].tokens[0] == "12" and "metadata.problem_id" in pv.fields
    pv = preview(FIX / "plain_text.jsonl")
    assert pv.n_traces == 2 and pv.traces[0].completion.startswith("<think>")
    assert store.counts()["runs"] == 0


def test_ingest_cli(tmp_path, capsys):
    from analysis.cli import main
    db = str(tmp_path / "cli.duckdb")
    assert main(["--store", db, "ingest", str(FIX / "openai_chat.jsonl"), str(FIX / "ollama_generate.jsonl"),
                 "--run-name", "mine"]) == 0
    out = capsys.readouterr().out
    assert "run 1 'mine (openai_chat)': 2 traces, 10 tokens (openai_chat)" in out
    assert "run 2 'mine (ollama_generate)'" in out
    assert main(["--store", db, "ingest", str(FIX / "openai_chat.jsonl")]) == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1].startswith("thinkscope: error: openai_chat.jsonl: the very same file")
    assert main(["--store", db, "ingest", str(FIX / "token_table.csv"), "--format", "openai_chat"]) == 2


# --------------------------------------------------------------------------- the columnar fast path


def _read(path: Path, fast: bool):
    from analysis.formats.base import Context, Problems
    from analysis.formats.ingest import read_traces
    ctx = Context(problems=Problems(path.name))
    traces = list(read_traces(path, ctx, fast=fast))
    return ctx, traces


def _same_trace(a, b) -> None:
    assert a.tokens == b.tokens and a.prompt == b.prompt and a.boundary == b.boundary
    assert a.source_id == b.source_id and a.metadata == b.metadata
    np.testing.assert_array_equal(a.logprobs, b.logprobs)
    for name in ("token_ids", "topk_ids", "topk_logprobs"):
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None) == (y is None), name
        if x is not None:
            np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("name", ["openai_chat.jsonl", "split_bytes.jsonl", "xss_tokens.jsonl", "sglang_chat.jsonl",
                                  "answer_only_reasoning.jsonl", "vllm_reasoning.jsonl", "llamacpp_chat.jsonl",
                                  "openai_chat_stream.jsonl"])
def test_fast_path_reads_exactly_like_the_slow_path(name):
    fast_ctx, fast = _read(FIX / name, True)
    slow_ctx, slow = _read(FIX / name, False)
    assert len(fast) == len(slow) and fast_ctx.problems.total == slow_ctx.problems.total == 0
    for a, b in zip(fast, slow):
        _same_trace(a, b)
    assert fast_ctx.local.ids == slow_ctx.local.ids  # the same run-local ids, in the same order
    if name in ("openai_chat.jsonl", "split_bytes.jsonl", "xss_tokens.jsonl", "sglang_chat.jsonl"):
        assert fast_ctx.fast_records == len(fast)  # these went through the columnar reader


def test_fast_path_hands_over_mid_file(store, tmp_path):
    """Records the columnar reader cannot take (here: per-token ids, llama.cpp's, which it leaves to the
    record reader) are read by the slow reader from there on; the result is the same as the slow reader's."""
    from analysis.formats import fastchat
    line = (FIX / "openai_chat.jsonl").read_text().splitlines()[0]
    rec = json.loads(line)
    lines = [json.dumps({**rec, "id": f"r{i}"}) for i in range(40)]
    p = tmp_path / "mixed.jsonl"
    bad_type = json.loads(json.dumps({**rec, "id": "r-last", "metadata": {"problem_id": 7, "level": "hard 2"}}))
    for i, entry in enumerate(bad_type["choices"][0]["logprobs"]["content"]):
        entry["id"] = 100 + i
    p.write_text("\n".join(lines) + "\n" + json.dumps(bad_type) + "\n")
    old = fastchat.BLOCK_BYTES
    fastchat.BLOCK_BYTES = 4096  # many blocks, so that the hand-over happens after some of them
    try:
        fast_ctx, fast = _read(p, True)
    finally:
        fastchat.BLOCK_BYTES = old
    slow_ctx, slow = _read(p, False)
    assert 0 < fast_ctx.fast_records < 41 and len(fast) == len(slow) == 41
    for a, b in zip(fast, slow):
        _same_trace(a, b)
    assert fast_ctx.local.ids == slow_ctx.local.ids
    assert fast[-1].metadata["problem_id"] == "7" and fast[-1].metadata["level"] == 2.0


@pytest.mark.parametrize("change", ["no choices", "choices null", "top_logprobs an object", "logprob a string",
                                    "token a number", "record null"])
def test_fast_path_reports_the_same_problems(tmp_path, monkeypatch, change):
    """A record the columnar reader cannot read as it is (after good ones in the same block) gives
    the same traces and the same problems as the record-by-record reader."""
    rec = json.loads((FIX / "openai_chat.jsonl").read_text().splitlines()[0])
    bad = json.loads(json.dumps({**rec, "id": "bad"}))
    entry = bad["choices"][0]["logprobs"]["content"][0]
    if change == "no choices":
        del bad["choices"]
    elif change == "choices null":
        bad["choices"] = None
    elif change == "top_logprobs an object":
        entry["top_logprobs"] = entry["top_logprobs"][0]
    elif change == "logprob a string":
        entry["logprob"] = "abc"
    elif change == "record null":
        from analysis.formats import fastchat
        bad = None  # at the start of a block: pyarrow's reader crashed on such a line
        monkeypatch.setattr(fastchat, "BLOCK_BYTES", len(json.dumps(rec)) + 1)
    else:
        entry["token"] = 7
    p = tmp_path / "one_bad.jsonl"
    p.write_text(json.dumps(rec) + "\n" + json.dumps(bad) + "\n")
    fast_ctx, fast = _read(p, True)
    slow_ctx, slow = _read(p, False)
    assert fast_ctx.problems.items == slow_ctx.problems.items and len(slow_ctx.problems.items) == 1
    assert "line 2" in slow_ctx.problems.items[0]
    assert len(fast) == len(slow)
    for a, b in zip(fast, slow):
        _same_trace(a, b)


def test_fast_path_problems_have_exact_lines(store, tmp_path):
    line = (FIX / "openai_chat.jsonl").read_text().splitlines()[0]
    p = tmp_path / "gaps.jsonl"
    p.write_text(line + "\n\n\n" + line + "\n")  # blank lines, then a duplicate id
    assert problems_of(store, p) == ["gaps.jsonl line 4: duplicate trace id 'chatcmpl-A1' (also at line 1)"]
