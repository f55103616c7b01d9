"""Ollama native ``/api/generate`` and ``/api/chat`` with ``logprobs: true`` (0.12.11 and later).

A top-level ``logprobs: [{token, logprob, bytes, top_logprobs}]`` sits next to ``response``
(generate) or ``message`` (chat); the thinking is in ``thinking`` / ``message.thinking``.
Streamed responses are one object per line, each with a piece of the text and logprobs,
until the one with ``done: true``; the pieces are joined into one trace.
"""

from __future__ import annotations

from typing import Any, Iterator

from ..trace import Trace
from .base import (Context, Keys, Skip, flat_fields, guarded, map_metadata, prompt_from, read_tokens, repair, to_trace,
                   with_thinking)

NAME = "ollama"
TITLE = "Ollama /api/generate and /api/chat (also streamed NDJSON)"
_SKIP_FIELDS = ("response", "message", "thinking", "logprobs", "done", "context", "created_at", "total_duration",
                "load_duration", "prompt_eval_count", "prompt_eval_duration", "eval_count", "eval_duration", "prompt")


def sniff(obj: Any) -> float:
    if not isinstance(obj, dict) or "done" not in obj:
        return 0.0
    if isinstance(obj.get("message"), dict) or isinstance(obj.get("response"), str):
        return 1.0 if "logprobs" in obj else 0.7
    return 0.0


def traces(values: Iterator[tuple[int, Any]], ctx: Context) -> Iterator[Trace]:
    pr = ctx.problems
    acc: tuple[int, dict] | None = None
    for line, obj in values:
        pr.line = line
        if not isinstance(obj, dict):
            pr.bad("the record", obj, "a JSON object (an Ollama response)")
            continue
        if acc is None:
            acc = (line, {**obj, "response": "", "thinking": "", "content": "", "logprobs": []})
        merged = acc[1]
        msg = obj.get("message") if isinstance(obj.get("message"), dict) else {}
        for key, val in (("response", obj.get("response")), ("content", msg.get("content")),
                         ("thinking", obj.get("thinking")), ("thinking", msg.get("thinking"))):
            if isinstance(val, str):
                merged[key] += val
        lp = obj.get("logprobs")
        if isinstance(lp, list):
            merged["logprobs"].extend(lp)
        elif lp is not None:
            pr.bad("logprobs", lp, "a list")
        if obj.get("done") is not False:
            merged.update({k: v for k, v in obj.items() if k not in ("response", "message", "thinking", "logprobs")})
            merged["chat"] = "message" in obj
            pr.line = acc[0]
            acc = None
            t = guarded(pr, parse, merged, ctx)
            if t is not None:
                yield t
    if acc is not None:
        pr.line = acc[0]
        pr.warn("a streamed response without its done: true record (cut off); imported as far as it goes")
        t = guarded(pr, parse, acc[1], ctx)
        if t is not None:
            yield t


def parse(merged: dict, ctx: Context) -> Trace:
    pr = ctx.problems
    if not merged["logprobs"] and (merged["response"] or merged["content"]):
        pr.missing("logprobs", "the request needs \"logprobs\": true (Ollama 0.12.11 or later); or import the "
                   "text with --format plain_text")
        raise Skip
    t = repair(read_tokens(merged["logprobs"], "logprobs", pr, Keys()))
    answer = merged["content"] if merged.get("chat") else merged["response"]
    t, boundary, info = with_thinking(t, merged["thinking"] or None, answer, ctx.marker)
    meta = {**map_metadata(flat_fields(merged, _SKIP_FIELDS + ("content", "chat")), ctx.field_map), **info}
    if merged.get("done_reason"):
        meta["finish_reason"] = merged["done_reason"]
    return to_trace(t, prompt=prompt_from(merged), boundary=boundary, marker=ctx.marker,
                    source_id=None, metadata=meta, vocab=ctx.vocab, local=ctx.local, problems=ctx.problems)
