"""Branching: continue a stored trace from a position with the token it took, with each
plausible alternative, and with a fresh sample, and see where each continuation ends up.

At position t the prompt and the completion tokens before t are encoded once; that KV cache
is expanded across the batch and shared by every rollout of every branch at t, so a rollout
costs only its own new tokens. Rollouts are decoded together in one batch (no padding: every
row has the same length), with the run's sampling settings unless changed, and recorded like
generated traces (entropy at T and at T = 1, top-k, chosen logprob). Each is graded with the
run's grading rule on the parent's text before t followed by the rollout; its extracted final
answer is kept whether or not there is a gold answer. Adaptive sampling generates rollouts in
rounds and stops adding to a branch once its outcome distribution is known within a
tolerance (``branch_stats.known_within``).

Definitions: Forking Paths (arXiv 2412.07961), Thought Anchors (arXiv 2506.19143);
``../shared/docs/branching.md``.
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable, Sequence

import numpy as np
import pandas as pd
import torch

from . import branch_stats as bs
from . import metrics
from .errors import BranchError
from .grading import GradingRule, grade, normalise_text, parse_number
from .models import LoadedModel
from .record import GenerationSettings, StepRecorder, VocabText, build_prompt_ids, token_pieces, vocab_for
from .trace import Trace

KINDS = ("original", "alternative", "fresh")


@dataclass
class BranchSettings:
    """How a position is branched. ``temperature``/``top_p`` None: the run's own. ``n`` rollouts
    per branch (the most, with ``adaptive``); ``max_new_tokens`` per rollout after the forced
    token; alternatives: the top ``top_k`` tokens at t with p >= ``p_min`` (at most
    ``max_alternatives`` of them when set); ``fresh``: also a branch that samples the token at t."""

    n: int = 8
    p_min: float = 0.05
    top_k: int = 20
    max_alternatives: int | None = None
    fresh: bool = True
    max_new_tokens: int = 96
    temperature: float | None = None
    top_p: float | None = None
    seed: int = 0
    adaptive: bool = False
    tol: float = 0.25            # adaptive: every outcome's share known within this (95 % Wilson half-width)
    min_rollouts: int = 4        # adaptive: first round per branch
    step: int = 2                # adaptive: rollouts added per branch per further round
    batch_size: int = 64         # most rollouts decoded together

    def __post_init__(self) -> None:
        for name, lo in (("n", 1), ("top_k", 1), ("max_new_tokens", 1), ("min_rollouts", 1), ("step", 1),
                         ("batch_size", 1)):
            if int(getattr(self, name)) < lo:
                raise BranchError(f"{name} must be >= {lo}, got {getattr(self, name)}")
        if not 0 <= self.p_min <= 1:
            raise BranchError(f"p_min must be in 0..1, got {self.p_min}")
        if self.temperature is not None and self.temperature <= 0:
            raise BranchError(f"temperature must be > 0, got {self.temperature}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise BranchError(f"top_p must be in (0, 1], got {self.top_p}")
        if not 0 < self.tol <= 1:
            raise BranchError(f"tol must be in (0, 1], got {self.tol}")

    def to_dict(self) -> dict:
        return asdict(self)

    def key(self) -> dict:
        """What makes two branchings of a position the same experiment (for resuming)."""
        d = self.to_dict()
        d.pop("batch_size")
        return d


@dataclass
class Parent:
    """What branching needs of a stored trace and its run."""

    trace_id: int
    run_id: int
    model: str | None
    prompt: str
    token_ids: np.ndarray
    tokens: list[str]
    entropy: np.ndarray          # best estimator, nats
    topk_ids: list | None
    topk_logprobs: list | None
    generation: GenerationSettings
    rule: GradingRule
    metadata: dict = field(default_factory=dict)

    @property
    def n(self) -> int:
        return len(self.tokens)

    @property
    def gold(self) -> str | None:
        g = self.metadata.get("gold_answer")
        return None if g is None or (isinstance(g, float) and np.isnan(g)) else str(g)


def load_parent(store, trace_id: int, need_ids: bool = True) -> Parent:
    """The trace ``trace_id`` with its run's generation settings and grading rule. ``need_ids``
    False: a trace without token ids is read too (its ids -1; branching through a server sends text)."""
    from .store.values import json_settings
    row = store.trace(int(trace_id))
    run = store.runs().set_index("run_id").loc[int(row.run_id)]
    settings = json_settings(run.settings)
    known = {k: v for k, v in settings.items() if k in GenerationSettings.__dataclass_fields__}
    gen = GenerationSettings(**known)
    g = settings.get("grading") or {}
    rule = GradingRule(**{k: v for k, v in g.items() if k in GradingRule.__dataclass_fields__})
    tok = store.tokens(int(trace_id), with_alternatives=False)
    ids = tok["token_id"].to_numpy(dtype=np.float64, na_value=np.nan)
    if not need_ids:
        ids = np.where(np.isnan(ids), -1.0, ids)
    elif len(ids) and (np.isnan(ids).any() or (ids < 0).any()):
        raise BranchError(f"trace {trace_id}: its tokens have no token ids (an uploaded text trace?); "
                          "branching needs the ids of the model that continues it")
    meta = {k: row.get(k) for k in ("problem_id", "gold_answer", "level", "question")
            if row.get(k) is not None and not (isinstance(row.get(k), float) and np.isnan(row.get(k)))}
    return Parent(int(trace_id), int(row.run_id), None if pd.isna(run.model) else str(run.model),
                  "" if pd.isna(row.prompt) else str(row.prompt), ids.astype(np.int64),
                  tok["token"].fillna("").astype(str).tolist(),
                  tok["entropy"].to_numpy(dtype=np.float64, na_value=np.nan),
                  tok["topk_ids"].tolist() if "topk_ids" in tok else None,
                  tok["topk_logprobs"].tolist() if "topk_logprobs" in tok else None,
                  gen, rule, meta)


# --------------------------------------------------------------------------- decoding


def sampling_of(parent: Parent, settings: BranchSettings) -> tuple[bool, float, float]:
    """(do_sample, temperature, top_p) of the rollouts: the run's unless the settings change them."""
    g = parent.generation
    do_sample = g.do_sample or settings.temperature is not None
    t = settings.temperature if settings.temperature is not None else (g.temperature if g.do_sample else 1.0)
    top_p = settings.top_p if settings.top_p is not None else (g.top_p if g.do_sample else 1.0)
    return do_sample, float(t), float(top_p)


def _apply(processors: Sequence, seqs: torch.Tensor | None, logits: torch.Tensor) -> torch.Tensor:
    for proc in processors:
        logits = proc(seqs, logits)
    return logits


def _pick(logits: torch.Tensor, do_sample: bool, t: float, top_p: float, gen: torch.Generator) -> torch.Tensor:
    """Next tokens [R] from raw logits [R, V]: greedy, or sampled at temperature t within top-p."""
    if not do_sample:
        return logits.argmax(-1)
    z = logits.float() / t
    if top_p < 1.0:
        sz, si = torch.sort(z, descending=True, dim=-1)
        cum = torch.softmax(sz, -1).cumsum(-1)
        drop = cum - torch.softmax(sz, -1) > top_p  # keep the smallest set whose mass reaches top_p
        sz = sz.masked_fill(drop, float("-inf"))
        z = torch.full_like(z, float("-inf")).scatter(-1, si, sz)
    return torch.multinomial(torch.softmax(z, -1), 1, generator=gen).squeeze(1)


@dataclass
class Prefix:
    """A position's encoded prefix: its KV cache (batch 1), the logits at t (after any logits
    processors), and the token ids (prompt + completion before t)."""

    cache: object
    logits: torch.Tensor      # [V]
    ids: list[int]
    seconds: float


@torch.inference_mode()
def encode_prefix(lm: LoadedModel, ids: Sequence[int], processors: Sequence = ()) -> Prefix:
    """One forward pass over ``ids``; the cache and the next-token logits (float32)."""
    from transformers import DynamicCache

    t0 = time.perf_counter()
    x = torch.tensor([list(ids)])
    logits, cache = _forward(lm.model, x, DynamicCache(config=lm.model.config))
    logits = _apply(processors, x, logits)[0]
    return Prefix(cache, logits, list(ids), time.perf_counter() - t0)


def _forward(model, ids: torch.Tensor, cache) -> tuple[torch.Tensor, object]:
    """Last-position logits (float32) and the updated cache of one forward pass."""
    out = model(input_ids=ids, cache=cache, use_cache=True, logits_to_keep=1)
    return out.logits[:, -1].float(), getattr(out, "cache", None) or out.past_key_values


def expand_cache(cache, rows: int):
    """A copy of a batch-1 KV cache repeated to ``rows`` rows (the prefix itself is not recomputed)."""
    c = copy.deepcopy(cache)
    c.batch_repeat_interleave(int(rows))
    return c


@torch.inference_mode()
def decode(lm: LoadedModel, prefix: Prefix, first: torch.Tensor | None, rows: int, max_new_tokens: int,
           do_sample: bool, temperature: float, top_p: float, top_k: int, gen: torch.Generator,
           processors: Sequence = (), stop: bool = True) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
    """Continue ``rows`` rollouts from an encoded prefix. ``first`` [rows]: the token forced at t
    (-1: sample it). Returns the new token ids [rows, steps], the recorder's arrays and each
    row's length (through its end-of-sequence token, or the budget: 1 + max_new_tokens).
    ``stop`` False decodes the whole budget even when every row has ended (for timing)."""
    from .record import stop_ids
    rec = StepRecorder(temperature, top_k)
    logits = prefix.logits[None, :].expand(rows, -1)
    rec(None, logits)
    sampled = _pick(logits, do_sample, temperature, top_p, gen)
    tok = sampled if first is None else torch.where(first >= 0, first, sampled)
    stops = torch.tensor(sorted(stop_ids(lm)))
    cache = expand_cache(prefix.cache, rows)
    seqs = torch.tensor([prefix.ids]).expand(rows, -1) if processors else None
    out = [tok]
    alive = ~torch.isin(tok, stops)
    for _ in range(int(max_new_tokens)):
        if stop and not alive.any():
            break
        if seqs is not None:
            seqs = torch.cat([seqs, tok[:, None]], 1)
        z, cache = _forward(lm.model, tok[:, None], cache)
        z = _apply(processors, seqs, z)
        rec(tok[:, None], z)
        tok = _pick(z, do_sample, temperature, top_p, gen)
        out.append(tok)
        alive &= ~torch.isin(tok, stops)
    seq = torch.stack(out, 1)
    rec.finish(seq)
    arr = rec.arrays()
    ids = seq.numpy()
    is_stop = np.isin(ids, stops.numpy())
    lengths = np.where(is_stop.any(1), is_stop.argmax(1) + 1, ids.shape[1])
    return ids, arr, lengths


# --------------------------------------------------------------------------- one position


@dataclass
class Branch:
    kind: str
    token_id: int | None      # forced token (None: sampled per rollout, 'fresh')
    p: float                  # the model's p of the token at t (fresh: 1, the whole distribution)
    rollouts: list[Trace] = field(default_factory=list)


def plan_branches(logits: torch.Tensor, original: int, settings: BranchSettings, temperature: float) -> list[Branch]:
    """The branches at a position from its logits: the original token, the alternatives with
    p >= p_min among the top-k (p at the rollouts' temperature), and a fresh sample."""
    logp = torch.log_softmax(logits.float() / temperature, -1)
    p = logp.exp()
    out = [Branch("original", int(original), float(p[original]))]
    v, i = torch.topk(p, min(settings.top_k + 1, p.numel()))
    alts = [(int(t), float(q)) for t, q in zip(i.tolist(), v.tolist()) if t != original and q >= settings.p_min]
    alts = alts[: settings.top_k]
    if settings.max_alternatives is not None:
        alts = alts[: settings.max_alternatives]
    out += [Branch("alternative", t, q) for t, q in alts]
    if settings.fresh:
        out.append(Branch("fresh", None, 1.0))
    return out


@dataclass
class PositionResult:
    parent_trace_id: int
    pos: int
    branches: list[Branch]
    prefix_text: str
    n_generated: int
    n_budget: int
    new_tokens: int
    seconds: float
    encode_seconds: float

    def outcomes(self) -> list[bs.BranchOutcomes]:
        return [bs.BranchOutcomes(b.kind, b.token_id, b.rollouts[0].tokens[0] if b.rollouts else None, b.p,
                                  [canonical_answer(r.metadata.get("pred_answer")) for r in b.rollouts],
                                  [r.metadata.get("correct") for r in b.rollouts]) for b in self.branches]


def grow_targets(branches: Sequence[Branch], settings: BranchSettings, target: dict) -> None:
    """Adaptive sampling: give each branch whose outcome distribution is not yet known within
    ``settings.tol`` ``settings.step`` more rollouts (up to ``settings.n``) in ``target``."""
    for b in branches:
        answers = [canonical_answer(r.metadata.get("pred_answer")) for r in b.rollouts]
        cats = sorted({bs.outcome(a) for a in answers})
        if len(b.rollouts) < settings.n and not bs.known_within(bs.counts(answers, cats), settings.tol):
            target[id(b)] = min(settings.n, len(b.rollouts) + settings.step)


def branch_at(lm: LoadedModel, parent: Parent, pos: int, settings: BranchSettings = BranchSettings(),
              processors: Sequence = (), vocab: VocabText | None = None) -> PositionResult:
    """Branch ``parent`` at completion position ``pos`` (0 .. n-1): the rollouts of every branch,
    graded, as traces (not stored; see ``store_position``)."""
    pos = int(pos)
    if not 0 <= pos < parent.n:
        raise BranchError(f"trace {parent.trace_id}: position {pos} outside 0..{parent.n - 1}")
    t0 = time.perf_counter()
    prompt_ids = build_prompt_ids(lm, parent.prompt, parent.generation)
    prefix = encode_prefix(lm, prompt_ids + parent.token_ids[:pos].tolist(), processors)
    do_sample, temp, top_p = sampling_of(parent, settings)
    branches = plan_branches(prefix.logits, int(parent.token_ids[pos]), settings, temp)
    prefix_text = "".join(parent.tokens[:pos])
    gen = torch.Generator().manual_seed(int(settings.seed) * 1_000_003 + pos)
    vocab = vocab or VocabText(lm.tokenizer)
    target = {id(b): (settings.n if not settings.adaptive else min(settings.n, settings.min_rollouts))
              for b in branches}
    new_tokens = 0
    while True:
        todo = [(b, target[id(b)] - len(b.rollouts)) for b in branches if target[id(b)] > len(b.rollouts)]
        if not todo:
            break
        rows = [b for b, k in todo for _ in range(k)]
        for start in range(0, len(rows), settings.batch_size):
            chunk = rows[start:start + settings.batch_size]
            first = torch.tensor([-1 if b.token_id is None else b.token_id for b in chunk])
            ids, arr, lengths = decode(lm, prefix, first, len(chunk), settings.max_new_tokens, do_sample, temp,
                                       top_p, settings.top_k, gen, processors)
            for r, b in enumerate(chunk):
                trace = _rollout_trace(lm, parent, pos, b, len(b.rollouts), ids[r], arr, r, int(lengths[r]),
                                       prefix_text)
                b.rollouts.append(trace)
                new_tokens += trace.n_tokens
        if not settings.adaptive:
            break
        grow_targets(branches, settings, target)
    n_gen = sum(len(b.rollouts) for b in branches)
    return PositionResult(parent.trace_id, pos, branches, prefix_text, n_gen, settings.n * len(branches),
                          new_tokens, time.perf_counter() - t0, prefix.seconds)


def _rollout_trace(lm, parent: Parent, pos: int, b: Branch, idx: int, ids: np.ndarray, arr: dict, r: int,
                   n: int, prefix_text: str) -> Trace:
    k = arr.get("topk_ids")
    tr = Trace(prompt=parent.prompt, tokens=token_pieces(lm.tokenizer, ids[:n]), token_ids=ids[:n],
               logprobs=arr["chosen_lp"][r, :n].astype(np.float64),
               topk_ids=k[r, :n] if k is not None else None,
               topk_logprobs=arr["topk_lp"][r, :n].astype(np.float64) if k is not None else None,
               entropy_full=arr["entropy"][r, :n].astype(np.float64),
               entropy_full_t1=arr["entropy_t1"][r, :n].astype(np.float64),
               marker=parent.generation.marker,
               metadata={**parent.metadata, "branch_of": parent.trace_id, "branch_pos": pos, "branch_kind": b.kind,
                         "rollout": idx, "stopped": "eos" if n < len(ids) or _ends(lm, ids[:n]) else "max_tokens"})
    g = grade(prefix_text + tr.completion, parent.gold, parent.rule)
    tr.metadata.update(pred_answer=g.pred, correct=g.correct, grade_method=g.method)
    return tr


def canonical_answer(pred: str | None) -> str | None:
    """An extracted answer as an outcome label: numbers by value ('7.', '7.0' and '7' are one
    outcome), other text normalised as the grader compares it; None stays None (no answer)."""
    if pred is None or not str(pred).strip():
        return None
    v = parse_number(str(pred).strip().rstrip("."))
    return f"{v:.12g}" if v is not None else normalise_text(str(pred))


def _ends(lm, ids) -> bool:
    from .record import stop_ids
    return len(ids) > 0 and int(ids[-1]) in stop_ids(lm)


# --------------------------------------------------------------------------- storing, sweeping


def store_position(store, lm: LoadedModel, parent: Parent, res: PositionResult, settings: BranchSettings,
                   vocab: VocabText | None = None) -> int:
    """Store a position's rollouts in the parent run's branch run and link them; return the run id."""
    traces = [t for b in res.branches for t in b.rollouts]
    return store_rollouts(store, parent, res, {**settings.key(), "model": lm.name}, lm.name,
                          vocab_for(lm, traces, vocab))


def store_rollouts(store, parent: Parent, res: PositionResult, settings: dict, model: str | None,
                   vocab: dict[int, str] | None, forced_id: Callable[[Branch, Trace], int] | None = None) -> int:
    """``store_position``'s work for any backend: the rollouts stored in the parent run's branch
    run (``vocab``: text of their real token ids), linked, and the position recorded with
    ``settings``; ``forced_id(branch, rollout)`` gives the forced token's id (default: the
    rollout's first token id)."""
    run_id = store.branch_run(parent.run_id, model)
    traces = [t for b in res.branches for t in b.rollouts]
    ids = store.add_traces(run_id, traces, vocab)
    rows, it = [], iter(ids)
    for b in res.branches:
        for i, t in enumerate(b.rollouts):
            rows.append({"trace_id": next(it), "parent_trace_id": parent.trace_id, "pos": res.pos, "kind": b.kind,
                         "forced_token_id": int(t.token_ids[0]) if forced_id is None else int(forced_id(b, t)),
                         "forced_token": t.tokens[0],
                         # a fresh rollout's token at t was sampled: its p is its recorded logprob's
                         "forced_p": b.p if b.kind != "fresh" else float(np.exp(t.logprobs[0])),
                         "rollout": i, "answer": canonical_answer(t.metadata.get("pred_answer")),
                         "correct": t.metadata.get("correct")})
    store.add_branch_position(run_id, pd.DataFrame(rows, columns=list(_link_columns())), {
        "parent_trace_id": parent.trace_id, "pos": res.pos,
        "settings": {**settings, "branches": len(res.branches)},
        "n_generated": res.n_generated, "n_budget": res.n_budget, "new_tokens": res.new_tokens,
        "seconds": res.seconds})
    return run_id


def _link_columns():
    from .store.branches import LINK_COLUMNS
    return LINK_COLUMNS


def sweep_positions(parent: Parent, spec: str, w: int = 4) -> list[int]:
    """Positions of a sweep: 'forks' (window entropy at or above the trace's 95th percentile,
    ARES), 'every:M' (0, M, 2M, ...), 'all', or a comma-separated list of positions."""
    spec = spec.strip()
    if spec == "all":
        return list(range(parent.n))
    if spec == "forks":
        win = metrics.window_entropy(parent.entropy, w).values
        return metrics.forking_points(win, metrics.forking_threshold(win, "percentile", 95.0)).tolist()
    if spec.startswith("every:"):
        try:
            m = int(spec.split(":", 1)[1])
        except ValueError:
            m = 0
        if m < 1:
            raise BranchError(f"sweep {spec!r}: every:M needs a whole M >= 1")
        return list(range(0, parent.n, m))
    try:
        pos = sorted({int(x) for x in spec.split(",") if x.strip()})
    except ValueError:
        raise BranchError(f"sweep {spec!r}: use forks, every:M, all, or positions like 3,17") from None
    bad = [p for p in pos if not 0 <= p < parent.n]
    if bad or not pos:
        raise BranchError(f"trace {parent.trace_id}: positions {bad or spec} outside 0..{parent.n - 1}")
    return pos


def branch_counts(parent: Parent, positions: Iterable[int], settings: BranchSettings) -> list[int]:
    """Branches at each position from the trace's recorded top-k (p at the run's temperature):
    the original, the alternatives with p >= p_min, and the fresh sample."""
    out = []
    for pos in positions:
        n_alt = 0
        if parent.topk_logprobs is not None and parent.topk_ids is not None:
            lp, ids = parent.topk_logprobs[pos], parent.topk_ids[pos]
            if lp is not None and ids is not None:
                keep = [i for i, l in zip(list(ids)[: settings.top_k], list(lp)[: settings.top_k])
                        if int(i) != int(parent.token_ids[pos]) and np.exp(l) >= settings.p_min]
                n_alt = len(keep)
        if settings.max_alternatives is not None:
            n_alt = min(n_alt, settings.max_alternatives)
        out.append(1 + n_alt + int(settings.fresh))
    return out


@dataclass
class Cost:
    positions: int
    generations: int          # rollouts at the full budget
    tokens: int               # upper bound: every rollout runs to its token budget
    prefix_tokens: int        # tokens encoded (once per position)
    seconds: float            # estimate at the measured rate (upper bound, full token budget)
    rate: dict

    def describe(self) -> str:
        return (f"{self.positions} positions, {self.generations} rollouts, at most {self.tokens:,} new tokens "
                f"and {self.prefix_tokens:,} prefix tokens encoded; estimated at most {self.seconds:,.0f} s "
                f"({self.rate['step_ms']:.1f} ms per decoding step of {self.rate['rows']} rollouts, "
                f"{self.rate['prefix_ms_per_token']:.2f} ms per prefix token, measured on this backend)")


@torch.inference_mode()
def measure_rate(lm: LoadedModel, parent: Parent, rows: int, steps: int = 4) -> dict:
    """Time one prefix encoding (the whole trace) and ``steps`` decoding steps of ``rows`` rollouts."""
    ids = build_prompt_ids(lm, parent.prompt, parent.generation) + parent.token_ids.tolist()
    prefix = encode_prefix(lm, ids)
    gen = torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    decode(lm, prefix, None, rows, steps, True, 1.0, 1.0, 1, gen)
    step = (time.perf_counter() - t0) / (steps + 1)
    return {"rows": int(rows), "step_ms": 1000 * step, "prefix_ms_per_token": 1000 * prefix.seconds / max(1, len(ids))}


def estimate(parent: Parent, positions: Sequence[int], settings: BranchSettings, rate: dict,
             prompt_tokens: int) -> Cost:
    """Cost of branching ``positions`` at the full budget (adaptive sampling can only spend less)."""
    counts = branch_counts(parent, positions, settings)
    gens = [c * settings.n for c in counts]
    pre = sum(prompt_tokens + p for p in positions)
    # a decoding step's cost grows with the batch; scale the measured one linearly in rows
    per_row = rate["step_ms"] / max(1, rate["rows"])
    secs = sum((-(-g // settings.batch_size)) * (settings.max_new_tokens + 1)
               * max(rate["step_ms"], per_row * min(g, settings.batch_size)) for g in gens) / 1000
    secs += pre * rate["prefix_ms_per_token"] / 1000
    return Cost(len(positions), sum(gens), sum(gens) * (settings.max_new_tokens + 1), pre, secs, rate)


def sweep(store, lm: LoadedModel, parent: Parent, positions: Sequence[int], settings: BranchSettings,
          progress: Callable[[int, int, PositionResult | None], None] | None = None,
          processors: Sequence = ()) -> dict:
    """Branch every position in ``positions``, storing each as it finishes. Positions already
    branched with the same settings are kept and skipped (resuming); Ctrl-C stops between two
    positions, the one in progress is dropped. Returns counts: done, skipped, rollouts, saved."""
    done = store.branch_positions(parent.trace_id)
    key = settings.key()
    finished = {int(r.pos) for r in done.itertuples()
                if {k: r.settings.get(k) for k in key} == key}
    todo = [p for p in positions if p not in finished]
    run_id = store.branch_run(parent.run_id, lm.name)
    store.drop_unlinked_rollouts(run_id)
    vocab = VocabText(lm.tokenizer)

    def one(pos: int) -> PositionResult:
        res = branch_at(lm, parent, pos, settings, processors, vocab)
        store_position(store, lm, parent, res, settings, vocab)
        return res

    return run_positions(todo, len(positions) - len(todo), one, progress)


def run_positions(todo: Sequence[int], skipped: int, one: Callable[[int], PositionResult],
                  progress: Callable[[int, int, PositionResult | None], None] | None = None,
                  counted: Sequence[str] = ()) -> dict:
    """A sweep's loop for any backend: ``one(pos)`` branches and stores a position; returns the
    counts (done, skipped, rollouts, budget, tokens, seconds and each attribute in ``counted``
    summed over positions, interrupted). Ctrl-C stops between two positions, keeping the finished."""
    out = {"done": 0, "skipped": skipped, "rollouts": 0, "budget": 0, "tokens": 0, "seconds": 0.0,
           **{k: 0 for k in counted}, "interrupted": False}
    if progress:
        progress(0, len(todo), None)
    try:
        for i, pos in enumerate(todo):
            res = one(pos)
            out["done"] += 1
            out["rollouts"] += res.n_generated
            out["budget"] += res.n_budget
            out["tokens"] += res.new_tokens
            out["seconds"] += res.seconds
            for k in counted:
                out[k] += getattr(res, k)
            if progress:
                progress(i + 1, len(todo), res)
    except KeyboardInterrupt:
        out["interrupted"] = True
    return out


# --------------------------------------------------------------------------- statistics from the store


def _outcomes_of(df: pd.DataFrame) -> list[bs.BranchOutcomes]:
    out = []
    for (kind, tok_id), g in df.groupby(["kind", "forced_token_id"], sort=False, dropna=False):
        if kind == "fresh":
            continue
        out.append(bs.BranchOutcomes(kind, int(tok_id), str(g["forced_token"].iloc[0]), float(g["forced_p"].iloc[0]),
                                     [None if pd.isna(a) else a for a in g["answer"]],
                                     [None if pd.isna(c) else bool(c) for c in g["correct"]]))
    fresh = df[df["kind"] == "fresh"]
    if len(fresh):
        out.append(bs.BranchOutcomes("fresh", None, None, 1.0, [None if pd.isna(a) else a for a in fresh["answer"]],
                                     [None if pd.isna(c) else bool(c) for c in fresh["correct"]]))
    return out


def position_table(store, parent_trace_id: int, eps: float = 0.3) -> tuple[pd.DataFrame, dict]:
    """Per swept position of a trace: fork strength with its interval, hazard (= fork strength),
    survival with its interval, branches and rollouts; and the PositionStats by position."""
    links = store.branch_rollouts(int(parent_trace_id))
    stats, rows = {}, []
    for pos, g in links.groupby("pos", sort=True):
        ps = bs.position_stats(_outcomes_of(g), eps, seed=int(pos))
        stats[int(pos)] = ps
        rows.append({"pos": int(pos), "fork_strength": ps.fork_strength, "fork_lo": ps.fork_interval[0],
                     "fork_hi": ps.fork_interval[1], "branches": len(ps.branches), "rollouts": int(len(g))})
    df = pd.DataFrame(rows, columns=["pos", "fork_strength", "fork_lo", "fork_hi", "branches", "rollouts"])
    if len(df):
        s, lo, hi = bs.survival(np.stack([stats[p].fork_draws for p in df["pos"]]), df["fork_strength"].to_numpy())
        df["hazard"] = df["fork_strength"]
        df["survival"], df["survival_lo"], df["survival_hi"] = s, lo, hi
    return df, stats


#: forking-point rules compared against real forks (metrics.md): name -> description
RULES = {"percentile": "window entropy >= the trace's 95th percentile (ARES)",
         "corpus": "window entropy in the run's top 20 % (Beyond the 80/20 rule)",
         "fixed": "window entropy >= a fixed tau",
         "lexicon": "a discourse token of the lexicon"}


def fork_predictors(store, run_id: int, eps: float = 0.3, w: int = 4, tau: float = 1.0,
                    lexicon: Sequence[str] | None = None) -> pd.DataFrame:
    """One row per swept position of a run's traces: trace_id, pos, fork_strength, and the
    predictors at that position: window entropy (next w tokens, nats, best estimator), token
    entropy, the lexicon flag, each rule's flag and score."""
    lexicon = list(lexicon if lexicon is not None else metrics.DEFAULT_LEXICON)
    corpus = store.run_window_entropy(int(run_id), "best", w)
    tau_corpus = metrics.forking_threshold(corpus, "corpus", 20.0, corpus=corpus)
    frames = []
    for tid in store.branched_traces(int(run_id))["trace_id"]:
        table, _ = position_table(store, int(tid), eps)
        if table.empty:
            continue
        tok = store.tokens(int(tid), with_alternatives=False)
        h = tok["entropy"].to_numpy(dtype=np.float64, na_value=np.nan)
        win = metrics.window_entropy(h, w).values
        lex = metrics.lexicon_mask(tok["token"].fillna("").astype(str).tolist(), lexicon)
        tau_p = metrics.forking_threshold(win, "percentile", 95.0)
        pct = bs.ranks(np.nan_to_num(win, nan=-np.inf)) / max(1, len(win))  # within-trace percentile rank
        p = table["pos"].to_numpy()
        frames.append(pd.DataFrame({
            "trace_id": int(tid), "pos": p, "fork_strength": table["fork_strength"].to_numpy(),
            "window_entropy": win[p], "token_entropy": h[p], "lexicon": lex[p],
            "percentile_flag": np.nan_to_num(win[p], nan=-np.inf) >= tau_p, "percentile_score": pct[p],
            "corpus_flag": np.nan_to_num(win[p], nan=-np.inf) >= tau_corpus, "corpus_score": win[p],
            "fixed_flag": np.nan_to_num(win[p], nan=-np.inf) >= tau, "fixed_score": win[p],
            "lexicon_flag": lex[p], "lexicon_score": lex[p].astype(float)}))
    cols = ["trace_id", "pos", "fork_strength", "window_entropy", "token_entropy", "lexicon"]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=cols)


def entropy_predicts_forks(pred: pd.DataFrame, level: float = 0.1, seed: int = 0) -> dict:
    """Does entropy predict forks? Over the rows of ``fork_predictors`` (one trace's or a run's):
    Spearman's rho (bootstrap 95 % interval) of window entropy, token entropy and the lexicon
    flag with fork strength; each rule's precision, recall and AUROC against real forks
    (fork strength >= ``level``)."""
    y = pred["fork_strength"].to_numpy(float)
    real = y >= level
    corr = {q: bs.correlation(pred[q].to_numpy(float), y, seed) for q in ("window_entropy", "token_entropy", "lexicon")}
    rules = {r: bs.rule_scores(pred[f"{r}_flag"].to_numpy(bool), pred[f"{r}_score"].to_numpy(float), real, seed)
             for r in RULES}
    return {"n": int(len(pred)), "real_forks": int(real.sum()), "level": float(level),
            "correlation": corr, "rules": rules}
