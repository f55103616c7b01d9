"""Opening a store file: the process's DuckDB engine, attaching with locks, faults as StoreError.

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
from pathlib import Path
from typing import Iterator

import duckdb
import pandas as pd

from .. import settings
from ..errors import StoreError
from .schema import _MIGRATIONS, ROW_GROUP_SIZE, SCHEMA, SCHEMA_VERSION
from .values import _py

ENV_STORE = settings.STORE.name
DEFAULT_STORE = Path(__file__).resolve().parents[2] / "data" / "store" / "thinkscope.duckdb"


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


#: what the database engine raises for a statement it refuses that ``Database.connect`` lets
#: through as it is (programming and constraint errors), for callers outside the store to
#: recognise without importing the engine
EngineError = duckdb.Error


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
    env = settings.STORE.raw()
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


class Database:
    """A DuckDB store file opened per operation (cheap to create); ``Store`` adds the verbs.

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
