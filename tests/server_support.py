"""A real llama-cpp-python server on loopback serving the embedded SmolLM2 GGUF, and a small
fault-injecting proxy in front of it, for the server tests."""

from __future__ import annotations

import http.client
import http.server
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def gguf_path() -> Path:
    from analysis.models import embedded_model_file
    return embedded_model_file()


class LlamaServer:
    """``python -m llama_cpp.server`` on a free loopback port, with the prompt's logprobs on
    (``--logits_all true``) so that it can teacher-force. One thread: ggml's worker threads
    spin while they wait, which on a busy two-core machine costs more than they gain."""

    def __init__(self, port: int | None = None, log: Path | None = None):
        try:
            import llama_cpp.server  # noqa: F401
        except ImportError as e:  # `make test` installs it; a missing server is a failure, not a skip
            raise RuntimeError("llama-cpp-python[server] is not installed: run `make setup` (it builds the "
                               "wheel once, with the flags these CPUs need)") from e
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 180.0) -> "LlamaServer":
        out = open(self.log, "ab") if self.log else subprocess.DEVNULL
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf_path()), "--host", "127.0.0.1",
             "--port", str(self.port), "--n_ctx", "512", "--logits_all", "true", "--n_threads", "1",
             "--verbose", "false"], stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the llama-cpp-python server exited with {self.proc.returncode}"
                                   + (f"; see {self.log}" if self.log else ""))
            try:
                c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                c.request("GET", "/v1/models")
                if c.getresponse().status == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"the llama-cpp-python server did not answer within {timeout:.0f} s")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)

    stop = kill

    @property
    def model(self) -> str:
        return str(gguf_path())


class FaultProxy:
    """Forwards to ``upstream``; the POST requests take their fate from ``plan`` in order (then
    'pass'): 'pass', '429' (Retry-After: 0), '500', '400-limit:N' (a vLLM-style top-k limit),
    'not-json' (a 200 whose body is cut), 'bad-field' (a logprob that is text). ``need_key``:
    requests without ``Authorization: Bearer <need_key>`` get 401. Every request's path and
    headers are kept in ``seen``."""

    def __init__(self, upstream: str, plan: list[str] | None = None, need_key: str | None = None):
        self.upstream = upstream.replace("http://", "")
        self.plan = list(plan or [])
        self.need_key = need_key
        self.seen: list[tuple[str, str, dict]] = []
        self.limit: int | None = None
        self.lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def _send(self, status: int, body: bytes, headers: dict | None = None):
                self.send_response(status)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _forward(self, method: str, body: bytes | None) -> tuple[int, bytes]:
                host, port = proxy.upstream.split(":")
                c = http.client.HTTPConnection(host, int(port), timeout=600)
                c.request(method, self.path, body=body, headers={"Content-Type": "application/json"})
                r = c.getresponse()
                return r.status, r.read()

            def do_GET(self):
                with proxy.lock:
                    proxy.seen.append(("GET", self.path, dict(self.headers)))
                status, data = self._forward("GET", None)
                self._send(status, data)

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with proxy.lock:
                    proxy.seen.append(("POST", self.path, dict(self.headers)))
                    action = proxy.plan.pop(0) if proxy.plan else "pass"
                if proxy.need_key and self.headers.get("Authorization") != f"Bearer {proxy.need_key}":
                    return self._send(401, b'{"error": {"message": "invalid API key"}}')
                if action == "429":
                    return self._send(429, b'{"error": {"message": "rate limited"}}', {"Retry-After": "0"})
                if action == "500":
                    return self._send(500, b'{"error": {"message": "internal error"}}')
                req = json.loads(body)
                if action.startswith("400-limit:"):
                    proxy.limit = int(action.split(":")[1])
                asked = req.get("top_logprobs", req.get("logprobs"))
                if proxy.limit is not None and isinstance(asked, int) and not isinstance(asked, bool) \
                        and asked > proxy.limit:
                    msg = (f"Requested sample logprobs of {asked}, which is greater than max allowed: "
                           f"{proxy.limit}")
                    return self._send(400, json.dumps({"error": {"message": msg}}).encode())
                status, data = self._forward("POST", body)
                if action == "not-json":
                    return self._send(200, data[: len(data) // 2])
                if action == "bad-field":
                    obj = json.loads(data)
                    obj["choices"][0]["logprobs"]["content"][1]["logprob"] = "abc"
                    data = json.dumps(obj).encode()
                self._send(status, data)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> "FaultProxy":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def posts(self) -> list[str]:
        return [p for m, p, _ in self.seen if m == "POST"]


def cli(*args: str, env: dict | None = None, timeout: float = 900) -> subprocess.CompletedProcess:
    """``thinkscope ARGS`` in a subprocess (its own process: signals and exit codes are real)."""
    return subprocess.run([sys.executable, "-m", "analysis.cli", *args], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, **(env or {})}, timeout=timeout)
