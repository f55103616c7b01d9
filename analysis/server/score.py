"""Teacher forcing through a server: the logprobs a served model gives a text it did not write.

Scores a prompt and completion pair as one text through the routes that return the logprobs
of the input: ``/v1/completions`` with ``echo`` and ``logprobs`` (vLLM; llama-cpp-python's
server started with ``--logits_all true``), or SGLang's native ``/generate`` with
``logprob_start_len: 0`` and ``max_new_tokens: 0``. The answer is cut to the completion's
tokens and read by the trace-file reader of that response shape (``completions``, ``sglang``).
The scored text is the prompt followed by the completion, as given (no chat template: the
server's completion routes take text). Servers without input logprobs (llama-server, Ollama,
OpenAI) get a clear message.
"""

from __future__ import annotations

import concurrent.futures as cf
from typing import Callable, Iterable, Iterator

from ..formats.base import Context, Problems, guarded
from ..settings import THINK_MARKER
from ..trace import Trace
from .http import ServerError
from .servers import NO_TEACHER_FORCING, TEACHER_FORCING, Server

SOURCE = "score:server"


def check_scoring(server: Server) -> str:
    """The way ``server`` teacher-forces, or ServerError saying why it cannot."""
    how = TEACHER_FORCING.get(server.kind)
    if how is None:
        raise ServerError(f"{server.client.url} ({server.kind}): cannot score given texts: "
                          f"{NO_TEACHER_FORCING.get(server.kind, NO_TEACHER_FORCING['openai'])}")
    return how


def score_text(server: Server, prompt: str, completion: str, *, marker: str = THINK_MARKER,
               metadata: dict | None = None, label: str = "", vocab: dict | None = None) -> Trace:
    """The trace of ``completion`` after ``prompt`` as the served model scores it (top-k
    logprobs at T = 1; the first scored token is the completion's first)."""
    how = check_scoring(server)
    full = prompt + completion
    label = label or "scoring request"
    if how == "sglang":
        body = {"text": full, "sampling_params": {"max_new_tokens": 0, "temperature": 0.0},
                "return_logprob": True, "logprob_start_len": 0, "top_logprobs_num": int(server.top_k),
                "return_text_in_logprobs": True}
        if server.model:
            body["model"] = server.model
        resp = _post(server, "/generate", body, label)
        rec = _sglang_record(resp, prompt, full, label)
        from ..formats import sglang as fmt
    else:
        # max_tokens 1: llama-cpp-python reads 0 as "until the context is full"; the one generated
        # token lies past the text and is cut off below
        body = {"model": server.model, "prompt": full, "echo": True, "logprobs": int(server.top_k),
                "max_tokens": 1, "temperature": 0.0}
        resp = _post(server, "/v1/completions", body, label)
        if server.kind == "llama-cpp-python" and _echo_shifted(server, label):
            resp = _realign_llama_cpp(resp, int(server.top_k))
        rec = _echo_record(resp, prompt, full, label)
        from ..formats import completions as fmt
    pr = Problems(label)
    ctx = Context(problems=pr, marker=marker, vocab=vocab if vocab is not None else {}, local=None)
    out = guarded(pr, fmt.parse, rec, ctx)
    tr = out[0] if isinstance(out, list) and out else out
    if pr.total or tr is None:
        raise ServerError("; ".join(pr.items[:3]) or f"{label}: the answer holds no scored tokens", request=label)
    tr.prompt = prompt
    tr.metadata = {**(metadata or {}), **tr.metadata, "scored_by": server.model, "scored_through": server.kind}
    return tr


def _post(server: Server, path: str, body: dict, label: str) -> dict:
    try:
        resp = server.client.post(path, body, label=label)
    except ServerError as e:
        if "logits_all" in str(e):
            raise ServerError(f"{label}: the server computes no logprobs of the prompt; start it with "
                              f"--logits_all true ({e})", e.status, e.body, label) from None
        raise
    if not isinstance(resp, dict):
        raise ServerError(f"{label}: the answer is {type(resp).__name__}, expected a JSON object", request=label)
    return resp


PROBE_TEXT = "The capital of France is"


def _echo_shifted(server: Server, label: str) -> bool:
    """Whether the server's echoed entries are one token late: llama-cpp-python (0.3) gives
    echoed token i the distribution that follows it unless the model's prompt starts with a
    BOS token (which it strips). Probed once per server: the greedy next token of a text and
    its logprob, against the echo of that text (shifted: its last entry holds them)."""
    if server.echo_shift is None:
        nxt = _post(server, "/v1/completions", {"model": server.model, "prompt": PROBE_TEXT, "max_tokens": 1,
                                                "temperature": 0.0, "logprobs": 1}, f"{label} (alignment probe)")
        echo = _post(server, "/v1/completions", {"model": server.model, "prompt": PROBE_TEXT, "max_tokens": 1,
                                                 "temperature": 0.0, "logprobs": 1, "echo": True},
                     f"{label} (alignment probe)")
        try:
            tok = nxt["choices"][0]["logprobs"]["tokens"][0]
            val = nxt["choices"][0]["logprobs"]["token_logprobs"][0]
            last = echo["choices"][0]["logprobs"]["top_logprobs"][-1] or {}
            server.echo_shift = abs(float(last.get(tok, float("inf"))) - float(val)) < 1e-3
        except (KeyError, IndexError, TypeError, ValueError):
            server.echo_shift = False
        if server.echo_shift:
            server.notes.append("the server's echoed logprobs are one token late (no BOS): realigned")
    return server.echo_shift


def _realign_llama_cpp(resp: dict, k: int) -> dict:
    """Echoed entries one token late (see ``_echo_shifted``): token i's alternatives are the
    first ``k`` of entry i - 1 (the chosen token is added after them) and its logprob is its
    value there (unknown when it is not among them)."""
    try:
        lp = resp["choices"][0]["logprobs"]
        toks, tops = lp["tokens"], lp["top_logprobs"]
    except (KeyError, IndexError, TypeError):
        return resp
    if not isinstance(tops, list) or not isinstance(toks, list) or len(tops) != len(toks):
        return resp
    new_tops: list = [None]
    for prev in tops[:-1]:
        new_tops.append(dict(list(prev.items())[:k]) if isinstance(prev, dict) else None)
    values = [None] + [t.get(s) if isinstance(t, dict) else None for s, t in zip(toks[1:], new_tops[1:])]
    ch = {**resp["choices"][0], "logprobs": {**lp, "top_logprobs": new_tops, "token_logprobs": values}}
    return {**resp, "choices": [ch]}


def _cut(offsets: list[int], lengths: list[int], start: int, end: int) -> slice:
    """Tokens of [start, end): from the first that ends past ``start`` to the last that begins
    before ``end``."""
    lo = next((i for i, (o, n) in enumerate(zip(offsets, lengths)) if o + n > start), len(offsets))
    hi = next((i for i, o in enumerate(offsets) if o >= end), len(offsets))
    return slice(lo, max(lo, hi))


def _echo_record(resp: dict, prompt: str, full: str, label: str) -> dict:
    """The echoed completion's tokens only, as a legacy Completions record."""
    try:
        ch = dict(resp["choices"][0])
        lp = dict(ch["logprobs"])
        toks = list(lp["tokens"])
    except (KeyError, IndexError, TypeError) as e:
        raise ServerError(f"{label}: the answer has no choices[0].logprobs.tokens ({type(e).__name__}); "
                          "the server did not echo the prompt's logprobs", request=label) from None
    offsets = lp.get("text_offset")
    if not isinstance(offsets, list) or len(offsets) != len(toks):
        offsets, at = [], 0
        for s in toks:
            offsets.append(at)
            at += len(s) if isinstance(s, str) else 0
    cut = _cut(offsets, [len(s) if isinstance(s, str) else 0 for s in toks], len(prompt), len(full))
    for key in ("tokens", "token_logprobs", "top_logprobs", "text_offset"):
        if isinstance(lp.get(key), list):
            lp[key] = lp[key][cut]
    ch["logprobs"] = lp
    ch["text"] = full[len(prompt):]
    return {**{k: v for k, v in resp.items() if k != "choices"}, "choices": [ch]}


def _sglang_record(resp: dict, prompt: str, full: str, label: str) -> dict:
    """SGLang's input logprobs of the completion's tokens, as the output of a /generate record."""
    mi = resp.get("meta_info")
    if not isinstance(mi, dict) or not isinstance(mi.get("input_token_logprobs"), list):
        raise ServerError(f"{label}: the answer has no meta_info.input_token_logprobs (logprob_start_len 0)",
                          request=label)
    toks = mi["input_token_logprobs"]
    lengths = [len(t[2]) if isinstance(t, list) and len(t) > 2 and isinstance(t[2], str) else 0 for t in toks]
    offsets, at = [], 0
    for n in lengths:
        offsets.append(at)
        at += n
    cut = _cut(offsets, lengths, len(prompt), len(full))
    tops = mi.get("input_top_logprobs")
    meta = {k: v for k, v in mi.items() if not k.startswith(("input_", "output_"))}
    meta["output_token_logprobs"] = toks[cut]
    meta["output_top_logprobs"] = tops[cut] if isinstance(tops, list) and len(tops) == len(toks) else None
    return {"text": full[len(prompt):], "meta_info": meta}


def score_many(server: Server, items: Iterable[tuple[str, str, dict]], *, marker: str, concurrency: int = 4,
               on_error: Callable[[int, str], None] | None = None,
               vocab: dict[int, str] | None = None) -> Iterator[tuple[int, Trace]]:
    """(index, trace) for each (prompt, completion, metadata), in order, ``concurrency`` at once.
    A pair that fails for good goes to ``on_error(index, reason)`` (or raises without it).
    ``vocab`` gathers the text of the alternatives' token ids (for ``Store.add_traces``)."""
    check_scoring(server)
    server.client.reopen()
    vocab = {} if vocab is None else vocab
    items = list(items)

    def one(i: int):
        p, c, m = items[i]
        try:
            return i, score_text(server, p, c, marker=marker, metadata=m, label=f"scoring request {i + 1}",
                                 vocab=vocab), None
        except ServerError as e:
            return i, None, str(e)

    with cf.ThreadPoolExecutor(max(1, concurrency), thread_name_prefix="thinkscope-score") as pool:
        try:
            for i, tr, err in pool.map(one, range(len(items))):
                if err is not None:
                    if on_error is None:
                        raise ServerError(err)
                    on_error(i, err)
                    continue
                yield i, tr
        except BaseException:
            server.client.abort()
            raise
