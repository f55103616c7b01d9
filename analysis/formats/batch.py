"""OpenAI Batch API and vLLM run-batch output files.

One JSON object per line: ``{id, custom_id, response: {status_code, request_id, body}, error}``
where ``body`` is a chat completion or a legacy completion. Output order is not guaranteed,
so traces are identified by ``custom_id``; given the batch *input* file too, each request's
prompt and settings are joined on ``custom_id``. A line with ``error`` set (or a non-200
status) is a failed request: it is reported, and the rest of the file is imported.
"""

from __future__ import annotations

from typing import Any, Iterator

from ..trace import Trace
from . import completions, openai_chat
from .base import Context, Skip, get, guarded, show

NAME = "openai_batch"
TITLE = "OpenAI / vLLM Batch API output (joined on custom_id)"
INPUT_NAME = "openai_batch_input"


def sniff(obj: Any) -> float:
    if isinstance(obj, dict) and "custom_id" in obj and ("response" in obj or "error" in obj):
        return 1.0
    return 0.0


def sniff_input(obj: Any) -> float:
    """A batch *input* line: ``{custom_id, method, url, body}``."""
    if isinstance(obj, dict) and "custom_id" in obj and "body" in obj and "url" in obj:
        return 1.0
    return 0.0


def read_requests(values: Iterator[tuple[int, Any]], ctx: Context) -> dict[str, dict]:
    """custom_id -> request body, from a batch input file."""
    out: dict[str, dict] = {}
    pr = ctx.problems
    for line, obj in values:
        pr.line = line
        if not isinstance(obj, dict) or not isinstance(obj.get("body"), dict):
            pr.bad("body", obj.get("body") if isinstance(obj, dict) else obj, "an object (the request)")
            continue
        out[str(obj.get("custom_id"))] = obj["body"]
    return out


def traces(values: Iterator[tuple[int, Any]], ctx: Context) -> Iterator[Trace]:
    pr = ctx.problems
    for line, obj in values:
        pr.line = line
        try:
            if not isinstance(obj, dict):
                pr.bad("the record", obj, "a JSON object (a batch output line)")
                continue
            cid = obj.get("custom_id")
            if not isinstance(cid, (str, int)):
                pr.bad("custom_id", cid, "a string")
                continue
            cid = str(cid)
            if obj.get("error"):
                err = obj["error"]
                msg = err.get("message") if isinstance(err, dict) else err
                pr.warn(f"request {cid} failed: {show(msg, 120)} (not imported)")
                continue
            resp = get(obj, "response", "response", pr, dict)
            status = resp.get("status_code", 200)
            if not isinstance(resp.get("body"), dict) and status != 200:
                pr.warn(f"request {cid} failed with status {show(status)} (not imported)")
                continue
            body = get(resp, "body", "response.body", pr, dict)
            if status != 200:
                err = body["error"] if isinstance(body.get("error"), dict) else {}
                pr.warn(f"request {cid} failed with status {status}: {show(err.get('message'), 120)} (not imported)")
                continue
            request = (ctx.requests or {}).get(cid)
            request = request if isinstance(request, dict) else None
            mod = completions if completions.sniff(body) >= 1.0 else openai_chat
            for t in guarded(pr, mod.parse, body, _Prefixed(ctx), source_id=cid, request=request) or []:
                t.metadata.setdefault("custom_id", cid)
                yield t
        except Skip:
            continue


class _Prefixed(Context):
    """The same context with field paths under ``response.body`` (so errors point at the line's field)."""

    def __init__(self, ctx: Context):
        self.__dict__.update(ctx.__dict__)
        self.problems = _PrefixedProblems(ctx.problems)


class _PrefixedProblems:
    def __init__(self, pr):
        self._pr = pr

    def __getattr__(self, name):
        return getattr(self._pr, name)

    def __setattr__(self, name, value):
        if name == "_pr":
            object.__setattr__(self, name, value)
        else:
            setattr(self._pr, name, value)

    def bad(self, path, value, expected, line=None):
        self._pr.bad(f"response.body.{path}", value, expected, line)

    def at(self, path, message, line=None, warn=False):
        self._pr.at(f"response.body.{path}", message, line, warn)

    def missing(self, path, what=""):
        self._pr.missing(f"response.body.{path}", what)
