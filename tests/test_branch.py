"""Branching on tiny models: a constructed model whose answer forks at a known position by a
known mass, the shared KV cache against plain generation, storing, linking, resuming, the CLI."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from analysis import branch as br
from analysis.record import GenerationSettings, Prompt, build_prompt_ids, record_run
from analysis.trace import Trace

P_ORIG, P_FORK, P_SAME = 0.6, 0.3, 0.1


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: the test machine's cores are shared, and threads spin against each other."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class ForkAt:
    """A logits processor that makes the model: at completion position t, give the original
    token p 0.6, the 'fork' alternative 0.3 and the 'same' alternative 0.1; after t, spell
    ' Final answer: 7' if the token at t is 'fork', else ' Final answer: 3', then end."""

    def __init__(self, prompt_len, t, orig, fork, same, ans3, ans7, eos):
        self.prompt_len, self.t = prompt_len, t
        self.orig, self.fork, self.same = orig, fork, same
        self.ans3, self.ans7, self.eos = ans3, ans7, eos

    def __call__(self, seqs, z):
        c = seqs.shape[1] - self.prompt_len  # completion tokens before the one predicted
        if c < self.t:
            return z
        out = torch.full_like(z, -1e9)
        if c == self.t:
            out[:, [self.orig, self.fork, self.same]] = torch.log(torch.tensor([P_ORIG, P_FORK, P_SAME]))
            return out
        for r in range(z.shape[0]):
            seq = (self.ans7 if int(seqs[r, self.prompt_len + self.t]) == self.fork else self.ans3) + [self.eos]
            j = c - self.t - 1
            out[r, seq[j] if j < len(seq) else self.eos] = 0.0
        return out


@pytest.fixture
def forked(store, tiny_lm):
    """A stored parent trace (gold 3) whose answer forks at position t under ForkAt."""
    tok = tiny_lm.tokenizer
    gen = GenerationSettings(temperature=1.0, top_p=1.0, top_k=5, marker="Final answer:")
    prompt = "What is 1 + 2?"
    prompt_ids = build_prompt_ids(tiny_lm, prompt, gen)
    pre = tok("So the", add_special_tokens=False)["input_ids"]
    orig, fork, same = (tok.convert_tokens_to_ids(c) for c in "xyz")
    ans3 = tok(" Final answer: 3", add_special_tokens=False)["input_ids"]
    ans7 = tok(" Final answer: 7", add_special_tokens=False)["input_ids"]
    ids = pre + [orig] + ans3 + [tok.eos_token_id]
    n = len(ids)
    trace = Trace(prompt=prompt, tokens=[tok.decode([i]) for i in ids], token_ids=np.array(ids),
                  logprobs=np.full(n, -0.5), entropy_full=np.linspace(0.1, 2.0, n),
                  topk_ids=np.array([[i, fork, same] for i in ids]),
                  topk_logprobs=np.log(np.tile([P_ORIG, P_FORK, P_SAME], (n, 1))),
                  marker=gen.marker, metadata={"gold_answer": "3", "problem_id": "p1"})
    run_id = store.create_run("constructed", "generate", tiny_lm.name, gen.to_dict())
    (tid,) = store.add_traces(run_id, [trace], {i: tok.decode([i]) for i in set(ids) | {fork, same}})
    store.finish_run(run_id)
    proc = ForkAt(len(prompt_ids), len(pre), orig, fork, same, ans3, ans7, tok.eos_token_id)
    return store, br.load_parent(store, tid), proc, len(pre), (orig, fork, same)


def test_constructed_fork_strength_tv_and_survival(forked, tiny_lm):
    store, parent, proc, t, (orig, fork, same) = forked
    settings = br.BranchSettings(n=4, max_new_tokens=12, top_k=5)
    out = br.sweep(store, tiny_lm, parent, [t, t + 2], settings, processors=[proc])
    assert out["done"] == 2 and not out["interrupted"]
    links = store.branch_rollouts(parent.trace_id)
    at_t = links[links["pos"] == t]
    # original, the two alternatives (p >= 0.05) and the fresh sample, 4 rollouts each
    assert sorted(at_t.groupby("kind").size().items()) == [("alternative", 8), ("fresh", 4), ("original", 4)]
    by_tok = {int(k): g for k, g in at_t[at_t["kind"] != "fresh"].groupby("forced_token_id")}
    assert set(by_tok) == {orig, fork, same}
    assert set(by_tok[fork]["answer"]) == {"7"} and not by_tok[fork]["correct"].any()
    assert set(by_tok[orig]["answer"]) == {"3"} and by_tok[orig]["correct"].all()
    assert set(by_tok[same]["answer"]) == {"3"}
    np.testing.assert_allclose(by_tok[fork]["forced_p"], P_FORK, rtol=1e-5)

    table, stats = br.position_table(store, parent.trace_id, eps=0.3)
    rows = {r["token_id"]: r for r in stats[t].branches if r["kind"] != "fresh"}
    assert rows[fork]["tv"] == 1.0 and rows[same]["tv"] == 0.0 and rows[orig]["tv"] == 0.0
    assert rows[fork]["d_accuracy"] == -1.0
    assert table["pos"].tolist() == [t, t + 2]
    np.testing.assert_allclose(table["fork_strength"], [P_FORK, 0.0], rtol=1e-5)
    np.testing.assert_allclose(table["survival"], [1 - P_FORK, 1 - P_FORK], rtol=1e-5)
    lo, hi = stats[t].fork_interval
    assert lo <= P_FORK <= hi

    # every rollout is a stored trace with per-token entropies, linked to its parent
    rid = int(by_tok[fork]["trace_id"].iloc[0])
    tok = store.tokens(rid)
    h_t = -(P_ORIG * math.log(P_ORIG) + P_FORK * math.log(P_FORK) + P_SAME * math.log(P_SAME))
    assert int(tok["token_id"].iloc[0]) == fork
    assert tok["entropy_full"].iloc[0] == pytest.approx(h_t, rel=1e-4)
    assert tok["logprob"].iloc[0] == pytest.approx(math.log(P_FORK), rel=1e-4)
    assert np.isfinite(tok["entropy_full"]).all()
    assert store.rollout_parent(rid)["parent_trace_id"] == parent.trace_id
    row = store.trace(rid)
    assert row.pred_answer == "7" and bool(row.correct) is False
    runs = store.runs()
    assert runs.loc[runs.run_id == row.run_id, "source"].iloc[0] == "branch"


def test_adaptive_sampling_saves_rollouts_on_unanimous_branches(forked, tiny_lm):
    store, parent, proc, t, _ = forked
    res = br.branch_at(tiny_lm, parent, t, br.BranchSettings(n=8, max_new_tokens=12, fresh=False, adaptive=True,
                                                            min_rollouts=4, tol=0.25), processors=[proc])
    # the three forced branches are unanimous after 4 rollouts each: half the budget saved
    assert [len(b.rollouts) for b in res.branches] == [4, 4, 4]
    assert (res.n_generated, res.n_budget) == (12, 24)


def test_resume_and_interrupt_keep_finished_positions(forked, tiny_lm):
    store, parent, proc, t, _ = forked
    settings = br.BranchSettings(n=2, max_new_tokens=12, fresh=False, top_k=5)

    def stop_after_first(done, total, res):
        if done == 1:
            raise KeyboardInterrupt

    out = br.sweep(store, tiny_lm, parent, [t, t + 1, t + 2], settings, stop_after_first, [proc])
    assert out["interrupted"] and out["done"] == 1
    assert store.branch_positions(parent.trace_id)["pos"].tolist() == [t]
    again = br.sweep(store, tiny_lm, parent, [t, t + 1, t + 2], settings, processors=[proc])
    assert (again["skipped"], again["done"]) == (1, 2)
    assert store.branch_positions(parent.trace_id)["pos"].tolist() == [t, t + 1, t + 2]
    # other settings are another experiment: not skipped
    other = br.sweep(store, tiny_lm, parent, [t], br.BranchSettings(n=3, max_new_tokens=12, fresh=False),
                     processors=[proc])
    assert (other["skipped"], other["done"]) == (0, 1)


def test_unlinked_rollouts_are_dropped(forked, tiny_lm):
    store, parent, proc, t, _ = forked
    settings = br.BranchSettings(n=2, max_new_tokens=12, fresh=False)
    res = br.branch_at(tiny_lm, parent, t, settings, processors=[proc])
    run_id = store.branch_run(parent.run_id)
    store.add_traces(run_id, [r for b in res.branches for r in b.rollouts])  # stored, never linked
    assert store.drop_unlinked_rollouts(run_id) == res.n_generated
    assert store.traces(run_id).empty


def test_deleting_runs_removes_their_branches(forked, tiny_lm):
    store, parent, proc, t, _ = forked
    settings = br.BranchSettings(n=2, max_new_tokens=12, fresh=False, top_k=5)
    br.sweep(store, tiny_lm, parent, [t], settings, processors=[proc])
    branch_run = store.branch_run(parent.run_id)
    rollout = int(store.branch_rollouts(parent.trace_id)["trace_id"].iloc[0])
    store.delete_run(branch_run)  # the rollouts' run: their links go, the parent's positions too
    assert store.branch_rollouts(parent.trace_id).empty and store.rollout_parent(rollout) is None
    assert store.branch_positions(parent.trace_id).empty  # so a sweep runs the position again
    again = br.sweep(store, tiny_lm, parent, [t], settings, processors=[proc])
    assert (again["skipped"], again["done"]) == (0, 1)
    assert not store.branch_positions(parent.trace_id).empty
    store.delete_run(parent.run_id)  # the parent run: its branch run and every link go with it
    assert store.runs().empty
    assert store.branch_positions(parent.trace_id).empty
    assert store.counts() == {"runs": 0, "traces": 0, "tokens": 0}


def test_shared_prefix_cache_matches_plain_generation(tiny_lm):
    """Greedy rollouts from the expanded cache equal transformers' generate on the whole prefix."""
    tok = tiny_lm.tokenizer
    prefix = tok("Tom has 3 apples and", add_special_tokens=False)["input_ids"]
    forced = tok(" buys", add_special_tokens=False)["input_ids"][:1] + tok(" so", add_special_tokens=False)["input_ids"][:1]
    pre = br.encode_prefix(tiny_lm, prefix)
    g = torch.Generator().manual_seed(0)
    ids, arr, lengths = br.decode(tiny_lm, pre, torch.tensor(forced), 2, 8, False, 1.0, 1.0, 3, g)
    for r, f in enumerate(forced):
        want = tiny_lm.model.generate(torch.tensor([prefix + [f]]), max_new_tokens=8, do_sample=False,
                                      pad_token_id=tok.pad_token_id)[0, len(prefix):].tolist()
        assert ids[r, :lengths[r]].tolist() == want[:lengths[r]]
    # and the entropy at t is that of the prefix's own next-token distribution
    logp = torch.log_softmax(pre.logits, -1)
    assert arr["entropy"][0, 0] == pytest.approx(float(-(logp.exp() * logp).sum()), rel=1e-5)


def test_encodes_each_prefix_once(forked, tiny_lm, monkeypatch):
    store, parent, proc, t, _ = forked
    calls = []
    real = br.encode_prefix
    monkeypatch.setattr(br, "encode_prefix", lambda *a, **k: calls.append(1) or real(*a, **k))
    res = br.branch_at(tiny_lm, parent, t, br.BranchSettings(n=3, max_new_tokens=4, batch_size=5), processors=[proc])
    assert len(calls) == 1 and res.n_generated == 12  # 4 branches x 3 rollouts, 3 batches, one encoding


def test_sweep_positions_and_bad_requests(forked):
    _, parent, _, t, _ = forked
    assert br.sweep_positions(parent, "all") == list(range(parent.n))
    assert br.sweep_positions(parent, "every:3") == list(range(0, parent.n, 3))
    assert br.sweep_positions(parent, "2,0") == [0, 2]
    assert br.sweep_positions(parent, "forks")  # the top 5 % of window entropy
    for bad in ("every:0", "every:x", f"{parent.n}", "-1", "a,b"):
        with pytest.raises(br.BranchError):
            br.sweep_positions(parent, bad)
    with pytest.raises(br.BranchError):
        br.BranchSettings(n=0)
    # cost from the recorded top-k: original + 2 alternatives + fresh, before any model runs
    assert br.branch_counts(parent, [t], br.BranchSettings()) == [4]
    assert br.branch_counts(parent, [t], br.BranchSettings(p_min=0.2, fresh=False)) == [2]


def test_cli_branch_and_report(tmp_path, tiny_lm, store, capsys):
    """The CLI on a tiny model saved as a folder (the run names it as its model)."""
    from analysis.cli import main
    from analysis.models import LoadedModel
    folder = tmp_path / "tiny-model"
    tiny_lm.model.save_pretrained(folder)
    tiny_lm.tokenizer.save_pretrained(folder)
    lm = LoadedModel(tiny_lm.model, tiny_lm.tokenizer, str(folder))
    res = record_run(store, lm, [Prompt("What is 12 + 7?", {"gold_answer": "19"})],
                     GenerationSettings(max_new_tokens=12, top_k=5), "cli run")
    tid = int(store.traces(res.run_id)["trace_id"].iloc[0])
    base = ["--store", str(store.path), "branch", str(res.run_id), str(tid)]
    assert main(base + ["--at", "1,4", "--n", "2", "--max-tokens", "4", "--p-min", "0.0",
                        "--max-alternatives", "1", "--no-fresh"]) == 0
    out = capsys.readouterr()
    assert "cost: 2 positions, 8 rollouts" in out.out and "fork strength" in out.out
    assert store.branch_positions(tid)["pos"].tolist() == [1, 4]
    assert main(base + ["--sweep", "every:4", "--n", "2", "--max-tokens", "4", "--estimate-only"]) == 0
    assert "cost: 3 positions" in capsys.readouterr().out
    assert main(["--store", str(store.path), "branch-report", str(res.run_id), "--format", "json"]) == 0
    assert '"correlation"' in capsys.readouterr().out
    # bad requests: one line, exit 2
    assert main(base + ["--at", "99"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "position" in err and "outside" in err
    assert main(["--store", str(store.path), "branch", str(res.run_id + 5), str(tid), "--at", "1"]) == 2
    assert "belongs to run" in capsys.readouterr().err
