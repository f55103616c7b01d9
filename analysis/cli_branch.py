"""CLI commands for branching (registered in analysis.cli).

    thinkscope branch RUN TRACE --at T[,T2...] | --sweep forks|every:M|all  [--n 8] [--p-min 0.05]
                      [--max-tokens 96] [--adaptive] [--estimate-only] ...
    thinkscope branch-report RUN [TRACE] [--eps 0.3] [--level 0.1] [--format text|json]
"""

from __future__ import annotations

import json
import sys

from .errors import ThinkscopeError


def _echo(*parts, file=None) -> None:
    from .cli_common import echo
    echo(*parts, file=file)


def _parent(store, run_id: int, trace_id: int):
    from .branch import BranchError, load_parent
    parent = load_parent(store, trace_id)
    if parent.run_id != int(run_id):
        raise BranchError(f"trace {trace_id} belongs to run {parent.run_id}, not to run {run_id}")
    return parent


def settings_from(args):
    from .branch import BranchSettings
    return BranchSettings(n=args.n, p_min=args.p_min, top_k=args.top_k, max_alternatives=args.max_alternatives,
                          fresh=not args.no_fresh, max_new_tokens=args.max_tokens, temperature=args.temperature,
                          top_p=args.top_p, seed=args.seed, adaptive=args.adaptive, tol=args.tol,
                          min_rollouts=args.min_rollouts, step=args.step, batch_size=args.batch_size)


def cmd_branch(args) -> int:
    from . import branch as br
    from .cli_common import open_store
    from .models import load_model
    from .record import build_prompt_ids

    if (args.at is None) == (args.sweep is None):
        raise ThinkscopeError("give one of --at T[,T2...] or --sweep forks|every:M|all")
    store = open_store(args)
    parent = _parent(store, args.run_id, args.trace_id)
    settings = settings_from(args)
    positions = br.sweep_positions(parent, args.at if args.at is not None else args.sweep, args.window)
    if not positions:
        _echo(f"trace {parent.trace_id}: no position to branch ({args.sweep})")
        return 0
    spec = args.model or parent.model
    print(f"loading model {spec or 'embedded default'} ...", file=sys.stderr)
    lm = load_model(spec)
    rate = br.measure_rate(lm, parent, min(settings.batch_size, max(br.branch_counts(parent, positions, settings))
                                           * settings.n))
    cost = br.estimate(parent, positions, settings, rate,
                       len(build_prompt_ids(lm, parent.prompt, parent.generation)))
    _echo(f"cost: {cost.describe()}")
    if args.estimate_only:
        return 0
    from tqdm import tqdm
    bars: list = []

    def progress(done: int, total: int, res) -> None:
        if res is None:  # the positions left to do (finished ones are kept and skipped)
            bars.append(tqdm(total=total, desc="branching", unit="position", file=sys.stderr))
            return
        bars[0].update(1)
        bars[0].set_postfix_str(f"t={res.pos} {res.n_generated} rollouts")

    from .record import sigterm_as_interrupt
    with sigterm_as_interrupt():
        out = br.sweep(store, lm, parent, positions, settings, progress)
    for bar in bars:
        bar.close()
    saved = out["budget"] - out["rollouts"]
    _echo(f"trace {parent.trace_id}: {out['done']} positions branched, {out['skipped']} already done (kept); "
          f"{out['rollouts']} rollouts, {out['tokens']} new tokens in {out['seconds']:.1f} s"
          + (f"; adaptive sampling saved {saved} of {out['budget']} rollouts "
             f"({100 * saved / max(1, out['budget']):.0f} %)" if settings.adaptive else ""))
    _print_positions(store, parent.trace_id, args.eps)
    if out["interrupted"]:
        print("interrupted: the finished positions are kept; run the same command again to resume",
              file=sys.stderr)
        return 130
    return 0


def _fmt(x, lo=None, hi=None) -> str:
    if x != x:
        return "n/a"
    return f"{x:.3f}" + ("" if lo is None or lo != lo else f" [{lo:.3f}, {hi:.3f}]")


def _print_positions(store, trace_id: int, eps: float) -> None:
    from .branch import position_table
    table, _ = position_table(store, trace_id, eps)
    if table.empty:
        return
    _echo(f"fork strength (p mass of alternatives at TV >= {eps} from the original token's outcomes) "
          "and survival, 95 % posterior intervals:")
    for r in table.itertuples():
        _echo(f"  t={r.pos:<5} fork strength {_fmt(r.fork_strength, r.fork_lo, r.fork_hi)}  "
              f"survival {_fmt(r.survival, r.survival_lo, r.survival_hi)}  ({r.branches} branches, "
              f"{r.rollouts} rollouts)")


def cmd_branch_report(args) -> int:
    from . import branch as br
    from .cli_common import open_store
    store = open_store(args)
    pred = br.fork_predictors(store, args.run_id, args.eps, args.window, args.tau)
    if args.trace_id is not None:
        pred = pred[pred["trace_id"] == args.trace_id]
    if pred.empty:
        raise ThinkscopeError(f"run {args.run_id}{'' if args.trace_id is None else f' trace {args.trace_id}'}: "
                              "no branched positions; run `thinkscope branch` first")
    rep = br.entropy_predicts_forks(pred, args.level)
    if args.format == "json":
        _echo(json.dumps(rep, default=float))
        return 0
    _echo(f"does entropy predict forks? {rep['n']} swept positions, {rep['real_forks']} real forks "
          f"(fork strength >= {args.level}, TV >= {args.eps}); 95 % bootstrap intervals over positions")
    for q, c in rep["correlation"].items():
        _echo(f"  Spearman rho(fork strength, {q}) = {_fmt(c['rho'], *c['interval'])}  (n = {c['n']})")
    for r, m in rep["rules"].items():
        _echo(f"  rule {r:<10} ({br.RULES[r]}): precision {_fmt(m['precision'], *m['precision_interval'])}, "
              f"recall {_fmt(m['recall'], *m['recall_interval'])}, AUROC {_fmt(m['auroc'], *m['auroc_interval'])}"
              f" ({m['flagged']} flagged)")
    return 0


def register(sub) -> None:
    b = sub.add_parser("branch", help="continue a trace from positions with its token, the alternatives and a "
                                      "fresh sample; grade where each ends up")
    b.add_argument("run_id", type=int)
    b.add_argument("trace_id", type=int)
    b.add_argument("--at", metavar="T[,T2...]", help="completion positions to branch at (0-based)")
    b.add_argument("--sweep", metavar="forks|every:M|all",
                   help="forking points (window entropy >= the trace's 95th percentile), every M-th position, or all")
    b.add_argument("--n", type=int, default=8, help="rollouts per branch (the most, with --adaptive)")
    b.add_argument("--p-min", type=float, default=0.05, help="alternatives need p >= this at the position")
    b.add_argument("--top-k", type=int, default=20, help="alternatives are among the top K tokens")
    b.add_argument("--max-alternatives", type=int, help="at most this many alternatives per position")
    b.add_argument("--no-fresh", action="store_true", help="no fresh-sample branch")
    b.add_argument("--max-tokens", type=int, default=96, help="token budget per rollout")
    b.add_argument("--temperature", type=float, help="default: the run's")
    b.add_argument("--top-p", type=float, help="default: the run's")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--adaptive", action="store_true",
                   help="stop adding rollouts to a branch once its outcome distribution is known within --tol")
    b.add_argument("--tol", type=float, default=0.25, help="adaptive: 95 %% Wilson half-width of every outcome's share")
    b.add_argument("--min-rollouts", type=int, default=4, help="adaptive: first round per branch")
    b.add_argument("--step", type=int, default=2, help="adaptive: rollouts added per further round")
    b.add_argument("--batch-size", type=int, default=64, help="most rollouts decoded together")
    b.add_argument("--window", type=int, default=4, help="window w for --sweep forks")
    b.add_argument("--eps", type=float, default=0.3, help="an alternative forks at TV >= eps (for the summary)")
    b.add_argument("--model", help="default: the run's model")
    b.add_argument("--estimate-only", action="store_true", help="show the cost and stop")
    b.set_defaults(func=cmd_branch)

    r = sub.add_parser("branch-report", help="does entropy predict forks? rank correlation and each forking-point "
                                             "rule's precision, recall and AUROC against branched positions")
    r.add_argument("run_id", type=int)
    r.add_argument("trace_id", type=int, nargs="?", help="one trace (default: pooled over the run)")
    r.add_argument("--eps", type=float, default=0.3, help="an alternative forks at TV >= eps")
    r.add_argument("--level", type=float, default=0.1, help="a real fork: fork strength >= level")
    r.add_argument("--tau", type=float, default=1.0, help="the fixed rule's tau (nats)")
    r.add_argument("--window", type=int, default=4)
    r.add_argument("--format", choices=["text", "json"], default="text")
    r.set_defaults(func=cmd_branch_report)
