"""OpenAI Responses API output with ``include: ["message.output_text.logprobs"]``.

``output[] -> {type: "message", content[] -> {type: "output_text", text, logprobs: [...]}}``.
Reasoning items carry a summary, not tokens: the summary is kept in the metadata and every
token counts as answer (the boundary is 0).
"""

from __future__ import annotations

from typing import Any, Iterator

from ..trace import Trace
from .base import (Context, each_record, Keys, Skip, Tokens, flat_fields, get, map_metadata, prompt_from, read_tokens,
                   repair, to_trace)

NAME = "openai_responses"
TITLE = "OpenAI Responses API (output_text logprobs)"
_SKIP_FIELDS = ("id", "object", "created_at", "output", "usage", "output_text", "status", "instructions",
                "reasoning", "text", "tools", "tool_choice", "input")


def sniff(obj: Any) -> float:
    if not isinstance(obj, dict):
        return 0.0
    if obj.get("object") == "response":
        return 1.0
    out = obj.get("output")
    if isinstance(out, list) and out and isinstance(out[0], dict) and "type" in out[0]:
        return 0.9
    return 0.0


def traces(values: Iterator[tuple[int, Any]], ctx: Context) -> Iterator[Trace]:
    return each_record(values, ctx, parse)


def parse(obj: Any, ctx: Context) -> Trace:
    pr = ctx.problems
    if not isinstance(obj, dict):
        pr.bad("the record", obj, "a JSON object (a response)")
        raise Skip
    output = get(obj, "output", "output", pr, list)
    t = Tokens.empty()
    summaries = []
    found = False
    for i, item in enumerate(output):
        if not isinstance(item, dict):
            pr.bad(f"output[{i}]", item, "an object")
            raise Skip
        if item.get("type") == "reasoning":
            for s in item.get("summary") or []:
                if isinstance(s, dict) and isinstance(s.get("text"), str):
                    summaries.append(s["text"])
            continue
        if item.get("type") != "message":
            continue
        for j, part in enumerate(item.get("content") or []):
            if not isinstance(part, dict) or part.get("type") != "output_text":
                continue
            found = True
            lp = part.get("logprobs")
            if lp is None:
                pr.missing(f"output[{i}].content[{j}].logprobs",
                           'the request needs include: ["message.output_text.logprobs"]')
                raise Skip
            t = t.concat(read_tokens(lp, f"output[{i}].content[{j}].logprobs", pr, Keys()))
    if not found:
        pr.missing("output[].content[] of type output_text")
        raise Skip
    t = repair(t)
    meta = map_metadata(flat_fields(obj, _SKIP_FIELDS), ctx.field_map)
    boundary = None
    if summaries or any(isinstance(x, dict) and x.get("type") == "reasoning" for x in output):
        meta["reasoning_summary"] = "\n\n".join(summaries)
        meta["thinking_source"] = "summary only"
        boundary = 0
    sid = obj.get("id") if isinstance(obj.get("id"), str) else None
    prompt = prompt_from(obj) or (obj["instructions"] if isinstance(obj.get("instructions"), str) else "")
    return to_trace(t, prompt=prompt, boundary=boundary, marker=ctx.marker, source_id=sid, metadata=meta,
                    vocab=ctx.vocab, local=ctx.local, problems=ctx.problems)
