"""The CLI in process: commands, one-line errors and exit codes."""

from __future__ import annotations

import json

import duckdb
import pandas as pd
import pytest

from analysis import cli
from analysis.store import SCHEMA_VERSION, Store
from tests.helpers import fill_store


def run(capsys, *argv) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_runs_on_empty_store(capsys, tmp_path):
    code, out, _ = run(capsys, "--store", str(tmp_path / "s.duckdb"), "runs")
    assert code == 0 and "no runs yet" in out


def test_runs_and_export_formats(capsys, store, tiny_lm, tmp_path):
    run_id = fill_store(store, tiny_lm)
    code, out, _ = run(capsys, "runs", "--store", str(store.path))
    assert code == 0 and "tiny run" in out and "mean_entropy_nats" in out
    for fmt in ("parquet", "csv", "jsonl"):
        dest = tmp_path / f"out.{fmt}"
        code, out, _ = run(capsys, "--store", str(store.path), "export", str(run_id), str(dest))
        assert code == 0 and dest.exists()
    df = pd.read_parquet(tmp_path / "out.parquet")
    assert len(df) == store.counts()["tokens"]
    assert {"token", "logprob", "entropy_full", "topk_tokens", "topk_logprobs"} <= set(df.columns)
    first = json.loads((tmp_path / "out.jsonl").read_text().splitlines()[0])
    assert first["thinkscope_run"]["name"] == "tiny run"


def test_generate_bad_prompt_file_is_one_line(capsys, tmp_path):
    bad = tmp_path / "prompts.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"prompt": \n')
    code, _, err = run(capsys, "--store", str(tmp_path / "s.duckdb"), "generate", "--prompts", str(bad))
    assert code == 2
    assert err.strip().count("\n") == 0
    assert "prompts.jsonl line 2" in err and "invalid JSON" in err


@pytest.mark.parametrize("model, expected", [
    ("/nonexistent/model", "no such model folder"),
    ("/nonexistent/model.gguf", "no such GGUF file"),
])
def test_generate_missing_model(capsys, tmp_path, model, expected):
    prompts = tmp_path / "p.txt"
    prompts.write_text("What is 1 + 1?\n")
    code, _, err = run(capsys, "--store", str(tmp_path / "s.duckdb"), "generate", "--prompts", str(prompts),
                       "--model", model)
    assert code == 2 and expected in err and "Traceback" not in err


def test_generate_broken_gguf(capsys, tmp_path):
    gguf = tmp_path / "broken.gguf"
    gguf.write_bytes(b"GGUF\x03\x00\x00\x00garbage")
    prompts = tmp_path / "p.txt"
    prompts.write_text("What is 1 + 1?\n")
    store = tmp_path / "s.duckdb"
    code, _, err = run(capsys, "--store", str(store), "generate", "--prompts", str(prompts), "--model", str(gguf))
    assert code == 2 and "broken.gguf" in err and "cannot load the model" in err
    assert Store(store).counts()["runs"] == 0


def test_newer_schema_is_refused_and_untouched(capsys, tmp_path):
    path = tmp_path / "future.duckdb"
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE meta (key VARCHAR PRIMARY KEY, value VARCHAR)")
    con.execute("INSERT INTO meta VALUES ('schema_version', ?)", [str(SCHEMA_VERSION + 1)])
    con.close()
    before = path.read_bytes()
    code, _, err = run(capsys, "--store", str(path), "runs")
    assert code == 2 and "future.duckdb" in err and "newer" in err
    assert path.read_bytes() == before


def test_demo_loads_once(capsys, tmp_path):
    from analysis.demo import demo_files
    assert demo_files(), "data/demo/ ships no demo traces"
    store = str(tmp_path / "s.duckdb")
    code, out, _ = run(capsys, "--store", store, "demo", "--if-empty")
    assert code == 0 and "loaded" in out
    n = Store(store).counts()
    assert 40 <= n["traces"] <= 80
    code, out, _ = run(capsys, "--store", store, "demo", "--if-empty")
    assert "already" in out and Store(store).counts() == n


# --------------------------------------------------------------------------- the pages' verbs


def _hand_store(tmp_path):
    import numpy as np

    from analysis.trace import Trace
    s = Store(tmp_path / "hand.duckdb")
    rid = s.create_run("hand", "test", "tiny-llama", {"temperature": 0.7})
    tokens = ["a", " b", " =c", " wait", " d", " e"]
    s.add_traces(rid, [Trace("q", tokens, np.zeros(6), entropy_full=np.array([0.0, 0.0, 3.0, 0.0, 0.0, 0.0]))])
    s.finish_run(rid)
    return s, rid, int(s.traces(rid)["trace_id"].iloc[0])


def test_forks_table_with_context(capsys, tmp_path):
    s, rid, tid = _hand_store(tmp_path)
    base = ("--store", str(s.path), "forks", str(rid), str(tid), "-w", "1")
    code, out, _ = run(capsys, *base, "--method", "fixed", "--value", "1")
    # window entropy at t is the next token's entropy (w = 1): only position 1 reaches tau = 1
    assert code == 0 and "1 forking points of 6 tokens" in out and "tau = 1.0000 nats" in out
    assert "a⟦ b⟧ =c wait d e" in out and "3.0" in out
    code, out, err = run(capsys, *base, "--method", "fixed", "--value", "1", "--format", "csv")
    rows = out.splitlines()
    assert code == 0 and rows[0] == "position,token,window_entropy_nats,token_entropy_nats,context"
    assert rows[1].startswith("1, b,3.0,0.0,") and "forking points" in err
    code, out, _ = run(capsys, *base, "--method", "fixed", "--value", "1", "--lexicon")
    assert code == 0 and "0 forking points" in out and "1 positions reach tau" in out
    code, out, _ = run(capsys, *base, "--method", "fixed", "--value", str(1 / 0.6931471805599453), "--unit", "bits",
                       "--format", "jsonl")
    assert code == 0 and json.loads(out.splitlines()[0])["window_entropy_bits"] == pytest.approx(3 / 0.6931, rel=1e-3)
    code, _, err = run(capsys, "--store", str(s.path), "forks", str(rid + 1), str(tid))
    assert code == 2 and f"trace {tid} belongs to run {rid}, not run {rid + 1}" in err
    code, _, err = run(capsys, "--store", str(s.path), "forks", str(rid), str(tid), "--method", "fixed")
    assert code == 2 and "--method fixed needs --value" in err


def test_show_traces_and_delete(capsys, tmp_path, monkeypatch):
    s, rid, tid = _hand_store(tmp_path)
    code, out, _ = run(capsys, "--store", str(s.path), "show", str(rid))
    assert code == 0 and "run 1 'hand': 1 traces, 6 tokens" in out and '"temperature": 0.7' in out
    code, out, _ = run(capsys, "--store", str(s.path), "traces", str(rid), "--format", "csv")
    assert code == 0 and out.splitlines()[1].startswith(f"{tid},0,")
    assert float(out.splitlines()[1].split(",")[8]) == pytest.approx(0.5)  # mean of the six entropies
    # not confirmed: nothing is deleted
    monkeypatch.setattr("sys.stdin.isatty", lambda: False)
    code, _, err = run(capsys, "--store", str(s.path), "delete", str(rid))
    assert code == 2 and "not confirmed" in err and len(s.runs()) == 1
    monkeypatch.setattr("sys.stdin.isatty", lambda: True)
    monkeypatch.setattr("builtins.input", lambda *a: "n")
    code, _, err = run(capsys, "--store", str(s.path), "delete", str(rid))
    assert code == 1 and "nothing deleted" in err and len(s.runs()) == 1
    monkeypatch.setattr("builtins.input", lambda *a: "y")
    code, out, _ = run(capsys, "--store", str(s.path), "delete", str(rid))
    assert code == 0 and "deleted: 1 traces, 6 tokens" in out and s.runs().empty and s.counts()["tokens"] == 0
    code, _, err = run(capsys, "--store", str(s.path), "delete", str(rid), "--yes")
    assert code == 2 and f"no run {rid} in" in err


def test_tokens_of_a_trace(capsys, tmp_path):
    s, rid, tid = _hand_store(tmp_path)
    code, out, _ = run(capsys, "--store", str(s.path), "tokens", str(rid), str(tid), "--format", "csv", "--unit", "bits")
    rows = out.splitlines()
    assert code == 0 and rows[0] == "position,token,logprob,H_full_bits"
    assert rows[3] == "2, =c,0.0,4.3281"  # 3 nats in bits
    code, _, err = run(capsys, "--store", str(s.path), "tokens", str(rid + 1), str(tid))
    assert code == 2 and f"trace {tid} belongs to run {rid}, not run {rid + 1}" in err


def test_layer_profiles_by_correctness(capsys, tmp_path):
    from analysis.demo import load_demo

    s = Store(tmp_path / "demo.duckdb")
    load_demo(s)
    rid = int(s.layer_runs()["run_id"].iloc[0])
    code, out, err = run(capsys, "--store", str(s.path), "layers", str(rid), "--by", "correct", "--format", "csv")
    rows = [r.split(",") for r in out.splitlines()]
    assert code == 0 and rows[0] == ["group", "layer", "mean_nats", "ci_low_nats", "ci_high_nats", "traces"]
    assert "logit-lens entropy per layer" in err
    # by hand: the mean over the correct traces of each one's mean over tokens, at the first list index
    prof = s.layer_profiles(rid, "lens_entropy")
    first = prof[(prof["k"] == 0) & (prof["correct"] == True)]  # noqa: E712
    got = next(r for r in rows[1:] if r[0] == "correct")
    assert float(got[2]) == pytest.approx(first["mean"].mean(), abs=1e-4) and int(got[5]) == len(first)
    code, _, err = run(capsys, "--store", str(s.path), "layers", str(rid - 1))
    assert code == 2 and "has no per-layer records" in err
    # the anchor / explorer split of one trace, as on the Layers page
    import numpy as np

    from analysis.layer_stats import split_anchors_explorers
    tid = s.layer_trace_ids(rid)[0]
    code, out, err = run(capsys, "--store", str(s.path), "anchors", str(rid), str(tid), "--all", "--format", "csv")
    import csv
    rows = list(csv.reader(out.splitlines()))[1:]
    a = np.nanmean(np.stack([np.asarray(v, float) for v in s.token_layers(tid)["attn_entropy_norm"]]), axis=1)
    assert [r[2] for r in rows] == split_anchors_explorers(a, 20.0).tolist()
    assert code == 0 and "anchors at or below its 20th percentile" in err and "explorers: " in err
    code, _, err = run(capsys, "--store", str(s.path), "anchors", str(rid), str(tid), "--layer", "999")
    assert code == 2 and "layer 999 has no attention record" in err


def test_preview_a_file_without_importing_it(capsys, tmp_path):
    from pathlib import Path

    fixture = Path(__file__).resolve().parent / "fixtures" / "formats" / "openai_chat.jsonl"
    store = tmp_path / "s.duckdb"
    code, out, _ = run(capsys, "--store", str(store), "preview", str(fixture), "-n", "1")
    assert code == 0 and "format openai_chat (score 1.00; json)" in out and "traces: 2, tokens: 10" in out
    assert "-- trace 1: 5 tokens, estimator topk_renorm, top-2" in out and "-- trace 2" not in out
    assert not store.exists()  # nothing stored
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"choices": [{"message": {"content": "x"}, "logprobs": {"content": [{"token": "a", '
                   '"logprob": "abc"}]}}]}\n')
    code, out, err = run(capsys, "preview", str(bad), "--format", "openai_chat")
    assert code == 1 and "problem: bad.jsonl line 1:" in err and "is \"abc\", expected a number" in err


def _commands(parser, prefix=()):
    """Every command path of the CLI: ('generate',), ('branch', 'list'), ..."""
    import argparse
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*prefix, name)
                yield from _commands(sub, (*prefix, name))


def test_every_command_is_in_the_readme():
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    commands = list(_commands(cli.build_parser()))
    assert ("forks",) in commands and ("delete",) in commands and len(commands) >= 12
    missing = [" ".join(c) for c in commands
               if not re.search(r"thinkscope (--store \S+ )?" + r"\s+".join(map(re.escape, c)) + r"\b", readme)]
    assert not missing, f"commands not documented in README.md: {missing}"
