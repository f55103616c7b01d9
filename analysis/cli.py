"""The `thinkscope` command line: thin commands over the analysis library.

Errors from bad input, and faults of the store or its disk, print as one line
(``thinkscope: error: ...``) with exit code 2. Text that comes from files and stores (names,
models, messages quoting them) is printed through ``echo``, which shows control characters
as escapes instead of sending them to the terminal. Commands are registered by
``register(subparsers)`` functions; each module that adds commands is listed in COMMAND_MODULES.
"""

from __future__ import annotations

import argparse
import importlib
import os
import subprocess
import sys
from pathlib import Path

from . import settings as defaults
from .cli_common import echo, interrupted, open_store, printable, progress_bar
from .errors import ThinkscopeError

#: modules with a ``register(subparsers)`` function that add their own commands
COMMAND_MODULES: list[str] = ["analysis.cli", "analysis.formats.cli", "analysis.cli_difficulty",
                               "analysis.cli_runs", "analysis.cli_preview",
                               "analysis.cli_signals", "analysis.cli_server", "analysis.cli_branch"]


_store = open_store


# --------------------------------------------------------------------------- commands


def cmd_generate(args) -> int:
    from .models import load_model
    from .problems import ANSWER_CUE, generate_problem_set, read_problems
    from .record import GenerationSettings, record_run

    settings = GenerationSettings(
        temperature=args.temperature, top_p=args.top_p, max_new_tokens=args.max_tokens, seed=args.seed,
        samples=args.samples, top_k=args.top_k, do_sample=not args.greedy, batch_size=args.batch_size,
        marker=args.marker or defaults.THINK_MARKER, chat_template=not args.no_chat_template,
        logit_lens=args.logit_lens, lens_every=args.lens_every,
        attention_entropy=args.attention_entropy, head_layer=args.head_layer)
    if args.problems:  # graded: a bundled set or a problem file (analysis.cli_difficulty)
        from .cli_difficulty import problem_prompts
        prompts = problem_prompts(args.problems)
        settings.marker = args.marker or ANSWER_CUE
    elif args.prompts:
        prompts = [p.to_prompt(instruction=None) for p in read_problems(args.prompts)]
    else:  # the bundled problems ask for an answer after ANSWER_CUE, which splits the phases
        prompts = [p.to_prompt() for p in generate_problem_set(per_level=args.per_level, seed=args.seed)]
        settings.marker = args.marker or ANSWER_CUE
    if args.limit:
        prompts = prompts[: args.limit]
    store = _store(args)
    from .cli_signals import tag_runs_created
    tag_runs_created(store, args)  # --checkpoint-step
    if args.server or args.resume is not None:  # through an inference server (analysis.cli_server)
        from .cli_server import generate_through_server
        return generate_through_server(args, store, prompts, settings)
    print(f"loading model {args.model or 'embedded default'} ...", file=sys.stderr)
    lm = load_model(args.model, device=args.device, dtype=args.dtype)
    source = args.problems or args.prompts
    name = args.run_name or f"{Path(source).stem if source else 'demo problems'} · {lm.name.split('/')[-1]}"
    if args.problems or args.early_stop:
        from .cli_difficulty import generate_graded
        return generate_graded(args, store, lm, prompts, settings, name, progress_bar("generating"))
    try:
        res = record_run(store, lm, prompts, settings, name, progress=progress_bar("generating"))
    except KeyboardInterrupt as e:
        return interrupted(e)
    echo(f"run {res.run_id}: {res.n_traces} traces, {res.n_tokens} tokens in {res.seconds:.1f} s -> {store.path}")
    return 0


def cmd_runs(args) -> int:
    df = _store(args).runs()
    if df.empty:
        print("no runs yet")
        return 0
    df = df.drop(columns=["settings"]).astype({"n_traces": int, "n_tokens": int})
    df["mean_entropy"] = df["mean_entropy"].round(3)
    for col in ("name", "source", "model", "status", "estimator"):  # before the layout measures widths
        df[col] = df[col].map(lambda v: v if v is None else printable(v))
    echo(df.rename(columns={"mean_entropy": "mean_entropy_nats"}).to_string(index=False))
    return 0


def cmd_export(args) -> int:
    from .formats.thinkscope import export_run
    from .store import one_line
    try:
        path = export_run(_store(args), args.run_id, args.output, args.format)
    except OSError as e:  # the output's disk (full, read-only) or folder
        raise ThinkscopeError(f"{args.output}: cannot write the export: {e.strerror or one_line(e)}") from e
    echo(f"run {args.run_id} -> {path}")
    return 0


def cmd_demo(args) -> int:
    from .demo import load_demo
    store = _store(args)
    n = load_demo(store, if_empty=args.if_empty)
    echo(f"demo traces: {n} new run(s) loaded into {store.path}" if n else f"demo traces already in {store.path}")
    return 0


def cmd_dashboard(args) -> int:
    """Serve the dashboard on 127.0.0.1; ``--host`` opens it to the network, behind a token
    (``$THINKSCOPE_TOKEN``, or a random one printed here) unless ``--no-token``."""
    import secrets

    from dashboard.auth import NO_TOKEN_ENV, TOKEN_ENV, is_loopback
    app = Path(__file__).resolve().parent.parent / "dashboard" / "app.py"
    env = dict(os.environ)
    if args.store:
        env[defaults.STORE.name] = str(Path(args.store).resolve())
    env.pop(NO_TOKEN_ENV, None)
    if not is_loopback(args.host):
        print(f"thinkscope: warning: the dashboard listens on {args.host or 'every interface'}: anyone who can "
              f"reach port {args.port} can upload files, run models and delete runs"
              + (" (no token: --no-token)" if args.no_token else " once they have the access token"),
              file=sys.stderr)
        if args.no_token:
            env.pop(TOKEN_ENV, None)
            env[NO_TOKEN_ENV] = "1"
        elif not env.get(TOKEN_ENV):
            env[TOKEN_ENV] = secrets.token_urlsafe(24)
            print(f"thinkscope: access token (asked once per browser session; set {TOKEN_ENV} to choose it): "
                  f"{env[TOKEN_ENV]}", file=sys.stderr, flush=True)
    cmd = [sys.executable, "-m", "streamlit", "run", str(app), "--server.port", str(args.port),
           "--server.address", args.host]
    if args.headless:
        cmd += ["--server.headless", "true"]
    return subprocess.call(cmd, env=env, cwd=app.parent.parent)


def register(sub) -> None:
    g = sub.add_parser("generate", help="generate traces with a local model and store them as a run")
    g.add_argument("--prompts", help="prompt file (.txt, .jsonl, .json, .csv); default: the bundled problems")
    g.add_argument("--model", help="model folder, .gguf file or cached hub id (default: embedded SmolLM2-135M-Instruct)")
    g.add_argument("--samples", type=int, default=1, help="samples per prompt")
    g.add_argument("--temperature", type=float, default=defaults.TEMPERATURE)
    g.add_argument("--top-p", type=float, default=defaults.TOP_P)
    g.add_argument("--greedy", action="store_true", help="greedy decoding (entropies at T=1)")
    g.add_argument("--max-tokens", type=int, default=defaults.MAX_NEW_TOKENS)
    g.add_argument("--top-k", type=int, default=defaults.TOP_K, help="alternatives recorded per token")
    g.add_argument("--seed", type=int, default=defaults.SEED)
    g.add_argument("--batch-size", type=int, default=defaults.BATCH_SIZE)
    g.add_argument("--per-level", type=int, default=8, help="bundled problems per difficulty level")
    g.add_argument("--limit", type=int, help="use only the first N prompts")
    g.add_argument("--marker", help="end-of-thinking marker for the phase split "
                   f"(default: '{defaults.THINK_MARKER}'; 'Final answer:' for the bundled problems)")
    g.add_argument("--no-chat-template", action="store_true")
    g.add_argument("--logit-lens", action="store_true",
                   help="record the logit-lens entropy and top-1 token per layer (one extra forward pass per trace)")
    g.add_argument("--lens-every", type=int, default=1, metavar="N",
                   help="with --logit-lens, keep every N-th layer (the last layer is always kept)")
    g.add_argument("--attention-entropy", action="store_true",
                   help="record attention entropy per layer (mean over heads, raw and / ln(t+1))")
    g.add_argument("--head-layer", type=int, metavar="L",
                   help="with --attention-entropy, the layer (1-based) whose per-head entropy is kept "
                   "(default: the middle layer)")
    g.add_argument("--problems", metavar="SET",
                   help="a bundled problem set (e.g. 'arithmetic') or a problem file with gold answers: "
                   "grades every trace and records pass rates per level")
    g.add_argument("--early-stop", metavar="CONFIG",
                   help="early-stop settings JSON (dashboard export or `thinkscope calibrate`): stop on entropy "
                   "inside generation, force the answer, record the tokens saved")
    g.add_argument("--run-name")
    from .cli_signals import add_checkpoint_flag
    add_checkpoint_flag(g)
    from .cli_server import add_generate_arguments
    add_generate_arguments(g)
    g.set_defaults(func=cmd_generate)

    r = sub.add_parser("runs", help="list the runs in the store")
    r.set_defaults(func=cmd_runs)

    e = sub.add_parser("export", help="export a run to Parquet, CSV or JSONL")
    e.add_argument("run_id", type=int)
    e.add_argument("output", help="output file; the suffix picks the format")
    e.add_argument("--format", choices=["parquet", "csv", "jsonl"])
    e.set_defaults(func=cmd_export)

    d = sub.add_parser("demo", help="load the bundled demo traces into the store")
    d.add_argument("--if-empty", action="store_true", help="only when the store has no runs")
    d.set_defaults(func=cmd_demo)

    b = sub.add_parser("dashboard", help="start the dashboard (Streamlit)")
    b.add_argument("--port", type=int, default=8501)
    b.add_argument("--headless", action="store_true")
    b.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only); another address, "
                        "e.g. 0.0.0.0, opens the dashboard to the network behind an access token")
    b.add_argument("--no-token", action="store_true",
                   help="with --host: no access token (only behind a proxy that does the login)")
    b.set_defaults(func=cmd_dashboard)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="thinkscope", description="Entropy analysis of reasoning traces.")
    parser.add_argument("--store", help="DuckDB store file (default: $THINKSCOPE_STORE or data/store/thinkscope.duckdb)")
    sub = parser.add_subparsers(dest="command", required=True)
    for mod in COMMAND_MODULES:
        importlib.import_module(mod).register(sub)
    for p in sub.choices.values():  # --store also after the command name
        p.add_argument("--store", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ThinkscopeError as e:
        echo(f"thinkscope: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("thinkscope: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a fault no command expected (a disk, a file): still one line, exit 2
        message = _fault_message(args, e)
        if message is None:
            raise
        echo(f"thinkscope: error: {message}", file=sys.stderr)
        return 2
    finally:
        for store in args.__dict__.get("_stores", []):
            for w in dict.fromkeys(store.warnings):
                echo(f"thinkscope: warning: {w}", file=sys.stderr)


def _fault_message(args, e: Exception) -> str | None:
    """One line for an OS error (naming its file) or a DuckDB fault (naming the store)."""
    from .store import EngineError, Store, one_line
    if isinstance(e, OSError):
        return f"{e.filename}: {e.strerror or one_line(e)}" if e.filename is not None else one_line(e)
    if isinstance(e, EngineError):
        return str(Store(args.store).error(e))
    return None


if __name__ == "__main__":
    sys.exit(main())
