"""What each inference server accepts and returns: kinds, request bodies, limits, readers.

A server's kind is detected from ``/v1/models`` (vLLM, SGLang, llama.cpp's two servers and
Ollama name themselves in ``owned_by``), with a probe of Ollama's ``/api/version``; anything
else speaking the OpenAI API is ``openai``. The kind decides the extras a request carries
(vLLM's token ids, llama.cpp's sampler switches that thinkscope's sampling does not use),
whether ``n`` samples come in one request, and how (or whether) a given text can be scored.

Responses are read by the trace-file readers (``analysis.formats.openai_chat`` and
``completions``) from the very record that ``--save-responses`` writes, so a trace recorded
through a server and the same record imported as a file are the same rows in the store.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from .http import HttpClient, RetryPolicy, ServerError

KINDS = ("vllm", "sglang", "llama-cpp-python", "llama-server", "ollama", "openai")
ENDPOINTS = ("chat", "completions")
PATHS = {"chat": "/v1/chat/completions", "completions": "/v1/completions"}

#: how each kind teacher-forces a given text (None: it cannot)
TEACHER_FORCING = {
    "vllm": "echo",               # /v1/completions, echo + logprobs (prompt logprobs)
    "llama-cpp-python": "echo",   # the same, when started with --logits_all true
    "sglang": "sglang",           # native /generate, logprob_start_len = 0, max_new_tokens = 0
    "llama-server": None,
    "ollama": None,
    "openai": None,
}
NO_TEACHER_FORCING = {
    "llama-server": "llama.cpp's llama-server returns no logprobs of the prompt; serve the model with "
                    "llama-cpp-python (python -m llama_cpp.server --logits_all true) or vLLM to score texts",
    "ollama": "Ollama returns no logprobs of the prompt; serve the model with vLLM, SGLang or "
              "llama-cpp-python (--logits_all true) to score texts",
    "openai": "this server returns no logprobs of a given text (the OpenAI API has no prompt logprobs); "
              "use vLLM, SGLang or llama-cpp-python (--logits_all true), or a local model",
}
#: kinds that return n choices for one request with n > 1 (others are probed: see Server.n_ok)
MULTI_CHOICE = {"vllm": True, "sglang": True, "openai": True}

# the limits servers state when asked for too many alternatives
_LIMIT_PATTERNS = [
    re.compile(r"max(?:imum)? allowed:?\s*(\d+)", re.I),                    # vLLM
    re.compile(r"(?:<=|less than or equal to|at most|no more than|up to)\s*(\d+)", re.I),  # OpenAI, others
    re.compile(r"between\s+0\s+and\s+(\d+)", re.I),
    re.compile(r"must be in \[0,\s*(\d+)\]", re.I),
]


def limit_from_message(message: str, asked: int) -> int | None:
    """The top-k limit a server's 400 message states (smaller than ``asked``), if it states one."""
    if not re.search(r"logprob", message, re.I):
        return None
    for pat in _LIMIT_PATTERNS:
        for m in pat.finditer(message):
            v = int(m.group(1))
            if 0 <= v < asked:
                return v
    return None


@dataclass
class Server:
    """One server and what was learnt about it while talking to it."""

    client: HttpClient
    model: str
    kind: str = "openai"
    endpoint: str = "chat"
    top_k: int = 20                 # alternatives asked for (lowered to the server's limit)
    top_k_asked: int = 20
    n_ok: bool | None = None        # n samples in one request (None: not known yet)
    echo_shift: bool | None = None  # echoed entries hold the next token's distribution (probed)
    notes: list[str] = field(default_factory=list)

    @property
    def path(self) -> str:
        return PATHS[self.endpoint]

    def describe(self) -> dict:
        return {"url": self.client.url, "kind": self.kind, "endpoint": self.endpoint, "model": self.model,
                "top_k_asked": self.top_k_asked, "top_k": self.top_k, "n_per_request": self.n_ok}


def detect_kind(client: HttpClient) -> tuple[str, list[str]]:
    """(kind, the models the server lists) from ``/v1/models`` and, for Ollama, ``/api/version``."""
    owners, models = [], []
    try:
        listing = client.get("/v1/models", label="GET /v1/models")
        for m in listing.get("data") or [] if isinstance(listing, dict) else []:
            if isinstance(m, dict):
                owners.append(str(m.get("owned_by") or "").lower())
                if isinstance(m.get("id"), str):
                    models.append(m["id"])
    except ServerError as e:
        if e.status is None:
            raise ServerError(f"{client.url}: the server does not answer ({e})") from None
    owner = owners[0] if owners else ""
    if owner == "vllm":
        return "vllm", models
    if owner == "sglang":
        return "sglang", models
    if owner == "llamacpp":
        return "llama-server", models
    if owner == "me":  # llama-cpp-python's server
        return "llama-cpp-python", models
    if owner in ("library", "ollama"):
        return "ollama", models
    try:
        v = client.get("/api/version", label="GET /api/version")
        if isinstance(v, dict) and "version" in v:
            return "ollama", models
    except ServerError:
        pass
    return "openai", models


def connect(url: str, model: str | None, *, api_key_env: str | None = None, endpoint: str = "chat",
            kind: str = "auto", top_k: int = 20, timeout: float = 600.0, retries: int = 4):
    """A Server for ``url``: its kind detected (unless given) and the model name settled."""
    if timeout <= 0 or retries < 0:
        raise ServerError("--request-timeout must be above 0 and --retries at least 0")
    client = HttpClient(url, api_key_env, RetryPolicy(retries=retries, timeout_s=timeout))
    detected, models = detect_kind(client)
    if kind == "auto":
        kind = detected
    if not model:
        if not models:
            raise ServerError(f"{client.url}: the server lists no model; name one with --model")
        model = models[0]
    return Server(client, model, kind, endpoint, top_k=int(top_k), top_k_asked=int(top_k))


# --------------------------------------------------------------------------- request bodies


def sampling_body(server: Server, settings) -> dict:
    """The sampling fields of a request from GenerationSettings (greedy: temperature 0)."""
    body: dict[str, Any] = {"max_tokens": int(settings.max_new_tokens)}
    if settings.do_sample:
        body.update(temperature=float(settings.temperature), top_p=float(settings.top_p))
    else:
        body.update(temperature=0.0)
    if server.kind in ("llama-cpp-python", "llama-server", "ollama"):
        # thinkscope samples from temperature and top-p only: switch off llama.cpp's other samplers
        body.update(top_k=0, min_p=0.0, repeat_penalty=1.0)
    return body


def generation_body(server: Server, prompt_text: str, settings, n: int, seed: int | None) -> dict:
    """The JSON body of one generation request."""
    body: dict[str, Any] = {"model": server.model, **sampling_body(server, settings)}
    if server.endpoint == "chat":
        msgs = []
        if settings.system_prompt:
            msgs.append({"role": "system", "content": settings.system_prompt})
        msgs.append({"role": "user", "content": prompt_text})
        body["messages"] = msgs
        if server.top_k > 0 or server.kind != "openai":
            body.update(logprobs=True, top_logprobs=int(server.top_k))
        else:
            body["logprobs"] = True
    else:
        body["prompt"] = prompt_text
        body["logprobs"] = int(server.top_k)
    if server.kind == "vllm":
        body["return_tokens_as_token_ids"] = True  # exact ids; the text comes in the bytes
    if n > 1:
        body["n"] = int(n)
    if seed is not None:
        body["seed"] = int(seed)
    return body


def lower_top_k(server: Server, error: ServerError) -> bool:
    """On a 400 that states a top-k limit, lower ``server.top_k`` to it; True when it did."""
    if error.status != 400:
        return False
    limit = limit_from_message(f"{error} {error.body}", server.top_k)
    if limit is None:
        return False
    server.notes.append(f"the server allows at most {limit} alternatives per token (asked {server.top_k})")
    server.top_k = limit
    return True


def reader(endpoint: str):
    """The trace-file reader module that reads this endpoint's responses."""
    from ..formats import completions, openai_chat
    return openai_chat if endpoint == "chat" else completions


def response_record(response: dict, request: dict, metadata: dict, choice: int | None = None) -> dict:
    """What ``--save-responses`` writes for one trace and what is parsed: the response (only
    ``choice`` of its choices when given, its id then ``ID:choice``), the request without its
    prompt (the reader takes the prompt from it) and the prompt's metadata."""
    rec = dict(response)
    if choice is not None:
        chs = response.get("choices") or []
        pick = [c for c in chs if isinstance(c, dict) and c.get("index", 0) == choice] or chs[choice:choice + 1]
        rec["choices"] = pick
        if rec.get("id") is not None:
            rec["id"] = f"{rec['id']}:{choice}"
    rec["request"] = {k: v for k, v in request.items() if k not in ("n",)}
    rec["metadata"] = metadata
    return rec
