"""A small HTTP/JSON client for inference servers: retries, backoff, timeouts, API keys.

The standard library's ``http.client``, one keep-alive connection per thread, so many requests
can be in flight from a thread pool without a dependency. HTTP 429 and 5xx answers and lost
connections are retried with exponential backoff and full jitter, waiting at least what a
``Retry-After`` header asks; each attempt has its own timeout. The API key is read from an
environment variable when the client is made and is only ever sent in the Authorization
header: it is in no message, no repr and nothing stored.
"""

from __future__ import annotations

import email.utils
import http.client
import json
import os
import random
import socket
import threading
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from ..errors import ServerError

#: statuses worth another try: rate limits and the server's own faults
RETRY_STATUSES = frozenset({408, 409, 425, 429, 500, 502, 503, 504})


class NoAnswer(ConnectionError):
    """An attempt that got no HTTP answer (refused, reset, or timed out: ``timeout``)."""

    def __init__(self, message: str, timeout: bool = False):
        super().__init__(message)
        self.timeout = timeout


@dataclass
class RetryPolicy:
    retries: int = 4            # attempts after the first
    base_s: float = 0.5         # first backoff; doubles each attempt
    max_s: float = 30.0         # backoff cap (a Retry-After may ask for more, up to max_retry_after_s)
    max_retry_after_s: float = 120.0
    timeout_s: float = 600.0    # per attempt: connect and each read

    def backoff(self, attempt: int, retry_after: float | None, rng: random.Random) -> float:
        """Seconds to wait before attempt ``attempt`` + 1: full jitter over the exponential
        step, but never less than the server's Retry-After."""
        step = min(self.max_s, self.base_s * (2 ** attempt))
        wait = rng.uniform(0, step)
        if retry_after is not None:
            wait = max(wait, min(retry_after, self.max_retry_after_s))
        return wait


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds from a Retry-After header: a number of seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


class HttpClient:
    """JSON over HTTP to one server (``base_url``: scheme, host, port and an optional path prefix).

    ``api_key_env`` names the environment variable holding the key (None: no key)."""

    def __init__(self, base_url: str, api_key_env: str | None = None, policy: RetryPolicy | None = None,
                 seed: int | None = None):
        parts = urlsplit(base_url.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ServerError(f"{base_url}: not a server URL (expected http://host:port or https://host)")
        self.scheme, self.host = parts.scheme, parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        prefix = parts.path.rstrip("/")
        # people paste the OpenAI base URL (".../v1"); the paths here carry /v1 themselves
        self.prefix = prefix[:-3] if prefix.endswith("/v1") else prefix
        self.url = f"{self.scheme}://{parts.netloc}{self.prefix}"
        self.policy = policy or RetryPolicy()
        self._key = None
        if api_key_env:
            key = os.environ.get(api_key_env, "")
            if not key.strip():
                raise ServerError(f"the environment variable {api_key_env} (--api-key-env) is not set or empty")
            self._key = key.strip()
        self._local = threading.local()
        self._rng = random.Random(seed)
        self._rng_lock = threading.Lock()
        self.stats = {"requests": 0, "attempts": 0, "retries": 0}
        self._stats_lock = threading.Lock()
        self.closed = threading.Event()   # set: no new attempt starts (a run being stopped)
        self._conns: set = set()
        self._conns_lock = threading.Lock()

    def __repr__(self) -> str:  # never the key
        return f"HttpClient({self.url!r}, key={'set' if self._key else 'none'})"

    # ------------------------------------------------------------------ connections
    def _conn(self, timeout: float) -> http.client.HTTPConnection:
        c = getattr(self._local, "conn", None)
        if c is None:
            cls = http.client.HTTPSConnection if self.scheme == "https" else http.client.HTTPConnection
            c = self._local.conn = cls(self.host, self.port, timeout=timeout)
            with self._conns_lock:
                self._conns.add(c)
        c.timeout = timeout
        if c.sock is not None:
            c.sock.settimeout(timeout)
        return c

    def _drop(self) -> None:
        c = getattr(self._local, "conn", None)
        if c is not None:
            c.close()
            self._local.conn = None
            with self._conns_lock:
                self._conns.discard(c)

    def reopen(self) -> None:
        """Allow requests again after ``abort`` (the next run through the same client)."""
        self.closed.clear()

    def abort(self) -> None:
        """Stop: no attempt starts any more, and requests waiting for an answer end now (their
        sockets are shut down), so that a stopped run does not wait for them."""
        self.closed.set()
        with self._conns_lock:
            conns = list(self._conns)
        for c in conns:
            sock = c.sock
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def headers(self) -> dict[str, str]:
        h = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._key:
            h["Authorization"] = f"Bearer {self._key}"
        return h

    # ------------------------------------------------------------------ requests
    def once(self, method: str, path: str, body: bytes | None, timeout: float) -> tuple[int, dict, bytes]:
        """One attempt: (status, headers lower-cased, body bytes). Connection errors raise OSError."""
        c = self._conn(timeout)
        try:
            c.request(method, self.prefix + path, body=body, headers=self.headers())
            r = c.getresponse()
            data = r.read()
        except (OSError, http.client.HTTPException) as e:
            self._drop()
            raise NoAnswer(_describe(e), isinstance(e, TimeoutError)) from e
        if r.getheader("connection", "").lower() == "close":
            self._drop()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, data

    def request(self, method: str, path: str, payload: dict | None = None, label: str = "",
                retry: bool = True) -> dict:
        """The JSON answer of ``method path`` (retried as the policy says). A failure for good
        raises ServerError naming ``label`` (which request) and the reason."""
        body = None if payload is None else json.dumps(payload).encode()
        what = f"{label or path}: " if label or path else ""
        pol = self.policy
        attempt = 0
        with self._stats_lock:
            self.stats["requests"] += 1
        while True:
            if self.closed.is_set():
                raise ServerError(f"{what}not sent: the run is stopping", request=label)
            with self._stats_lock:
                self.stats["attempts"] += 1
            retry_after = None
            timed_out = False
            try:
                status, headers, data = self.once(method, path, body, pol.timeout_s)
            except NoAnswer as e:
                reason, status, text, timed_out = f"no answer from {self.url} ({e})", None, "", e.timeout
                if timed_out:
                    reason = f"no answer from {self.url} within {pol.timeout_s:g} s (timed out)"
            else:
                if 200 <= status < 300:
                    try:
                        return json.loads(data)
                    except (ValueError, UnicodeDecodeError) as e:
                        raise ServerError(f"{what}the server's answer is not JSON ({e}; it begins "
                                          f"{_snippet(data)})", status, _text(data), label) from None
                text = _text(data)
                reason = f"HTTP {status}: {_message(text)}"
                retry_after = parse_retry_after(headers.get("retry-after"))
                if status not in RETRY_STATUSES:
                    raise ServerError(f"{what}{reason}", status, text, label)
            if not retry or attempt >= pol.retries:
                tries = f" (after {attempt + 1} attempts)" if attempt else ""
                raise ServerError(f"{what}{reason}{tries}", status, text, label, timed_out)
            with self._rng_lock:
                wait = pol.backoff(attempt, retry_after, self._rng)
            with self._stats_lock:
                self.stats["retries"] += 1
            attempt += 1
            if self.closed.wait(wait):
                raise ServerError(f"{what}not retried: the run is stopping ({reason})", status, text, label)

    def post(self, path: str, payload: dict, label: str = "", retry: bool = True) -> dict:
        return self.request("POST", path, payload, label, retry)

    def get(self, path: str, label: str = "", retry: bool = False) -> dict:
        return self.request("GET", path, None, label, retry)


def _describe(e: BaseException) -> str:
    if isinstance(e, TimeoutError):
        return "timed out"
    return str(e) or type(e).__name__


def _text(data: bytes) -> str:
    return data.decode("utf-8", errors="replace")


def _snippet(data: bytes, n: int = 60) -> str:
    s = _text(data[:n]).replace("\n", " ")
    return json.dumps(s + ("…" if len(data) > n else ""), ensure_ascii=True)


def _message(text: str, n: int = 300) -> str:
    """The error message inside an OpenAI-style error body, else the body's start."""
    try:
        obj = json.loads(text)
    except ValueError:
        obj = None
    msg = None
    if isinstance(obj, dict):
        err = obj.get("error", obj)
        if isinstance(err, dict):
            msg = err.get("message") or err.get("detail") or err.get("msg")
        elif isinstance(err, str):
            msg = err
        if msg is None and isinstance(obj.get("detail"), (str, list)):
            msg = obj["detail"] if isinstance(obj["detail"], str) else json.dumps(obj["detail"])[:n]
    msg = str(msg if msg is not None else text).strip().replace("\n", " ")
    return msg[:n] + ("…" if len(msg) > n else "")
