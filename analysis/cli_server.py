"""Command-line parts for inference servers: ``generate --server``/``--resume`` and ``score``.

``generate`` keeps its own prompts and sampling options; the options added here switch it to a
server (vLLM, SGLang, llama.cpp, Ollama, an OpenAI-compatible gateway) and pick local devices.
"""

from __future__ import annotations

import sys
from pathlib import Path

from .cli_common import echo, open_store, progress_bar as _progress_bar
from .errors import ThinkscopeError
from .settings import THINK_MARKER, TOP_K
from .server.servers import connect


def add_generate_arguments(g) -> None:
    """The server and device options of ``generate``."""
    s = g.add_argument_group("through an inference server")
    s.add_argument("--server", metavar="URL",
                   help="generate through an OpenAI-compatible server (vLLM, SGLang, llama.cpp, Ollama, a gateway) "
                        "at URL; --model then names the served model (default: the first it lists)")
    s.add_argument("--api-key-env", metavar="VAR",
                   help="environment variable holding the server's API key (sent as a bearer token, never stored)")
    s.add_argument("--concurrency", type=int, default=None, metavar="N",
                   help="requests in flight at once (default 4)")
    s.add_argument("--endpoint", choices=["chat", "completions"], default="chat",
                   help="/v1/chat/completions (the server applies the chat template) or /v1/completions (raw text)")
    s.add_argument("--server-kind", choices=["auto", "vllm", "sglang", "llama-cpp-python", "llama-server",
                                             "ollama", "openai"], default="auto",
                   help="what the server is (default: detected from /v1/models)")
    s.add_argument("--request-timeout", type=float, default=600.0, metavar="S",
                   help="seconds to wait for one answer before the attempt counts as failed")
    s.add_argument("--retries", type=int, default=4, metavar="N",
                   help="retries of a request answered 429/5xx or not at all (backoff with jitter, Retry-After honoured)")
    s.add_argument("--save-responses", metavar="FILE",
                   help="also append each stored answer to FILE (JSON Lines that `thinkscope ingest` reads back "
                        "as the same rows)")
    s.add_argument("--resume", type=int, metavar="RUN",
                   help="complete an interrupted server run: send only the (prompt, sample) pairs it lacks")
    d = g.add_argument_group("local model placement")
    d.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], default="auto",
                   help="where a local model runs (auto: a CUDA GPU, else Apple MPS, else the CPU)")
    d.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"], default="auto",
                   help="weights' dtype (auto: float32 on the CPU, bfloat16 on GPUs that support it, else "
                        "float16); entropies are computed in float32 whatever it is")


def generate_through_server(args, store, prompts, settings) -> int:
    """``generate --server URL`` or ``generate --resume RUN``."""
    from .record import Terminated
    from .server.generate import record_server_run, resume_server_run

    if args.concurrency is not None and args.concurrency < 1:
        raise ThinkscopeError("--concurrency must be at least 1")
    local_only = [f for f, on in (("--early-stop", args.early_stop), ("--logit-lens", args.logit_lens),
                                  ("--attention-entropy", args.attention_entropy)) if on]
    if local_only:
        raise ThinkscopeError(f"{', '.join(local_only)} need a local model (the model's logits and layers); "
                              "a server returns top-k logprobs only")
    on_traces = None
    if args.problems:
        from .grading import GradingRule, grade_traces
        rule = GradingRule(getattr(args, "grade_rule", None) or "auto", getattr(args, "grade_regex", None))
        on_traces = lambda ts: grade_traces(ts, rule)  # noqa: E731
    bar = _progress_bar("generating")
    try:
        if args.resume is not None:
            stored = store.run_settings(args.resume) or {}
            srv = stored.get("server") or {}
            url = args.server or srv.get("url")
            if not url:
                raise ThinkscopeError(f"run {args.resume} names no server; give --server URL")
            key_env = args.api_key_env or stored.get("api_key_env")
            server = connect(url, args.model or srv.get("model"), api_key_env=key_env,
                             endpoint=srv.get("endpoint") or args.endpoint, kind=srv.get("kind") or args.server_kind,
                             top_k=int(srv.get("top_k") or stored.get("top_k") or args.top_k),
                             timeout=args.request_timeout, retries=args.retries)
            server.n_ok = srv.get("n_per_request")
            print(f"resuming run {args.resume} through {server.client.url} ({server.kind}, {server.model}) ...",
                  file=sys.stderr)
            res = resume_server_run(store, args.resume, server, concurrency=args.concurrency, progress=bar,
                                    on_traces=on_traces, save=args.save_responses)
        else:
            server = connect(args.server, args.model, api_key_env=args.api_key_env, endpoint=args.endpoint,
                             kind=args.server_kind, top_k=args.top_k, timeout=args.request_timeout,
                             retries=args.retries)
            source = args.problems or args.prompts
            name = args.run_name or f"{Path(source).stem if source else 'demo problems'} · {server.model}"
            print(f"generating through {server.client.url} ({server.kind}, {server.model}, {server.endpoint}) ...",
                  file=sys.stderr)
            res = record_server_run(store, server, prompts, settings, name, concurrency=args.concurrency or 4,
                                    progress=bar, on_traces=on_traces, save=args.save_responses,
                                    api_key_env=args.api_key_env)
    except KeyboardInterrupt as e:
        print("\ninterrupted: the finished traces are kept (run marked 'interrupted'); "
              "`thinkscope generate --resume RUN` sends the rest", file=sys.stderr)
        return 143 if isinstance(e, Terminated) else 130
    share = res.write_seconds / res.seconds if res.seconds > 0 else 0.0
    echo(f"run {res.run_id}: {res.n_traces} traces, {res.n_tokens} tokens in {res.seconds:.1f} s -> {store.path} "
         f"({res.stored} of {res.total} (prompt, sample) pairs stored; storing took {100 * share:.1f} % of the time)")
    for note in res.notes:
        echo(f"note: {note}")
    if res.failed:
        echo(f"thinkscope: warning: {len(res.failed)} request(s) failed for good and are recorded in the run's "
             f"settings ('failed'); `thinkscope generate --resume {res.run_id}` retries them", file=sys.stderr)
        for f in res.failed[:10]:
            echo(f"  prompt {f['prompt_idx']}, sample {f['sample_idx']}: {f['reason']}", file=sys.stderr)
        return 1
    return 0


# --------------------------------------------------------------------------- score


def cmd_score(args) -> int:
    """Teacher-force plain-text traces (a file) or a stored run's completions through a server."""
    from .server.score import SOURCE, check_scoring, score_many

    if (args.file is None) == (args.run is None):
        raise ThinkscopeError("give a plain-text trace file or --run RUN (one of them)")
    store = open_store(args)
    server = connect(args.server, args.model, api_key_env=args.api_key_env, kind=args.server_kind,
                     top_k=args.top_k, timeout=args.request_timeout, retries=args.retries)
    check_scoring(server)
    items = _run_items(store, args.run) if args.run is not None else _file_items(args.file, args.marker)
    name = args.run_name or (f"run {args.run} rescored · {server.model}" if args.run is not None
                             else f"{Path(args.file).stem} · scored by {server.model}")
    settings = {"backend": "server", "server": server.describe(), "marker": args.marker,
                **({"rescored_run": args.run} if args.run is not None else {"file": Path(args.file).name})}
    run_id = store.create_run(name, SOURCE, server.model, settings)
    failed: list[dict] = []
    vocab: dict[int, str] = {}
    bar = _progress_bar("scoring")
    status, n, tokens, batch = "complete", 0, 0, []
    try:
        bar(0, len(items))
        for i, tr in score_many(server, items, marker=args.marker, concurrency=args.concurrency,
                                on_error=lambda i, why: failed.append({"item": i, "reason": why[:500]}),
                                vocab=vocab):
            batch.append(tr)
            if len(batch) >= 16:
                store.add_traces(run_id, batch, vocab)
                n, tokens, batch = n + len(batch), tokens + sum(t.n_tokens for t in batch), []
            bar(i + 1, len(items))
        if batch:
            store.add_traces(run_id, batch, vocab)
            n, tokens = n + len(batch), tokens + sum(t.n_tokens for t in batch)
        if failed and failed[-1]["item"] == len(items) - 1:  # the bar ends with the last item
            bar(len(items), len(items))
    except KeyboardInterrupt:
        status = "interrupted"
        return 130
    except BaseException:
        status = "interrupted"
        raise
    finally:
        store.merge_settings(run_id, {"failed": failed[:200], "n_failed": len(failed)})
        store.finish_run(run_id, status)
    echo(f"run {run_id}: {n} traces, {tokens} tokens scored by {server.model} ({server.kind}) -> {store.path}")
    if failed:
        echo(f"thinkscope: warning: {len(failed)} text(s) could not be scored (recorded in the run's settings)",
             file=sys.stderr)
        for f in failed[:10]:
            echo(f"  item {f['item']}: {f['reason']}", file=sys.stderr)
        return 1
    return 0


def _run_items(store, run_id: int) -> list[tuple[str, str, dict]]:
    import pandas as pd

    from .store import json_settings
    df = store.traces(run_id, with_completion=True)
    if df.empty:
        raise ThinkscopeError(f"run {run_id} has no traces to score")
    keep = ("problem_id", "question", "gold_answer", "level", "sample_idx")
    out = []
    for r in df.itertuples():
        meta = {k: getattr(r, k) for k in keep if not pd.isna(getattr(r, k, None))}
        meta.update({k: v for k, v in json_settings(r.metadata).items() if k in ("prompt_idx",)})
        meta["rescored_trace"] = int(r.trace_id)
        out.append((r.prompt or "", r.completion, meta))
    return out


def _file_items(path: str, marker: str) -> list[tuple[str, str, dict]]:
    from .formats import plaintext
    from .formats.base import Problems, flat_fields, map_metadata
    from .formats.jsonstream import iter_values

    p = Path(path)
    if not p.is_file():
        raise ThinkscopeError(f"{path}: no such file")
    pr = Problems(p.name)
    rows = plaintext.csv_rows(p, pr) if p.suffix.lower() == ".csv" else iter_values(p, pr)
    out = []
    for line, obj in rows:
        pr.line = line
        if not isinstance(obj, dict):
            pr.bad("the record", obj, "a JSON object with a prompt and a completion")
            continue
        prompt, completion, thinking = plaintext.texts(obj, None)
        if completion is None:
            pr.missing("completion", f"no text field among {', '.join(plaintext.COMPLETION_FIELDS)}")
            continue
        if thinking:
            completion = f"{thinking}\n{marker}\n\n{completion}" if marker else thinking + completion
        skip = {*plaintext.PROMPT_FIELDS, *plaintext.COMPLETION_FIELDS, *plaintext.THINKING_FIELDS, "messages"}
        out.append((prompt, completion, map_metadata(flat_fields(obj, skip), None)))
    pr.raise_if_any()
    if not out:
        raise ThinkscopeError(f"{path}: no traces in the file")
    return out


def register(sub) -> None:
    s = sub.add_parser("score", help="teacher-force plain-text traces or a stored run's completions through a "
                                     "server (vLLM, SGLang, llama-cpp-python) and store them as a run")
    s.add_argument("file", nargs="?", help="plain-text traces (JSON Lines or CSV with prompt and completion)")
    s.add_argument("--run", type=int, help="re-score the completions of this stored run instead")
    s.add_argument("--server", required=True, metavar="URL")
    s.add_argument("--model", help="the served model (default: the first the server lists)")
    s.add_argument("--api-key-env", metavar="VAR", help="environment variable holding the API key")
    s.add_argument("--server-kind", default="auto",
                   choices=["auto", "vllm", "sglang", "llama-cpp-python", "llama-server", "ollama", "openai"])
    s.add_argument("--top-k", type=int, default=TOP_K, help="alternatives per token")
    s.add_argument("--concurrency", type=int, default=4)
    s.add_argument("--request-timeout", type=float, default=600.0)
    s.add_argument("--retries", type=int, default=4)
    s.add_argument("--marker", default=THINK_MARKER, help="end-of-thinking marker for the phase split")
    s.add_argument("--run-name")
    s.set_defaults(func=cmd_score)
