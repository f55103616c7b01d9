"""The recorder: what StepRecorder keeps equals the metrics on the raw logits, greedy top-1
is the chosen token, and scoring a generated completion reproduces its record."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from analysis import metrics
from analysis.record import GenerationSettings, Prompt, StepRecorder, generate_batch, score_completion


class CaptureLogits:
    """A logits processor placed after the recorder: it sees the same raw logits."""

    def __init__(self):
        self.steps: list[torch.Tensor] = []

    def __call__(self, input_ids, scores):
        self.steps.append(scores.detach().clone())
        return scores


class ForceTokens:
    """Leaves only the next token of ``ids`` possible (after the recorder has seen the raw
    logits), so that a generated completion is a known, canonically tokenised text."""

    def __init__(self, ids: list[int], start: int):
        self.ids, self.start = ids, start

    def __call__(self, input_ids, scores):
        step = input_ids.shape[1] - self.start
        forced = torch.full_like(scores, float("-inf"))
        forced[:, self.ids[step]] = 0.0
        return forced


@pytest.mark.parametrize("temperature", [0.7, 1.0, 1.6])
@pytest.mark.parametrize("k", [0, 5])
def test_step_recorder_matches_the_metrics_on_raw_logits(temperature, k):
    g = torch.Generator().manual_seed(0)
    rec = StepRecorder(temperature, k)
    steps = []
    ids = torch.zeros(3, 4, dtype=torch.long)
    for s in range(6):
        z = torch.randn(3, 50, generator=g) * 3
        z[0, 10:] = float("-inf")       # masked vocabulary entries
        z[1, :] = 0.0                    # uniform
        if s % 2:
            z = z.half()                 # half-precision logits
        steps.append(z)
        rec(ids, z)
        ids = torch.cat([ids, torch.randint(0, 10, (3, 1), generator=g)], dim=1)  # the token chosen
    rec.finish(ids)
    arr = rec.arrays()
    z = torch.stack([s.float() for s in steps], dim=1)  # [B, steps, V]
    np.testing.assert_allclose(arr["entropy"], metrics.entropy_from_logits(z, temperature).numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(arr["entropy_t1"], metrics.entropy_from_logits(z, 1.0).numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(arr["entropy"][1], np.log(50), rtol=1e-6)
    logp = torch.log_softmax(z / temperature, dim=-1)
    chosen = logp.gather(2, ids[:, 4:, None]).squeeze(2)
    np.testing.assert_allclose(arr["chosen_lp"], chosen.numpy(), rtol=1e-6, atol=1e-6)
    assert arr["entropy"].shape == arr["chosen_lp"].shape == (3, 6)
    if k:
        v, i = torch.topk(logp, k, dim=-1)
        np.testing.assert_allclose(arr["topk_lp"], v.numpy(), rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(arr["topk_ids"][1:], i.numpy()[1:])  # row 0: ties among -inf
        assert arr["topk_ids"].shape == (3, 6, k)
    else:
        assert "topk_lp" not in arr


@pytest.mark.parametrize("do_sample", [True, False])
def test_generated_records_equal_the_metrics_on_the_raw_logits(tiny_lm, do_sample):
    settings = GenerationSettings(temperature=0.7, top_p=0.9, max_new_tokens=12, top_k=5, do_sample=do_sample)
    capture = CaptureLogits()
    prompts = [Prompt("What is 12 + 7?"), Prompt("Tom has 3 apples and buys 5 more, so he has")]
    traces = generate_batch(tiny_lm, prompts, settings, seed=3, extra_processors=[capture])
    raw = torch.stack(capture.steps, dim=1)  # [B, steps, V]
    t = settings.effective_temperature
    for b, tr in enumerate(traces):
        n = tr.n_tokens
        assert n >= 1 and tr.k == 5
        z = raw[b, :n]
        np.testing.assert_allclose(tr.entropy_full, metrics.entropy_from_logits(z, t).numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(tr.entropy_full_t1, metrics.entropy_from_logits(z, 1.0).numpy(), rtol=1e-5, atol=1e-6)
        logp = torch.log_softmax(z / t, dim=-1)
        chosen = logp.gather(1, torch.as_tensor(tr.token_ids)[:, None]).squeeze(1)
        np.testing.assert_allclose(tr.logprobs, chosen.numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(tr.topk_logprobs, torch.topk(logp, 5).values.numpy(), rtol=1e-5, atol=1e-6)
        assert np.isfinite(tr.entropy_full).all() and (tr.entropy_full >= 0).all()
        assert "".join(tr.tokens) == tiny_lm.tokenizer.decode(tr.token_ids)


def test_greedy_top1_is_the_chosen_token(tiny_lm):
    settings = GenerationSettings(max_new_tokens=16, top_k=4, do_sample=False)
    traces = generate_batch(tiny_lm, [Prompt("Wait, let me check"), Prompt("12 + 7 =")], settings, seed=0)
    for tr in traces:
        np.testing.assert_array_equal(tr.token_ids, tr.topk_ids[:, 0])
        np.testing.assert_allclose(tr.logprobs, tr.topk_logprobs[:, 0], rtol=1e-6)
        np.testing.assert_allclose(tr.entropy_full, tr.entropy_full_t1)  # greedy records at T = 1


def test_scoring_a_generated_completion_reproduces_its_record(tiny_lm):
    tok = tiny_lm.tokenizer
    text = " Tom has 3 apples and buys 5 more, so he has 8 apples. Wait, let me check."
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok(tok.decode(ids), add_special_tokens=False)["input_ids"] == ids  # canonical tokens
    settings = GenerationSettings(temperature=0.8, top_p=0.95, max_new_tokens=len(ids), top_k=6)
    prompt = "What does Tom have?"
    from analysis.record import build_prompt_ids
    start = len(build_prompt_ids(tiny_lm, prompt, settings))
    gen = generate_batch(tiny_lm, [Prompt(prompt)], settings, seed=1,
                         extra_processors=[ForceTokens(ids, start)])[0]
    assert gen.token_ids.tolist() == ids and gen.completion == text
    # in chunks smaller than the completion, so the KV-cache path is used too
    scored = score_completion(tiny_lm, prompt, gen.completion, settings, chunk=7)
    assert scored.token_ids.tolist() == ids and scored.tokens == gen.tokens
    for name in ("entropy_full", "entropy_full_t1", "logprobs", "topk_logprobs"):
        np.testing.assert_allclose(getattr(scored, name), getattr(gen, name), rtol=1e-4, atol=1e-5, err_msg=name)
    np.testing.assert_array_equal(scored.topk_ids, gen.topk_ids)
    assert scored.boundary == gen.boundary


def test_scoring_an_empty_completion(tiny_lm):
    tr = score_completion(tiny_lm, "What is 1 + 1?", "", GenerationSettings(top_k=3))
    assert tr.n_tokens == 0 and tr.entropy_full.shape == (0,)


@pytest.mark.slow
def test_the_embedded_model_records_what_the_metrics_say(embedded_lm):
    settings = GenerationSettings(max_new_tokens=8, top_k=20, do_sample=False)
    capture = CaptureLogits()
    prompts = [Prompt("What is 2 + 3?"), Prompt("Name a colour.")]
    traces = generate_batch(embedded_lm, prompts, settings, seed=0, extra_processors=[capture])
    raw = torch.stack(capture.steps, dim=1)
    assert raw.shape[-1] == 49_152
    for b, tr in enumerate(traces):
        assert 1 <= tr.n_tokens <= 8 and tr.k == 20
        assert np.isfinite(tr.entropy_full).all() and np.isfinite(tr.logprobs).all()
        np.testing.assert_allclose(tr.entropy_full, metrics.entropy_from_logits(raw[b, : tr.n_tokens]).numpy(),
                                   rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(tr.token_ids, tr.topk_ids[:, 0])
        np.testing.assert_allclose(tr.logprobs, tr.topk_logprobs[:, 0], rtol=1e-6)
        # top-20 holds most of the mass of a 49k vocabulary, so EPR is close below the full H
        epr = metrics.all_topk_entropies(tr.topk_logprobs)["epr"]
        assert np.all(epr <= tr.entropy_full + 1e-5)


# --------------------------------------------------------------------------- scoring a file's own tokens


def _ingest_plain(tmp_path, store, lm, records):
    import json

    from analysis.formats import ingest_files
    path = tmp_path / "plain.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n", encoding="utf-8")
    return ingest_files(store, [path], format="plain_text", lm=lm)[0]


@pytest.mark.slow
def test_scored_plain_text_keeps_its_alternatives_text(embedded_lm, store, tmp_path):
    res = _ingest_plain(tmp_path, store, embedded_lm, [
        {"prompt": "What is 2 + 3?", "completion": "2 + 3 = 5. Final answer: 5"},
        {"prompt": "Name a colour.", "completion": "Blue, like the sky."}])
    assert res.n_traces == 2
    for tid in store.traces(res.run_id)["trace_id"]:
        tok = store.tokens(int(tid))
        alts = [t for row in tok["topk_tokens"] for t in row]
        assert len(alts) == 20 * len(tok)
        assert not [t for t in alts if t.startswith("<id ")]
        # the texts are the tokenizer's own
        ids = [i for row in tok["topk_ids"] for i in row]
        assert alts[:40] == [embedded_lm.tokenizer.decode([int(i)]) for i in ids[:40]]


@pytest.mark.slow
def test_a_files_own_tokens_are_scored_exactly(embedded_lm):
    tok = embedded_lm.tokenizer
    text = "Hello world.\n\nSo the answer is 5."
    plain = tok(text, add_special_tokens=False)["input_ids"]
    # the same text spelled with other tokens: "Hello" letter by letter
    letters = [tok.convert_tokens_to_ids(c) for c in "Hello"]
    own = letters + tok(text[5:], add_special_tokens=False)["input_ids"]
    assert own != plain and tok.decode(own) == text
    settings = GenerationSettings(do_sample=False, top_k=5)
    tr = score_completion(embedded_lm, "Say it.", text, settings, token_ids=own)
    assert tr.token_ids.tolist() == own and "".join(tr.tokens) == text
    assert tr.metadata["tokenization"] == {"scored": "file", "source": "token ids", "file_tokens": len(own),
                                           "model_tokens": len(own), "differ": 0}
    # the same tokens given by their bytes (llama.cpp's completion_probabilities[].bytes)
    by_bytes = score_completion(embedded_lm, "Say it.", text, settings,
                                token_texts=[tok.decode([i]).encode() for i in own])
    assert by_bytes.token_ids.tolist() == own and by_bytes.metadata["tokenization"]["source"] == "token bytes"
    np.testing.assert_allclose(by_bytes.entropy_full, tr.entropy_full, rtol=1e-5)
    # scoring the re-tokenised text gives other positions: the first token differs
    retok = score_completion(embedded_lm, "Say it.", text, settings)
    assert retok.token_ids.tolist() == plain and "tokenization" not in retok.metadata
    # ids of another tokenizer: re-tokenised, and how many of the file's tokens differ is said
    other = score_completion(embedded_lm, "Say it.", text, settings, token_ids=[5, 6, 7] + plain[1:])
    assert other.token_ids.tolist() == plain
    assert other.metadata["tokenization"] == {"scored": "retokenised", "file_tokens": len(plain) + 2,
                                              "model_tokens": len(plain), "differ": 3}


@pytest.mark.slow
def test_ingest_says_how_many_tokens_were_retokenised(embedded_lm, store, tmp_path):
    import json

    tok = embedded_lm.tokenizer
    text = "First.\n\nSecond."
    plain = tok(text, add_special_tokens=False)["input_ids"]
    pieces = [tok.decode([i]) for i in plain]
    res = _ingest_plain(tmp_path, store, embedded_lm, [
        # llama.cpp /completion: its token ids, matching this tokenizer: scored as given
        {"prompt": "q", "completion": text, "completion_probabilities": [{"id": i, "token": p} for i, p in
                                                                          zip(plain, pieces)]},
        # token texts that do not spell the text: re-tokenised, counted
        {"prompt": "q", "completion": text, "completion_probabilities": [{"token": p} for p in
                                                                          ["First", ".\n", "\n", "Second."]]}])
    assert res.n_traces == 2
    warning = [w for w in res.warnings if "re-tokenised" in w]
    assert len(warning) == 1 and "1 trace(s) give their own tokens" in warning[0]
    assert "of the file's 4 tokens differ" in warning[0]
    settings = json.loads(store.runs()["settings"].iloc[0])
    assert warning[0] in settings["warnings"]
    meta = [json.loads(m) for m in store.traces(res.run_id)["metadata"]]
    assert meta[0]["tokenization"]["scored"] == "file" and meta[1]["tokenization"]["scored"] == "retokenised"
