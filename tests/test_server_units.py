"""The parts of server recording that need no server (retry timing, limits, kinds, keys), and
the device and dtype choices of local models (the CPU and bfloat16 paths; CUDA where present)."""

from __future__ import annotations

import email.utils
import random
import time

import numpy as np
import pytest
import torch

from analysis.models import LoadedModel, ModelLoadError, load_model, pick_device, pick_dtype
from analysis.server.http import HttpClient, RetryPolicy, ServerError, _message, parse_retry_after
from analysis.server.servers import Server, generation_body, limit_from_message, lower_top_k
from analysis.record import GenerationSettings, Prompt, generate_batch, score_completion


def test_retry_after_seconds_and_dates():
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(" 0.5 ") == 0.5
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    now = time.time()
    when = email.utils.formatdate(now + 30, usegmt=True)
    assert 28 <= parse_retry_after(when, now=now) <= 31
    assert parse_retry_after(email.utils.formatdate(now - 30, usegmt=True), now=now) == 0.0


def test_backoff_has_jitter_grows_and_honours_retry_after():
    pol = RetryPolicy(base_s=0.5, max_s=8.0, max_retry_after_s=60.0)
    rng = random.Random(0)
    waits = [[pol.backoff(a, None, rng) for _ in range(200)] for a in range(6)]
    for a, w in enumerate(waits):
        step = min(8.0, 0.5 * 2 ** a)
        assert 0 <= min(w) and max(w) <= step
        assert max(w) - min(w) > step / 2          # jitter spreads the retries of many clients
    assert all(pol.backoff(0, 5.0, rng) >= 5.0 for _ in range(50))   # never before Retry-After
    assert pol.backoff(0, 1e6, rng) <= 60.0                          # but not forever


def test_top_k_limits_read_from_server_messages():
    vllm = "Requested sample logprobs of 50, which is greater than max allowed: 20"
    assert limit_from_message(vllm, 50) == 20
    openai = "Invalid 'top_logprobs': integer above maximum value. Expected a value <= 20, but got 25 instead."
    assert limit_from_message(openai, 25) == 20
    assert limit_from_message("top_logprobs must be between 0 and 5", 20) == 5
    assert limit_from_message("max_tokens must be at most 10", 20) is None     # not about logprobs
    assert limit_from_message("logprobs: max allowed: 30", 20) is None          # not a lower limit


def test_lower_top_k_only_on_a_400_that_states_a_limit():
    srv = Server(HttpClient("http://127.0.0.1:9"), "m", top_k=20)
    assert not lower_top_k(srv, ServerError("HTTP 500: oops", 500, "max allowed: 5 logprobs"))
    assert not lower_top_k(srv, ServerError("HTTP 400: bad prompt", 400, "{}"))
    assert lower_top_k(srv, ServerError("x", 400, '{"error": {"message": "Requested sample logprobs of 20, '
                                                  'which is greater than max allowed: 8"}}'))
    assert srv.top_k == 8 and srv.notes


def test_error_bodies_give_their_message():
    assert _message('{"error": {"message": "rate limited", "type": "x"}}') == "rate limited"
    assert _message('{"detail": "Not Found"}') == "Not Found"
    assert _message("<html>bad gateway</html>") == "<html>bad gateway</html>"


def test_api_key_comes_from_the_environment_and_stays_out_of_reprs(monkeypatch):
    monkeypatch.setenv("TS_KEY_UNIT", "sk-unit-secret")
    c = HttpClient("http://127.0.0.1:9/v1", "TS_KEY_UNIT")
    assert c.headers()["Authorization"] == "Bearer sk-unit-secret"
    assert "sk-unit-secret" not in repr(c) and "sk-unit-secret" not in repr(c.__dict__.get("url"))
    assert c.prefix == "" and c.url == "http://127.0.0.1:9"       # a pasted /v1 base URL
    monkeypatch.delenv("TS_KEY_UNIT")
    with pytest.raises(ServerError, match="TS_KEY_UNIT"):
        HttpClient("http://127.0.0.1:9", "TS_KEY_UNIT")
    with pytest.raises(ServerError, match="not a server URL"):
        HttpClient("127.0.0.1:9")


def test_a_refused_connection_is_retried_then_reported_without_an_answer():
    c = HttpClient("http://127.0.0.1:9", policy=RetryPolicy(retries=2, base_s=0.001))
    with pytest.raises(ServerError) as e:
        c.post("/v1/chat/completions", {"x": 1}, label="request 7 (prompt 3, sample 0)")
    assert e.value.status is None and not e.value.timeout
    assert str(e.value).startswith("request 7 (prompt 3, sample 0): no answer from http://127.0.0.1:9")
    assert "after 3 attempts" in str(e.value) and c.stats["attempts"] == 3


def test_request_bodies_follow_the_server_kind():
    s = GenerationSettings(do_sample=False, max_new_tokens=9, top_k=5, system_prompt="Be brief.")
    llama = generation_body(Server(HttpClient("http://h:1"), "m", "llama-cpp-python", top_k=5), "hi", s, 1, 3)
    assert llama["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    assert (llama["logprobs"], llama["top_logprobs"], llama["temperature"], llama["seed"]) == (True, 5, 0.0, 3)
    assert (llama["top_k"], llama["min_p"], llama["repeat_penalty"]) == (0, 0.0, 1.0) and "n" not in llama
    vllm = generation_body(Server(HttpClient("http://h:1"), "m", "vllm", "completions", top_k=5), "hi",
                           GenerationSettings(temperature=0.6, top_p=0.9), 4, None)
    assert vllm["prompt"] == "hi" and vllm["logprobs"] == 5 and vllm["n"] == 4
    assert vllm["return_tokens_as_token_ids"] is True and "top_k" not in vllm and "seed" not in vllm
    assert (vllm["temperature"], vllm["top_p"]) == (0.6, 0.9)


# --------------------------------------------------------------------------- devices and dtypes


def test_device_and_dtype_choices():
    assert pick_device("cpu") == "cpu"
    assert pick_device("auto") == ("cuda" if torch.cuda.is_available() else
                                   "mps" if torch.backends.mps.is_available() else "cpu")
    assert pick_dtype("auto", "cpu") is torch.float32
    assert pick_dtype("bfloat16", "cpu") is torch.bfloat16 and pick_dtype("float16", "cpu") is torch.float16
    with pytest.raises(ModelLoadError, match="--dtype int8"):
        pick_dtype("int8", "cpu")
    with pytest.raises(ModelLoadError, match="--device tpu"):
        pick_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ModelLoadError, match="torch sees no CUDA GPU"):
            pick_device("cuda")
        with pytest.raises(ModelLoadError, match="torch sees no CUDA GPU"):  # before any loading
            load_model("/nonexistent/model", device="cuda")


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory, tiny_tokenizer):
    from tests.conftest import make_tiny_llama
    folder = tmp_path_factory.mktemp("tiny")
    make_tiny_llama(tiny_tokenizer, seed=3).save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    return folder


def _devices() -> list[str]:
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", _devices())
def test_bfloat16_model_records_float32_entropies_close_to_float32(tiny_folder, device):
    """A bfloat16 model (CPU here; CUDA where a GPU is present) gives the same tokens' entropies
    as the float32 one within bfloat16's rounding, computed in float32 from its logits."""
    from analysis.layers import LayerOptions, record_layers

    f32 = load_model(str(tiny_folder), device="cpu", dtype="float32")
    b16 = load_model(str(tiny_folder), device=device, dtype="bfloat16")
    assert f32.model.dtype == torch.float32 and b16.model.dtype == torch.bfloat16
    assert b16.device.type == device
    s = GenerationSettings(do_sample=False, max_new_tokens=12, top_k=5)
    prompts = [Prompt("What is 12 + 7?"), Prompt("Tom has 3 apples")]
    a = generate_batch(f32, prompts, s, seed=0)
    b = generate_batch(b16, prompts, s, seed=0)
    for x, y in zip(a, b):
        assert y.entropy_full.dtype == np.float64 and np.isfinite(y.entropy_full).all()
        # teacher-force the float32 completion through both: the same positions
        sx = score_completion(f32, x.prompt, x.completion, s)
        sy = score_completion(b16, x.prompt, x.completion, s)
        assert sx.n_tokens == sy.n_tokens >= 1
        assert np.max(np.abs(sx.entropy_full - sy.entropy_full)) < 0.1
        assert np.median(np.abs(sx.logprobs - sy.logprobs)) < 0.05
    ids = b16.tokenizer("What is 12 + 7?")["input_ids"]
    comp = b16.tokenizer(" 19 apples")["input_ids"]
    opts = LayerOptions(logit_lens=True, attention_entropy=True)
    ly = record_layers(b16.model, ids, comp, opts)
    lx = record_layers(f32.model, ids, comp, opts)
    for key in ("lens_entropy", "attn_entropy"):
        assert ly.arrays[key].dtype == np.float32
        assert np.nanmax(np.abs(ly.arrays[key] - lx.arrays[key])) < 0.1


def test_loaded_model_reports_its_device(tiny_lm):
    assert isinstance(tiny_lm, LoadedModel) and tiny_lm.device.type == "cpu"
