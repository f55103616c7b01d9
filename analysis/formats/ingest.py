"""Importing trace files as runs: whole file or nothing, duplicates refused by content hash.

Atomicity by staging and swapping: a file's rows are built batch by batch (the same Arrow
tables the store writes) into Arrow files in a private staging folder next to the store, then
inserted into the store in one transaction (runs, traces, stats, tokens and vocab together).
The store is locked only for that transaction, so the dashboard keeps reading during a long
import, and a process killed at any moment leaves the store exactly as it was (an uncommitted
DuckDB transaction is discarded on reopen); a staging folder left behind by a killed process
is removed by the next import. Arrow files cost almost nothing to write and to read back, so
the rows are compressed once, by the store, and not twice (a staging store, then the store).
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
import shutil
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pyarrow as pa

from .. import settings
from ..store import DuplicateContentError, NextIds, Store, StoreError, free_bytes, mb
from ..errors import DuplicateFileError, TraceError
from ..trace import Trace
from . import batch, fastchat, openai_chat, plaintext, tables, thinkscope
from .base import Context, Problems, flat_fields, text_pieces
from .detect import FORMATS, JSON_READERS, Detection, describe_unknown, detect
from .jsonstream import first_char, is_json_lines, iter_values

#: files larger than this are refused (bytes); THINKSCOPE_MAX_UPLOAD_MB overrides it
MAX_BYTES = int(settings.MAX_UPLOAD_MB.number(lenient=True) * (1 << 20))
#: traces are staged in batches of about this many tokens
BATCH_TOKENS = 50_000
BATCH_TRACES = 1000
#: DuckDB's memory cap while a staged file is copied into the store
STAGING_MEMORY = "128MB"
STAGING_PREFIX = ".staging-"
#: free space an import needs, for the check before it starts: staged Arrow files and the
#: store's growth, per byte of input (measured about 0.25 + 0.27 for OpenAI chat JSON Lines with
#: top-20, doubled for margin; Parquet is compressed, so it expands more), plus a fixed reserve
#: for DuckDB's blocks, the write-ahead log and the checkpoint
SPACE_PER_INPUT_BYTE = {"parquet": 3.0}
SPACE_PER_INPUT_BYTE_DEFAULT = 1.0
#: the store grows by about the staged bytes when they are inserted (compressed once, but in
#: new blocks while the old ones are still in use)
SPACE_PER_STAGED_BYTE = 1.2
SPACE_RESERVE = 4 << 20

ProgressFn = Callable[[int, int], None]


@dataclass
class IngestResult:
    """What an import did. ``warnings`` are reported but did not stop it (failed batch requests)."""

    run_id: int
    name: str
    format: str
    n_traces: int
    n_tokens: int
    content_hash: str
    seconds: float
    warnings: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- reading


def file_hash(path: Path, chunk: int = 1 << 20, stop: threading.Event | None = None) -> str | None:
    """sha256 of a file's bytes, read in chunks; None when ``stop`` is set before the end."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            if stop is not None and stop.is_set():
                return None
            b = f.read(chunk)
            if not b:
                return h.hexdigest()
            h.update(b)


class _Duplicates:
    """The duplicate check by content hash. The hash is computed in a thread while the file is
    read (hashlib and file reads release the GIL), so it costs no time of its own; a file that
    was imported before is refused as soon as its hash is known (``check()`` while reading),
    at the latest before anything is copied into the store."""

    def __init__(self, store: Store, path: Path, name: str, allow: bool):
        self.store, self.name, self.allow = store, name, allow
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="thinkscope-hash")
        self._digest = self._pool.submit(file_hash, path, stop=self._stop)
        self._checked = False

    def check(self, wait: bool = False) -> str | None:
        """Raise DuplicateFileError for a file already in the store; return the hash once it
        is known (``wait``: block until it is)."""
        if not wait and not self._digest.done():
            return None
        digest = self._digest.result()
        if not self._checked:
            self._checked = True
            dup = self.store.find_run_by_hash(digest) if not self.allow else None
            if dup is not None and not dup.empty:
                raise DuplicateFileError.of(self.name, digest, dup.iloc[0])
        return digest

    def close(self) -> None:
        self._stop.set()
        self._pool.shutdown(wait=True)


def resolve_format(path: Path, name: str, format: str | Detection | None) -> Detection:
    """The user's --format if given (checked against the known names), else the detected one; a
    Detection already made is taken as it is (a file is detected once)."""
    if isinstance(format, Detection):
        d = format
    elif format:
        if format not in FORMATS:
            raise TraceError(f"unknown format {format!r}; known formats: {', '.join(FORMATS)}")
        container = "parquet" if tables.is_parquet(path) else ("json" if _looks_json(path) else "csv")
        return Detection(format, 1.0, container=container)
    else:
        d = detect(path, name)
    if d.format == batch.INPUT_NAME:
        raise TraceError(f"{name}: this is a Batch API input file (the requests, without outputs); import the "
                         f"output file, together with this one to join the prompts on custom_id")
    if d.format is None:
        raise TraceError(describe_unknown(name, d))
    return d


def _looks_json(path: Path) -> bool:
    return first_char(path) in ("{", "[")


def read_traces(path: str | Path, ctx: Context, format: str | Detection | None = None,
                progress: Callable[[int], None] | None = None, name: str | None = None,
                fast: bool = True) -> Iterator[Trace]:
    """Stream the traces of a file (problems go to ``ctx.problems``; nothing is raised for them).

    ``fast`` lets OpenAI chat JSON Lines go through the columnar reader (``fastchat``), which
    hands over to the record-by-record reader wherever it cannot read exactly the same.
    """
    path = Path(path)
    name = name or path.name
    d = resolve_format(path, name, format)
    fmt = d.format
    pr = ctx.problems
    if fmt in (thinkscope.NAME, tables.TABLE) and d.container != "json":
        reader = (thinkscope.export_traces(path, ctx, progress, d.container) if fmt == thinkscope.NAME
                  else tables.table_traces(path, ctx, progress))
        try:
            yield from reader
        except tables.TABLE_ERRORS as e:  # pandas/pyarrow on a file that is not the table it claims
            pr.add(f"not a readable {d.container.upper()} table: {_first_line(e)}")
        return
    if fmt == thinkscope.NAME:
        yield from thinkscope.export_traces(path, ctx, progress, d.container)
        return
    if fmt == plaintext.NAME and d.container == "csv":
        yield from plaintext.traces(plaintext.csv_rows(path, pr), ctx)
        return
    reader = next((m for m in JSON_READERS if m.NAME == fmt), None)
    if reader is None or d.container != "json":
        raise TraceError(f"{name}: format {fmt} is not read from a {d.container} file")
    done = 0
    if fast and fmt == openai_chat.NAME and is_json_lines(path):
        ctx.fast_used = True
        try:
            for done, traces in fastchat.batches(path, ctx, progress):
                yield from traces
            return
        except fastchat.Fallback:
            pass  # the slow reader goes on from the first record not read yet
    values = iter_values(path, pr, progress)
    if done:
        values = itertools.islice(values, done, None)
    yield from reader.traces(values, ctx)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def available_fields(path: str | Path, format: str | Detection | None = None, n: int = 20) -> list[str]:
    """Field names in a file that a user may map onto metadata (top-level, metadata.*, columns)."""
    path = Path(path)
    d = resolve_format(path, path.name, format)
    if d.container in ("parquet", "csv"):
        return tables.columns(path)
    names: dict[str, None] = {}
    for _, obj in iter_values(path, Problems(path.name), limit=n):
        if isinstance(obj, dict):
            body = obj.get("response", {}).get("body") if isinstance(obj.get("response"), dict) else None
            for src in (obj, body if isinstance(body, dict) else {}):
                names.update(dict.fromkeys(k for k in flat_fields(src) if k not in ("object", "created")))
    return list(names)


@dataclass
class Preview:
    """The first traces of a file and its counts, without storing anything."""

    detection: Detection
    traces: list[Trace]
    n_traces: int | None
    n_tokens: int | None
    problems: list[str]
    n_problems: int
    warnings: list[str]
    fields: list[str]
    vocab: dict[int, str] = field(default_factory=dict)   # text of the alternatives' ids
    logprobs: dict = field(default_factory=dict)          # temperature/truncation of the logprobs read


def preview(path: str | Path, format: str | None = None, n: int = 3, field_map: dict | None = None,
            lm: Any = None, count: bool = True, name: str | None = None, marker: str = settings.THINK_MARKER) -> Preview:
    """Read a file without storing it: the first ``n`` traces, and with ``count`` the totals and
    every problem (the whole file is read, streamed). Plain-text traces are only scored (and
    counted in tokens) when a model ``lm`` is given."""
    path = Path(path)
    name = name or path.name
    d = resolve_format(path, name, format)
    pr = Problems(name)
    ctx = Context(problems=pr, field_map=field_map, marker=marker, lm=lm)
    first: list[Trace] = []
    n_traces = n_tokens = 0
    if d.format == plaintext.NAME and lm is None:
        rows = plaintext.csv_rows(path, pr) if d.container == "csv" else iter_values(path, pr)
        for _, obj in rows:
            n_traces += 1
            if len(first) < n and isinstance(obj, dict):
                prompt, completion, _ = plaintext.texts(obj, field_map)
                if completion is not None:
                    pieces = text_pieces(completion)
                    first.append(Trace(prompt=prompt, tokens=pieces, logprobs=np.full(len(pieces), np.nan),
                                       marker=marker))
            if not count and n_traces >= n:
                break
        return Preview(d, first, n_traces if count else None, None, pr.items, pr.total, pr.warnings,
                       available_fields(path, d))
    for t in read_traces(path, ctx, d, name=name):
        if len(first) < n:
            first.append(t)
        n_traces += 1
        n_tokens += t.n_tokens
        if not count and len(first) >= n:
            break
    return Preview(d, first, n_traces if count else None, n_tokens if count else None, pr.items, pr.total,
                   pr.warnings, available_fields(path, d), {**ctx.vocab, **ctx.local.text()},
                   ctx.logprob_settings(d.format))


# --------------------------------------------------------------------------- importing


def _sweep_stale_staging(store: Store) -> None:
    """Remove staging folders of processes that no longer run (killed mid-import)."""
    pattern = f".{store.path.name}{STAGING_PREFIX}*"
    for p in store.path.parent.glob(pattern):
        try:
            pid = int(p.name[len(f".{store.path.name}{STAGING_PREFIX}"):].split("-")[0])
        except ValueError:
            continue
        if pid != os.getpid() and not _alive(pid):
            _remove(p)


def _remove(p: Path) -> None:
    """Remove a staging folder or file if it is there (best effort: a sweep retries later)."""
    if p.is_dir():
        shutil.rmtree(p, ignore_errors=True)
    elif p.exists():
        with contextlib.suppress(OSError):
            p.unlink()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def ingest_file(store: Store, path: str | Path, format: str | Detection | None = None, run_name: str | None = None,
                progress: ProgressFn | None = None, lm: Any = None, *, model: str | None = None,
                field_map: dict[str, str] | None = None, marker: str = settings.THINK_MARKER,
                max_bytes: int | None = None, allow_duplicate: bool = False,
                requests: dict[str, dict] | None = None, name: str | None = None,
                on_batch: Callable[[int], None] | None = None) -> IngestResult:
    """Import one trace file as a new run, atomically; return what was imported.

    ``progress(done, total)`` is called with bytes read. ``lm`` scores plain-text traces (the
    embedded default model is loaded when none is given). ``name`` is the file name used in
    messages (an upload's original name). ``model`` names the model that produced the traces.
    Raises TraceError (IngestError with every problem, DuplicateFileError) and imports nothing
    when the file has any problem.
    """
    t0 = time.perf_counter()
    path = Path(path)
    name = name or path.name
    if not path.is_file():
        raise TraceError(f"{name}: no such file")
    size = path.stat().st_size
    limit = MAX_BYTES if max_bytes is None else max_bytes
    if size > limit:
        raise TraceError(f"{name}: the file is {size / (1 << 20):,.1f} MB, over the limit of "
                         f"{limit / (1 << 20):,.0f} MB (set THINKSCOPE_MAX_UPLOAD_MB to raise it)")
    d = resolve_format(path, name, format)
    dups = _Duplicates(store, path, name, allow_duplicate)
    try:
        return _ingest(store, path, name, d, dups, size, run_name, progress, lm, model, field_map, marker,
                       requests, on_batch, t0)
    finally:
        dups.close()


def _ingest(store: Store, path: Path, name: str, d: Detection, dups: _Duplicates, size: int,
            run_name: str | None, progress: ProgressFn | None, lm: Any, model: str | None,
            field_map: dict[str, str] | None, marker: str, requests: dict[str, dict] | None,
            on_batch: Callable[[int], None] | None, t0: float) -> IngestResult:
    if d.format == plaintext.NAME and lm is None:
        dups.check(wait=True)  # before loading a model to score the file with
        from ..models import load_model
        lm = load_model(model)
    pr = Problems(name)
    ctx = Context(problems=pr, field_map=field_map, marker=marker, lm=lm, requests=requests)
    info = thinkscope.export_info(path, d.container) if d.format == thinkscope.NAME else None

    try:
        store.path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise store.error(e, "cannot create the store's folder") from e
    _sweep_stale_staging(store)
    factor = SPACE_PER_INPUT_BYTE.get(d.container, SPACE_PER_INPUT_BYTE_DEFAULT)
    try:
        check_free_space(store, size * factor, f"importing {name} ({mb(size)})")
    except StoreError:
        dups.check(wait=True)  # a file imported before says so, whatever the space
        raise
    staging = store.path.parent / f".{store.path.name}{STAGING_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        n_traces, n_tokens, first_model = _stage(store, staging, path, name, d, ctx, size, progress, on_batch,
                                                 dups.check)
        digest = dups.check(wait=True)
        if pr.total and ctx.fast_used:
            _diagnose(path, name, d, ctx)
        pr.raise_if_any()
        if n_traces == 0:
            raise TraceError(f"{name}: no traces in the file; nothing was imported")
        if info is not None:
            run = dict(name=run_name or info.get("name") or path.stem, source=info.get("source") or "import",
                       model=model or info.get("model"), settings=info.get("settings") or {})
        else:
            settings = {"file": name, "format": d.format, "bytes": size, "marker": marker, **ctx.logprob_settings(d.format)}
            if field_map:
                settings["field_map"] = field_map
            if pr.warnings:
                settings["warnings"] = pr.warnings
            if d.format == plaintext.NAME:
                settings["scored_by"] = lm.name
            run = dict(name=run_name or Path(name).stem,
                       source=f"upload:{d.format}",
                       model=model or first_model or (lm.name if d.format == plaintext.NAME else None),
                       settings=settings)
        staged = sum(f.stat().st_size for f in staging.iterdir())
        check_free_space(store, staged * SPACE_PER_STAGED_BYTE, f"storing {name} ({mb(staged)} staged)")
        if dups.allow:  # content hashes are unique: an allowed duplicate keeps its hash in settings
            run["settings"] = {**run["settings"], "content_hash": digest}
        saved = len(store.warnings)
        run_id = _swap(store, staging, run, None if dups.allow else digest, n_traces, n_tokens, name)
    finally:
        _remove(staging)
    return IngestResult(run_id, run["name"], d.format, n_traces, n_tokens, digest,
                        time.perf_counter() - t0, [*pr.warnings, *store.warnings[saved:]])


def check_free_space(store: Store, needed: float, what: str) -> None:
    """Refuse to start what would fill the store's disk (``needed`` bytes, plus SPACE_RESERVE)."""
    needed = int(needed) + SPACE_RESERVE
    free = free_bytes(store.path.parent)
    if free < needed:
        raise StoreError(f"{store.path}: {what} needs about {mb(needed)} free in {store.path.parent}, "
                         f"but only {mb(free)} are free; nothing was imported")


def _stage(store: Store, staging: Path, path: Path, name: str, d: Detection, ctx: Context, size: int,
           progress: ProgressFn | None, on_batch, check: Callable[[], Any]) -> tuple[int, int, str | None]:
    """Read the file and stage its rows in ``staging``; return (traces, tokens, first model name)."""
    pr = ctx.problems
    counts = {"traces": 0, "tokens": 0, "written": 0}
    first_model = None
    report = (lambda done: progress(min(done, size), size)) if progress else None

    def batches() -> Iterator[list[Trace]]:
        """The file's traces in batches of about BATCH_TOKENS tokens; none once it has a problem
        (it is still read to the end, or to the cap, to report every problem)."""
        nonlocal first_model
        pending: list[Trace] = []
        pending_tokens = 0
        for t in unique_ids(read_traces(path, ctx, d, report, name), pr):
            check()  # a file imported before is refused as soon as its hash is known
            if first_model is None and isinstance(t.metadata.get("model"), str):
                first_model = t.metadata["model"]
            counts["traces"] += 1
            counts["tokens"] += t.n_tokens
            if pr.total:  # a bad file: keep reading to report every problem, store nothing
                pending = []
                if pr.full:
                    break
                continue
            pending.append(t)
            pending_tokens += t.n_tokens
            if pending_tokens >= BATCH_TOKENS or len(pending) >= BATCH_TRACES:
                yield pending
                pending, pending_tokens = [], 0
        if pending and not pr.total:
            yield pending

    @contextlib.contextmanager
    def staging_writes():  # a full disk (or a folder we may not write) while staging
        try:
            yield
        except OSError as e:
            raise store.error(e, f"cannot stage {name} in {staging.parent}", "; nothing was imported") from e

    with staging_writes():
        staging.mkdir()
    # trace ids from 1 in a run of its own (1); _swap moves them past the store's
    ids = NextIds(1, 0, {}, np.empty(0, np.int64) if ctx.vocab is not None else None)
    for n, traces in enumerate(batches()):
        built = ids.build(traces, 1, ctx.vocab)  # ctx.vocab fills up while reading
        for i, (table, rows) in enumerate([*built.tables.items(), *_local_vocab(1, ctx).items()]):
            with staging_writes(), pa.OSFile(str(staging / f"{n:06d}-{i}-{table}.arrow"), "wb") as sink, \
                    pa.ipc.new_stream(sink, rows.schema) as w:
                w.write_table(rows)
        counts["written"] += len(built.trace_ids)
        if on_batch:
            on_batch(counts["written"])
    if progress:
        progress(size, size)
    return counts["traces"], counts["tokens"], first_model


def unique_ids(traces: Iterator[Trace], pr: Problems) -> Iterator[Trace]:
    """The traces, with a problem for each source id seen before in the same file."""
    seen: dict[str, int | None] = {}
    for t in traces:
        if t.source_id is not None:
            if t.source_id in seen:
                prev = seen[t.source_id]
                pr.add(f"duplicate trace id {t.source_id!r}" + (f" (also at line {prev})" if prev else ""))
            else:
                seen[t.source_id] = pr.line
        yield t


def _diagnose(path: Path, name: str, d: Detection, ctx: Context) -> None:
    """Read a bad file again record by record, for problems with exact line numbers (the fast
    path numbers records, which differ from lines when a file has blank lines)."""
    pr = Problems(name)
    slow = Context(problems=pr, field_map=ctx.field_map, marker=ctx.marker, lm=ctx.lm, requests=ctx.requests)
    for _ in unique_ids(read_traces(path, slow, d, None, name, fast=False), pr):
        if pr.full:
            break
    pr.raise_if_any()


def _local_vocab(run_id: int, ctx: Context) -> dict:
    """Vocab rows (as a table to write) for the run-local ids given out since the last batch
    (see ``LocalIds``)."""
    if not ctx.local.new:
        return {}
    import pyarrow as pa
    ids, texts = zip(*ctx.local.new)
    ctx.local.new.clear()
    return {"vocab": pa.table({"run_id": pa.array([run_id] * len(ids), pa.int32()),
                               "token_id": pa.array(ids, pa.int32()), "text": pa.array(texts, pa.string())})}


def _swap(store: Store, staging: Path, run: dict, digest: str | None, n_traces: int, n_tokens: int,
          name: str) -> int:
    """Insert the staged rows into the store in one transaction; return the new run's id.

    The duplicate check is repeated inside the transaction (and the store's unique index on
    content hashes backs it), so of two imports of one file that were both checked before
    either committed, exactly one commits and the other raises DuplicateFileError."""
    def staged() -> Iterator[tuple[str, pa.Table]]:
        for f in sorted(staging.glob("*.arrow")):
            with pa.memory_map(str(f)) as source:
                yield f.stem.split("-", 2)[2], pa.ipc.open_stream(source).read_all()

    try:
        return store.import_staged(staged(), run, digest, n_traces, n_tokens, memory_limit=STAGING_MEMORY)
    except DuplicateContentError as e:
        raise DuplicateFileError.of(name, digest, e.run) from None
    except StoreError as e:  # a fault before or at the commit: the transaction was rolled back
        raise StoreError(f"{e}; nothing was imported") from e


def ingest_files(store: Store, paths: list[str | Path], format: str | None = None, run_name: str | None = None,
                 progress: Callable[[str, int, int], None] | None = None, lm: Any = None,
                 names: list[str] | None = None, **kwargs) -> list[IngestResult]:
    """Import several files, each as its own run (each atomic). Batch API input files among
    them are not runs: their requests are joined to the output files on ``custom_id``.
    ``progress(file name, done, total)``. Stops at the first file with a problem."""
    paths = [Path(p) for p in paths]
    names = names or [p.name for p in paths]
    requests: dict[str, dict] = {}
    outputs = []
    for p, n in zip(paths, names):
        d = detect(p, n) if format is None else format
        if format is None and d.format == batch.INPUT_NAME:
            pr = Problems(n)
            requests.update(batch.read_requests(iter_values(p, pr), Context(problems=pr)))
            pr.raise_if_any()
        else:
            outputs.append((p, n, d))
    if not outputs:
        raise TraceError("only Batch API input files were given; add the output file(s) to import")
    results = []
    for p, n, d in outputs:
        cb = (lambda done, total, n=n: progress(n, done, total)) if progress else None
        rn = run_name if len(outputs) == 1 or run_name is None else f"{run_name} ({Path(n).stem})"
        results.append(ingest_file(store, p, d, rn, cb, lm, requests=requests or None, name=n, **kwargs))
    return results


# --------------------------------------------------------------------------- the project's own format, back


def read_export(path: str | Path) -> tuple[dict, list[Trace]]:
    """(run info, traces) from a file written by ``thinkscope.export_run`` (Parquet, CSV or JSON Lines)."""
    path = Path(path)
    d = detect(path)
    if d.format != thinkscope.NAME:
        raise TraceError(f"{path.name}: not a thinkscope export (detected {d.format or 'no known format'})")
    pr = Problems(path.name)
    traces = list(thinkscope.export_traces(path, Context(problems=pr), container=d.container))
    pr.raise_if_any()
    return thinkscope.export_info(path, d.container), traces


def import_export(store: Store, path: str | Path, name: str | None = None) -> int:
    """Store a thinkscope export as a new run, atomically; return the run id."""
    return ingest_file(store, path, format=thinkscope.NAME, run_name=name, allow_duplicate=True).run_id
