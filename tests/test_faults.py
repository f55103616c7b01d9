"""Faults of the store, its disk and its writers: a full disk, a damaged, truncated or
read-only store, two imports of one file racing, a generation killed by SIGTERM or SIGKILL,
and terminal control characters in what the CLI prints.

Where a real file system matters, a tmpfs of a few MB is mounted (the tests run as root);
each such case also has a variant that injects the same failure, so it is covered where
mounting is not allowed.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import duckdb
import pytest

from analysis.store import connection as store_mod
from analysis.cli import main, printable
from analysis.formats import ingest as ing
from analysis.formats import ingest_file
from analysis.formats.ingest import DuplicateFileError
from analysis.store import SCHEMA, SCHEMA_VERSION, Store, StoreError, writer_gone
from test_formats_atomic import big_chat_file

ROOT = Path(__file__).resolve().parent.parent
FIX = Path(__file__).resolve().parent / "fixtures" / "formats"
CHAT = FIX / "openai_chat.jsonl"
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def cli(capsys, *argv) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def one_line_error(err: str, *names) -> str:
    """The error line of a command's stderr; it is one line, names ``names``, no traceback."""
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.startswith("thinkscope: error:")]
    assert len(lines) == 1, err
    for n in names:
        assert str(n) in lines[0], (n, lines[0])
    return lines[0]


# --------------------------------------------------------------------------- file systems


@contextlib.contextmanager
def tmpfs(size_mb: int):
    """A fresh tmpfs of ``size_mb`` MB, unmounted after."""
    d = Path(tempfile.mkdtemp(prefix="thinkscope-fs-"))
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(d)],
                       capture_output=True, text=True)
    if r.returncode:
        d.rmdir()
        # these tests run as root (as CI does): a real small file system is the case under test
        pytest.fail(f"could not mount a {size_mb} MB tmpfs ({r.stderr.strip()}); run the tests as root")
    try:
        yield d
    finally:
        subprocess.run(["umount", "-l", str(d)], check=False)
        d.rmdir()


def remount(d: Path, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", str(d)], check=True)


def fill(d: Path, leave: int = 0) -> Path:
    """Fill the file system of ``d`` up to ``leave`` bytes free; return the ballast file."""
    ballast = d / "ballast"
    with open(ballast, "ab") as f:
        room = shutil.disk_usage(d).free - leave
        with contextlib.suppress(OSError):
            while room > 0:
                f.write(b"\0" * min(room, 1 << 20))
                f.flush()
                room = shutil.disk_usage(d).free - leave
    return ballast


def wal(path: Path) -> Path:
    return Path(str(path) + ".wal")


# --------------------------------------------------------------------------- full disk


def fail_the_checkpoint_after_the_import(monkeypatch, how):
    """Arrange for the detach that ends the next import's transaction (that one only) to fail
    its checkpoint: ``how(eng, alias)`` does that detach."""
    armed = {"on": False, "used": False}
    real_insert, real_detach = Store.import_staged, store_mod._run_detach

    def insert(*a, **k):
        armed["on"], armed["used"] = not armed["used"], True
        return real_insert(*a, **k)

    def detach(eng, alias):
        if armed["on"]:
            armed["on"] = False
            return how(eng, alias)
        return real_detach(eng, alias)
    monkeypatch.setattr(Store, "import_staged", insert)
    monkeypatch.setattr(store_mod, "_run_detach", detach)


def test_an_import_whose_checkpoint_fills_the_disk_is_reported_saved(capsys, monkeypatch):
    """The commit went through, the checkpoint on detach then found the disk full: the command
    says the run was saved (exit 0) with a warning, the store reads, the retry is a duplicate,
    and once there is room again the next write folds the log into the file."""
    with tmpfs(24) as d:
        path = d / "s.duckdb"
        ballast = []
        real_detach = store_mod._run_detach

        def fill_then_detach(eng, alias):
            ballast.append(fill(d))
            real_detach(eng, alias)
        fail_the_checkpoint_after_the_import(monkeypatch, fill_then_detach)
        rc, out, err = cli(capsys, "--store", path, "ingest", CHAT)
        assert ballast, "the import never reached its detach"
        assert rc == 0 and re.search(r"run 1 'openai_chat': \d+ traces", out), (rc, out, err)
        assert "Traceback" not in err and "error" not in err
        assert "saved" in err and "write-ahead log" in err and "the disk is full" in err
        assert str(path) in err

        runs = Store(path).runs()  # read-only, with the disk still full
        assert runs[["run_id", "status"]].values.tolist() == [[1, "complete"]] and runs.n_tokens[0] > 0
        rc, out, err = cli(capsys, "--store", path, "runs")
        assert rc == 0 and "openai_chat" in out

        rc, out, err = cli(capsys, "--store", path, "ingest", CHAT)
        assert rc == 2 and "already imported as run #1" in one_line_error(err, CHAT.name)

        ballast[0].unlink()
        rc, out, err = cli(capsys, "--store", path, "ingest", FIX / "vllm_reasoning.jsonl")
        assert rc == 0 and "warning" not in err, err
        assert Store(path).runs().status.tolist() == ["complete", "complete"]
        assert not wal(path).exists() or wal(path).stat().st_size < 1 << 16


def test_a_checkpoint_failure_after_the_commit_is_a_warning_injected(capsys, monkeypatch, tmp_path):
    """The same, with DuckDB's own message for it injected after a real detach."""
    path = tmp_path / "s.duckdb"

    def detach_then_fail(eng, alias):
        eng.execute(f"DETACH {alias}")
        raise duckdb.IOException(
            f"IO Error: Detached database '{alias}', but CHECKPOINT during DETACH failed. \nCheckpoint failed "
            f"for database \"{alias}\". The database has been invalidated. Original error: Could not write "
            f"file \"{path}\": No space left on device")
    fail_the_checkpoint_after_the_import(monkeypatch, detach_then_fail)
    rc, out, err = cli(capsys, "--store", path, "ingest", CHAT)
    assert rc == 0 and "run 1 'openai_chat'" in out
    assert "saved" in err and "the disk is full" in err and "Traceback" not in err
    assert Store(path).runs().status.tolist() == ["complete"]


def test_an_import_that_would_fill_the_disk_is_refused_before_it_starts(capsys):
    with tmpfs(16) as d:
        path = d / "s.duckdb"
        ingest_file(Store(path), CHAT)
        before = Store(path).runs()[["run_id", "n_tokens"]].values.tolist()
        big = big_chat_file(Path(tempfile.mkdtemp()) / "big.jsonl", n=600)  # ~5 MB, on another disk
        fill(d, leave=3 << 20)
        rc, out, err = cli(capsys, "--store", path, "ingest", big)
        line = one_line_error(err, path, d)
        assert rc == 2 and re.search(r"needs about [\d.,]+ MB free in .*, but only [\d.,]+ MB are free", line)
        assert "nothing was imported" in line
        assert Store(path).runs()[["run_id", "n_tokens"]].values.tolist() == before
        assert not list(d.glob(".s.duckdb.staging-*"))
        shutil.rmtree(big.parent)


def test_the_free_space_check_injected(capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(ing, "free_bytes", lambda p: 1 << 20)
    rc, out, err = cli(capsys, "--store", tmp_path / "s.duckdb", "ingest", CHAT)
    line = one_line_error(err, tmp_path / "s.duckdb")
    assert rc == 2 and "1.0 MB are free" in line and Store(tmp_path / "s.duckdb").runs().empty


def test_a_disk_that_fills_during_the_commit_leaves_the_store_usable(capsys, monkeypatch):
    """The space check passed, then the disk filled before the rows went in: one line, exit 2,
    the store as it was (and readable), and the retry after freeing space imports the file."""
    with tmpfs(24) as d:
        path = d / "s.duckdb"
        ingest_file(Store(path), FIX / "vllm_reasoning.jsonl")
        before = Store(path).runs()[["run_id", "n_tokens"]].values.tolist()
        real_check = ing.check_free_space
        ballast = []

        def check_then_fill(store, needed, what):
            real_check(store, needed, what)
            if what.startswith("storing") and not ballast:  # before the swap, the disk fills up
                ballast.append(fill(d))
        monkeypatch.setattr(ing, "check_free_space", check_then_fill)
        big = big_chat_file(d / "big.jsonl", n=400)
        rc, out, err = cli(capsys, "--store", path, "ingest", big)
        assert ballast
        line = one_line_error(err, path)
        assert rc == 2 and "the disk is full" in line and line.endswith("nothing was imported"), line
        assert Store(path).runs()[["run_id", "n_tokens"]].values.tolist() == before
        ballast[0].unlink()
        rc, out, err = cli(capsys, "--store", path, "ingest", big)
        assert rc == 0, err
        assert len(Store(path).runs()) == 2


# --------------------------------------------------------------------------- the duplicate race


def test_a_duplicate_committed_after_the_check_loses_inside_the_transaction(monkeypatch, tmp_path):
    """Deterministic interleaving: another process imports the same file after this import's
    duplicate check and before its transaction; this one is refused with the usual message."""
    path = tmp_path / "s.duckdb"
    real_swap = ing._swap
    others = []

    def other_process_first(*a, **k):
        others.append(subprocess.run([sys.executable, "-m", "analysis.cli", "--store", str(path), "ingest",
                                      str(CHAT)], cwd=ROOT, env=ENV, capture_output=True, text=True))
        return real_swap(*a, **k)
    monkeypatch.setattr(ing, "_swap", other_process_first)
    with pytest.raises(DuplicateFileError, match=r"already imported as run #1 'openai_chat'") as err:
        ingest_file(Store(path), CHAT)
    assert others[0].returncode == 0, others[0].stderr
    assert err.value.run_id == 1
    runs = Store(path).runs()
    assert len(runs) == 1 and runs.status.tolist() == ["complete"]
    assert Store(path).counts()["traces"] == runs.n_traces[0]


def test_two_imports_of_one_file_started_together_make_one_run(tmp_path):
    path = tmp_path / "s.duckdb"
    big = big_chat_file(tmp_path / "big.jsonl", n=300)
    Store(path).counts()  # the store exists: both processes start at the import itself
    cmd = [sys.executable, "-m", "analysis.cli", "--store", str(path), "ingest", str(big)]
    procs = [subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = [(p.wait(timeout=300), *p.communicate()) for p in procs]
    assert sorted(rc for rc, _, _ in results) == [0, 2], results
    loser = next(err for rc, _, err in results if rc == 2)
    assert "already imported as run #1" in one_line_error(loser, big.name)
    assert len(Store(path).runs()) == 1


def test_the_unique_hash_backs_the_check(tmp_path):
    s = Store(tmp_path / "s.duckdb")
    s.create_run("a", "upload:x", content_hash="h1", status="complete")
    with pytest.raises(duckdb.ConstraintException):
        s.create_run("b", "upload:x", content_hash="h1", status="complete")
    s.create_run("c", "generate")
    s.create_run("d", "generate")  # runs without a hash are not constrained
    assert s.runs().name.tolist() == ["a", "c", "d"]


def test_an_allowed_duplicate_keeps_its_hash_in_the_settings(tmp_path):
    s = Store(tmp_path / "s.duckdb")
    first = ingest_file(s, CHAT)
    again = ingest_file(s, CHAT, allow_duplicate=True)
    settings = json.loads(s.query("SELECT settings FROM runs WHERE run_id = ?", [again.run_id]).settings[0])
    assert settings["content_hash"] == first.content_hash == again.content_hash
    assert s.find_run_by_hash(first.content_hash).run_id.tolist() == [first.run_id]


def version_2_store(path: Path) -> None:
    """A store as schema version 2 made it: no writer column, no unique index on hashes."""
    v2 = (SCHEMA.replace(",\n    writer VARCHAR", "", 1)
          .replace("CREATE UNIQUE INDEX IF NOT EXISTS runs_content_hash ON runs (content_hash);", ""))
    v2 = re.sub(r"    writer VARCHAR[^\n]*\n", "", v2)
    v2 = v2.replace("n_tokens BIGINT DEFAULT 0,\n", "n_tokens BIGINT DEFAULT 0\n", 1)
    con = duckdb.connect(str(path))
    con.execute(v2)
    con.execute("INSERT INTO meta VALUES ('schema_version', '2')")
    for rid, h in ((1, "same"), (2, "same"), (3, None), (4, "other"), (5, "same")):
        con.execute("INSERT INTO runs (run_id, name, source, created_at, status, content_hash, settings) "
                    "VALUES (?, ?, 'upload:x', now(), 'complete', ?, '{\"file\": \"f\"}')", [rid, f"r{rid}", h])
    con.close()


def test_a_version_2_store_is_upgraded_and_its_duplicates_kept(tmp_path):
    path = tmp_path / "v2.duckdb"
    version_2_store(path)
    s = Store(path)
    assert s.runs().run_id.tolist() == [1, 2, 3, 4, 5]  # the first read upgrades it
    assert s.query("SELECT value FROM meta WHERE key = 'schema_version'").value.tolist() == [str(SCHEMA_VERSION)]
    rows = s.query("SELECT run_id, content_hash, settings FROM runs ORDER BY run_id")
    assert rows.content_hash[0] == "same" and rows.content_hash[3] == "other"
    assert rows.content_hash[[1, 2, 4]].isna().all()
    for rid in (2, 5):
        st = json.loads(rows.settings[rid - 1])
        assert st == {"file": "f", "content_hash": "same", "duplicate_of": 1}
    with pytest.raises(duckdb.ConstraintException):
        s.create_run("again", "upload:x", content_hash="same")
    assert "writer" in s.query("SELECT * FROM runs").columns


# --------------------------------------------------------------------------- damaged and read-only stores


@pytest.fixture
def filled(tmp_path) -> Path:
    """A store with a few runs, big enough to have many blocks."""
    path = tmp_path / "s.duckdb"
    s = Store(path)
    ingest_file(s, big_chat_file(tmp_path / "big.jsonl", n=600))
    ingest_file(s, CHAT)
    return path


def test_a_store_cut_in_half_is_one_line(capsys, filled, tmp_path):
    data = filled.read_bytes()
    filled.write_bytes(data[: len(data) // 2])
    for argv in (["runs"], ["export", 1, tmp_path / "out.parquet"], ["difficulty", 1],
                 ["ingest", FIX / "vllm_reasoning.jsonl"]):
        rc, out, err = cli(capsys, "--store", filled, *argv)
        line = one_line_error(err, filled)
        assert rc == 2 and "truncated or damaged" in line, (argv, line)


def test_a_store_with_damaged_pages_is_one_line_on_export(capsys, filled, tmp_path):
    size = filled.stat().st_size
    with open(filled, "r+b") as f:  # scribble into every data block after the headers
        for off in range(3 * 262144, size - 262144, 262144):
            f.seek(off + 5000)
            f.write(os.urandom(2000))
    rc, out, err = cli(capsys, "--store", filled, "export", 1, tmp_path / "out.parquet")
    line = one_line_error(err, filled)
    assert rc == 2 and "damaged" in line and "checksum" in line, line


def test_a_store_on_a_read_only_file_system_is_read_but_not_written(capsys):
    with tmpfs(24) as d:
        path = d / "s.duckdb"
        s = Store(path)
        ingest_file(s, FIX / "vllm_reasoning.jsonl")
        ingest_file(s, CHAT)
        # a writer killed before its checkpoint leaves its last commit in the write-ahead log
        subprocess.run([sys.executable, "-c", "import os; from analysis.store import Store\n"
                        f"with Store({str(path)!r}).connect() as con:\n"
                        "    con.execute(\"UPDATE runs SET name = 'renamed' WHERE run_id = 2\")\n"
                        "    os._exit(0)"], cwd=ROOT, env=ENV, check=True)
        assert wal(path).exists()
        remount(d, "ro")
        try:
            runs = Store(path).runs()
            assert runs.name.tolist() == ["vllm_reasoning", "renamed"]
            tid = int(Store(path).traces(2).trace_id[0])
            assert len(Store(path).tokens(tid)) > 0
            out_dir = Path(tempfile.mkdtemp())
            for argv in (["runs"], ["export", 2, out_dir / "r2.jsonl"], ["export", 1, out_dir / "r1.parquet"]):
                rc, out, err = cli(capsys, "--store", path, *argv)
                assert rc == 0 and "Traceback" not in err, (argv, err)
            assert (out_dir / "r2.jsonl").stat().st_size > 0
            shutil.rmtree(out_dir)
            for argv in (["ingest", FIX / "sglang_chat.jsonl"], ["grade", 1], ["demo"]):
                rc, out, err = cli(capsys, "--store", path, *argv)
                line = one_line_error(err, path)
                assert rc == 2 and "read-only" in line, (argv, line)
            with pytest.raises(StoreError, match="read-only") as e:
                Store(path).create_run("x", "test")
            assert "\n" not in str(e.value)
        finally:
            remount(d, "rw")


HOLD_READ_ONLY = """
import sys, time, duckdb
con = duckdb.connect(sys.argv[1], read_only=True)
print("HOLDING", flush=True)
time.sleep(float(sys.argv[2]))
"""


def test_reads_open_the_store_read_only(filled):
    """While another process has the file open read-only (a shared lock), reads here go on
    (a read-write open would wait for it), and a write waits until it is gone."""
    holder = subprocess.Popen([sys.executable, "-c", HOLD_READ_ONLY, str(filled), "4"], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "HOLDING"
        s = Store(filled, lock_timeout=0.5)
        assert s.runs().run_id.tolist() == [1, 2]
        assert s.counts()["traces"] > 0
        with pytest.raises(StoreError, match="locked by another process"):
            s.create_run("x", "test")
    finally:
        holder.wait(timeout=30)


# --------------------------------------------------------------------------- killed generations


def test_a_run_whose_writer_is_gone_shows_as_interrupted(tmp_path):
    s = Store(tmp_path / "s.duckdb")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        host = json.loads(store_mod._writer())["host"]
        writers = {
            "dead": json.dumps({"host": host, "pid": int(dead.stdout), "start": "1"}),
            "reused pid": json.dumps({"host": host, "pid": alive.pid, "start": "1"}),
            "alive": json.dumps({"host": host, "pid": alive.pid, "start": store_mod._process_start(alive.pid)}),
            "other host": json.dumps({"host": host + "-elsewhere", "pid": int(dead.stdout), "start": "1"}),
        }
        assert {k: writer_gone(w) for k, w in writers.items()} == {
            "dead": True, "reused pid": True, "alive": False, "other host": False}
        ids = {}
        for name, w in writers.items():
            ids[name] = s.create_run(name, "generate")
            s.add_traces(ids[name], [make_trace(7 + ids[name])])
            with s.connect() as con:
                con.execute("UPDATE runs SET writer = ? WHERE run_id = ?", [w, ids[name]])
        runs = s.runs().set_index("name")
        assert runs.status.to_dict() == {"dead": "interrupted", "reused pid": "interrupted",
                                         "alive": "running", "other host": "running"}
        assert runs.n_tokens.to_dict() == {k: 7 + i for k, i in ids.items()}
        s.create_run("next", "generate")  # any write records what it found
        stored = s.query("SELECT name, status, n_tokens FROM runs").set_index("name")
        assert stored.status["dead"] == "interrupted" and stored.n_tokens["dead"] == 7 + ids["dead"]
        assert stored.status["alive"] == "running"
    finally:
        alive.kill()
        alive.wait()


def make_trace(n: int):
    from test_store import make_trace as mt
    return mt(n)


def wait_for_traces(path: Path, proc: subprocess.Popen, n: int, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        if path.exists():
            with contextlib.suppress(StoreError):
                if Store(path).counts()["traces"] >= n:
                    return
        time.sleep(0.1)
    raise AssertionError("the generation stored no batch in time")


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_a_killed_generation_keeps_its_batches_and_shows_as_interrupted(capsys, tmp_path, sig):
    path = tmp_path / "s.duckdb"
    proc = subprocess.Popen([sys.executable, "-m", "analysis.cli", "--store", str(path), "generate", "--limit", "40",
                             "--batch-size", "1", "--max-tokens", "12", "--greedy"],
                            cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_traces(path, proc, 1)
        proc.send_signal(sig)
        rc = proc.wait(timeout=120)
        err = proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
    stored = Store(path).query("SELECT count(*) AS n, coalesce(sum(n_tokens), 0) AS tokens FROM traces")
    n, tokens = int(stored.n[0]), int(stored.tokens[0])
    assert 1 <= n < 40 and tokens > 0
    runs = Store(path).runs()
    assert runs[["status", "n_traces", "n_tokens"]].values.tolist() == [["interrupted", n, tokens]]
    if sig == signal.SIGTERM:
        assert rc == 143 and "interrupted: the finished batches are kept" in err and "Traceback" not in err
    else:
        assert rc == -signal.SIGKILL
        Store(path).create_run("next", "test", status="complete")  # a later write records it
    row = Store(path).query("SELECT status, n_traces, n_tokens FROM runs WHERE run_id = 1")
    assert row.values.tolist() == [["interrupted", n, tokens]]
    rc, out, _ = cli(capsys, "--store", path, "runs")
    assert rc == 0 and "interrupted" in out and "running" not in out


# --------------------------------------------------------------------------- what the terminal sees


EVIL = "evil\x1b[31mred\x1b[0m\x07\x08\u202etxt.\x9b2J"


def test_run_names_reach_the_terminal_without_control_characters(capsys, tmp_path):
    s = Store(tmp_path / "s.duckdb")
    s.create_run(EVIL, "upload:x", model="m\x1b]0;title\x07", status="complete")
    rc, out, err = cli(capsys, "--store", s.path, "runs")
    assert rc == 0
    for c in ("\x1b", "\x07", "\x08", "\u202e", "\x9b"):
        assert c not in out
    assert "evil\\x1b[31mred" in out and "\\u202e" in out and "m\\x1b]0;title\\x07" in out


def test_file_names_reach_the_terminal_without_control_characters(capsys, tmp_path):
    f = tmp_path / f"{EVIL}.jsonl"
    shutil.copy(CHAT, f)
    rc, out, err = cli(capsys, "--store", tmp_path / "s.duckdb", "ingest", f)
    assert rc == 0
    rc2, out2, err2 = cli(capsys, "--store", tmp_path / "s.duckdb", "ingest", tmp_path / f"missing{EVIL}.jsonl")
    assert rc2 == 2 and "no such file" in one_line_error(err2).lower()
    for text in (out, err, out2, err2):
        for c in ("\x1b", "\x07", "\x08", "\u202e", "\x9b"):
            assert c not in text, repr(text)
    assert "evil\\x1b[31mred" in out and "evil\\x1b[31mred" in err2


def test_printable_keeps_text_and_escapes_controls():
    assert printable("plain, ünïcode 東京 😀\nnext line") == "plain, ünïcode 東京 😀\nnext line"
    assert printable("a\x1b[2Jb\tc\x7f\ud800") == "a\\x1b[2Jb\\tc\\x7f\\ud800"


def test_the_progress_of_a_one_record_file_shows_no_rate(capsys, tmp_path):
    one = tmp_path / "one.jsonl"
    one.write_text(CHAT.read_text().splitlines()[0] + "\n")
    rc, out, err = cli(capsys, "--store", tmp_path / "s.duckdb", "ingest", one)
    assert rc == 0 and "100%" in err
    assert not re.search(r"B/s", err), err
    size = one.stat().st_size
    assert re.search(rf"{size}B/{size}B|[\d.]+kB/[\d.]+kB", err), err


def test_an_undecodable_file_name_imports_with_a_replacement_character(capsys, tmp_path):
    """A file name that is not UTF-8 (a lone surrogate in Python) names the run with U+FFFD."""
    f = Path(os.fsdecode(bytes(tmp_path) + b"/\xffname.jsonl"))
    shutil.copy(CHAT, f)
    rc, out, err = cli(capsys, "--store", tmp_path / "s.duckdb", "ingest", f)
    assert rc == 0 and "\\udcffname" in out, err
    runs = Store(tmp_path / "s.duckdb").runs()
    assert runs.name.tolist() == ["\ufffdname"]
    assert json.loads(runs.settings[0])["file"] == "\ufffdname.jsonl"


def test_an_export_to_a_full_disk_is_one_line_naming_the_output(capsys, tmp_path):
    s = Store(tmp_path / "s.duckdb")
    ingest_file(s, big_chat_file(tmp_path / "big.jsonl", n=300))
    with tmpfs(1) as d:
        fill(d)
        for out in ("r.parquet", "r.csv", "r.jsonl"):
            rc, _, err = cli(capsys, "--store", s.path, "export", 1, d / out)
            line = one_line_error(err, d / out)
            assert rc == 2 and "No space left on device" in line, line


def test_the_dashboard_shows_a_damaged_store_as_one_line(tmp_path, monkeypatch):
    """A store file that is not a DuckDB database: every page shows the store's one-line error,
    no exception element (traceback)."""
    from streamlit.testing.v1 import AppTest
    bad = tmp_path / "damaged.duckdb"
    bad.write_bytes(b"DUCK" * 5000)
    monkeypatch.setenv("THINKSCOPE_STORE", str(bad))
    app = str(Path(__file__).resolve().parent.parent / "dashboard" / "app.py")
    at = AppTest.from_file(app, default_timeout=60).run()
    assert not at.exception, [e.message for e in at.exception]
    shown = " ".join(e.value for e in at.error).replace("\\", "")
    assert "damaged.duckdb" in shown and "damaged" in shown.split("damaged.duckdb", 1)[1]
