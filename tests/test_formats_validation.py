"""Values no distribution has and text that is not text: refused with file, line and field.

Every reader checks the same things (``base.check_tokens``, ``base.check_text``); the OpenAI
chat reader is checked on both of its paths (columnar and record by record), and the
estimators are bounded whatever reaches them.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from analysis.formats import ingest_file, read_traces
from analysis.formats.base import Context, IngestError, Problems
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
