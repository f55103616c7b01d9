"""Recording runs through an inference server: many requests in flight, traces stored as they
arrive, failures recorded, interrupted runs resumed.

Each (prompt, sample) pair is one trace. Requests go out from a thread pool (at most
``concurrency`` in flight); the main thread reads each answer with the trace-file reader of
its endpoint and writes the traces of every answer that arrived since the last write in one
transaction, while the next answers are on their way. A request that fails for good (after
the retries of ``HttpClient``) is recorded in the run's settings (``failed``: which pair,
which request, why) and the run goes on; a server that stops answering altogether, Ctrl-C or
SIGTERM stop the run: every stored trace stays, the run is marked 'interrupted', and
``resume_server_run`` sends only the pairs the run does not hold.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from ..formats.base import Context, Problems, guarded
from ..metrics import source_logprob_conditions
from ..record import GenerationSettings, Prompt, sigterm_as_interrupt
from ..trace import Trace
from .http import ServerError
from .servers import MULTI_CHOICE, Server, generation_body, lower_top_k, reader, response_record

SOURCE = "server"
#: failed requests listed in full in a run's settings (the rest are counted)
MAX_FAILED_LISTED = 200

ProgressFn = Callable[[int, int], None]


class RunStopped(ServerError):
    """A fault that every further request would meet too: the run stops (interrupted)."""


class ServerGone(RunStopped):
    """The server stopped answering (no connection after the retries)."""


@dataclass
class Job:
    prompt_idx: int
    samples: list[int]      # sample indices this request covers (n = len(samples))
    number: int = 0         # the request's number in the run, for messages

    @property
    def label(self) -> str:
        s = self.samples
        which = f"sample {s[0]}" if len(s) == 1 else f"samples {s[0]}-{s[-1]}"
        return f"request {self.number} (prompt {self.prompt_idx}, {which})"


@dataclass
class Outcome:
    job: Job
    response: dict | None
    request: dict
    error: str | None = None    # why the request failed for good


@dataclass
class ServerRunResult:
    run_id: int
    n_traces: int           # stored by this call
    n_tokens: int
    status: str
    seconds: float
    failed: list[dict] = field(default_factory=list)
    write_seconds: float = 0.0   # time spent storing (the writer's share of ``seconds``)
    notes: list[str] = field(default_factory=list)
    total: int = 0          # pairs in the run
    stored: int = 0         # pairs the run holds now


def prompts_setting(prompts: Sequence[Prompt]) -> list[dict]:
    return [{"text": p.text, "metadata": p.metadata} for p in prompts]


def prompts_from_setting(rows: list) -> list[Prompt]:
    return [Prompt(r["text"], dict(r.get("metadata") or {})) for r in rows]


class _Writer:
    """Stores traces in a thread of its own, so that reading answers and keeping requests in
    flight never wait for the store: each write takes every batch queued since the last one
    (one transaction), and ``close`` waits until all are stored."""

    def __init__(self, store, run_id: int, vocab: dict[int, str], save: Path | None):
        self.store, self.run_id, self.vocab, self.save = store, run_id, vocab, save
        self.queue: queue.Queue = queue.Queue()
        self.error: BaseException | None = None
        self.seconds = 0.0
        self.n_traces = self.n_tokens = 0
        self.thread = threading.Thread(target=self._loop, name="thinkscope-store-writer", daemon=True)
        self.thread.start()

    def put(self, traces: list[Trace], records: list[dict]) -> None:
        self.check()
        self.queue.put((traces, records))

    def check(self) -> None:
        if self.error is not None:
            raise self.error

    def _loop(self) -> None:
        stop = False
        while not stop:
            items = [self.queue.get()]
            while True:
                try:
                    items.append(self.queue.get_nowait())
                except queue.Empty:
                    break
            stop = None in items
            items = [x for x in items if x is not None]
            if not items or self.error is not None:
                continue
            traces = [t for ts, _ in items for t in ts]
            t0 = time.perf_counter()
            try:
                self.store.add_traces(self.run_id, traces, self.vocab)
                if self.save is not None:
                    with open(self.save, "a", encoding="utf-8") as f:
                        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for _, rs in items for r in rs)
            except BaseException as e:  # raised in the main thread by the next put, or by close
                self.error = e
                continue
            finally:
                self.seconds += time.perf_counter() - t0
            self.n_traces += len(traces)
            self.n_tokens += sum(t.n_tokens for t in traces)

    def close(self) -> None:
        """Store everything queued, then stop; raise what a write raised."""
        self.queue.put(None)
        self.thread.join()
        self.check()


class _Recorder:
    """One call's state: the server, the run, what is done and what failed."""

    def __init__(self, store, server: Server, prompts: Sequence[Prompt], settings: GenerationSettings,
                 run_id: int, concurrency: int, progress: ProgressFn | None,
                 on_traces: Callable[[list[Trace]], None] | None, save: Path | None,
                 failed: list[dict], total: int, done: int):
        self.store, self.server, self.prompts, self.settings = store, server, list(prompts), settings
        self.run_id, self.concurrency = run_id, max(1, int(concurrency))
        self.progress, self.on_traces, self.save = progress, on_traces, save
        self.failed = failed
        self.total, self.done = total, done
        self.vocab: dict[int, str] = {}
        self.numbers = iter(range(1, 1 << 62))
        self.lock = threading.Lock()
        self.writer = _Writer(store, run_id, self.vocab, save)

    # ---------------------------------------------------------------- one request (worker thread)
    def send(self, job: Job) -> "Outcome":
        """Send one request (lowering top-k to a limit the server states); a failure for good is
        returned; a server that stopped answering, or refuses the key, raises RunStopped."""
        s = self.settings
        seed = s.seed + job.prompt_idx * max(1, s.samples) + job.samples[0]
        while True:
            body = generation_body(self.server, self.prompts[job.prompt_idx].text, s, len(job.samples), seed)
            try:
                return Outcome(job, self.server.client.post(self.server.path, body, label=job.label), body)
            except ServerError as e:
                with self.lock:
                    asked = body.get("top_logprobs", body.get("logprobs"))
                    again = asked != self.server.top_k or lower_top_k(self.server, e)
                if again:
                    continue
                if e.status is None and not e.timeout and not self.server.client.closed.is_set():
                    raise ServerGone(f"the server stopped answering ({e})", None, "", job.label) from None
                if e.status in (401, 403):  # a key that is wrong for one request is wrong for all
                    raise RunStopped(f"the server refuses the requests ({e})", e.status, e.body, job.label) from None
                return Outcome(job, None, body, str(e))

    # ---------------------------------------------------------------- answers (main thread)
    def meta(self, job: Job, sample: int) -> dict:
        return {**self.prompts[job.prompt_idx].metadata, "prompt_idx": job.prompt_idx, "sample_idx": sample}

    def records(self, job: Job, response: dict, request: dict) -> tuple[list[dict], list[int]]:
        """One record per sample the response holds, and the samples it lacks (a server that
        ignored ``n``)."""
        if len(job.samples) == 1:
            return [response_record(response, request, self.meta(job, job.samples[0]))], []
        chs = response.get("choices") if isinstance(response, dict) else None
        got = len(chs) if isinstance(chs, list) else 0
        have = job.samples[:got]
        return ([response_record(response, request, self.meta(job, s), choice=i) for i, s in enumerate(have)],
                job.samples[got:] if got else [])

    def parse(self, job: Job, rec: dict) -> Trace:
        """The trace of one record, read by the endpoint's file reader; a record it cannot read
        raises ServerError naming the request and every problem."""
        pr = Problems(job.label)
        ctx = Context(problems=pr, marker=self.settings.marker, vocab=self.vocab, local=None)
        out = guarded(pr, reader(self.server.endpoint).parse, rec, ctx)
        if not pr.total and not out:
            pr.add("the answer holds no choice")
        if pr.total:
            more = f" (+{pr.total - len(pr.items)} more)" if pr.total > len(pr.items) else ""
            raise ServerError("; ".join(pr.items[:3]) + more, None, "", job.label)
        return out[0]

    def fail(self, job: Job, reason: str) -> None:
        for s in job.samples:
            self.failed.append({"prompt_idx": job.prompt_idx, "sample_idx": s, "request": job.number,
                                "reason": reason[:500]})

    def store_traces(self, traces: list[Trace], records: list[dict]) -> None:
        if traces:
            if self.on_traces:
                self.on_traces(traces)
            self.writer.put(traces, records)

    def report(self) -> None:
        if self.progress:
            self.progress(self.done, self.total)

    # ---------------------------------------------------------------- the loop
    def run(self, pairs: list[tuple[int, int]]) -> None:
        jobs = self.jobs(pairs)
        self.report()
        if not jobs:
            return
        # the first request goes alone: it finds the top-k limit and whether n is honoured
        jobs[:0] = self.take([self.send(jobs.pop(0))])
        pool = cf.ThreadPoolExecutor(self.concurrency, thread_name_prefix="thinkscope-server")
        inflight: set[cf.Future] = set()
        try:
            while jobs or inflight:
                while jobs and len(inflight) < self.concurrency:
                    inflight.add(pool.submit(self.send, jobs.pop(0)))
                finished, inflight = cf.wait(inflight, return_when=cf.FIRST_COMPLETED)
                # a RunStopped stops the run here; the answers that came with it are stored first
                outcomes, gone = [], None
                for f in finished:
                    try:
                        outcomes.append(f.result())
                    except RunStopped as e:
                        gone = e
                while jobs and len(inflight) < self.concurrency and gone is None:  # before reading
                    inflight.add(pool.submit(self.send, jobs.pop(0)))
                jobs.extend(self.take(outcomes))
                if gone is not None:
                    raise gone
        except BaseException:  # stopped: the requests still waiting for answers end now
            self.server.client.abort()
            raise
        finally:
            for f in inflight:
                f.cancel()
            pool.shutdown(wait=True, cancel_futures=True)

    def take(self, outcomes: list["Outcome"]) -> list[Job]:
        """Read, store and count the answers (and the failures); return new jobs for samples a
        server left out."""
        traces, records, extra = [], [], []
        for o in outcomes:
            job, response, request = o.job, o.response, o.request
            if o.error is not None:
                self.fail(job, o.error)
                self.done += len(job.samples)
                continue
            if not isinstance(response, dict):
                self.fail(job, f"{job.label}: the answer is {type(response).__name__}, expected a JSON object")
                self.done += len(job.samples)
                continue
            recs, missing = self.records(job, response, request)
            if not recs:
                self.fail(job, f"{job.label}: the answer holds no choice")
                self.done += len(job.samples)
                continue
            if len(job.samples) > 1 and self.server.n_ok is None:
                self.server.n_ok = not missing
                if missing:
                    self.server.notes.append(f"the server returns one choice per request (asked n = "
                                             f"{len(job.samples)}): one request per sample")
            for s in missing:
                extra.append(Job(job.prompt_idx, [s], next(self.numbers)))
            ok = []
            try:
                for rec in recs:
                    ok.append(self.parse(job, rec))
            except ServerError as e:
                self.fail(Job(job.prompt_idx, job.samples[: len(recs)], job.number), str(e))
                self.done += len(recs)
                continue
            traces.extend(ok)
            records.extend(recs)
            self.done += len(recs)
        self.store_traces(traces, records)
        self.report()
        return extra

    def jobs(self, pairs: list[tuple[int, int]]) -> list[Job]:
        """Requests for the pairs: all samples of a prompt in one request where ``n`` is (or may
        be) honoured, else one request per sample."""
        by_prompt: dict[int, list[int]] = {}
        for p, s in pairs:
            by_prompt.setdefault(p, []).append(s)
        multi = self.server.n_ok if self.server.n_ok is not None else MULTI_CHOICE.get(self.server.kind, None)
        out = []
        for p, ss in by_prompt.items():
            ss.sort()
            if multi is False or len(ss) == 1:
                out.extend(Job(p, [s], next(self.numbers)) for s in ss)
            else:
                out.append(Job(p, ss, next(self.numbers)))
        return out




# --------------------------------------------------------------------------- runs


def run_settings(server: Server, settings: GenerationSettings, prompts: Sequence[Prompt], concurrency: int,
                 api_key_env: str | None) -> dict:
    """What a server run stores in its settings: enough to resume it (never the API key itself,
    only the name of the variable that holds it)."""
    return {**settings.to_dict(), **source_logprob_conditions(server.kind), "backend": "server", "server": server.describe(),
            "api_key_env": api_key_env, "concurrency": int(concurrency), "n_prompts": len(prompts),
            "prompts": prompts_setting(prompts)}


def record_server_run(store, server: Server, prompts: Sequence[Prompt], settings: GenerationSettings,
                      name: str, *, concurrency: int = 4, progress: ProgressFn | None = None,
                      on_traces: Callable[[list[Trace]], None] | None = None, save: str | Path | None = None,
                      api_key_env: str | None = None) -> ServerRunResult:
    """Generate every prompt x sample through ``server`` as a new run (see the module's words)."""
    with sigterm_as_interrupt():
        run_id = store.create_run(name, SOURCE, server.model,
                                  run_settings(server, settings, prompts, concurrency, api_key_env))
        pairs = [(p, s) for p in range(len(prompts)) for s in range(max(1, settings.samples))]
        return _record(store, server, prompts, settings, run_id, pairs, concurrency, progress, on_traces,
                       save, failed=[], total=len(pairs), done=0)


def resume_server_run(store, run_id: int, server: Server, *, concurrency: int | None = None,
                      progress: ProgressFn | None = None, on_traces: Callable[[list[Trace]], None] | None = None,
                      save: str | Path | None = None) -> ServerRunResult:
    """Send the (prompt, sample) pairs run ``run_id`` does not hold yet, into the same run."""
    settings, prompts, stored = resume_plan(store, run_id)
    with sigterm_as_interrupt():
        done = store.run_pairs(run_id)
        pairs = [(p, s) for p in range(len(prompts)) for s in range(max(1, settings.samples)) if (p, s) not in done]
        store.reopen_run(run_id)
        conc = concurrency or int(stored.get("concurrency") or 4)
        return _record(store, server, prompts, settings, run_id, pairs, conc, progress, on_traces, save,
                       failed=[], total=len(prompts) * max(1, settings.samples),
                       done=len(prompts) * max(1, settings.samples) - len(pairs))


def resume_plan(store, run_id: int) -> tuple[GenerationSettings, list[Prompt], dict]:
    """(generation settings, prompts, stored settings) of a server run, to resume it."""
    from dataclasses import fields

    stored = store.run_settings(run_id)
    if stored is None:
        raise ServerError(f"{store.path}: no run {run_id} to resume")
    if stored.get("backend") != "server" or not isinstance(stored.get("prompts"), list):
        raise ServerError(f"run {run_id} was not recorded through a server (generate --server); only those "
                          "can be resumed")
    names = {f.name for f in fields(GenerationSettings)}
    settings = GenerationSettings(**{k: v for k, v in stored.items() if k in names})
    return settings, prompts_from_setting(stored["prompts"]), stored


def _record(store, server, prompts, settings, run_id, pairs, concurrency, progress, on_traces, save,
            failed, total, done) -> ServerRunResult:
    save_path = Path(save) if save else None
    server.client.reopen()
    rec = _Recorder(store, server, prompts, settings, run_id, concurrency, progress, on_traces, save_path,
                    failed, total, done)
    t0 = time.perf_counter()
    status = "complete"
    gone: RunStopped | None = None
    try:
        try:
            rec.run(pairs)
        finally:  # every trace read so far is stored, whatever stopped the run
            rec.writer.close()
    except RunStopped as e:
        status, gone = "interrupted", e
    except BaseException:
        status = "interrupted"
        raise
    finally:
        patch = {"server": server.describe(), "failed": rec.failed[:MAX_FAILED_LISTED],
                 "n_failed": len(rec.failed)}
        if server.notes:
            patch["server_notes"] = list(dict.fromkeys(server.notes))
        # JSON merge-patch: a null removes what an earlier, interrupted call said
        patch["stopped"] = str(gone) if gone is not None else None
        store.merge_settings(run_id, patch)
        store.finish_run(run_id, status)
    if gone is not None:
        raise type(gone)(f"run {run_id} interrupted: {gone}; the finished traces are kept; "
                         f"`thinkscope generate --resume {run_id}` sends the rest", gone.status) from None
    w = rec.writer
    return ServerRunResult(run_id, w.n_traces, w.n_tokens, status, time.perf_counter() - t0, rec.failed,
                           w.seconds, list(dict.fromkeys(server.notes)), total, rec.done - len(rec.failed))
