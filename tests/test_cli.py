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
