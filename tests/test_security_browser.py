"""The dashboard as an attacker meets it, in the real server and headless Chromium: where it
listens, the access token when it is opened to the network, and names from files shown as
text on every page (no markdown, link, LaTeX or HTML from a run name). The token gate's
branches also run under AppTest."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.browser import ROOT, browser_page, free_port, streamlit_server, wait_for_app


FIX = Path(__file__).resolve().parent / "fixtures" / "formats"
HOSTILE = '**bold** :red[red] [x](javascript:alert(1)) <b>b</b> $x^2$ "q"'


def listening(port: int) -> set[str]:
    """The local addresses (hex, as in /proc/net/tcp*) on which something listens on ``port``."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            next(f)
            for line in f:
                local, state = line.split()[1], line.split()[3]
                addr, p = local.rsplit(":", 1)
                if state == "0A" and int(p, 16) == port:  # 0A: LISTEN
                    found.add(addr)
    return found


@contextlib.contextmanager
def thinkscope_dashboard(store_path: Path, *extra: str, env: dict | None = None):
    """`thinkscope dashboard` on a free port; yields (port, process, log path)."""
    port = free_port()
    log_path = store_path.parent / f"dashboard-{port}.log"
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    for k in ("THINKSCOPE_TOKEN", "THINKSCOPE_NO_TOKEN"):
        if env.get(k) is None:
            env.pop(k, None)
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "analysis.cli", "--store", str(store_path), "dashboard",
                                 "--port", str(port), "--headless", *extra],
                                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + 90
            while True:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as r:
                        if r.status == 200:
                            break
                except OSError:
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the dashboard did not start:\n" + log_path.read_text())
                time.sleep(0.3)
            yield port, proc, log_path
        finally:
            os.killpg(proc.pid, 15)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)


@pytest.mark.slow
def test_dashboard_binds_only_loopback_by_default(store):
    with thinkscope_dashboard(store.path, env={"THINKSCOPE_TOKEN": None}) as (port, _, log):
        assert listening(port) == {"0100007F"}  # 127.0.0.1, and no other interface or IPv6
        assert "warning" not in log.read_text().lower()


@pytest.mark.slow
def test_network_dashboard_asks_for_the_token(store, tmp_path):
    from analysis.formats import ingest_file
    ingest_file(store, FIX / "openai_chat.jsonl", run_name="first run")
    with thinkscope_dashboard(store.path, "--host", "0.0.0.0", env={"THINKSCOPE_TOKEN": None}) as (port, _, log):
        assert listening(port) == {"00000000"}  # every IPv4 interface, as asked
        out = log.read_text()
        assert "warning: the dashboard listens on 0.0.0.0" in out
        token = re.search(r"access token \(asked once per browser session; [^)]*\): (\S+)", out).group(1)
        assert len(token) >= 24
        url = f"http://127.0.0.1:{port}"
        with browser_page() as page:
            page.goto(url + "/runs")
            wait_for_app(page)
            box = page.locator("input[aria-label='Access token']")
            box.wait_for(timeout=60000)
            assert page.get_by_role("heading", name="Runs").count() == 0
            assert page.get_by_text("first run").count() == 0
            assert page.locator("[data-testid='stSidebarNav']").count() == 0
            box.fill("not-" + token)
            page.get_by_role("button", name="Open the dashboard").click()
            page.get_by_text("That token is not right.").wait_for(timeout=60000)
            assert page.get_by_role("heading", name="Runs").count() == 0
            page.locator("input[aria-label='Access token']").fill(token)
            page.get_by_role("button", name="Open the dashboard").click()
            page.get_by_role("heading", name="Runs").wait_for(timeout=60000)
            wait_for_app(page)
            # once per session: other pages open without asking again
            page.locator("[data-testid='stSidebarNav'] a", has_text="Upload").click()
            page.get_by_role("heading", name="Upload trace files").wait_for(timeout=60000)
            assert page.locator("input[aria-label='Access token']").count() == 0
            page.screenshot(path=str(tmp_path / "after-token.png"), full_page=True)
        with browser_page() as page:  # the token in the address works too, and leaves it
            page.goto(f"{url}/runs?token={token}")
            page.get_by_role("heading", name="Runs").wait_for(timeout=60000)
            wait_for_app(page)
            assert "token" not in page.url
            page.goto(f"{url}/runs?token=wrong")
            wait_for_app(page)
            page.locator("input[aria-label='Access token']").wait_for(timeout=60000)
            assert page.get_by_role("heading", name="Runs").count() == 0


@pytest.mark.slow
def test_network_dashboard_without_token_when_asked(store):
    with thinkscope_dashboard(store.path, "--host", "0.0.0.0", "--no-token",
                              env={"THINKSCOPE_TOKEN": "ignored"}) as (port, _, log):
        assert "no token" in log.read_text()
        with browser_page() as page:
            page.goto(f"http://127.0.0.1:{port}/runs")
            page.get_by_role("heading", name="Runs").wait_for(timeout=60000)
            assert page.locator("input[aria-label='Access token']").count() == 0


def shown_text(page) -> str:
    """Everything a user can read: the page's text, input values and chart (SVG) text."""
    return "\n".join([page.inner_text("body"),
                      *page.locator("input").evaluate_all("els => els.map(e => e.value)"),
                      *page.locator("svg text").evaluate_all("els => els.map(e => e.textContent)")])


def assert_literal(page, where: str, expected: str = HOSTILE) -> None:
    deadline = time.monotonic() + 60
    while expected not in (text := shown_text(page)) and time.monotonic() < deadline:
        time.sleep(0.5)  # the page may still be drawing its later parts
        wait_for_app(page)
    assert expected in text, f"{where}: the name is not shown as text"
    assert "&quot;" not in text and "&amp;" not in text and "&lt;" not in text, f"{where}: escaped twice"
    assert page.locator("a[href*='javascript' i]").count() == 0, f"{where}: a javascript: link"
    assert page.locator(".katex, math").count() == 0, f"{where}: LaTeX rendered"
    bad = page.locator("strong, b, em, [data-testid='stMarkdownColoredText'], span[style*='color']").evaluate_all(
        "els => els.map(e => e.textContent).filter(t => t === 'bold' || t === 'b' || t === 'red')")
    assert not bad, f"{where}: markdown or HTML rendered: {bad}"


@pytest.mark.slow
def test_run_names_show_as_text_on_every_page(store, tmp_path):
    from analysis.formats import ingest_file
    # a level per trace puts the run on the Difficulty page too
    ingest_file(store, FIX / "token_table.csv", run_name=HOSTILE, field_map={"level": "difficulty"})
    dialogs = []
    with streamlit_server(store.path) as url, browser_page() as page:
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        for path, chart in [("runs", True), ("explorer", False), ("difficulty", True), ("early-stop", False),
                            ("layers", False)]:
            page.goto(f"{url}/{path}")
            wait_for_app(page)
            if chart:
                page.locator(".js-plotly-plot svg text").first.wait_for(timeout=60000)
            if path == "runs":  # the details picker and the box plot's axis
                page.get_by_text("Run details and settings").click()
                wait_for_app(page)
                assert '#1 **bold** :red[red] [x](javascript:ale' in shown_text(page)
            assert_literal(page, path)
            page.screenshot(path=str(tmp_path / f"hostile-{path}.png"), full_page=True)
    assert not dialogs


@pytest.fixture
def network_address():
    """The server's address option as a network-facing server has it, restored afterwards."""
    from streamlit import config
    old = config.get_option("server.address")
    config.set_option("server.address", "0.0.0.0")
    yield
    config.set_option("server.address", old)


def app(monkeypatch, store, **env) -> "AppTest":
    from streamlit.testing.v1 import AppTest
    monkeypatch.setenv("THINKSCOPE_STORE", str(store.path))
    for k in ("THINKSCOPE_TOKEN", "THINKSCOPE_NO_TOKEN"):
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return AppTest.from_file(str(ROOT / "dashboard" / "app.py"), default_timeout=60)


def test_gate_refuses_a_network_server_without_token(monkeypatch, store, network_address):
    at = app(monkeypatch, store).run()
    assert not at.exception
    assert [t.value for t in at.title] == ["thinkscope"]
    assert "no access token is set" in at.error[0].value
    assert not at.text_input and not at.sidebar.radio  # no page, no sidebar
    at = app(monkeypatch, store, THINKSCOPE_NO_TOKEN="1").run()
    assert [t.value for t in at.title] == ["Runs"]


def test_gate_asks_for_the_token(monkeypatch, store, network_address):
    at = app(monkeypatch, store, THINKSCOPE_TOKEN="s3cret-token").run()
    assert [t.value for t in at.title] == ["thinkscope"] and not at.error
    at.text_input(key="auth.token").set_value("s3cret-tokeN")
    at.button[0].click()
    at.run()
    assert [t.value for t in at.title] == ["thinkscope"]
    assert at.error[0].value == "That token is not right."
    at.text_input(key="auth.token").set_value("s3cret-token")
    at.button[0].click()
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert [t.value for t in at.title] == ["Runs"]
    at.switch_page("views/upload.py").run()  # once per session
    assert [t.value for t in at.title] == ["Upload trace files"]


def test_gate_takes_the_token_from_the_address(monkeypatch, store, network_address):
    at = app(monkeypatch, store, THINKSCOPE_TOKEN="s3cret-token")
    at.query_params["token"] = "s3cret-token"
    at.run()
    assert [t.value for t in at.title] == ["Runs"]
    assert "token" not in at.query_params
    at = app(monkeypatch, store, THINKSCOPE_TOKEN="s3cret-token")
    at.query_params["token"] = "wrong"
    at.run()
    assert [t.value for t in at.title] == ["thinkscope"] and at.text_input(key="auth.token")
