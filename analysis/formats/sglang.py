"""SGLang native ``/generate`` output with ``return_logprob: true``.

``meta_info.output_token_logprobs`` holds ``[logprob, token_id, text]`` per token (text is
null unless ``return_text_in_logprobs``) and ``meta_info.output_top_logprobs`` a list of such
tuples per token (or null). A batched request's response is a JSON array of these. The text
is the raw output, so an inline ``<think>`` span splits at its marker.
"""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np

from ..trace import Trace
from .base import (Context, each_record, Skip, Tokens, Where, check_tokens, flat_fields, is_number, map_metadata,
                   prompt_from, repair, show, to_trace)

NAME = "sglang"
TITLE = "SGLang native /generate (meta_info logprob tuples)"


def sniff(obj: Any) -> float:
    if isinstance(obj, dict) and isinstance(obj.get("meta_info"), dict):
        return 1.0 if "output_token_logprobs" in obj["meta_info"] else 0.7
    return 0.0


def traces(values: Iterator[tuple[int, Any]], ctx: Context) -> Iterator[Trace]:
    return each_record(values, ctx, parse)


def parse(obj: Any, ctx: Context) -> Trace:
    pr = ctx.problems
    if not isinstance(obj, dict) or not isinstance(obj.get("meta_info"), dict):
        pr.bad("meta_info", obj.get("meta_info") if isinstance(obj, dict) else obj, "an object")
        raise Skip
    mi = obj["meta_info"]
    toks = mi.get("output_token_logprobs")
    if toks is None:
        pr.missing("meta_info.output_token_logprobs", "the request needs return_logprob: true")
        raise Skip
    if not isinstance(toks, list):
        pr.bad("meta_info.output_token_logprobs", toks, "a list of [logprob, token_id, text]")
        raise Skip
    tops = mi.get("output_top_logprobs")
    if tops is not None and (not isinstance(tops, list) or len(tops) != len(toks)):
        pr.bad("meta_info.output_top_logprobs", tops if not isinstance(tops, list) else f"a list of {len(tops)}",
               f"a list of {len(toks)} lists (one per token)")
        raise Skip
    n = len(toks)
    ok = True
    lps = np.full(n, np.nan)
    ids = np.full(n, -1, dtype=np.int64)
    texts: list[str | None] = [None] * n
    for i, tup in enumerate(toks):
        if not _tuple_ok(tup, f"meta_info.output_token_logprobs[{i}]", pr):
            ok = False
            continue
        lps[i] = np.nan if tup[0] is None else tup[0]
        ids[i] = tup[1]
        texts[i] = tup[2] if len(tup) > 2 else None
    k = max((len(r) for r in tops or [] if isinstance(r, list)), default=0)
    top_lp = np.full((n, k), -np.inf) if k else None
    top_ids = np.full((n, k), -1, dtype=np.int64) if k else None
    top_tok: list[list[str]] = [[] for _ in range(n)]
    for i, row in enumerate(tops or []):
        if row is None:
            continue
        if not isinstance(row, list):
            pr.bad(f"meta_info.output_top_logprobs[{i}]", row, "a list of [logprob, token_id, text]")
            ok = False
            continue
        for j, tup in enumerate(row):
            if not _tuple_ok(tup, f"meta_info.output_top_logprobs[{i}][{j}]", pr):
                ok = False
                continue
            top_lp[i, j] = -np.inf if tup[0] is None else tup[0]
            top_ids[i, j] = tup[1]
            top_tok[i].append(tup[2] if len(tup) > 2 and tup[2] is not None else "")
    if not ok:
        raise Skip
    if any(s is None for s in texts):
        if ctx.lm is None:
            pr.add("meta_info.output_token_logprobs has no token text (a null third element); request "
                   "return_text_in_logprobs: true, or give a model (--model) whose tokenizer decodes the ids")
            raise Skip
        from ..record import VocabText, token_pieces
        texts = token_pieces(ctx.lm.tokenizer, ids.tolist())
        if k:
            dec = VocabText(ctx.lm.tokenizer)(np.unique(top_ids[top_ids >= 0]).tolist())
            top_tok = [[dec.get(int(x), "") for x in row if x >= 0] for row in top_ids]
    t = Tokens(list(texts), lps, ids, top_tok if k else None, top_lp, top_ids)
    alt = "meta_info.output_top_logprobs[{i}][{j}]"
    check_tokens(t, pr, Where("meta_info.output_token_logprobs[{i}][2]", "meta_info.output_token_logprobs[{i}][0]",
                              "meta_info.output_top_logprobs[{i}]", alt, f"{alt}[2]", f"{alt}[0]"))
    t = repair(t)
    fields = flat_fields(obj, ("text", "meta_info", "output_ids", "prompt"))
    fields.update({f"request.{a}": b for a, b in mi.items() if isinstance(b, (str, int, float, bool))})
    meta = map_metadata(fields, ctx.field_map)
    if isinstance(mi.get("finish_reason"), dict):
        meta["finish_reason"] = mi["finish_reason"].get("type")
    sid = mi.get("id") if isinstance(mi.get("id"), str) else None
    return to_trace(t, prompt=prompt_from(obj), marker=ctx.marker, source_id=sid, metadata=meta,
                    vocab=ctx.vocab, local=ctx.local, problems=ctx.problems)


def _tuple_ok(tup: Any, path: str, pr) -> bool:
    if not isinstance(tup, list) or len(tup) < 2:
        pr.bad(path, tup, "a [logprob, token_id, text] list")
        return False
    good = True
    if not (tup[0] is None or is_number(tup[0])):
        pr.add(f"{path}[0] (logprob) is {show(tup[0])}, expected a number")
        good = False
    if type(tup[1]) is not int:
        pr.add(f"{path}[1] (token id) is {show(tup[1])}, expected an integer")
        good = False
    if len(tup) > 2 and not (tup[2] is None or isinstance(tup[2], str)):
        pr.add(f"{path}[2] (token text) is {show(tup[2])}, expected a string")
        good = False
    return good
