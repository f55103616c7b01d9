"""A file imports whole or not at all, also when the importing process is killed midway."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from analysis.formats import ingest_file
from analysis.formats.ingest import STAGING_PREFIX
from analysis.store import Store

ROOT = Path(__file__).resolve().parent.parent
FIX = Path(__file__).resolve().parent / "fixtures" / "formats"

#: imports ``argv[2]`` into the store ``argv[1]`` in small batches, saying BATCH after each one
CHILD = """
import sys, time
from analysis.formats import ingest as ing
from analysis.store import Store
ing.BATCH_TOKENS = 200
def on_batch(n):
    print("BATCH", n, flush=True)
    time.sleep(0.02)
ing.ingest_file(Store(sys.argv[1]), sys.argv[2], on_batch=on_batch)
print("DONE", flush=True)
"""


def big_chat_file(path: Path, n: int = 300, tokens: int = 40) -> Path:
    """OpenAI chat JSONL with ``n`` responses of ``tokens`` tokens, top-3 alternatives."""
    with path.open("w") as f:
        for i in range(n):
            content = [{"token": f" w{j}", "logprob": -0.1 - j / 100, "bytes": None,
                        "top_logprobs": [{"token": f" w{j}", "logprob": -0.1}, {"token": " x", "logprob": -2.5},
                                         {"token": " y", "logprob": -3.0}]} for j in range(tokens)]
            f.write(json.dumps({"id": f"c{i}", "object": "chat.completion", "model": "m",
                                "choices": [{"index": 0, "message": {"content": "".join(c["token"] for c in content)},
                                             "logprobs": {"content": content}, "finish_reason": "stop"}]}) + "\n")
    return path


def snapshot(store: Store) -> dict:
    return {"counts": store.counts(), "runs": store.runs()[["run_id", "name", "n_traces"]].to_dict("records"),
            "vocab": int(store.query("SELECT count(*) AS n FROM vocab")["n"].iloc[0]),
            "stats": int(store.query("SELECT count(*) AS n FROM trace_stats")["n"].iloc[0])}


@pytest.mark.parametrize("after_batches", [1, 5])
def test_killed_import_leaves_the_store_as_it_was(store, tmp_path, after_batches):
    ingest_file(store, FIX / "openai_chat.jsonl")
    before = snapshot(store)
    big = big_chat_file(tmp_path / "big.jsonl")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(store.path), str(big)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    seen = 0
    for line in proc.stdout:
        if line.startswith("BATCH"):
            seen += 1
            if seen >= after_batches:
                proc.send_signal(signal.SIGKILL)
                break
        assert not line.startswith("DONE"), "the import finished before it could be killed"
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read()
    # batches were written (to staging), yet the store holds exactly what it held before
    assert snapshot(store) == before
    leftovers = list(tmp_path.glob(f".{store.path.name}{STAGING_PREFIX}*"))
    assert leftovers, "the killed import should have left its staging file"
    # the next import clears the dead process's staging file and imports the whole file
    res = ingest_file(store, big)
    assert res.n_traces == 300 and res.n_tokens == 300 * 40
    assert not [p for p in tmp_path.glob(f".{store.path.name}{STAGING_PREFIX}*")]
    after = snapshot(store)
    assert after["counts"]["runs"] == before["counts"]["runs"] + 1
    assert after["counts"]["tokens"] == before["counts"]["tokens"] + 300 * 40


def test_a_bad_line_near_the_end_imports_nothing(store, tmp_path):
    big = big_chat_file(tmp_path / "bad.jsonl", n=50)
    lines = big.read_text().splitlines()
    lines[47] = lines[47].replace('"logprob": -2.5', '"logprob": "oops"', 1)
    big.write_text("\n".join(lines) + "\n")
    from analysis.trace import TraceError
    with pytest.raises(TraceError, match="bad.jsonl line 48: choices"):
        ingest_file(store, big)
    assert store.counts() == {"runs": 0, "traces": 0, "tokens": 0}
