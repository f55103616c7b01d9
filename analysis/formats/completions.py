"""OpenAI legacy Completions with logprobs (vLLM's /v1/completions).

``choices[i].logprobs = {tokens, token_logprobs, top_logprobs, text_offset}``. Alternatives are
a dict keyed by text, so two alternatives with the same text have already collapsed into one
in the file; ``token_logprobs`` holds null for the first prompt token when the prompt is echoed.
"""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np

from ..trace import Trace
from .base import (Context, Skip, Tokens, Where, check_tokens, choice_trace, choices_record, each_record, get,
                   is_number, repair, show, with_thinking)

NAME = "openai_completions"
TITLE = "OpenAI legacy Completions (vLLM /v1/completions)"
_SKIP_FIELDS = ("id", "object", "created", "choices", "usage", "system_fingerprint", "prompt",
                "prompt_logprobs", "prompt_token_ids")


def sniff(obj: Any) -> float:
    if not isinstance(obj, dict):
        return 0.0
    ch = obj.get("choices")
    if not (isinstance(ch, list) and ch and isinstance(ch[0], dict)):
        return 0.0
    if "text" in ch[0] and "message" not in ch[0]:
        lp = ch[0].get("logprobs")
        return 1.0 if isinstance(lp, dict) and "tokens" in lp else 0.7
    return 0.3 if obj.get("object") == "text_completion" else 0.0


def traces(values: Iterator[tuple[int, Any]], ctx: Context) -> Iterator[Trace]:
    return each_record(values, ctx, parse)


def parse(obj: Any, ctx: Context, source_id: str | None = None, request: dict | None = None) -> list[Trace]:
    pr = ctx.problems
    choices, prompt, meta, rid = choices_record(obj, ctx, "a completion", _SKIP_FIELDS, source_id, request,
                                                ("prompt",))
    out = []
    for i, ch in enumerate(choices):
        p = f"choices[{i}]"
        try:
            lp = get(ch, "logprobs", f"{p}.logprobs", pr, dict,
                     what="the server was not asked for logprobs; import the text with --format plain_text")
            t = _read(lp, f"{p}.logprobs", pr)
            t = repair(t)
            # an echoed prompt comes first in the tokens: drop it when the prompt text is known
            if prompt and t.n and "".join(t.tokens).startswith(prompt):
                t = _drop_prefix(t, prompt)
            thinking = ch.get("reasoning_content") or ch.get("reasoning")
            t, boundary, info = with_thinking(t, thinking if isinstance(thinking, str) else None,
                                              ch.get("text"), ctx.marker)
            out.append(choice_trace(t, ctx, prompt=prompt, boundary=boundary, meta={**meta, **info}, ch=ch, i=i,
                                    n=len(choices), rid=rid))
        except Skip:
            continue
    return out


def _read(lp: dict, path: str, pr) -> Tokens:
    toks = lp.get("tokens")
    vals = lp.get("token_logprobs")
    tops = lp.get("top_logprobs")
    ok = True
    if not isinstance(toks, list):
        pr.bad(f"{path}.tokens", toks, "a list of strings") if toks is not None else pr.missing(f"{path}.tokens")
        raise Skip
    n = len(toks)
    if not isinstance(vals, list) or len(vals) != n:
        pr.bad(f"{path}.token_logprobs", vals if not isinstance(vals, list) else f"a list of {len(vals)}",
               f"a list of {n} numbers (one per token)")
        raise Skip
    if tops is None:
        tops = [None] * n
    elif not isinstance(tops, list) or len(tops) != n:
        pr.bad(f"{path}.top_logprobs", tops if not isinstance(tops, list) else f"a list of {len(tops)}",
               f"a list of {n} objects or nulls (one per token)")
        raise Skip
    for j, s in enumerate(toks):
        if not isinstance(s, str):
            pr.bad(f"{path}.tokens[{j}]", s, "a string")
            ok = False
    for j, v in enumerate(vals):
        if not (v is None or is_number(v)):
            pr.bad(f"{path}.token_logprobs[{j}]", v, "a number")
            ok = False
    for j, d in enumerate(tops):
        if d is None:
            continue
        if not isinstance(d, dict):
            pr.bad(f"{path}.top_logprobs[{j}]", d, "an object {token text: logprob} or null")
            ok = False
            continue
        for key, v in d.items():
            if not (v is None or is_number(v)):
                pr.add(f"{path}.top_logprobs[{j}][{show(key)}] is {show(v)}, expected a number")
                ok = False
    if not ok:
        raise Skip
    lps = np.array([np.nan if v is None else v for v in vals], dtype=np.float64)
    k = max((len(d) for d in tops if d), default=0)
    t = Tokens(list(toks), lps)
    if k:
        top_lp = np.full((n, k), -np.inf)
        top_tok: list[list[str]] = []
        for j, d in enumerate(tops):
            if d:
                top_tok.append(list(d.keys()))
                top_lp[j, : len(d)] = [-np.inf if v is None else v for v in d.values()]
            else:
                top_tok.append([])
        t = Tokens(t.tokens, lps, None, top_tok, top_lp)
    alt = f"{path}.top_logprobs[{{i}}][{{text}}]"
    check_tokens(t, pr, Where(f"{path}.tokens[{{i}}]", f"{path}.token_logprobs[{{i}}]", f"{path}.top_logprobs[{{i}}]",
                              alt, f"{alt} (its key)", alt))
    return t


def _drop_prefix(t: Tokens, prefix: str) -> Tokens:
    starts = np.cumsum([0] + [len(s) for s in t.tokens])
    cut = int(np.searchsorted(starts, len(prefix), side="left"))
    if starts[min(cut, t.n)] != len(prefix):
        return t  # the prompt does not end on a token boundary: keep everything
    sl = slice(cut, None)
    return Tokens(t.tokens[sl], t.logprobs[sl], None if t.token_ids is None else t.token_ids[sl],
                  None if t.top_tokens is None else t.top_tokens[sl],
                  None if t.top_logprobs is None else t.top_logprobs[sl],
                  None if t.top_ids is None else t.top_ids[sl],
                  None if t.byte_rows is None else t.byte_rows[sl])
