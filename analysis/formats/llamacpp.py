"""llama.cpp server ``/completion`` output with ``n_probs``.

Three shapes of ``completion_probabilities`` entries are read:
current ``{id, token, bytes, logprob, top_logprobs: [{id, token, bytes, logprob}]}``;
with ``post_sampling_probs: true`` ``{id, token, bytes, prob, top_probs: [...]}`` (linear
probabilities after the samplers, so a top-k estimate describes the truncated distribution);
and older builds' ``{content, probs: [{tok_str, prob}]}``. Streamed responses (one record per
piece, ``stop: false`` until the last) are joined.
"""

from __future__ import annotations

from typing import Any, Iterator

from ..trace import Trace
from .base import (Context, Keys, Skip, Tokens, flat_fields, guarded, map_metadata, prompt_from, read_tokens, repair,
                   to_trace, with_thinking)

NAME = "llamacpp"
TITLE = "llama.cpp server /completion (completion_probabilities)"
CURRENT = Keys(id="id")
POST_SAMPLING = Keys(logprob="prob", top="top_probs", alt_logprob="prob", id="id", probs=True)
OLD = Keys(token="content", logprob="__none__", top="probs", alt_token="tok_str", alt_logprob="prob",
           bytes=None, probs=True)
_SKIP_FIELDS = ("content", "completion_probabilities", "tokens", "generation_settings", "timings", "prompt",
                "stop", "stopping_word", "tokens_cached", "tokens_evaluated", "tokens_predicted", "truncated",
                "index", "id_slot", "has_new_line", "stop_type", "stopped_eos", "stopped_limit", "stopped_word")


def sniff(obj: Any) -> float:
    if isinstance(obj, dict) and "completion_probabilities" in obj:
        return 1.0
    if isinstance(obj, dict) and "content" in obj and ("tokens_predicted" in obj or "generation_settings" in obj):
        return 0.7
    return 0.0


def traces(values: Iterator[tuple[int, Any]], ctx: Context) -> Iterator[Trace]:
    pr = ctx.problems
    piece: tuple[int, dict] | None = None
    for line, obj in values:
        pr.line = line
        if isinstance(obj, dict) and obj.get("stop") is False:  # a streamed piece
            if piece is None:
                piece = (line, {**obj, "content": "", "completion_probabilities": []})
            merged = piece[1]
            merged["content"] += obj.get("content") or "" if isinstance(obj.get("content"), str) else ""
            if isinstance(obj.get("completion_probabilities"), list):
                merged["completion_probabilities"].extend(obj["completion_probabilities"])
            continue
        if piece is not None and isinstance(obj, dict) and obj.get("stop") is True and \
                not obj.get("completion_probabilities") and not obj.get("content"):
            merged = {**obj, "content": piece[1]["content"],
                      "completion_probabilities": piece[1]["completion_probabilities"]}
            pr.line = piece[0]
            piece = None
            yield from _safe(merged, ctx)
            continue
        if piece is not None:
            pr.line = piece[0]
            yield from _safe(piece[1], ctx)
            piece = None
            pr.line = line
        yield from _safe(obj, ctx)
    if piece is not None:
        pr.line = piece[0]
        pr.warn("a streamed response without its final stop record (cut off); imported as far as it goes")
        yield from _safe(piece[1], ctx)


def _safe(obj: Any, ctx: Context) -> list[Trace]:
    t = guarded(ctx.problems, parse, obj, ctx)
    return [] if t is None else [t]


def parse(obj: Any, ctx: Context) -> Trace:
    pr = ctx.problems
    if not isinstance(obj, dict):
        pr.bad("the record", obj, "a JSON object (a llama.cpp /completion response)")
        raise Skip
    entries = obj.get("completion_probabilities")
    if entries is None:
        pr.missing("completion_probabilities", "the request needs n_probs > 0")
        raise Skip
    if not isinstance(entries, list):
        pr.bad("completion_probabilities", entries, "a list")
        raise Skip
    first = entries[0] if entries and isinstance(entries[0], dict) else {}
    meta_extra = {}
    gs = obj.get("generation_settings")
    if "probs" in first or ("content" in first and "token" not in first):
        t = _read_old(entries, pr)
        meta_extra["probabilities"] = "old llama.cpp probs (linear)"
        ctx.logprobs_at.add((None, None))
    elif "top_probs" in first or "prob" in first:
        t = read_tokens(entries, "completion_probabilities", pr, POST_SAMPLING)
        meta_extra["probabilities"] = "post-sampling (truncated by the samplers)"
        temp = gs.get("temperature") if isinstance(gs, dict) else None
        ctx.logprobs_at.add((temp if isinstance(temp, (int, float)) and not isinstance(temp, bool) and temp > 0
                             else None, "llama.cpp sampler chain"))
    else:
        t = read_tokens(entries, "completion_probabilities", pr, CURRENT)
        ctx.logprobs_at.add((1.0, "none"))  # n_probs: the softmax of the raw logits
    t = repair(t)
    fields = flat_fields(obj, _SKIP_FIELDS)
    if isinstance(gs, dict):
        fields.update({f"request.{k}": v for k, v in gs.items() if isinstance(v, (int, float, str, bool))})
    meta = {**map_metadata(fields, ctx.field_map), **meta_extra}
    thinking = obj.get("reasoning_content") if isinstance(obj.get("reasoning_content"), str) else None
    t, boundary, info = with_thinking(t, thinking, obj.get("content"), ctx.marker)
    meta.update(info)
    sid = obj.get("id") if isinstance(obj.get("id"), str) else None
    return to_trace(t, prompt=prompt_from(obj), boundary=boundary, marker=ctx.marker, source_id=sid,
                    metadata=meta, vocab=ctx.vocab, local=ctx.local, problems=ctx.problems)


def _read_old(entries: list, pr) -> Tokens:
    """``[{content, probs: [{tok_str, prob}]}]``: the chosen token's probability is its entry in probs."""
    t = read_tokens([{**e, "__none__": None} if isinstance(e, dict) else e for e in entries],
                    "completion_probabilities", pr, OLD)
    lp = t.logprobs.copy()
    if t.top_tokens is not None:
        for i, (s, row) in enumerate(zip(t.tokens, t.top_tokens)):
            if s in row:
                lp[i] = t.top_logprobs[i, row.index(s)]
    t.logprobs = lp
    return t
