"""The Upload page: AppTest with files set on the uploader, and a real browser upload."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from tests.browser import ROOT, browser_page, streamlit_server, wait_for_app

FIX = Path(__file__).resolve().parent / "fixtures" / "formats"
APP = str(ROOT / "dashboard" / "app.py")


def upload_page(monkeypatch, store) -> AppTest:
    """The app opened on the Upload page (through st.navigation, so switch_page works)."""
    monkeypatch.setenv("THINKSCOPE_STORE", str(store.path))
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    at.switch_page("views/upload.py")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.title[0].value == "Upload trace files"
    return at


def files(*names: str) -> list[tuple[str, bytes, str]]:
    return [(n, (FIX / n).read_bytes(), "application/octet-stream") for n in names]


def test_upload_preview_import_and_land_on_the_run(monkeypatch, store):
    at = upload_page(monkeypatch, store)
    at.file_uploader(key="upload.files").set_value(files("openai_chat.jsonl", "xss_tokens.jsonl"))
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    metrics = [(m.label, m.value) for m in at.metric]
    assert metrics == [("Format", "openai_chat"), ("Traces", "2"), ("Tokens", "10"),
                       ("Format", "openai_chat"), ("Traces", "1"), ("Tokens", "3")]
    body = "".join(h.proto.body for h in at.get("html"))
    assert 'class="tok"' in body  # the preview renders tokens as in the trace explorer
    assert "&lt;img src=x onerror=alert(1)&gt;" in body and "<img src=x" not in body
    assert "<script>" not in body and "</script>" not in body
    at.button(key="upload.import").click()
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.title[0].value == "Trace explorer"  # landed on the new run
    runs = store.runs()
    assert runs["name"].tolist() == ["openai_chat", "xss_tokens"]
    assert at.session_state["selected.run_id"] == int(runs["run_id"].iloc[-1])


def test_upload_reports_problems_and_blocks_import(monkeypatch, store):
    at = upload_page(monkeypatch, store)
    bad = (FIX / "openai_chat.jsonl").read_bytes().replace(b'"logprob": -0.2,', b'"logprob": "abc",', 1)
    at.file_uploader(key="upload.files").set_value([("traces.jsonl", bad, "application/json")])
    at.run()
    assert not at.exception
    text = " ".join(e.value for e in at.error).replace("\\", "")  # markdown escapes
    assert 'traces.jsonl line 1: choices[0].logprobs.content[1].logprob is "abc", expected a number' in text
    assert at.button(key="upload.import").disabled
    assert store.counts()["runs"] == 0


def test_upload_same_file_twice_says_so(monkeypatch, store):
    from analysis.formats import ingest_file
    first = ingest_file(store, FIX / "token_table.csv")
    at = upload_page(monkeypatch, store)
    at.file_uploader(key="upload.files").set_value(files("token_table.csv"))
    at.run()
    assert [m.value for m in at.metric][:3] == ["token_table", "2", "5"]
    assert not at.exception
    # recognised in the preview, before any import: nothing to import, nothing stored
    assert f"already imported as run #{first.run_id}" in at.warning[0].value.replace("\\", "")
    assert at.button(key="upload.import").disabled
    assert store.counts()["runs"] == 1


def test_upload_field_mapping_and_format_override(monkeypatch, store):
    at = upload_page(monkeypatch, store)
    at.file_uploader(key="upload.files").set_value(files("token_table.csv"))
    at.run()
    at.selectbox(key="upload.map.problem_id").set_value("difficulty")
    at.run()
    at.run()  # the mapping change reruns the page once
    assert not at.exception, [e.value for e in at.exception]
    assert at.session_state["upload.field_map"] == {"problem_id": "difficulty"}
    at.button(key="upload.import").click()
    at.run()
    assert store.traces(int(store.runs()["run_id"].iloc[0]))["problem_id"].tolist() == ["3", "5"]
    at = upload_page(monkeypatch, store)
    at.file_uploader(key="upload.files").set_value(files("ollama_generate.jsonl"))
    at.run()
    assert [m.value for m in at.metric][0] == "ollama"
    at.selectbox(key="upload.format").set_value("openai_chat")
    at.run()
    assert "choices is missing" in " ".join(e.value for e in at.error).replace("\\", "")


@pytest.mark.slow
def test_browser_upload_opens_the_new_trace(store, tmp_path):
    dialogs = []
    with streamlit_server(store.path) as url, browser_page() as page:
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        page.goto(url + "/upload")
        wait_for_app(page)
        page.locator("[data-testid='stFileUploader'] input[type='file']").set_input_files(
            str(FIX / "xss_tokens.jsonl"))
        page.get_by_text("openai_chat", exact=True).first.wait_for(timeout=60000)
        page.get_by_role("button", name="Import").click()
        page.get_by_role("heading", name="Trace explorer").wait_for(timeout=60000)
        wait_for_app(page)
        page.wait_for_selector("span.tok", timeout=60000)
        toks = page.locator("span.tok")
        assert toks.count() == 3
        assert toks.nth(0).inner_text() == "<img src=x onerror=alert(1)>"
        assert toks.nth(1).inner_text() == "</script>"
        assert page.locator("img[src='x']").count() == 0 and not dialogs
        page.screenshot(path=str(tmp_path / "upload-explorer.png"), full_page=True)
    assert store.runs()["name"].tolist() == ["xss_tokens"]


def staged_files(at) -> list[Path]:
    return [s.path for s in at.session_state["upload.staged"].values()]


def test_upload_each_file_is_its_own_import(monkeypatch, store):
    from analysis.formats import ingest_file
    first = ingest_file(store, FIX / "token_table.csv")
    at = upload_page(monkeypatch, store)
    bad = (FIX / "openai_chat.jsonl").read_bytes().replace(b'"logprob": -0.2,', b'"logprob": "abc",', 1)
    at.file_uploader(key="upload.files").set_value(
        [("broken.jsonl", bad, "application/json"), *files("xss_tokens.jsonl", "token_table.csv")])
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    # before any import: the duplicate is recognised, the broken file named, the good one has its own name
    assert f"already imported as run #{first.run_id}" in at.warning[0].value.replace("\\", "")
    assert "broken.jsonl line 1" in " ".join(e.value for e in at.error).replace("\\", "")
    names = [t for t in at.text_input if t.label == "Run name"]
    assert [t.value for t in names] == ["xss_tokens"]  # only the importable file has a run name
    assert at.button(key="upload.import").label == "Import" and not at.button(key="upload.import").disabled
    names[0].set_value("my run")
    at.button(key="upload.import").click()
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    runs = store.runs()
    assert runs["name"].tolist() == ["token_table", "my run"]  # the good file, under its own name
    done = " ".join(s.value for s in at.success).replace("\\", "")
    assert f"xss_tokens.jsonl: imported as run #{int(runs.run_id.iloc[-1])} 'my run', 1 traces" in done
    # the broken file and the duplicate stay listed, with their status; nothing is left to import
    assert sorted(s.name for s in at.session_state["upload.staged"].values()) == ["broken.jsonl", "token_table.csv"]
    assert "broken.jsonl line 1" in " ".join(e.value for e in at.error).replace("\\", "")
    assert at.button(key="upload.import").disabled


def test_upload_stages_on_disk_and_cleans_up(monkeypatch, store):
    from dashboard import uploads
    at = upload_page(monkeypatch, store)
    before = set(Path(uploads.tempfile.gettempdir()).glob("thinkscope-upload*"))
    at.file_uploader(key="upload.files").set_value(files("openai_chat.jsonl", "xss_tokens.jsonl"))
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    paths = staged_files(at)
    assert [p.read_bytes() for p in paths] == [(FIX / n).read_bytes() for n in ("openai_chat.jsonl", "xss_tokens.jsonl")]
    session = paths[0].parent
    assert session.parent == uploads.process_dir() and all(p.parent == session for p in paths)
    # the uploader was replaced by an empty one and Streamlit no longer holds the bytes
    assert at.file_uploader(key="upload.files.1").value in (None, [])
    assert "upload.files" not in at.session_state
    for _ in range(3):  # reruns make no folders
        at.run()
    assert set(Path(uploads.tempfile.gettempdir()).glob("thinkscope-upload*")) == before
    assert list(session.iterdir()) and list(uploads.process_dir().iterdir()).count(session) == 1
    at.button(key=f"upload.remove.{next(iter(at.session_state['upload.staged']))}").click()
    at.run()
    assert not paths[0].exists() and paths[1].exists()
    at.button(key="upload.import").click()
    at.run()
    assert at.title[0].value == "Trace explorer"
    assert not paths[1].exists()


def test_sweep_removes_ended_sessions_and_dead_servers(tmp_path, monkeypatch):
    from dashboard import uploads
    monkeypatch.setattr(uploads, "ROOT", tmp_path / "uploads")
    live, ended = uploads.session_dir("live-session"), uploads.session_dir("ended-session")
    (ended / "a.jsonl").write_text("{}")
    dead = uploads.ROOT / "999999999"  # no such process
    (dead / "s").mkdir(parents=True)
    since: dict[str, float] = {}
    active = {"live-session"}.__contains__
    assert uploads.sweep(active, since, now=100.0, grace=120.0) == [dead]  # ended: within its grace
    assert ended.exists() and live.exists()
    assert uploads.sweep(active, since, now=219.0, grace=120.0) == []
    assert uploads.sweep(active, since, now=220.0, grace=120.0) == [ended]
    assert not ended.exists() and live.exists()


def server_pid(port: int) -> int:
    """The process of the `streamlit run` server listening on ``port``."""
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                args = (d / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"streamlit" in b" ".join(args) and str(port).encode() in args:
                return int(d.name)
    raise LookupError(port)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise LookupError(pid)


def wait_until(check, timeout: float, step: float = 0.5):
    deadline = time.monotonic() + timeout
    while not (ok := check()) and time.monotonic() < deadline:
        time.sleep(step)
    return ok


@pytest.mark.slow
def test_browser_upload_sessions_leave_no_memory_or_files(store, tmp_path, monkeypatch):
    """Four browser sessions each drop a ~50 MB file and leave: the server's memory comes
    back near where it was and the staged copies go (sessions end after the grace period)."""
    from dashboard import uploads
    lines = (FIX / "openai_chat.jsonl").read_bytes().splitlines()
    big = tmp_path / "big.jsonl"
    with open(big, "wb") as f:
        n = 0
        while f.tell() < 50 << 20:
            f.write(lines[n % len(lines)].replace(b'"chatcmpl-A', b'"chatcmpl-%d-A' % n, 1) + b"\n")
            n += 1
    size_mb = big.stat().st_size / (1 << 20)
    monkeypatch.setenv(uploads.GRACE_ENV, "3")
    after_each: list[float] = []
    with streamlit_server(store.path) as url:
        pid = server_pid(int(url.rsplit(":", 1)[1]))
        staging = uploads.process_dir(pid)
        with browser_page() as page:  # a first visit loads the page's modules
            page.goto(url + "/upload")
            wait_for_app(page)
        time.sleep(2)
        baseline = rss_mb(pid)
        peak = baseline
        for i in range(4):
            with browser_page() as page:
                page.goto(url + "/upload")
                wait_for_app(page)
                page.locator("[data-testid='stFileUploader'] input[type='file']").set_input_files(str(big))
                page.get_by_text("openai_chat", exact=True).first.wait_for(timeout=120000)
                wait_for_app(page)
                assert page.get_by_text(f"{n:,}", exact=True).count() == 1  # the trace count of the preview
                assert sum(f.stat().st_size for f in staging.rglob("*") if f.is_file()) >= big.stat().st_size
                peak = max(peak, rss_mb(pid))
            after_each.append(rss_mb(pid))
        staged_gone = wait_until(lambda: not any(f.is_file() for f in staging.rglob("*")), 60)
        settled = wait_until(lambda: rss_mb(pid) - baseline < 300, 60)
        after = rss_mb(pid)
        figure = (f"file {size_mb:.1f} MB; server RSS (VmRSS) baseline {baseline:.0f} MB, peak {peak:.0f} MB, "
                  f"after each session {', '.join(f'{x:.0f}' for x in after_each)} MB, at the end {after:.0f} MB "
                  f"(growth {after - baseline:+.0f} MB)")
        print("\n" + figure)
        assert staged_gone, [str(f) for f in staging.rglob("*")]
        assert settled, figure
        # the first parse leaves the allocators' caches warm; later sessions must not add their file each
        assert after_each[-1] - after_each[0] < 100, figure


@pytest.mark.slow
def test_browser_upload_one_broken_file_blocks_only_itself(store, tmp_path):
    from playwright.sync_api import expect

    from tests.test_security_browser import HOSTILE, assert_literal
    stem = HOSTILE.replace("/", "").replace('"', "'")  # no slash in a file name; Chromium sends " as %22
    hostile = tmp_path / f"{stem}.jsonl"
    hostile.write_bytes((FIX / "xss_tokens.jsonl").read_bytes())
    broken = tmp_path / "broken.jsonl"
    broken.write_bytes((FIX / "openai_chat.jsonl").read_bytes().replace(b'"logprob": -0.2,', b'"logprob": "abc",', 1))
    with streamlit_server(store.path) as url, browser_page() as page:
        page.goto(url + "/upload")
        wait_for_app(page)
        page.locator("[data-testid='stFileUploader'] input[type='file']").set_input_files([str(hostile), str(broken)])
        page.get_by_text("openai_chat", exact=True).first.wait_for(timeout=60000)
        wait_for_app(page)
        assert_literal(page, "upload preview", stem)  # the file name, shown as text
        page.get_by_text('broken.jsonl line 1: choices[0].logprobs.content[1].logprob is "abc"').wait_for()
        names = page.locator("input[aria-label='Run name']")
        assert names.count() == 1 and names.input_value() == stem
        page.screenshot(path=str(tmp_path / "upload-two-files.png"), full_page=True)
        page.get_by_role("button", name="Import").click()
        page.get_by_text("imported as run #1").wait_for(timeout=60000)
        wait_for_app(page)
        assert_literal(page, "upload result", stem)
        assert page.get_by_text("broken.jsonl line 1").count() == 1  # still listed, still blocked
        expect(page.get_by_role("button", name="Import")).to_be_disabled(timeout=30000)
        page.screenshot(path=str(tmp_path / "upload-after-import.png"), full_page=True)
    assert store.runs()["name"].tolist() == [stem]
