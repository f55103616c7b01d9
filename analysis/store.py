"""DuckDB store: schema, bulk transactional writes, queries that return DataFrames.

Concurrency: DuckDB lets one process hold a database file open for writing, and a
process that holds it excludes every other process. Every connection here is therefore
short-lived (one query, or one batch of traces in one transaction: the file is attached to
a per-process in-memory DuckDB for that long) and attaching retries with backoff while
another process holds the file, so the CLI can write while the
dashboard reads, and neither sees a lock error unless the other holds the file for
longer than ``lock_timeout`` seconds. Reads attach the file read-only (a store on read-only
media stays readable, and readers share it); writes attach it read-write.

Faults of the file or its disk (truncated or damaged file, read-only media, a full disk)
surface as ``StoreError`` with one line naming the file and the problem. A write whose commit
succeeded but whose checkpoint (folding the write-ahead log into the file, done on detach)
failed is saved: it is reported in ``Store.warnings``, not raised.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import contextlib
import itertools
import json
import os
import random
import re
import shutil
import socket
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa

from . import metrics
from .errors import ThinkscopeError
from .trace import Trace, TraceError

SCHEMA_VERSION = 3
ENV_STORE = "THINKSCOPE_STORE"
DEFAULT_STORE = Path(__file__).resolve().parent.parent / "data" / "store" / "thinkscope.duckdb"

#: estimator -> tokens column
ENTROPY_COLUMNS = {
    "full": "entropy_full",
    "full_t1": "entropy_full_t1",
    "topk_renorm": "entropy_topk_renorm",
    "topk_tail": "entropy_topk_tail",
    "epr": "entropy_epr",
}
#: rows per row group of the store's tables (DuckDB's default is 122,880). A batch of at
#: least one row group is written to the file as it is inserted ("optimistic writes") instead
#: of going through the write-ahead log and then the checkpoint on detach, which compresses
#: every value a second time: for 50,000-row batches of token rows, DuckDB's own insert went
#: from ~176,000 to ~500,000 rows/s here, and zone maps skip more of the tokens table per trace.
ROW_GROUP_SIZE = int(os.environ.get("THINKSCOPE_ROW_GROUP_SIZE", 16_384))
#: batches built ahead of the one being written by ``Store.add_batches`` (memory: about
#: 250 bytes per token row of each)
WRITE_AHEAD = 2
#: local ids for token texts with no tokenizer id start here, so they never meet real ids
LOCAL_ID_BASE = 1 << 30

#: trace metadata fields that get their own column (everything else stays in `metadata`)
TRACE_META_COLUMNS = {
    "problem_id": "VARCHAR",
    "question": "VARCHAR",
    "gold_answer": "VARCHAR",
    "level": "DOUBLE",
    "correct": "BOOLEAN",
    "pred_answer": "VARCHAR",
    "sample_idx": "INTEGER",
    "model": "VARCHAR",
}

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (key VARCHAR PRIMARY KEY, value VARCHAR);
CREATE TABLE IF NOT EXISTS runs (
    run_id INTEGER PRIMARY KEY,
    name VARCHAR NOT NULL,
    source VARCHAR NOT NULL,          -- 'generate', 'score', 'demo', 'upload:<format>', ...
    model VARCHAR,
    settings JSON,                    -- generation settings, marker, file name, ...
    created_at TIMESTAMP NOT NULL,
    status VARCHAR NOT NULL,          -- 'running', 'complete', 'interrupted', 'failed'
    content_hash VARCHAR,             -- sha256 of an imported file (unique: runs_content_hash)
    n_traces INTEGER DEFAULT 0,
    n_tokens BIGINT DEFAULT 0,
    writer VARCHAR                    -- JSON (host, pid, start) of the process writing a 'running' run
);
CREATE UNIQUE INDEX IF NOT EXISTS runs_content_hash ON runs (content_hash);
CREATE TABLE IF NOT EXISTS traces (
    trace_id BIGINT PRIMARY KEY,
    run_id INTEGER NOT NULL,
    idx INTEGER NOT NULL,             -- order within the run
    source_id VARCHAR,
    prompt VARCHAR,                   -- the completion's text is its tokens joined (macro completions(run_id))
    n_tokens INTEGER NOT NULL,
    boundary INTEGER NOT NULL,        -- first answer token; = n_tokens when there is no answer part
    estimator VARCHAR NOT NULL,       -- best estimator the numbers allow
    k INTEGER NOT NULL,               -- number of top-k alternatives recorded
    {", ".join(f"{c} {t}" for c, t in TRACE_META_COLUMNS.items())},
    metadata JSON
);
CREATE TABLE IF NOT EXISTS trace_stats (
    trace_id BIGINT NOT NULL,
    estimator VARCHAR NOT NULL,
    phase VARCHAR NOT NULL,           -- 'all', 'thinking', 'answer'
    mean_entropy DOUBLE,              -- nats; sequence entropy (metrics.sequence_entropy)
    n INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS tokens (
    trace_id BIGINT NOT NULL,
    pos INTEGER NOT NULL,
    token_id INTEGER,
    token VARCHAR,
    logprob FLOAT,
    entropy FLOAT,                    -- the trace's best estimator, nats
    entropy_full FLOAT,
    entropy_full_t1 FLOAT,
    entropy_topk_renorm FLOAT,
    entropy_topk_tail FLOAT,
    entropy_epr FLOAT,
    topk_ids INTEGER[],
    topk_logprobs FLOAT[]
);
CREATE OR REPLACE MACRO completions(rid) AS TABLE  -- a run's completion texts, from its tokens
    SELECT trace_id, string_agg(token, '' ORDER BY pos) AS completion FROM tokens
    WHERE trace_id IN (SELECT trace_id FROM traces WHERE run_id = rid) GROUP BY trace_id;
CREATE TABLE IF NOT EXISTS vocab (run_id INTEGER NOT NULL, token_id INTEGER NOT NULL, text VARCHAR);
CREATE TABLE IF NOT EXISTS token_layers (
    trace_id BIGINT NOT NULL,
    pos INTEGER NOT NULL,
    lens_entropy FLOAT[],             -- logit-lens entropy per recorded layer, nats
    lens_top1 INTEGER[],              -- logit-lens top-1 token id per recorded layer
    attn_entropy FLOAT[],             -- attention entropy per layer, mean over heads, nats
    attn_entropy_norm FLOAT[],        -- the same divided by ln(pos+1)
    attn_head_entropy FLOAT[]         -- per head, for the chosen layer
);
"""


def _filled(values, fill) -> np.ndarray:
    """A fetchnumpy() column as a plain array, NULLs (a masked array's mask) as ``fill``."""
    if isinstance(values, np.ma.MaskedArray):
        out = np.asarray(values.data).astype(object if fill is None else values.dtype, copy=True)
        out[np.ma.getmaskarray(values)] = fill
        return out
    return np.asarray(values)


def _py(params: list | None) -> list:
    """Query parameters as plain Python values (DuckDB does not bind numpy scalars)."""
    return [p.item() if isinstance(p, np.generic) else p for p in (params or [])]


class _Connection:
    """A DuckDB connection whose parameters may be numpy scalars (ids read from DataFrames):
    DuckDB binds only plain Python values, so they are converted here, once for every query."""

    def __init__(self, con: duckdb.DuckDBPyConnection):
        self._con = con

    def execute(self, sql: str, params=None):
        return self._con.execute(sql, _py(params))

    def sql(self, sql: str, params=None):
        return self._con.sql(sql, params=_py(params) if params is not None else None)

    def __getattr__(self, name):
        return getattr(self._con, name)


class StoreError(ThinkscopeError):
    """A store problem with a message fit to show a user: one line that names the file.

    Pages and commands show ``str(error)`` as it is."""


class _NeedsWrite(Exception):
    """A read-only attachment found a store that must be created or upgraded first."""


#: DuckDB error classes that are faults of the file, its disk or its data (shown as StoreError);
#: programming errors (ProgrammingError) and constraint violations (IntegrityError) are not
_PROGRAMMING = (duckdb.ProgrammingError, duckdb.IntegrityError)
_CHECKPOINT_FAILED = re.compile(r"Detached database .*but CHECKPOINT during DETACH failed", re.I | re.S)
_FAULTS = [  # (pattern of DuckDB's or the OS's message, what it means for the user)
    (re.compile(r"No space left on device|disk is full|ENOSPC", re.I), "the disk is full"),
    (re.compile(r"Read-only file system|EROFS", re.I), "the file system is read-only"),
    (re.compile(r"Permission denied|EACCES|Operation not permitted", re.I), "permission denied"),
    (re.compile(r"checksum|Corrupt database", re.I), "the store file is damaged"),
    (re.compile(r"Could not read enough bytes|unexpected end of file|truncated", re.I),
     "the store file is truncated or damaged"),
    (re.compile(r"not a valid DuckDB database|invalid database|not a DuckDB", re.I),
     "the file is not a DuckDB database"),
]


_SURROGATE = re.compile("[\ud800-\udfff]")


def valid_text(text: str | None) -> str | None:
    """Text DuckDB can store: lone surrogates (from undecodable file names, for instance)
    become U+FFFD."""
    return text if text is None else _SURROGATE.sub("\ufffd", str(text))


def json_text(value: Any) -> str:
    """JSON for a settings cell (``valid_text``: DuckDB's JSON refuses escaped lone surrogates)."""
    return valid_text(json.dumps(value, default=str, ensure_ascii=False))


def one_line(text: str) -> str:
    """A message on one line (DuckDB's span several)."""
    return " ".join(str(text).split())


def _detail(exc: BaseException) -> str:
    text = one_line(exc)
    m = re.search(r"Original error: (.*)$", text)  # a checkpoint failure wraps the real one
    text = m.group(1) if m else text
    return re.sub(r"^(IO|TransactionContext|Invalid Input|Fatal|Internal|INTERNAL) Error: ", "", text)


def fault(exc: BaseException) -> str | None:
    """What a DuckDB or OS error means for the user (``_FAULTS``), or None."""
    text = str(exc)
    return next((meaning for pattern, meaning in _FAULTS if pattern.search(text)), None)


def free_bytes(path: Path) -> int:
    """Bytes free for this process on the file system holding ``path`` (or its nearest
    existing parent)."""
    p = Path(path)
    while not p.exists() and p != p.parent:
        p = p.parent
    return shutil.disk_usage(p).free


def mb(n: float) -> str:
    return f"{n / (1 << 20):,.1f} MB"


def default_store_path() -> Path:
    """The store file: $THINKSCOPE_STORE, else data/store/thinkscope.duckdb in the checkout."""
    env = os.environ.get(ENV_STORE)
    return Path(env).expanduser() if env else DEFAULT_STORE


_LOCK_RE = re.compile(r"(Could not set lock|Conflicting lock|database is locked|lock on file)", re.I)


# One in-memory DuckDB instance per process, to which store files are attached per operation.
# Creating an instance costs about 20 ms of CPU (DuckDB 2.0, measured here), ATTACH/DETACH
# about 1 ms; the lock on a file is held while it is attached, exactly as with a connection.
_ENGINE_LOCK = threading.RLock()
_ENGINE: dict[int, duckdb.DuckDBPyConnection] = {}   # pid -> engine (never reused after fork)
_ATTACHED: dict[str, list] = {}                        # resolved path -> [alias, depth]
_ALIASES = itertools.count()


def _engine() -> duckdb.DuckDBPyConnection:
    pid = os.getpid()
    eng = _ENGINE.get(pid)
    if eng is None:
        _ENGINE.clear()
        _ATTACHED.clear()
        eng = _ENGINE[pid] = duckdb.connect(":memory:")
    return eng


def _run_detach(eng: duckdb.DuckDBPyConnection, alias: str) -> None:
    eng.execute(f"DETACH {alias}")


def _reset_engine() -> None:
    """Drop the process's engine after a fatal DuckDB error (a new one is made on next use)."""
    with _ENGINE_LOCK:
        eng = _ENGINE.pop(os.getpid(), None)
        _ATTACHED.clear()
        if eng is not None:
            with contextlib.suppress(Exception):
                eng.close()


@atexit.register
def _close_engine() -> None:
    """Close the engine before the interpreter tears DuckDB's bindings down (an engine
    left open makes nanobind print leak reports at exit)."""
    with _ENGINE_LOCK:
        eng = _ENGINE.pop(os.getpid(), None)
        _ATTACHED.clear()
        if eng is not None:
            eng.close()


def _process_start(pid: int) -> str | None:
    """When a process started (clock ticks since boot, /proc), to tell a pid reused by another
    process from the one that wrote a run; None where /proc has no such entry."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[19].decode()
    except (OSError, IndexError):
        return None


def _writer() -> str:
    """This process, as recorded in a run it writes (``runs.writer``)."""
    pid = os.getpid()
    return json.dumps({"host": socket.gethostname(), "pid": pid, "start": _process_start(pid)})


def _migrate_1_to_2(con) -> None:
    """Version 1 stored each completion's text in traces as well as in its tokens; the text is
    now derived from the tokens (the `completions(run_id)` macro), so that appending traces
    never rewrites kilobytes of text per trace at the next checkpoint."""
    con.execute("ALTER TABLE traces DROP COLUMN IF EXISTS completion")


def _migrate_2_to_3(con) -> None:
    """Version 3 records a running run's writer process (so a killed one is recognised) and
    makes content hashes unique (so two imports of one file cannot both commit). Runs that
    already share a hash keep it on the first; the later ones get it in their settings."""
    con.execute("ALTER TABLE runs ADD COLUMN IF NOT EXISTS writer VARCHAR")
    con.execute("""
        UPDATE runs SET settings = json_merge_patch(coalesce(settings, '{}'),
                            json_object('content_hash', content_hash, 'duplicate_of', d.first)),
                        content_hash = NULL
        FROM (SELECT content_hash AS h, min(run_id) AS first FROM runs
              WHERE content_hash IS NOT NULL GROUP BY content_hash HAVING count(*) > 1) d
        WHERE runs.content_hash = d.h AND runs.run_id > d.first""")


#: _MIGRATIONS[v - 1] brings a store of version v to version v + 1
_MIGRATIONS: list[Callable] = [_migrate_1_to_2, _migrate_2_to_3]


def _finish(con, run_id: int, status: str) -> None:
    """Set a run's status and its counts from the traces it has."""
    con.execute(
        "UPDATE runs SET status = ?, writer = NULL, "
        "n_traces = (SELECT count(*) FROM traces WHERE run_id = ?), "
        "n_tokens = (SELECT coalesce(sum(n_tokens), 0) FROM traces WHERE run_id = ?) "
        "WHERE run_id = ?", [status, run_id, run_id, run_id])


def writer_gone(writer: str | None) -> bool:
    """True when the process recorded as a run's writer no longer runs (checked on this host
    only: a writer on another host, or none recorded, is presumed alive)."""
    try:
        w = json.loads(writer) if writer else None
        pid = int(w["pid"])
    except (ValueError, TypeError, KeyError):
        return False
    if w.get("host") != socket.gethostname():
        return False
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass
    start = _process_start(pid)
    return start is not None and w.get("start") is not None and start != w["start"]


class Store:
    """A DuckDB store file. Cheap to create: connections open per operation.

    ``warnings`` collects what went wrong without losing data (a checkpoint that failed after
    a commit), for the caller to report."""

    def __init__(self, path: str | os.PathLike | None = None, lock_timeout: float = 60.0):
        self.path = Path(path).expanduser() if path else default_store_path()
        self.lock_timeout = lock_timeout
        self._ready = False
        self.warnings: list[str] = []

    def error(self, exc: BaseException, doing: str | None = None, after: str = "") -> StoreError:
        """A DuckDB or OS error of this store as a StoreError of one line naming the file:
        '<file>: <doing>: <what the error means> (<its text>)<after>'."""
        return StoreError(f"{self.path}: {doing + ': ' if doing else ''}{self._describe(exc)}{after}")

    def _describe(self, exc: BaseException) -> str:
        meaning = fault(exc)
        detail = _detail(exc)
        if meaning == "the disk is full":
            detail += f"; {mb(free_bytes(self.path))} free in {self.path.parent}"
        return f"{meaning} ({detail})" if meaning else detail

    # ------------------------------------------------------------------ connections
    def _attach(self, eng: duckdb.DuckDBPyConnection, write: bool) -> str:
        """Attach the file to the process's engine (read-only unless ``write``), retrying with
        backoff while another process holds it; return its alias. Nested calls in one thread
        share the attachment (a write inside a read-only one is a programming error)."""
        key = str(self.path.resolve())
        entry = _ATTACHED.get(key)
        if entry is not None:
            if write and entry[2]:
                raise RuntimeError(f"{self.path}: a write inside a read-only connection of the same store")
            entry[1] += 1
            return entry[0]
        alias = f"store{next(_ALIASES)}"
        literal = "'" + key.replace("'", "''") + "'"
        mode = f"ROW_GROUP_SIZE {ROW_GROUP_SIZE}" if write else "READ_ONLY"
        deadline = time.monotonic() + self.lock_timeout
        delay = 0.01
        while True:
            try:
                eng.execute(f"ATTACH {literal} AS {alias} ({mode})")
                break
            except duckdb.Error as e:  # IOException on lock, others on corrupt files
                msg = str(e)
                if _LOCK_RE.search(msg):
                    if time.monotonic() >= deadline:
                        raise StoreError(
                            f"{self.path}: the store is locked by another process for more than "
                            f"{self.lock_timeout:g} s ({msg.splitlines()[0]})") from e
                    time.sleep(delay * (0.5 + random.random()))
                    delay = min(delay * 2, 0.25)
                    continue
                doing = "cannot open the store" + ("" if write or fault(e) != "permission denied"
                                                   else " even read-only")
                raise self.error(e, doing) from e
        _ATTACHED[key] = [alias, 1, not write]
        return alias

    def _detach(self, eng: duckdb.DuckDBPyConnection) -> None:
        key = str(self.path.resolve())
        entry = _ATTACHED[key]
        entry[1] -= 1
        if entry[1] == 0:
            del _ATTACHED[key]
            # DETACH checkpoints the WAL into the file (as closing a connection does) and
            # releases the file lock, so another process can open it next.
            try:
                _run_detach(eng, entry[0])
            except duckdb.Error as e:
                if not _CHECKPOINT_FAILED.search(str(e)):
                    raise self.error(e, "closing the store failed") from e
                # detached, and every commit is in the write-ahead log, replayed on the next
                # open: the data is saved, the file just was not compacted
                self.warnings.append(
                    f"{self.path}: the changes are saved (in the write-ahead log "
                    f"{self.path.name}.wal), but folding the log into the store file failed: "
                    f"{self._describe(e)}. The store stays usable; the "
                    f"log is folded in by the next write once there is room")

    @contextlib.contextmanager
    def connect(self, write: bool = True) -> Iterator[_Connection]:
        """A short-lived connection with the schema checked (and created on first use).

        The file is attached for the duration of the ``with`` block only, so the file lock is
        held exactly as long as a connection of its own would hold it. Operations of one
        process run one at a time (threads wait on a lock, not on the file). ``write=False``
        attaches an existing store read-only (a new store, or one that must be upgraded, is
        attached read-write once for that). DuckDB errors that are faults of the file or the
        disk come out as StoreError.
        """
        if write or not self.path.exists():
            write = True
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise self.error(e, "cannot create the store's folder") from e
        with _ENGINE_LOCK:
            eng = _engine()
            try:
                with self._connection(eng, write) as con:
                    yield con
            except _NeedsWrite:
                with self._connection(eng, True) as con:
                    yield con
            except duckdb.FatalException as e:
                _reset_engine()
                raise self.error(e) from e
            except duckdb.Error as e:
                if isinstance(e, _PROGRAMMING):
                    raise
                raise self.error(e) from e
            except OSError as e:
                raise self.error(e) from e

    @contextlib.contextmanager
    def _connection(self, eng: duckdb.DuckDBPyConnection, write: bool) -> Iterator[_Connection]:
        alias = self._attach(eng, write)
        try:
            con = eng.cursor()
            try:
                con.execute(f"USE {alias}")
                if not self._ready:
                    self._ensure_schema(con, write)
                    self._ready = True
                if write and _ATTACHED.get(str(self.path.resolve()), [None, 0])[1] == 1:
                    self._reap_stale_runs(con)
                yield _Connection(con)
            finally:
                con.close()  # rolls back a transaction left open by an exception
        finally:
            self._detach(eng)

    def _ensure_schema(self, con: duckdb.DuckDBPyConnection, write: bool = True) -> None:
        try:  # the common case in one cheap query: a store of this version
            row = con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            if row and int(row[0]) == SCHEMA_VERSION:
                return
        except duckdb.CatalogException:
            pass
        tables = {r[0] for r in con.execute(
            "SELECT table_name FROM information_schema.tables "
            "WHERE table_catalog = current_database()").fetchall()}
        has_meta = "meta" in tables
        if has_meta:
            row = con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            version = int(row[0]) if row else 0
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"{self.path}: the store has schema version {version}, newer than this "
                    f"thinkscope understands ({SCHEMA_VERSION}); upgrade thinkscope or use another "
                    f"store (--store / ${ENV_STORE}). Nothing was changed.")
            if version == SCHEMA_VERSION:
                return
        if not has_meta and tables:
            raise StoreError(f"{self.path}: this DuckDB file is not a thinkscope store "
                             f"(it has {len(tables)} other tables); nothing was changed.")
        if not write:
            raise _NeedsWrite()
        if has_meta and version >= 1:  # an older version: one transaction per step (DuckDB
            # creates no index in a transaction with updates); each step may be repeated
            for v, step in enumerate(_MIGRATIONS[version - 1:], start=version + 1):
                con.execute("BEGIN")
                step(con)
                con.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", [str(v)])
                con.execute("COMMIT")
        con.execute("BEGIN")
        con.execute(SCHEMA)
        con.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", [str(SCHEMA_VERSION)])
        con.execute("COMMIT")

    def _reap_stale_runs(self, con) -> None:
        """Mark 'running' runs whose writer process is gone (killed) as 'interrupted', with the
        counts of the batches they stored."""
        for run_id, writer in con.execute("SELECT run_id, writer FROM runs WHERE status = 'running'").fetchall():
            if writer_gone(writer):
                _finish(con, run_id, "interrupted")

    def query(self, sql: str, params: list | None = None) -> pd.DataFrame:
        """Run one read query and return a DataFrame."""
        with self.connect(write=False) as con:
            return con.execute(sql, params).df()

    def version(self) -> int:
        """A number that changes whenever the file changes (for cache keys)."""
        total = 0
        for p in (self.path, Path(str(self.path) + ".wal")):
            with contextlib.suppress(FileNotFoundError):
                st = p.stat()
                total += st.st_mtime_ns + st.st_size
        return total

    # ------------------------------------------------------------------ writes
    def create_run(self, name: str, source: str, model: str | None = None,
                   settings: dict | None = None, content_hash: str | None = None,
                   status: str = "running") -> int:
        """Insert a run row and return its id. A 'running' run records this process as its
        writer, so that it is shown as interrupted once the process is gone."""
        with self.connect() as con:
            con.execute("BEGIN")
            run_id = con.execute("SELECT coalesce(max(run_id), 0) + 1 FROM runs").fetchone()[0]
            con.execute(
                "INSERT INTO runs (run_id, name, source, model, settings, created_at, status, content_hash, "
                "writer) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [run_id, valid_text(name), source, valid_text(model), json_text(settings or {}),
                 datetime.now(timezone.utc).replace(tzinfo=None), status, content_hash,
                 _writer() if status == "running" else None])
            con.execute("COMMIT")
        return int(run_id)

    def finish_run(self, run_id: int, status: str = "complete") -> None:
        """Set a run's status and refresh its counts."""
        with self.connect() as con:
            _finish(con, run_id, status)

    def delete_run(self, run_id: int) -> None:
        """Remove a run and everything in it, in one transaction."""
        with self.connect() as con:
            con.execute("BEGIN")
            for table in ("token_layers", "tokens", "trace_stats"):
                con.execute(f"DELETE FROM {table} WHERE trace_id IN "
                            "(SELECT trace_id FROM traces WHERE run_id = ?)", [run_id])
            con.execute("DELETE FROM traces WHERE run_id = ?", [run_id])
            con.execute("DELETE FROM vocab WHERE run_id = ?", [run_id])
            con.execute("DELETE FROM runs WHERE run_id = ?", [run_id])
            con.execute("COMMIT")

    def add_traces(self, run_id: int, traces: list[Trace], vocab: dict[int, str] | None = None) -> list[int]:
        """Write a batch of traces to a run in one transaction; return their trace ids.

        ``vocab`` maps the token ids used in ``topk_ids`` to their text (local models).
        Alternatives given only as text get run-local ids (>= 2**30) and vocab rows.
        """
        return self.add_batches(run_id, [traces], vocab) if traces else []

    def add_batches(self, run_id: int, batches: Iterable[list[Trace]], vocab: dict[int, str] | None = None,
                    *, con: duckdb.DuckDBPyConnection | None = None,
                    on_batch: Callable[[list[int]], None] | None = None) -> list[int]:
        """Write a stream of trace batches to a run, one transaction per batch; return the ids.

        For bulk writes: the file stays attached for the whole stream, and the Arrow tables of
        the next batch are built while a second thread has DuckDB write the previous one (numpy
        and DuckDB both release the GIL for most of their work), so the write costs about the
        larger of the two instead of their sum. ``on_batch`` gets each batch's trace ids once it
        is committed. When building a batch fails or the
        stream is interrupted, the batches built before it are still committed (and stay).
        """
        run_id = int(run_id)
        if con is None:
            with self.connect() as own:
                return self.add_batches(run_id, batches, vocab, con=own, on_batch=on_batch)
        nxt = NextIds.read(con, run_id, vocab)
        out: list[int] = []

        def write(batch: Batch) -> list[int]:
            con.execute("BEGIN")
            try:
                insert_tables(con, batch.tables)
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
            return batch.trace_ids

        def done(ids: list[int]) -> None:
            out.extend(ids)
            if on_batch:
                on_batch(ids)

        inflight: deque = deque()  # futures of batches handed to the writer, oldest first
        with ThreadPoolExecutor(1, thread_name_prefix="thinkscope-store") as pool:
            try:
                for traces in batches:
                    if not traces:
                        continue
                    batch = nxt.build(traces, run_id, vocab)
                    while len(inflight) >= WRITE_AHEAD:
                        done(inflight.popleft().result())
                    inflight.append(pool.submit(write, batch))
                while inflight:
                    done(inflight.popleft().result())
            finally:  # on an error, the batches already built are still written (and reported)
                concurrent.futures.wait(inflight)
                for f in inflight:
                    if f.exception() is None:
                        done(f.result())
        return out

    # ------------------------------------------------------------------ queries
    def runs(self) -> pd.DataFrame:
        """Every run with its counts and mean sequence entropy (nats, best estimator).

        A 'running' run whose writer process is gone (killed) is shown as 'interrupted'; its
        counts are those of the batches it stored."""
        df = self.query("""
            SELECT r.run_id, r.name, r.source, r.model, r.status, r.created_at,
                   count(t.trace_id) AS n_traces, coalesce(sum(t.n_tokens), 0) AS n_tokens,
                   avg(s.mean_entropy) AS mean_entropy, any_value(t.estimator) AS estimator,
                   r.settings, r.writer
            FROM runs r
            LEFT JOIN traces t USING (run_id)
            LEFT JOIN trace_stats s ON s.trace_id = t.trace_id AND s.phase = 'all'
                                   AND s.estimator = t.estimator
            GROUP BY ALL ORDER BY r.run_id""")
        gone = (df["status"] == "running") & df["writer"].map(writer_gone).astype(bool)
        df.loc[gone, "status"] = "interrupted"
        return df.drop(columns=["writer"])

    def traces(self, run_id: int, with_completion: bool = False) -> pd.DataFrame:
        """The traces of a run with their sequence entropies by phase (best estimator).

        The completion text (its tokens joined) is left out unless asked for: at 1,000 traces
        of 1,000 tokens it is most of the query's time, and a page that shows one trace reads
        its tokens.
        """
        text = ("LEFT JOIN completions($1) c ON c.trace_id = t.trace_id" if with_completion else "")
        cols = "t.*, coalesce(c.completion, '') AS completion" if with_completion else "t.*"
        # Aggregate the stats before the join, so that no GROUP BY hashes the trace text.
        return self.query(f"""
            WITH s AS (
                SELECT trace_id, estimator,
                       max(mean_entropy) FILTER (WHERE phase = 'all') AS mean_entropy,
                       max(mean_entropy) FILTER (WHERE phase = 'thinking') AS mean_entropy_thinking,
                       max(mean_entropy) FILTER (WHERE phase = 'answer') AS mean_entropy_answer
                FROM trace_stats WHERE trace_id IN (SELECT trace_id FROM traces WHERE run_id = $1)
                GROUP BY trace_id, estimator)
            SELECT {cols}, s.mean_entropy, s.mean_entropy_thinking, s.mean_entropy_answer
            FROM traces t LEFT JOIN s ON s.trace_id = t.trace_id AND s.estimator = t.estimator
            {text}
            WHERE t.run_id = $1 ORDER BY t.idx""", [run_id])

    def trace(self, trace_id: int) -> pd.Series:
        df = self.query("SELECT * FROM traces WHERE trace_id = ?", [trace_id])
        if df.empty:
            raise StoreError(f"{self.path}: no trace with id {trace_id}")
        return df.iloc[0]

    def tokens(self, trace_id: int, with_alternatives: bool = True) -> pd.DataFrame:
        """One row per token of a trace; with the top-k alternatives' text and logprobs."""
        with self.connect(write=False) as con:
            df = con.execute("SELECT * FROM tokens WHERE trace_id = ? ORDER BY pos", [trace_id]).df()
            if not with_alternatives or df.empty:
                return df
            # The alternatives' text, mapped with numpy rather than one dict lookup per
            # alternative (20 per token): this is most of the explorer's wait otherwise.
            col = df["topk_ids"].tolist()
            rows = [ids if isinstance(ids, np.ndarray) else np.empty(0, np.int32) for ids in col]
            lengths = np.fromiter((len(r) for r in rows), np.int64, len(rows))
            flat = np.concatenate(rows).astype(np.int64) if lengths.sum() else np.empty(0, np.int64)
            uniq = np.unique(flat)
            voc = con.execute("""
                SELECT token_id, text FROM vocab
                WHERE run_id = (SELECT run_id FROM traces WHERE trace_id = ?)
                  AND token_id IN (SELECT unnest(?::INTEGER[]))
                ORDER BY token_id""", [trace_id, uniq.tolist()]).fetchnumpy()
        known = np.asarray(voc["token_id"], np.int64)
        texts = _filled(voc["text"], None).astype(object)
        at = np.searchsorted(known, flat)
        hit = at < known.size
        hit[hit] = known[at[hit]] == flat[hit]
        flat_text = np.empty(flat.size, dtype=object)
        flat_text[hit] = texts[at[hit]]
        for j in np.flatnonzero(~hit):
            flat_text[j] = f"<id {int(flat[j])}>"
        cells = flat_text.tolist()
        ends = np.cumsum(lengths).tolist()
        starts = [0, *ends[:-1]]
        df["topk_tokens"] = [cells[a:b] for a, b in zip(starts, ends)]
        return df

    def entropy_column(self, estimator: str) -> str:
        if estimator == "best":
            return "entropy"
        try:
            return ENTROPY_COLUMNS[estimator]
        except KeyError:
            raise StoreError(f"unknown estimator {estimator!r}; known: best, {', '.join(ENTROPY_COLUMNS)}")

    def run_window_entropy(self, run_id: int, estimator: str = "best", w: int = 4) -> np.ndarray:
        """Window entropy (nats) of every token of a run, ordered by trace_id then pos.

        Computed by ``metrics.window_entropy`` itself (the one definition) over the run's
        traces laid end to end with ``w`` NaNs between them: NaNs are ignored inside a window,
        so no window reaches into the next trace and each trace's last token gets NaN. (A SQL
        window function gave the same values but cost ~4x more at 1M tokens: it sorts.)
        """
        col = self.entropy_column(estimator)
        w = int(w)
        if w < 1:
            raise ValueError(f"window size must be >= 1, got {w}")
        with self.connect(write=False) as con:
            tr = con.execute("SELECT trace_id, n_tokens FROM traces WHERE run_id = ? ORDER BY trace_id",
                             [run_id]).fetchnumpy()
            if not len(tr["trace_id"]):
                return np.empty(0)
            # relation API straight to Arrow: about half the cost of fetchnumpy at 1M rows
            tok = con.sql(f"""
                SELECT trace_id, pos, {col} AS h FROM tokens
                WHERE trace_id IN (SELECT trace_id FROM traces WHERE run_id = ?)""",
                params=[run_id]).to_arrow_table()
        tids = np.asarray(tr["trace_id"], np.int64)
        lengths = np.asarray(tr["n_tokens"], np.int64)
        starts = np.concatenate([[0], np.cumsum(lengths + w)[:-1]])  # in the padded layout
        lookup = np.zeros(int(tids.max() - tids.min()) + 1, np.int64)
        lookup[tids - tids.min()] = starts
        at = (lookup[tok.column("trace_id").to_numpy() - tids.min()]
              + tok.column("pos").to_numpy().astype(np.int64))
        padded = np.full(int((lengths + w).sum()), np.nan)
        padded[at] = tok.column("h").to_numpy()  # NULL -> NaN
        # Chunks of whole traces of ~64k values keep the temporaries in cache (2x faster).
        first = np.searchsorted(starts, np.arange(1 << 16, padded.size, 1 << 16))
        cuts = np.unique(np.concatenate([[0], starts[first[first < starts.size]], [padded.size]]))
        win = np.concatenate([metrics.window_entropy(padded[a:b], w).values
                              for a, b in zip(cuts[:-1], cuts[1:])])
        keep = np.ones(padded.size, bool)
        keep[((starts + lengths)[:, None] + np.arange(w)).ravel()] = False
        return win[keep]

    def trace_stats(self, run_ids: Iterable[int] | None = None) -> pd.DataFrame:
        """Sequence entropy per trace, estimator and phase, with the trace's metadata."""
        where, params = "", []
        if run_ids is not None:
            ids = [int(r) for r in run_ids]
            where = f"WHERE t.run_id IN ({', '.join('?' * len(ids))})" if ids else "WHERE false"
            params = ids
        return self.query(f"""
            SELECT s.*, t.run_id, t.n_tokens, t.boundary, t.problem_id, t.level, t.correct,
                   t.sample_idx
            FROM trace_stats s JOIN traces t USING (trace_id) {where}""", params)

    def set_grades(self, run_id: int, grades: pd.DataFrame, rule: dict | None = None) -> None:
        """Overwrite pred_answer and correct of a run's traces (re-grading), in one transaction.

        ``grades`` has columns trace_id, pred_answer, correct (None: ungraded); ``rule`` is
        recorded in the run's settings under 'grading'.
        """
        g = grades[["trace_id", "pred_answer", "correct"]].copy()
        g["trace_id"] = g["trace_id"].astype("int64")
        g["pred_answer"] = g["pred_answer"].astype(object).where(g["pred_answer"].notna(), None)
        g["correct"] = g["correct"].astype("boolean")
        with self.connect() as con:
            con.execute("BEGIN")
            try:
                con.register("_grades", g)
                con.execute("""UPDATE traces SET pred_answer = _grades.pred_answer::VARCHAR,
                                                 correct = _grades.correct::BOOLEAN
                               FROM _grades WHERE traces.trace_id = _grades.trace_id
                                 AND traces.run_id = ?""", [run_id])
                con.unregister("_grades")
                if rule is not None:
                    self.merge_settings(run_id, {"grading": rule}, con=con)
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise

    def merge_settings(self, run_id: int, patch: dict, con: duckdb.DuckDBPyConnection | None = None) -> None:
        """Merge ``patch`` into a run's settings JSON (grading rule, pass rates, early-stop results)."""
        sql = "UPDATE runs SET settings = json_merge_patch(coalesce(settings, '{}'), ?) WHERE run_id = ?"
        params = [json_text(patch), run_id]
        if con is not None:
            con.execute(sql, params)
            return
        with self.connect() as own:
            own.execute(sql, params)

    def find_run_by_hash(self, content_hash: str) -> pd.DataFrame:
        return self.query("SELECT * FROM runs WHERE content_hash = ?", [content_hash])

    def counts(self) -> dict[str, int]:
        with self.connect(write=False) as con:
            return {t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                    for t in ("runs", "traces", "tokens")}

    # ------------------------------------------------------------------ per-layer records
    def token_layers(self, trace_id: int) -> pd.DataFrame:
        """Per-layer arrays of a trace, one row per token (analysis.layers).

        Columns: pos, lens_entropy, lens_top1, attn_entropy, attn_entropy_norm,
        attn_head_entropy (lists; nats), lens_top1_text (text of each layer's top-1 token).
        Which layers the lists cover is in the trace's metadata (``layer_info``, see
        :meth:`layer_info`). Empty when the trace has no layer records.
        """
        with self.connect(write=False) as con:
            df = con.execute("SELECT * EXCLUDE (trace_id) FROM token_layers WHERE trace_id = ? ORDER BY pos",
                             [trace_id]).df()
            if df.empty or df["lens_top1"].isna().all():
                return df
            voc = dict(con.execute("""
                SELECT token_id, text FROM vocab
                WHERE run_id = (SELECT run_id FROM traces WHERE trace_id = ?)
                  AND token_id IN (SELECT DISTINCT unnest(lens_top1) FROM token_layers WHERE trace_id = ?)
                """, [trace_id, trace_id]).fetchall())
        df["lens_top1_text"] = [[voc.get(int(i), f"<id {int(i)}>") for i in ids] if ids is not None else []
                                for ids in df["lens_top1"]]
        return df

    def layer_info(self, trace_id: int) -> dict:
        """Which layers a trace's per-layer arrays cover: lens_layers, attn_layers, head_layer."""
        meta = json_settings(self.trace(trace_id).get("metadata"))
        return meta.get("layer_info", {})

    def layer_runs(self) -> pd.DataFrame:
        """run_id and number of traces with per-layer records, for runs that have any."""
        return self.query("""
            SELECT t.run_id, count(DISTINCT l.trace_id) AS n_traces
            FROM token_layers l JOIN traces t USING (trace_id) GROUP BY t.run_id ORDER BY t.run_id""")

    def layer_trace_ids(self, run_id: int) -> list[int]:
        """Ids of a run's traces that have per-layer records."""
        df = self.query("""SELECT DISTINCT l.trace_id FROM token_layers l JOIN traces t USING (trace_id)
                           WHERE t.run_id = ? ORDER BY l.trace_id""", [run_id])
        return [int(i) for i in df["trace_id"]]

    def layer_profiles(self, run_id: int, field: str = "lens_entropy") -> pd.DataFrame:
        """Entropy profile of every trace of a run with layer records: mean over its tokens.

        One row per (trace, list index ``k`` 0-based): mean and standard deviation of
        ``field`` (nats; NaN values left out), token count, and the trace's problem_id,
        level and correct, so profiles can be compared by difficulty and correctness.
        ``field``: lens_entropy, attn_entropy, attn_entropy_norm or attn_head_entropy.
        """
        if field not in LAYER_FIELDS or field == "lens_top1":
            raise StoreError(f"no entropy field {field!r} in token_layers; known: "
                             + ", ".join(f for f in LAYER_FIELDS if f != "lens_top1"))
        return self.query(f"""
            WITH v AS (
                SELECT l.trace_id, generate_subscripts(l.{field}, 1) - 1 AS k, unnest(l.{field}) AS h
                FROM token_layers l JOIN traces t USING (trace_id) WHERE t.run_id = ?)
            SELECT v.trace_id, v.k, avg(h) FILTER (WHERE NOT isnan(h)) AS mean,
                   stddev_samp(h) FILTER (WHERE NOT isnan(h)) AS sd,
                   count(h) FILTER (WHERE NOT isnan(h)) AS n,
                   t.idx, t.problem_id, t.level, t.correct
            FROM v JOIN traces t USING (trace_id)
            GROUP BY ALL ORDER BY v.trace_id, v.k""", [run_id])


# ---------------------------------------------------------------------- batch building


@dataclass
class Batch:
    tables: dict[str, pa.Table]
    trace_ids: list[int]


class NextIds:
    """Where the next batch of a run starts (trace id, index in the run) and which vocab
    rows the run already has, read once and then advanced batch by batch."""

    def __init__(self, first_id: int, first_idx: int, known_local: dict[str, int],
                 known_real: np.ndarray | None):
        self.first_id, self.first_idx = first_id, first_idx
        self.known_local, self.known_real = known_local, known_real

    @classmethod
    def read(cls, con, run_id: int, vocab: dict[int, str] | None) -> "NextIds":
        first_id, first_idx = con.execute(
            "SELECT (SELECT coalesce(max(trace_id), 0) + 1 FROM traces), "
            "(SELECT coalesce(max(idx), -1) + 1 FROM traces WHERE run_id = ?)", [run_id]).fetchone()
        known = dict(con.execute(
            "SELECT text, token_id FROM vocab WHERE run_id = ? AND token_id >= ?",
            [run_id, LOCAL_ID_BASE]).fetchall())
        known_real = np.asarray(con.execute(  # numpy, not a set of tuples: ~49k ids per batch
            "SELECT token_id FROM vocab WHERE run_id = ? AND token_id < ?",
            [run_id, LOCAL_ID_BASE]).fetchnumpy()["token_id"], np.int64) if vocab is not None else None
        return cls(int(first_id), int(first_idx), known, known_real)

    def build(self, traces: list[Trace], run_id: int, vocab: dict[int, str] | None) -> "Batch":
        """The batch's Arrow tables (``build_batch``), with the ids moved on past it."""
        batch = build_batch(traces, self.first_id, self.first_idx, run_id, vocab,
                            self.known_local, self.known_real)
        n = len(batch.trace_ids)
        self.first_id += n
        self.first_idx += n
        voc = batch.tables.get("vocab")
        if voc is not None and self.known_real is not None:  # build_batch added local ids itself
            ids = voc.column("token_id").to_numpy().astype(np.int64)
            self.known_real = np.concatenate([self.known_real, ids[ids < LOCAL_ID_BASE]])
        return batch


def insert_tables(con, tables: dict[str, pa.Table], replace: dict[str, str] | None = None) -> None:
    """Bulk-insert Arrow tables by column name through DuckDB's replacement scan; ``replace``
    gives SQL expressions for some columns (e.g. ids moved by an offset).

    DuckDB scans an Arrow table with one thread per record batch, so a table is handed over in
    batches of one row group (a 50,000-row batch then goes in on every core: ~1.6x faster).
    """
    replace = replace or {}
    for table, tbl in tables.items():
        if tbl.num_rows > ROW_GROUP_SIZE:
            tbl = pa.Table.from_batches(tbl.to_batches(max_chunksize=ROW_GROUP_SIZE))
        con.register("_batch", tbl)
        cols = tbl.column_names
        values = ", ".join(replace.get(c, c) for c in cols)
        con.execute(f"INSERT INTO {table} ({', '.join(cols)}) SELECT {values} FROM _batch")
        con.unregister("_batch")


def _list_array(values: np.ndarray, mask: np.ndarray, dtype: pa.DataType) -> pa.Array:
    """[T, k] values -> Arrow list array with the masked-out slots dropped (no Python loop)."""
    n, k = values.shape
    if k and mask.all():  # the usual case (a local model's top-k): no boolean gather, no copy
        offsets = np.arange(0, n * k + 1, k, dtype=np.int32)
        flat = values.reshape(-1)
    else:
        counts = mask.sum(axis=1)
        offsets = np.zeros(n + 1, dtype=np.int32)
        np.cumsum(counts, out=offsets[1:])
        flat = values[mask]
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat, type=dtype))


def build_batch(traces: list[Trace], first_id: int, first_idx: int, run_id: int,
                vocab: dict[int, str] | None, known_local: dict[str, int] | None = None,
                known_real: "set[int] | np.ndarray | None" = None) -> Batch:
    """Turn traces into Arrow tables for traces, trace_stats, tokens, vocab, token_layers.

    Per-token work is done once over the whole batch (concatenated arrays), not per trace.
    ``known_local`` (text -> run-local id) gains the local ids this batch gives out.
    """
    known_local = {} if known_local is None else known_local
    n_t = len(traces)
    lengths = np.array([t.n_tokens for t in traces], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]) if n_t else np.empty(0, np.int64)
    total = int(lengths.sum())
    trace_ids = list(range(first_id, first_id + n_t))
    kmax = max((t.k for t in traces), default=0)
    boundaries = np.array([t.boundary for t in traces], dtype=np.int64)

    # ---- traces table
    trace_rows: dict[str, list] = {c: [] for c in ("source_id", "prompt",
                                                   *TRACE_META_COLUMNS, "metadata")}
    for tr in traces:
        meta = dict(tr.metadata)
        trace_rows["source_id"].append(tr.source_id)
        trace_rows["prompt"].append(tr.prompt)
        for c in TRACE_META_COLUMNS:
            v = meta.pop(c, None)
            trace_rows[c].append(None if v is None or (isinstance(v, float) and np.isnan(v)) else v)
        trace_rows["metadata"].append(json.dumps(meta, default=str) if meta else None)
    traces_tbl = pa.table({
        "trace_id": pa.array(trace_ids, pa.int64()),
        "run_id": pa.array([run_id] * n_t, pa.int32()),
        "idx": pa.array(range(first_idx, first_idx + n_t), pa.int32()),
        "n_tokens": pa.array(lengths, pa.int32()),
        "boundary": pa.array(boundaries, pa.int32()),
        "estimator": pa.array([t.estimator for t in traces], pa.string()),
        "k": pa.array([t.k for t in traces], pa.int32()),
        **{c: pa.array(v, type=_arrow_type(c)) for c, v in trace_rows.items()}})

    # ---- per-token arrays over the whole batch
    def stack(getter, fill, dtype) -> np.ndarray:
        out = np.full(total, fill, dtype=dtype)
        for tr, s in zip(traces, starts):
            v = getter(tr)
            if v is not None and tr.n_tokens:
                out[s: s + tr.n_tokens] = v
        return out

    nan = np.nan
    ents: dict[str, np.ndarray] = {
        "full": stack(lambda t: t.entropy_full, nan, np.float64),
        "full_t1": stack(lambda t: t.entropy_full_t1, nan, np.float64)}
    has = {"full": np.array([t.entropy_full is not None for t in traces], bool),
           "full_t1": np.array([t.entropy_full_t1 is not None for t in traces], bool)}
    ids = np.full((total, kmax), -1, dtype=np.int32)  # the column's type: no cast later
    lp = np.full((total, kmax), -np.inf)
    new_vocab: dict[int, str] = {}
    next_local = max(known_local.values(), default=LOCAL_ID_BASE - 1) + 1
    for tr, s in zip(traces, starts):
        if not tr.k:
            continue
        rows = slice(s, s + tr.n_tokens)
        lp[rows, : tr.k] = tr.topk_logprobs
        if tr.topk_ids is not None:
            ids[rows, : tr.k] = tr.topk_ids
        elif tr.topk_tokens is not None:
            for r, row in enumerate(tr.topk_tokens):
                for c, text in enumerate(row[: tr.k]):
                    if text is None:
                        continue
                    local = known_local.get(text)
                    if local is None:
                        local = known_local[text] = next_local
                        new_vocab[next_local] = text
                        next_local += 1
                    ids[s + r, c] = local
    lp = metrics.clean_logprobs(lp, inplace=True) if kmax else lp
    mask = (ids >= 0) & (lp > -np.inf)  # before the entropies: they reuse lp's memory
    lp32 = lp.astype(np.float32)
    has_k = np.array([t.k > 0 for t in traces], bool)
    if kmax:
        ents.update(metrics.all_topk_entropies(lp, cleaned=True))
        for tr, s in zip(traces, starts):  # values carried by the trace (an export) win
            for est, v in (tr.entropy_topk or {}).items():
                if est in ents and tr.n_tokens:
                    ents[est][s: s + tr.n_tokens] = v
    for est in metrics.TOPK_ESTIMATORS:
        has[est] = has_k
        if not kmax:
            ents[est] = np.full(total, nan)
    best_names = [t.estimator for t in traces]
    best = np.full(total, nan)
    for est in ents:
        sel = np.array([b == est for b in best_names], bool)
        if sel.any():
            rowmask = np.repeat(sel, lengths)
            best[rowmask] = ents[est][rowmask]

    seg = np.repeat(np.arange(n_t), lengths)
    pos = np.arange(total, dtype=np.int64) - np.repeat(starts, lengths)
    tokens = pa.table({
        "trace_id": pa.array(np.repeat(np.asarray(trace_ids, np.int64), lengths)),
        "pos": pa.array(pos.astype(np.int32)),
        "token_id": pa.array(stack(lambda t: t.token_ids, -1, np.int32)),
        "token": pa.array([tok for t in traces for tok in t.tokens], type=pa.string()),
        "logprob": pa.array(metrics.clean_logprobs(stack(lambda t: t.logprobs, nan, np.float64))
                            .astype(np.float32)),
        "entropy": pa.array(best.astype(np.float32), from_pandas=True),
        **{col: pa.array(ents[est].astype(np.float32), from_pandas=True)
           for est, col in ENTROPY_COLUMNS.items()},
        "topk_ids": _list_array(ids, mask, pa.int32()),
        "topk_logprobs": _list_array(lp32, mask, pa.float32()),
    })

    # ---- sequence entropy per trace, estimator and phase (metrics.sequence_entropy, vectorised)
    # one bin per (trace, phase): 2i the thinking part of trace i, 2i + 1 its answer part
    seg2 = seg * 2 + (pos >= np.repeat(boundaries, lengths))
    size2 = np.bincount(seg2, minlength=2 * n_t).reshape(n_t, 2)
    stat_cols: dict[str, list] = {"trace_id": [], "estimator": [], "phase": [], "mean_entropy": [], "n": []}
    tid_arr = np.asarray(trace_ids, np.int64)
    for est, h in ents.items():
        sel = has[est]
        if not sel.any():
            continue
        ok = ~np.isnan(h)
        if ok.all():
            sums2 = np.bincount(seg2, weights=h, minlength=2 * n_t).reshape(n_t, 2)
            cnt2 = size2
        else:
            sums2 = np.bincount(seg2[ok], weights=h[ok], minlength=2 * n_t).reshape(n_t, 2)
            cnt2 = np.bincount(seg2[ok], minlength=2 * n_t).reshape(n_t, 2)
        for phase, sums, cnts, sizes in (
                ("all", sums2.sum(axis=1), cnt2.sum(axis=1), size2.sum(axis=1)),
                ("thinking", sums2[:, 0], cnt2[:, 0], size2[:, 0]),
                ("answer", sums2[:, 1], cnt2[:, 1], size2[:, 1])):
            with np.errstate(invalid="ignore", divide="ignore"):
                means = np.where(cnts > 0, sums / np.maximum(cnts, 1), nan)
            stat_cols["trace_id"].append(tid_arr[sel])
            stat_cols["estimator"].extend([est] * int(sel.sum()))
            stat_cols["phase"].extend([phase] * int(sel.sum()))
            stat_cols["mean_entropy"].append(means[sel])
            stat_cols["n"].append(sizes[sel])
    cat = lambda parts, dt: np.concatenate(parts).astype(dt) if parts else np.empty(0, dt)  # noqa: E731
    stats_tbl = pa.table({
        "trace_id": pa.array(cat(stat_cols["trace_id"], np.int64)),
        "estimator": pa.array(stat_cols["estimator"], pa.string()),
        "phase": pa.array(stat_cols["phase"], pa.string()),
        "mean_entropy": pa.array(cat(stat_cols["mean_entropy"], np.float64), from_pandas=True),
        "n": pa.array(cat(stat_cols["n"], np.int32))})

    lens_ids = [np.asarray(t.layers["lens_top1"], np.int32).ravel() for t in traces
                if t.layers and t.layers.get("lens_top1") is not None]  # logit-lens top-1 hover text
    if vocab and (kmax or lens_ids):
        # the ids that need text: a bitmap over the real ids (int32, no sort, no int64 copy)
        parts = [ids.reshape(-1), stack(lambda t: t.token_ids, -1, np.int32), *lens_ids]
        top = max((int(a.max(initial=-1, where=(a < LOCAL_ID_BASE))) for a in parts if a.size), default=-1)
        if top >= 0:
            seen = np.zeros(top + 2, bool)  # slot top + 1 takes padding, local ids and masked slots
            for a in parts:
                if a.size and a.min() >= 0 and a.max() <= top:  # the usual case: no padding
                    seen[a] = True
                else:
                    seen[np.where((a >= 0) & (a <= top), a, top + 1)] = True
            seen = seen[: top + 1]
            if known_real is not None and len(known_real):  # only ids the run has no text for yet
                kr = np.fromiter(known_real, np.int64) if isinstance(known_real, (set, frozenset)) \
                    else np.asarray(known_real, np.int64)
                seen[kr[kr < seen.size]] = False
            for i in np.flatnonzero(seen).tolist():
                if i in vocab:
                    new_vocab[i] = vocab[i]

    tables = {"traces": traces_tbl, "trace_stats": stats_tbl, "tokens": tokens}
    if new_vocab:
        tables["vocab"] = pa.table({
            "run_id": pa.array([run_id] * len(new_vocab), pa.int32()),
            "token_id": pa.array(list(new_vocab), pa.int32()),
            "text": pa.array(list(new_vocab.values()), pa.string())})
    layer_tables = [_layer_table(tid, tr.n_tokens, tr.layers)
                    for tid, tr in zip(trace_ids, traces) if tr.layers]
    if layer_tables:
        tables["token_layers"] = pa.concat_tables(layer_tables, promote_options="default")
    return Batch(tables, trace_ids)


_ARROW_TYPES = {"trace_id": pa.int64(), "run_id": pa.int32(), "idx": pa.int32(), "n_tokens": pa.int32(),
                "boundary": pa.int32(), "k": pa.int32(), "level": pa.float64(), "correct": pa.bool_(),
                "sample_idx": pa.int32()}


def _arrow_type(col: str) -> pa.DataType:
    return _ARROW_TYPES.get(col, pa.string())


LAYER_FIELDS = {"lens_entropy": pa.float32(), "lens_top1": pa.int32(), "attn_entropy": pa.float32(),
                "attn_entropy_norm": pa.float32(), "attn_head_entropy": pa.float32()}


def _layer_table(trace_id: int, n: int, layers: dict[str, np.ndarray]) -> pa.Table:
    cols: dict[str, pa.Array] = {"trace_id": pa.array(np.full(n, trace_id, np.int64)),
                                 "pos": pa.array(np.arange(n, dtype=np.int32))}
    for name, dtype in LAYER_FIELDS.items():
        arr = layers.get(name)
        if arr is None:
            continue
        arr = np.asarray(arr)
        if arr.ndim != 2 or arr.shape[0] != n:
            raise TraceError(f"layers[{name!r}] has shape {arr.shape}, expected ({n}, L)")
        flat = pa.array(arr.reshape(-1).astype(dtype.to_pandas_dtype()), type=dtype)
        cols[name] = pa.FixedSizeListArray.from_arrays(flat, arr.shape[1]).cast(pa.list_(dtype))
    return pa.table(cols)


def json_settings(value: Any) -> dict:
    """Parse a settings/metadata JSON cell (None -> {})."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return {}
    return value if isinstance(value, dict) else json.loads(value)
