"""Branching through a real llama-cpp-python server on loopback (the embedded SmolLM2 GGUF):
the rollouts of a position generated from its completions endpoint, stored and linked like
the local path's, and the command's one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from analysis.branch import BranchSettings, load_parent
from analysis.branch_server import _Sender, branch_at_server, store_server_position
from analysis.record import GenerationSettings, Prompt
from analysis.server.generate import record_server_run
from analysis.server.servers import connect
from analysis.store import Store
from tests.server_support import LlamaServer, cli, free_port

pytestmark = pytest.mark.slow

PROMPT = "Question: What is 2 + 3?\nAnswer: 2 + 3 ="


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    srv = LlamaServer(log=tmp_path_factory.mktemp("llama") / "server.log").start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def recorded(llama, tmp_path_factory):
    """A store with one greedy trace recorded through the server's completions endpoint."""
    path = tmp_path_factory.mktemp("store") / "s.duckdb"
    store = Store(path)
    server = connect(llama.url, None, endpoint="completions", top_k=5)
    settings = GenerationSettings(do_sample=False, max_new_tokens=8, top_k=5, marker="</think>")
    res = record_server_run(store, server, [Prompt(PROMPT, {"gold_answer": "5", "problem_id": "add"})], settings,
                            "parent", concurrency=1)
    assert res.n_traces == 1
    tid = int(store.traces(res.run_id)["trace_id"].iloc[0])
    return path, res.run_id, tid


def meta_of(store, trace_id) -> dict:
    return json.loads(store.trace(int(trace_id))["metadata"])


def test_rollouts_through_the_server_are_stored_linked_and_graded(llama, recorded):
    path, run_id, tid = recorded
    store = Store(path)
    parent = load_parent(store, tid, need_ids=False)
    pos = 1
    server = connect(llama.url, None, endpoint="completions", top_k=5)
    settings = BranchSettings(n=2, p_min=0.0, top_k=5, max_alternatives=1, max_new_tokens=5, temperature=0.8)
    assert _Sender(server, parent, settings, {}).body("x", 2, 5, 0)["cache_prompt"] is True
    res = branch_at_server(store, server, parent, pos, settings)
    assert [b.kind for b in res.branches] == ["original", "alternative", "fresh"]
    assert res.n_generated == 6 and all(len(b.rollouts) == 2 for b in res.branches)
    # llama-cpp-python ignores n: one request per rollout, said once
    assert server.n_ok is False and any("one choice per request" in n for n in server.notes)
    branch_run = store_server_position(store, server, parent, res, settings)

    runs = store.runs().set_index("run_id")
    assert runs.loc[branch_run, "name"] == f"branches of run {run_id}"
    links = store.branch_rollouts(tid)
    assert len(links) == 6 and set(links["pos"]) == {pos} and set(links["parent_trace_id"]) == {tid}
    assert set(links["kind"]) == {"original", "alternative", "fresh"}
    original = links[links["kind"] == "original"]
    assert set(original["forced_token"]) == {parent.tokens[pos]}
    alt = links[links["kind"] == "alternative"]
    assert len(set(alt["forced_token"])) == 1 and alt["forced_token"].iloc[0] != parent.tokens[pos]
    assert (links["forced_p"].dropna() > 0).all() and len(links["forced_p"].dropna()) == 6
    seen = []
    for r in links.itertuples():
        assert store.trace_run(int(r.trace_id)) == branch_run
        tok = store.tokens(int(r.trace_id))
        # the forced (or, fresh, sampled) token at t starts the rollout's continuation
        assert tok["token"].iloc[0] == r.forced_token
        assert "".join(tok["token"]).startswith(r.forced_token)
        assert 1 <= len(tok) <= settings.max_new_tokens + 1
        seen.append((r.kind, list(tok["token"]), meta_of(store, r.trace_id)["stopped"]))
        assert np.isfinite(tok["entropy"].to_numpy(float)).all()  # top-k estimators, as the server path
        meta = json.loads(store.trace(int(r.trace_id))["metadata"])
        assert meta["prefix_retokenised"] is True and meta["branch_kind"] == r.kind and meta["branch_pos"] == pos
        assert "grade_method" in meta
        # graded, or 'no answer' (no extracted answer is never 'wrong')
        assert (r.answer is None and r.correct is None) or isinstance(r.answer, str)
    print(parent.tokens, seen)
    # a rollout ends at the end of text or at the budget; not every one stops at once
    assert any(len(toks) > 1 for _, toks, _ in seen)
    assert all(stop == "eos" for _, toks, stop in seen if len(toks) < settings.max_new_tokens + 1)
    fresh_ids = set(links.loc[links["kind"] == "fresh", "forced_token_id"])
    assert all(i is not None for i in fresh_ids)
    pos_row = store.branch_positions(tid).iloc[0]
    assert pos_row["settings"]["backend"] == "server" and pos_row["settings"]["prefix_retokenised"] is True
    assert pos_row["settings"]["server"]["kind"] == "llama-cpp-python"


def test_the_command_branches_through_the_server_and_reports_errors_in_one_line(llama, recorded, tmp_path):
    path, run_id, tid = recorded
    out = cli("--store", str(path), "branch", str(run_id), str(tid), "--at", "0", "--server", llama.url,
              "--n", "2", "--max-tokens", "3", "--max-alternatives", "1", "--no-fresh", "--p-min", "0")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "through" in out.stdout and "tokenised anew by the server" in out.stdout
    links = Store(path).branch_rollouts(tid)
    assert set(links["pos"]) >= {0} and len(links[links["pos"] == 0]) == 4

    dead = f"http://127.0.0.1:{free_port()}"
    out = cli("--store", str(path), "branch", str(run_id), str(tid), "--at", "1", "--server", dead, "--n", "2")
    assert out.returncode != 0
    err = out.stderr.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in out.stderr, out.stderr
    assert "does not answer" in err

    out = cli("--store", str(path), "branch", str(run_id), str(tid), "--at", "999", "--server", llama.url)
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and "outside" in out.stderr


def test_the_branches_page_branches_through_a_server(llama, recorded, monkeypatch):
    from streamlit.testing.v1 import AppTest

    from tests.browser import ROOT

    path, run_id, tid = recorded
    monkeypatch.setenv("THINKSCOPE_STORE", str(path))
    page = str(ROOT / "dashboard" / "views" / "branches.py")
    at = AppTest.from_file(page, default_timeout=300)
    at.query_params.update({"run": str(run_id), "trace": str(tid), "pos": "1"})
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.radio(key="branches.backend").value == "server"  # the trace has no token ids: no local model
    # a dead server: one line, the page stays
    at.text_input(key="branches.server_url").set_value("http://127.0.0.1:9").run()
    at.button(key="branches.go").click().run()
    assert not at.exception and at.error and "does not answer" in at.error[0].value, [e.value for e in at.error]
    at.text_input(key="branches.server_url").set_value(llama.url).run()
    at.number_input(key="branches.n").set_value(1)
    at.number_input(key="branches.budget").set_value(4)
    at.button(key="branches.go").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("Branched at t = 1 through" in s.value for s in at.success), [s.value for s in at.success]
    done = Store(path).branch_positions(tid)
    row = done[done["pos"] == 1].iloc[-1]
    assert row["settings"]["backend"] == "server" and row["settings"]["max_new_tokens"] == 4, row["settings"]
