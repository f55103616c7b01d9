"""Recording and scoring through a real llama-cpp-python server on loopback (the embedded
SmolLM2 GGUF), with faults injected by a local proxy."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from analysis.formats.ingest import ingest_file
from analysis.record import GenerationSettings, Prompt
from analysis.server.generate import record_server_run
from analysis.store import Store
from tests.server_support import ROOT, FaultProxy, LlamaServer, cli

pytestmark = pytest.mark.slow

PROMPTS = ["What is 2 + 3? Answer briefly.", "Name a colour.", "What is 10 - 4?"]


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    srv = LlamaServer(log=tmp_path_factory.mktemp("llama") / "server.log").start()
    yield srv
    srv.stop()


def connect(url: str, **kw):
    from analysis.server.servers import connect as c
    return c(url, None, **kw)


def greedy(max_tokens: int = 16, **kw) -> GenerationSettings:
    return GenerationSettings(do_sample=False, max_new_tokens=max_tokens, top_k=5, marker="</think>", **kw)


def run_rows(store: Store, run_id: int) -> tuple[list[dict], list[dict]]:
    """A run's traces and token rows without the ids the store gives out (trace and run ids)."""
    traces = store.traces(run_id)
    rows, toks = [], []
    for t in traces.itertuples():
        d = t._asdict()
        for k in ("Index", "trace_id", "run_id"):
            d.pop(k, None)
        rows.append({k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in d.items()})
        tk = store.tokens(int(t.trace_id)).drop(columns=["trace_id"])
        toks.append({c: [_plain(v) for v in tk[c]] for c in tk.columns})
    return rows, toks


def _plain(v):
    """A cell as comparable Python values (NaN as None, arrays as lists)."""
    if isinstance(v, (np.ndarray, list)):
        return [_plain(x) for x in list(v)]
    if isinstance(v, (float, np.floating)):
        return None if np.isnan(v) else float(v)
    return v.item() if isinstance(v, np.generic) else v


# --------------------------------------------------------------------------- same as the local recorder


def test_greedy_through_server_matches_local_recorder(llama, tmp_path):
    from analysis.models import load_model
    from analysis.record import record_run

    store = Store(tmp_path / "s.duckdb")
    prompts = [Prompt(p) for p in ("Count from 1 to 20.", "List five fruits, one a line.", PROMPTS[2])]
    settings = greedy(16)
    res = record_server_run(store, connect(llama.url), prompts, settings, "server", concurrency=2)
    assert res.status == "complete" and res.n_traces == len(prompts) and not res.failed
    local = record_run(store, load_model(None), prompts, settings, "local")
    s_tr, l_tr = store.traces(res.run_id), store.traces(local.run_id)
    same = compared = 0
    diffs = []
    for p in range(len(prompts)):  # server traces are stored as they arrive: matched by prompt_idx
        prompt_idx = int(json.loads(s_tr.iloc[p]["metadata"])["prompt_idx"])
        a = store.tokens(int(s_tr.iloc[p]["trace_id"]))
        b = store.tokens(int(l_tr.iloc[prompt_idx]["trace_id"]))
        n = min(len(a), len(b))
        agree = True
        for i in range(n):
            compared += 1
            if a["token"].iloc[i] == b["token"].iloc[i]:
                same += 1
                if agree:
                    diffs.append(abs(float(a["logprob"].iloc[i]) - float(b["logprob"].iloc[i])))
            else:
                agree = False  # past the first difference the prefixes differ
    assert compared >= 20
    assert same / compared > 0.5, f"only {same} of {compared} positions chose the same token"
    assert len(diffs) >= 10
    assert float(np.median(diffs)) < 0.05, f"median |logprob difference| {np.median(diffs):.4f} nats"
    # the server's numbers are top-k ones, labelled as such
    assert set(s_tr["estimator"]) == {"topk_renorm"} and set(l_tr["estimator"]) == {"full"}


# --------------------------------------------------------------------------- the same as a file


def test_recorded_and_uploaded_responses_give_identical_rows(llama, tmp_path):
    store = Store(tmp_path / "s.duckdb")
    saved = tmp_path / "responses.jsonl"
    prompts = [Prompt(PROMPTS[0], {"problem_id": "p0", "level": 2}), Prompt(PROMPTS[1], {"problem_id": "p1"})]
    res = record_server_run(store, connect(llama.url), prompts, greedy(12), "recorded", save=saved, concurrency=2)
    assert res.n_traces == 2
    lines = saved.read_text().splitlines()
    assert len(lines) == 2
    up = ingest_file(store, saved)
    rec_rows, rec_toks = run_rows(store, res.run_id)
    up_rows, up_toks = run_rows(store, up.run_id)
    assert rec_rows == up_rows
    assert rec_toks == up_toks
    assert {r["problem_id"] for r in rec_rows} == {"p0", "p1"}
    assert all(r["temperature"] == 0.0 for r in map(lambda r: json.loads(r["metadata"]), rec_rows))


# --------------------------------------------------------------------------- faults


def test_429_and_500_are_retried(llama, tmp_path):
    store = Store(tmp_path / "s.duckdb")
    with FaultProxy(llama.url, plan=["429", "500", "pass"]) as proxy:
        server = connect(proxy.url)
        res = record_server_run(store, server, [Prompt(PROMPTS[0])], greedy(8), "retried")
    assert res.status == "complete" and res.n_traces == 1 and not res.failed
    assert server.client.stats["retries"] == 2
    assert proxy.posts() == ["/v1/chat/completions"] * 3


def test_a_request_failing_for_good_is_recorded_with_its_reason(llama, tmp_path):
    store = Store(tmp_path / "s.duckdb")
    with FaultProxy(llama.url, plan=["pass", "500", "500", "500"]) as proxy:
        from analysis.server.http import RetryPolicy
        server = connect(proxy.url, retries=2)
        server.client.policy = RetryPolicy(retries=2, base_s=0.01)
        res = record_server_run(store, server, [Prompt(PROMPTS[0]), Prompt(PROMPTS[1])], greedy(8), "one fails",
                                concurrency=1)
    assert res.n_traces == 1 and len(res.failed) == 1
    f = res.failed[0]
    assert (f["prompt_idx"], f["sample_idx"]) == (1, 0)
    assert "request 2 (prompt 1, sample 0)" in f["reason"] and "HTTP 500" in f["reason"]
    stored = store.run_settings(res.run_id)
    assert stored["n_failed"] == 1 and stored["failed"][0]["reason"] == f["reason"]


@pytest.mark.parametrize("fault, words", [("not-json", "not JSON"),
                                          ("bad-field", 'choices[0].logprobs.content[1].logprob is "abc"')])
def test_a_malformed_answer_names_the_request(llama, tmp_path, fault, words):
    store = Store(tmp_path / "s.duckdb")
    with FaultProxy(llama.url, plan=[fault]) as proxy:
        res = record_server_run(store, connect(proxy.url), [Prompt(PROMPTS[0])], greedy(8), "malformed")
    assert res.n_traces == 0 and len(res.failed) == 1
    reason = res.failed[0]["reason"]
    assert reason.startswith("request 1 (prompt 0, sample 0)") and words in reason, reason


def test_top_k_limit_is_discovered_from_the_servers_400(llama, tmp_path):
    store = Store(tmp_path / "s.duckdb")
    with FaultProxy(llama.url, plan=["400-limit:3"]) as proxy:
        server = connect(proxy.url)
        s = greedy(8)
        s.top_k = 20
        server.top_k = server.top_k_asked = 20
        res = record_server_run(store, server, [Prompt(PROMPTS[0]), Prompt(PROMPTS[2])], s, "limit", concurrency=2)
    assert res.n_traces == 2 and not res.failed
    stored = store.run_settings(res.run_id)["server"]
    assert (stored["top_k_asked"], stored["top_k"]) == (20, 3)
    # llama.cpp adds the chosen token to the top 3 when it is not among them
    assert set(store.traces(res.run_id)["k"]) <= {3, 4}


def test_samples_ask_for_n_once_then_one_request_per_sample(llama, tmp_path):
    store = Store(tmp_path / "s.duckdb")
    s = GenerationSettings(temperature=0.9, top_p=0.95, max_new_tokens=4, top_k=3, samples=2)
    with FaultProxy(llama.url) as proxy:
        server = connect(proxy.url)
        res = record_server_run(store, server, [Prompt(PROMPTS[1]), Prompt(PROMPTS[2])], s, "samples")
    assert res.n_traces == 4 and not res.failed
    assert server.n_ok is False  # llama-cpp-python returns one choice whatever n is
    assert store.run_pairs(res.run_id) == {(p, k) for p in range(2) for k in range(2)}
    assert len(proxy.posts()) == 4


def test_api_key_is_read_from_the_environment_and_never_stored_or_printed(llama, tmp_path):
    key = "sk-test-" + "7f3a9c" * 4
    store_file = tmp_path / "s.duckdb"
    prompts = tmp_path / "p.txt"
    prompts.write_text(PROMPTS[0] + "\n")
    with FaultProxy(llama.url, need_key=key) as proxy:
        ok = cli("--store", str(store_file), "generate", "--server", proxy.url, "--api-key-env", "TS_TEST_KEY",
                 "--prompts", str(prompts), "--greedy", "--max-tokens", "6", "--top-k", "3",
                 env={"TS_TEST_KEY": key})
        assert ok.returncode == 0, ok.stderr
        assert all(h.get("Authorization") == f"Bearer {key}" for m, _, h in proxy.seen if m == "POST")
        missing = cli("--store", str(store_file), "generate", "--server", proxy.url, "--api-key-env",
                      "TS_UNSET_KEY", "--prompts", str(prompts), env={"TS_UNSET_KEY": ""})
        no_key = cli("--store", str(store_file), "generate", "--server", proxy.url, "--prompts", str(prompts),
                     "--max-tokens", "4")
    assert missing.returncode == 2 and "TS_UNSET_KEY" in missing.stderr and "Traceback" not in missing.stderr
    assert no_key.returncode == 2 and "HTTP 401" in no_key.stderr
    for out in (ok, missing, no_key):
        assert key not in out.stdout + out.stderr
    assert key.encode() not in store_file.read_bytes()
    store = Store(store_file)
    assert store.run_settings(1)["api_key_env"] == "TS_TEST_KEY"
    assert key not in json.dumps(store.run_settings(1))


# --------------------------------------------------------------------------- killed and resumed


def _wait_for_traces(store_file, n: int, proc, timeout: float = 600) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        assert proc.poll() is None, proc.communicate()
        if store_file.exists():
            try:
                c = Store(store_file).counts()["traces"]
            except Exception:  # the writer holds the file this instant
                c = 0
            if c >= n:
                return
        time.sleep(0.3)
    raise AssertionError(f"fewer than {n} traces after {timeout} s")


def test_server_killed_mid_run_keeps_traces_and_resume_completes(tmp_path):
    store_file = tmp_path / "s.duckdb"
    prompts = tmp_path / "p.txt"
    prompts.write_text("\n".join(f"Count from {i} to {i + 5}." for i in range(4)) + "\n")
    srv = LlamaServer(log=tmp_path / "server.log").start()
    proc = subprocess.Popen([sys.executable, "-m", "analysis.cli", "--store", str(store_file), "generate",
                             "--server", srv.url, "--prompts", str(prompts), "--greedy", "--max-tokens", "12",
                             "--top-k", "3", "--concurrency", "1", "--retries", "1"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_traces(store_file, 1, proc)
        srv.kill()
        out, err = proc.communicate(timeout=300)
    finally:
        srv.kill()
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 2, err
    assert "stopped answering" in err and "--resume 1" in err and "Traceback" not in err
    store = Store(store_file)
    run = store.runs().iloc[0]
    assert run["status"] == "interrupted"
    kept = store.run_pairs(1)
    assert 1 <= len(kept) < 4
    assert "stopped" in store.run_settings(1)

    srv2 = LlamaServer(log=tmp_path / "server2.log").start()
    try:
        res = cli("--store", str(store_file), "generate", "--resume", "1", "--server", srv2.url)
    finally:
        srv2.kill()
    assert res.returncode == 0, res.stderr
    run = store.runs().iloc[0]
    assert run["status"] == "complete" and int(run["n_traces"]) == 4
    assert store.run_pairs(1) == {(p, 0) for p in range(4)}
    assert len(store.traces(1)) == 4  # no pair twice
    assert f"run 1: {4 - len(kept)} traces" in res.stdout and "4 of 4" in res.stdout


def test_sigterm_keeps_finished_traces_and_marks_the_run_interrupted(llama, tmp_path):
    store_file = tmp_path / "s.duckdb"
    prompts = tmp_path / "p.txt"
    prompts.write_text("\n".join(f"Say the word number {i}." for i in range(4)) + "\n")
    proc = subprocess.Popen([sys.executable, "-m", "analysis.cli", "--store", str(store_file), "generate",
                             "--server", llama.url, "--prompts", str(prompts), "--greedy", "--max-tokens", "8",
                             "--top-k", "3", "--concurrency", "1"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_traces(store_file, 1, proc)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, err
    store = Store(store_file)
    assert store.runs().iloc[0]["status"] == "interrupted"
    assert 1 <= len(store.run_pairs(1)) < 4


# --------------------------------------------------------------------------- teacher forcing


def test_scoring_through_the_server_reproduces_its_generation(llama, tmp_path):
    """The server's own greedy completion, scored back through /v1/completions with echo,
    gets the logprobs it was generated with."""
    from analysis.server.score import score_text

    store = Store(tmp_path / "s.duckdb")
    server = connect(llama.url, endpoint="completions")
    server.endpoint = "completions"
    prompt = "The capital of France is"
    res = record_server_run(store, server, [Prompt(prompt)], greedy(12), "gen")
    gen = store.tokens(int(store.traces(res.run_id).iloc[0]["trace_id"]))
    completion = "".join(gen["token"])
    tr = score_text(server, prompt, completion)
    assert tr.completion == completion
    n = min(len(gen), tr.n_tokens)
    assert n >= 8
    same = [i for i in range(n) if tr.tokens[i] == gen["token"].iloc[i]]
    assert len(same) >= n - 1
    d = np.abs(np.asarray([tr.logprobs[i] for i in same]) - gen["logprob"].to_numpy()[same])
    assert np.isfinite(d).sum() >= len(same) - 1   # greedy tokens are among the top-k alternatives
    assert float(np.nanmedian(d)) < 0.05


def test_score_command_scores_a_file_and_rescores_a_run(llama, tmp_path):
    store_file = tmp_path / "s.duckdb"
    texts = tmp_path / "plain.jsonl"
    texts.write_text("\n".join(json.dumps({"prompt": "Q: 2 + 2?\nA:", "completion": c, "problem_id": f"q{i}"})
                               for i, c in enumerate([" 4, because two and two make four.", " It is 5."])) + "\n")
    r = cli("--store", str(store_file), "score", str(texts), "--server", llama.url, "--top-k", "4")
    assert r.returncode == 0, r.stderr
    store = Store(store_file)
    tr = store.traces(1, with_completion=True)
    assert list(tr["completion"]) == [" 4, because two and two make four.", " It is 5."]
    assert list(tr["problem_id"]) == ["q0", "q1"]
    assert store.tokens(int(tr.iloc[0]["trace_id"]))["logprob"].notna().all()
    again = cli("--store", str(store_file), "score", "--run", "1", "--server", llama.url, "--top-k", "4")
    assert again.returncode == 0, again.stderr
    re = store.traces(2, with_completion=True)
    assert list(re["completion"]) == list(tr["completion"])
    assert store.run_settings(2)["rescored_run"] == 1


def test_servers_without_prompt_logprobs_say_so(llama, tmp_path):
    texts = tmp_path / "plain.jsonl"
    texts.write_text(json.dumps({"prompt": "Q", "completion": "A"}) + "\n")
    for kind, words in (("llama-server", "llama-server returns no logprobs of the prompt"),
                        ("ollama", "Ollama returns no logprobs of the prompt")):
        r = cli("--store", str(tmp_path / "s.duckdb"), "score", str(texts), "--server", llama.url,
                "--server-kind", kind)
        assert r.returncode == 2 and words in r.stderr and "Traceback" not in r.stderr, r.stderr


# --------------------------------------------------------------------------- the Generate page


def test_generate_page_records_through_a_server(llama, tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest

    store = Store(tmp_path / "s.duckdb")
    monkeypatch.setenv("THINKSCOPE_STORE", str(store.path))
    at = AppTest.from_file(str(ROOT / "dashboard" / "views" / "generate.py"), default_timeout=300)
    at.session_state["generate.source"] = "my prompts"
    at.session_state["generate.prompts"] = f"{PROMPTS[0]}\n{PROMPTS[1]}"
    at.session_state["generate.backend"] = "inference server"
    at.session_state["generate.server_url"] = llama.url
    at.session_state["generate.max_tokens"] = 8
    at.session_state["generate.greedy"] = True
    at.run()
    at.button(key="generate.go").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert "2 traces" in at.success[0].value
    runs = store.runs()
    assert list(runs["source"]) == ["server"] and list(runs["n_traces"]) == [2]
    assert store.run_settings(int(runs["run_id"].iloc[0]))["server"]["kind"] == "llama-cpp-python"
