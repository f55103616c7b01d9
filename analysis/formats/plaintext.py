"""Plain-text traces without logprobs (JSON Lines or CSV with a prompt and a completion).

Each completion is teacher-forced through a local model (``record.score_completion``), which
gives the same per-token record as a generated trace: full-vocabulary entropy, the chosen
token's logprob and the top-k alternatives. A separate thinking field is joined to the answer
with the end-of-thinking marker, so the phases split as in a raw reasoning trace.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path
from typing import Any, Iterator

from ..trace import Trace
from .base import (Context, Problems, bad_utf8, Skip, check_text, flat_fields, map_metadata,
                   render_messages)

NAME = "plain_text"
TITLE = "Plain-text traces (prompt + completion, JSON Lines or CSV), scored by a local model"
PROMPT_FIELDS = ("prompt", "question", "problem", "input", "instruction", "query")
COMPLETION_FIELDS = ("completion", "response", "output", "generation", "model_output", "generated_text",
                     "text", "trace")
THINKING_FIELDS = ("reasoning", "reasoning_content", "thinking")


def sniff(obj: Any) -> float:
    if not isinstance(obj, dict):
        return 0.0
    if any(isinstance(obj.get(f), str) for f in COMPLETION_FIELDS):
        return 0.9 if any(isinstance(obj.get(f), str) for f in PROMPT_FIELDS) else 0.6
    msgs = obj.get("messages")
    if isinstance(msgs, list) and msgs and isinstance(msgs[-1], dict) and msgs[-1].get("role") == "assistant":
        return 0.8
    return 0.0


def csv_rows(path: Path, pr: Problems, limit: int | None = None) -> Iterator[tuple[int, dict]]:
    """(line, row dict) from a CSV file, streamed; a non-UTF-8 byte stops with a problem."""
    csv.field_size_limit(min(sys.maxsize, 1 << 30))
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        n = 0
        try:
            for row in reader:
                if None in row:
                    pr.add(f"{len(row[None])} more value(s) than the {len(reader.fieldnames)} columns",
                           line=reader.line_num)
                    continue
                yield reader.line_num, row
                n += 1
                if limit is not None and n >= limit:
                    return
        except UnicodeDecodeError as e:
            pr.add(bad_utf8(e), line=reader.line_num + 1)
        except csv.Error as e:
            pr.add(f"not valid CSV: {e}", line=reader.line_num)


def texts(obj: dict, field_map: dict | None) -> tuple[str, str, str | None]:
    """(prompt, completion, thinking) of a record; the user's mapping wins over the usual names."""
    fm = field_map or {}
    def pick(canon: str, names: tuple) -> str | None:
        if fm.get(canon):
            v = obj.get(fm[canon])
            return v if isinstance(v, str) else None
        return next((obj[n] for n in names if isinstance(obj.get(n), str)), None)
    prompt = pick("prompt", PROMPT_FIELDS)
    completion = pick("completion", COMPLETION_FIELDS)
    thinking = pick("thinking", THINKING_FIELDS)
    msgs = obj.get("messages")
    if completion is None and isinstance(msgs, list) and msgs and isinstance(msgs[-1], dict) \
            and msgs[-1].get("role") == "assistant":
        completion = msgs[-1].get("content") if isinstance(msgs[-1].get("content"), str) else None
        thinking = thinking or msgs[-1].get("reasoning_content") or msgs[-1].get("thinking")
        prompt = prompt if prompt is not None else render_messages(msgs[:-1])
    return prompt or "", completion, thinking if isinstance(thinking, str) else None


def _ints(v: Any) -> list[int] | None:
    ok = isinstance(v, list) and v and all(isinstance(x, int) and not isinstance(x, bool) for x in v)
    return v if ok else None


def file_tokens(obj: dict) -> tuple[list[int] | None, list[str | bytes] | None]:
    """The completion's own tokens where the record gives them: ids (``token_ids``, llama.cpp's
    ``tokens``, ``completion_probabilities[].id``) and each token's exact bytes or text
    (``completion_probabilities[].bytes`` / ``.token``); (None, None) when it gives none."""
    ids = _ints(obj.get("token_ids")) or _ints(obj.get("tokens"))
    pieces = None
    probs = obj.get("completion_probabilities")
    if isinstance(probs, list) and probs and all(isinstance(p, dict) for p in probs):
        ids = ids or _ints([p.get("id") for p in probs])
        raw = [p.get("bytes") for p in probs]
        if all(_ints(b) is not None and all(0 <= x < 256 for x in b) for b in raw):
            pieces = [bytes(b) for b in raw]
        elif all(isinstance(p.get("token"), str) for p in probs):
            pieces = [p["token"] for p in probs]
    return ids, pieces


def traces(values: Iterator[tuple[int, Any]], ctx: Context) -> Iterator[Trace]:
    from ..record import GenerationSettings, score_completion

    pr = ctx.problems
    settings = ctx.score_settings or GenerationSettings(do_sample=False, marker=ctx.marker)
    ctx.logprobs_at.add((settings.effective_temperature, "none"))  # teacher forcing: all logits at this T
    retok = {"traces": 0, "differ": 0, "tokens": 0}
    for line, obj in values:
        pr.line = line
        try:
            if not isinstance(obj, dict):
                pr.bad("the record", obj, "a JSON object with a prompt and a completion")
                raise Skip
            prompt, completion, thinking = texts(obj, ctx.field_map)
            if completion is None:
                pr.missing("completion", f"no text field among {', '.join(COMPLETION_FIELDS)}; "
                           "map the completion field")
                raise Skip
            if thinking:
                completion = f"{thinking}\n{ctx.marker}\n\n{completion}" if ctx.marker else thinking + completion
            skip = {*PROMPT_FIELDS, *COMPLETION_FIELDS, *THINKING_FIELDS, "messages"}
            meta = map_metadata(flat_fields(obj, skip), ctx.field_map)
            check_text(pr, [("the prompt", prompt), ("the completion (with its thinking)", completion),
                            ("the metadata", meta)])
            if ctx.lm is None:
                pr.add("plain-text traces need a local model to score them (none was given)")
                return
            ids, pieces = (None, None) if thinking else file_tokens(obj)  # a joined thinking field has no file tokens
            tr = score_completion(ctx.lm, prompt, completion, settings, metadata=meta, token_ids=ids,
                                  token_texts=pieces, vocab=ctx.vocab)
            report = tr.metadata.get("tokenization")
            if report and report["scored"] == "retokenised":
                retok["traces"] += 1
                retok["differ"] += report["differ"]
                retok["tokens"] += report["file_tokens"]
            tr.metadata.setdefault("scored_by", ctx.lm.name)
            sid = obj.get("id") if isinstance(obj.get("id"), (str, int)) and not isinstance(obj.get("id"), bool) else None
            tr.source_id = None if sid is None else str(sid)
            yield tr
        except Skip:
            continue
    if retok["traces"]:
        pr.line = None
        pr.warn(f"{retok['traces']} trace(s) give their own tokens, but {ctx.lm.name}'s tokenizer does not spell "
                f"their text with them: their text was re-tokenised and scored, and {retok['differ']} of the file's "
                f"{retok['tokens']} tokens differ from the re-tokenised ones")
