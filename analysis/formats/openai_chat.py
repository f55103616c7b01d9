"""OpenAI Chat Completions with logprobs, as OpenAI, vLLM, SGLang, llama.cpp and Ollama serve it.

Per choice: ``choices[i].logprobs.content = [{token, logprob, bytes, top_logprobs}]``, with the
servers' extras: vLLM's ``token_ids`` and ``token_id:N`` tokens, llama.cpp's per-token ``id``,
the thinking in ``message.reasoning`` / ``reasoning_content`` / ``thinking`` or inline
``<think>``. Streamed ``chat.completion.chunk`` records are joined into one response.
"""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np

from ..trace import Trace
from .base import (THINKING_FIELDS, Context, Keys, Skip, choice_trace, choices_record, guarded, read_tokens,
                   repair, with_thinking)

NAME = "openai_chat"
TITLE = "OpenAI Chat Completions (also vLLM, SGLang, llama.cpp and Ollama OpenAI routes)"
KEYS = Keys(id="id")
_SKIP_FIELDS = ("id", "object", "created", "choices", "usage", "system_fingerprint", "service_tier",
                "prompt", "messages", "prompt_logprobs", "prompt_token_ids", "kv_transfer_params")


def sniff(obj: Any) -> float:
    """1 for a chat completion with logprobs; less for one that only resembles it."""
    if not isinstance(obj, dict):
        return 0.0
    ch = obj.get("choices")
    if obj.get("object") in ("chat.completion", "chat.completion.chunk"):
        return 1.0 if _has_logprobs(ch) else 0.7
    if isinstance(ch, list) and ch and isinstance(ch[0], dict) and ("message" in ch[0] or "delta" in ch[0]):
        return 1.0 if _has_logprobs(ch) else 0.7
    return 0.0


def _has_logprobs(choices: Any) -> bool:
    return (isinstance(choices, list) and bool(choices) and isinstance(choices[0], dict)
            and isinstance(choices[0].get("logprobs"), dict))


def traces(values: Iterator[tuple[int, Any]], ctx: Context) -> Iterator[Trace]:
    pr = ctx.problems
    pending: dict[str, tuple[int, dict]] = {}
    for line, obj in values:
        pr.line = line
        if isinstance(obj, dict) and obj.get("object") == "chat.completion.chunk":
            done = guarded(pr, _add_chunk, pending, line, obj)
            if done is not None:
                pr.line = done[0]
                yield from _safe(done[1], ctx)
            continue
        yield from _safe(obj, ctx)
    for line, merged in pending.values():
        pr.line = line
        pr.warn("a streamed response without a finish_reason (the stream was cut off); imported as far as it goes")
        yield from _safe(merged, ctx)


def _safe(obj: Any, ctx: Context) -> list[Trace]:
    return guarded(ctx.problems, parse, obj, ctx) or []


def _add_chunk(pending: dict, line: int, chunk: dict) -> tuple[int, dict] | None:
    """Fold one streamed chunk into its response; return the response once it is finished."""
    rid = str(chunk.get("id"))
    first_line, merged = pending.setdefault(rid, (line, {**{k: v for k, v in chunk.items() if k != "choices"},
                                                         "object": "chat.completion", "choices": []}))
    finished = False
    for ch in chunk.get("choices") or []:
        if not isinstance(ch, dict):
            continue
        idx = ch.get("index", 0)
        while len(merged["choices"]) <= idx:
            merged["choices"].append({"index": len(merged["choices"]), "message": {}, "logprobs": None,
                                      "finish_reason": None})
        m = merged["choices"][idx]
        delta = ch.get("delta") or {}
        for key in ("content", *THINKING_FIELDS):
            if isinstance(delta.get(key), str):
                m["message"][key] = m["message"].get(key, "") + delta[key]
        lp = ch.get("logprobs")
        if isinstance(lp, dict) and isinstance(lp.get("content"), list):
            if m["logprobs"] is None:
                m["logprobs"] = {"content": []}
            m["logprobs"]["content"].extend(lp["content"])
        if isinstance(ch.get("token_ids"), list):
            m.setdefault("token_ids", []).extend(ch["token_ids"])
        if ch.get("finish_reason") is not None:
            m["finish_reason"] = ch["finish_reason"]
    if merged["choices"] and all(c["finish_reason"] is not None for c in merged["choices"]):
        finished = True
    if finished:
        del pending[rid]
        return first_line, merged
    return None


def parse(obj: Any, ctx: Context, source_id: str | None = None, request: dict | None = None) -> list[Trace]:
    """Traces (one per choice) of one chat completion object."""
    pr = ctx.problems
    choices, prompt, meta, rid = choices_record(obj, ctx, "a chat completion", _SKIP_FIELDS, source_id, request,
                                                ("messages", "prompt"))
    out = []
    for i, ch in enumerate(choices):
        p = f"choices[{i}]"
        try:
            if not isinstance(ch, dict):
                pr.bad(p, ch, "an object")
                continue
            msg = ch.get("message") or ch.get("delta") or {}
            if not isinstance(msg, dict):
                pr.bad(f"{p}.message", msg, "an object")
                continue
            lp = ch.get("logprobs")
            if lp is None:
                pr.missing(f"{p}.logprobs", "the server was not asked for logprobs; import the text with "
                           "--format plain_text to score it with a local model")
                continue
            if not isinstance(lp, dict):
                pr.bad(f"{p}.logprobs", lp, "an object")
                continue
            entries, where = lp.get("content"), f"{p}.logprobs.content"
            if entries is None and lp.get("refusal") is not None:
                entries, where = lp["refusal"], f"{p}.logprobs.refusal"
            if entries is None:
                pr.missing(where)
                continue
            # the columnar fast path (fastchat) hands over the token columns already cut out
            t = read_tokens(entries, where, pr, KEYS)
            tids = ch.get("token_ids")
            if isinstance(tids, list) and len(tids) == t.n and all(type(x) is int for x in tids):
                t.token_ids = np.asarray(tids, dtype=np.int64)
            t = repair(t)
            thinking = next((msg[f] for f in THINKING_FIELDS if isinstance(msg.get(f), str) and msg[f]), None)
            t, boundary, info = with_thinking(t, thinking, msg.get("content"), ctx.marker)
            out.append(choice_trace(t, ctx, prompt=prompt, boundary=boundary, meta={**meta, **info}, ch=ch, i=i,
                                    n=len(choices), rid=rid))
        except Skip:
            continue
    return out
