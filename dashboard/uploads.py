"""Uploaded files staged on disk for one browser session, and removed once done with.

Streamlit keeps an upload's bytes in memory while the uploader holds it, and keeps a closed
browser session (its state included) for a possible reconnect; nothing frees either when
the tab goes. So the Upload page copies each upload to a file in its session's folder as it
arrives, hashing it on the way, and then drops the bytes (``release``) and clears the
uploader. The copies are removed when imported or removed from the list, and when their
session ends: a sweeper thread removes the folder of a session the runtime no longer has as
active after ``grace_s()`` seconds (Streamlit's own reconnect window; a reconnect within it
keeps the files), and the folders left by server processes that are gone.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from analysis import settings

#: every server process stages under ROOT/<pid>/<session id>/
ROOT = Path(tempfile.gettempdir()) / "thinkscope-uploads"
GRACE_ENV = settings.UPLOAD_GRACE_S.name
#: Streamlit keeps a disconnected session for reconnection this long (MemorySessionStorage)
DEFAULT_GRACE_S = settings.UPLOAD_GRACE_S.default
CHUNK = 1 << 20


def grace_s() -> float:
    """Seconds a disconnected session's staged files are kept ($THINKSCOPE_UPLOAD_GRACE_S)."""
    return max(0.0, settings.UPLOAD_GRACE_S.number(minimum=-float("inf"), lenient=True))


@dataclass(frozen=True)
class Staged:
    """One uploaded file on disk. ``name`` is the name it was uploaded under (untrusted)."""

    id: str
    name: str
    path: Path
    size: int
    sha256: str

    @property
    def stem(self) -> str:
        return Path(self.name).stem


def process_dir(pid: int | None = None) -> Path:
    return ROOT / str(os.getpid() if pid is None else pid)


def session_dir(session_id: str) -> Path:
    d = process_dir() / session_id
    d.mkdir(parents=True, exist_ok=True)
    Sweeper.start()
    return d


def stage(upload, session_id: str) -> Staged:
    """Copy an uploaded file (any binary file object with ``name``) into the session's folder,
    computing its sha256 on the way."""
    sid = uuid.uuid4().hex[:10]
    name = str(getattr(upload, "name", "") or "upload")
    # the name on disk keeps the suffix (readers look at it) but nothing else of the user's name
    path = session_dir(session_id) / f"{sid}{''.join(Path(name).suffixes)[-32:]}"
    h = hashlib.sha256()
    upload.seek(0)
    with open(path, "wb") as out:
        while chunk := upload.read(CHUNK):
            h.update(chunk)
            out.write(chunk)
    return Staged(sid, name, path, path.stat().st_size, h.hexdigest())


def release(upload) -> None:
    """Drop Streamlit's in-memory copy of an upload that is staged on disk."""
    from streamlit.runtime.scriptrunner import get_script_run_ctx

    ctx = get_script_run_ctx()
    file_id = getattr(upload, "file_id", None)
    if ctx is not None and file_id:
        ctx.uploaded_file_mgr.remove_file(ctx.session_id, file_id)


def trim_memory() -> None:
    """Give the memory freed after reading a large file back to the system: pyarrow's pool and
    glibc's heap otherwise keep it for reuse."""
    import pyarrow as pa

    pa.default_memory_pool().release_unused()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def discard(staged: Staged) -> None:
    staged.path.unlink(missing_ok=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def sweep(is_active: Callable[[str], bool], inactive_since: dict[str, float], now: float,
          grace: float) -> list[Path]:
    """Remove the staging folders of sessions inactive for longer than ``grace`` seconds
    (``inactive_since`` remembers when each was first seen inactive) and of dead server
    processes; returns the folders removed."""
    removed = []
    mine = process_dir()
    if mine.is_dir():
        for d in mine.iterdir():
            if is_active(d.name):
                inactive_since.pop(d.name, None)
            elif now - inactive_since.setdefault(d.name, now) >= grace:
                shutil.rmtree(d, ignore_errors=True)
                inactive_since.pop(d.name, None)
                removed.append(d)
    if ROOT.is_dir():
        for d in ROOT.iterdir():
            if d.name.isdigit() and d != mine and not _pid_alive(int(d.name)):
                shutil.rmtree(d, ignore_errors=True)
                removed.append(d)
    return removed


class Sweeper:
    """One daemon thread per server process: ``sweep`` against the runtime's sessions, then
    ``trim_memory``."""

    _thread: threading.Thread | None = None
    _lock = threading.Lock()

    @classmethod
    def start(cls) -> None:
        with cls._lock:
            if cls._thread is None:
                # pyarrow's default pool (mimalloc) keeps the pages of a large read for reuse; the
                # system allocator gives them back (trim_memory). Server RSS after browser sessions
                # that each previewed a 50 MB upload: about +125 MB with mimalloc, +70 MB with the
                # system pool (then +2 MB a session either way).
                import pyarrow as pa

                pa.set_memory_pool(pa.system_memory_pool())
            if cls._thread is None or not cls._thread.is_alive():
                cls._thread = threading.Thread(target=cls._run, name="thinkscope-upload-sweeper", daemon=True)
                cls._thread.start()

    @staticmethod
    def _run() -> None:
        from streamlit import runtime

        inactive: dict[str, float] = {}
        while True:
            grace = grace_s()
            if runtime.exists():
                rt = runtime.get_instance()
                sweep(rt.is_active_session, inactive, time.monotonic(), grace)
            trim_memory()
            time.sleep(min(30.0, max(1.0, grace / 4)))
