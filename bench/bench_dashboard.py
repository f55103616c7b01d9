"""Dashboard speed on long traces, as ratios to the targets (a ratio <= 1 meets its target).

    PYTHONPATH=. .venv/bin/python bench/bench_dashboard.py [--rounds 5] [--no-browser]

Stores (built with the store API, ``tests/long_traces.py``): a run of two 8,000-token traces
with top-20 alternatives, and a run of three 2,000-token traces with 30 layers of per-layer records.

(a) Script time, through ``streamlit.testing.v1.AppTest``: opening the trace in the explorer
    with empty caches, a window-slider move, a percentile-slider move and a unit toggle
    (full reruns: AppTest does not rerun fragments alone), and opening the Layers page
    with empty caches.
(b) In headless Chromium against ``streamlit run`` (a fresh server each round, so every trace
    opened finds empty caches): the time from the input to the page being visually settled
    (``data-test-script-state='notRunning'``, the new values drawn, and the last DOM change in
    the app, after which nothing changed for 400 ms). "Opening a trace" is picking it in the
    page's trace picker with the dashboard loaded in the tab (the 8,000-token trace in the
    explorer; a 2,000-token, 30-layer trace on Layers). A window-slider move (keyboard) and a
    unit toggle follow in the explorer. Also printed, with no target: the time to
    ``notRunning`` of each input ("script"), and opening each page in a fresh tab (the
    browser loads and starts the dashboard's scripts first), with the fresh-tab load of the
    Runs page, the lightest, as its floor.

Targets (issue 11): a slider move or unit toggle re-runs in <= 300 ms of script time (AppTest)
and is settled in <= 1 s in the browser; opening the 8,000-token trace <= 1.5 s; opening a
2,000-token, 30-layer trace on Layers <= 1.5 s. Every measure is taken once per round, the
rounds interleave all measures (so machine noise hits them alike), and the median over rounds
is the figure; the 1-minute load average is printed before and after.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.long_traces import layer_trace_store, long_trace_store  # noqa: E402

# imported once here, so that AppTest's first "open" times the page, not module imports
import dashboard.trace_views  # noqa: E402,F401
import dashboard.charts_layers  # noqa: E402,F401

TARGETS = {  # measure -> target in seconds (None: printed, no target)
    "AppTest explorer open": 1.5,
    "AppTest window slider": 0.3,
    "AppTest percentile slider": 0.3,
    "AppTest unit toggle": 0.3,
    "AppTest layers open": 1.5,
    "browser explorer: open a trace (settled)": 1.5,
    "browser window slider (settled)": 1.0,
    "browser unit toggle (settled)": 1.0,
    "browser layers: open a trace (settled)": 1.5,
    "browser explorer: open a trace (script)": None,
    "browser window slider (script)": None,
    "browser unit toggle (script)": None,
    "browser layers: open a trace (script)": None,
    "fresh tab: Runs page, the floor (settled)": None,
    "fresh tab: explorer (settled)": None,
    "fresh tab: layers (settled)": None,
}

# Records DOM changes in the app (not the status widget's animation) and script-state changes.
INSTRUMENT = """
window.__ts = {lastMut: performance.now(), states: []};
new MutationObserver((muts) => {
  const now = performance.now();
  for (const m of muts) {
    if (m.type === 'attributes' && m.attributeName === 'data-test-script-state') {
      window.__ts.states.push([m.target.getAttribute('data-test-script-state'), now]);
    }
    const el = m.target.nodeType === 1 ? m.target : m.target.parentElement;
    if (el && el.closest && el.closest('[data-testid="stStatusWidget"]')) continue;
    window.__ts.lastMut = now;
  }
}).observe(document, {subtree: true, childList: true, attributes: true, characterData: true});
"""

SETTLED = """([t0, quiet, check]) => {
  const ts = window.__ts, app = document.querySelector('[data-testid="stApp"]');
  if (!app || app.getAttribute('data-test-script-state') !== 'notRunning') return false;
  if (!ts.states.some(([s, t]) => s === 'running' && t >= t0)) return false;
  if (!(new Function(check))()) return false;
  return performance.now() - ts.lastMut > quiet;
}"""

TIMES = """(t0) => {
  const done = window.__ts.states.filter(([s, t]) => s === 'notRunning' && t >= t0).map(([s, t]) => t);
  return [(done[done.length - 1] - t0) / 1000, (window.__ts.lastMut - t0) / 1000];
}"""

EXPLORER_READY = ("return document.querySelector('span.tok') && "
                  "document.querySelector('.ts-lc[data-state=\"drawn\"] .ts-lc-xtitle')")
LAYERS_READY = "return document.querySelectorAll('.js-plotly-plot .heatmaplayer image').length >= 2"


def curve_says(text: str) -> str:
    """A check that the explorer's entropy curve (its canvas line chart) shows ``text`` in its legend or axes."""
    return ("const p = document.querySelector('.ts-lc');"
            f"return p && p.textContent.includes({text!r});")


# --------------------------------------------------------------------------- AppTest


def apptest_round(long_path: Path, layers_path: Path, w: int, pct: float, unit: str) -> dict[str, float]:

    import streamlit as st
    from streamlit.testing.v1 import AppTest

    def timed(at) -> float:
        t0 = time.perf_counter()
        at.run()
        dt = time.perf_counter() - t0
        assert not at.exception, [e.value for e in at.exception]
        return dt

    def by_label(widgets, label: str):
        return next(x for x in widgets if x.label.startswith(label))

    out = {}
    st.cache_data.clear()
    st.cache_resource.clear()
    os.environ["THINKSCOPE_STORE"] = str(long_path)
    at = AppTest.from_file(str(ROOT / "dashboard" / "views" / "explorer.py"), default_timeout=120)
    out["AppTest explorer open"] = timed(at)
    by_label(at.slider, "Window w").set_value(w)
    out["AppTest window slider"] = timed(at)
    by_label(at.slider, "Percentile").set_value(pct)
    out["AppTest percentile slider"] = timed(at)
    at.session_state["unit"] = unit
    out["AppTest unit toggle"] = timed(at)
    os.environ["THINKSCOPE_STORE"] = str(layers_path)
    at = AppTest.from_file(str(ROOT / "dashboard" / "views" / "layers.py"), default_timeout=120)
    out["AppTest layers open"] = timed(at)
    return out


# --------------------------------------------------------------------------- browser


def settle(page, t0: float, check: str, quiet_ms: int = 400, timeout_ms: int = 120000) -> tuple[float, float]:
    """Wait until the page is settled after the input at ``t0``; (script, settled) seconds."""
    page.wait_for_function(SETTLED, arg=[t0, quiet_ms, check], timeout=timeout_ms, polling=50)
    return tuple(page.evaluate(TIMES, t0))


def now(page) -> float:
    return page.evaluate("performance.now()")


def fresh_tab(page, url: str, check: str) -> float:
    """Settled seconds of loading ``url`` in the tab from about:blank."""
    page.goto("about:blank")
    t_nav = time.perf_counter()
    page.goto(url)
    t0 = now(page) - (time.perf_counter() - t_nav) * 1000  # the navigation's start, page clock
    return settle(page, t0, check)[1]


def pick_trace(page, index: int) -> float:
    """Press on the page's trace picker and choose its ``index``-th option; the input's time."""
    box = page.locator("[data-testid='stSelectbox']").filter(
        has=page.locator("label", has_text=re.compile(r"^Trace$")))
    box.click()
    option = page.get_by_role("option").nth(index)
    option.wait_for()
    t0 = now(page)
    option.click()
    return t0


def browser_round(long_path: Path, layers_path: Path, w: int, pages=("explorer", "layers")) -> dict[str, float]:
    out = {}
    if "explorer" in pages:
        out.update(browser_explorer(long_path, w))
    if "layers" in pages:
        out.update(browser_layers(layers_path))
    return out


def browser_explorer(long_path: Path, w: int) -> dict[str, float]:
    from tests.browser import browser_page, streamlit_server, wait_for_app

    out = {}
    with streamlit_server(long_path) as url, browser_page(width=1440, height=1000) as page:
        page.add_init_script(INSTRUMENT)
        page.goto(url)  # the Runs page: the server's imports done, trace caches still empty
        wait_for_app(page)
        out["fresh tab: Runs page, the floor (settled)"] = fresh_tab(page, url + "/runs", "return true")
        out["fresh tab: explorer (settled)"] = fresh_tab(page, url + "/explorer?run=1&trace=1", EXPLORER_READY)
        t0 = pick_trace(page, 1)
        out["browser explorer: open a trace (script)"], out["browser explorer: open a trace (settled)"] = settle(
            page, t0, EXPLORER_READY + " && new URLSearchParams(location.search).get('trace') === '2'")
        thumb = page.locator("[data-testid='stSlider']").filter(has_text="Window w").locator("input[type='range']")
        thumb.focus()
        current = int(thumb.get_attribute("value"))
        t0 = now(page)
        for _ in range(abs(w - current)):
            page.keyboard.press("ArrowRight" if w > current else "ArrowLeft")
        out["browser window slider (script)"], out["browser window slider (settled)"] = settle(
            page, t0, curve_says(f"next {w} tokens"))
        t0 = now(page)
        page.locator("[data-testid='stSidebar']").get_by_text("bits", exact=True).click()
        out["browser unit toggle (script)"], out["browser unit toggle (settled)"] = settle(
            page, t0, curve_says("bits"))
    return out


def browser_layers(layers_path: Path) -> dict[str, float]:
    from tests.browser import browser_page, streamlit_server, wait_for_app

    out = {}
    with streamlit_server(layers_path) as url, browser_page(width=1440, height=1000) as page:
        page.add_init_script(INSTRUMENT)
        page.goto(url)
        wait_for_app(page)
        out["fresh tab: layers (settled)"] = fresh_tab(page, url + "/layers?run=1&trace=1", LAYERS_READY)
        t0 = pick_trace(page, 1)
        out["browser layers: open a trace (script)"], out["browser layers: open a trace (settled)"] = settle(
            page, t0, LAYERS_READY + " && new URLSearchParams(location.search).get('trace') === '2'")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--no-browser", action="store_true", help="script times only (AppTest)")
    ap.add_argument("--tokens", type=int, default=8000)
    ap.add_argument("--only", choices=["explorer", "layers"], help="the browser measures of one page only")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-dashboard-"))
    long_path, layers_path = tmp / "long.duckdb", tmp / "layers.duckdb"
    long_trace_store(long_path, args.tokens, n_traces=2)
    layer_trace_store(layers_path)
    print(f"stores in {tmp}: two {args.tokens:,}-token traces (top-20); three 2,000-token traces x 30 layers")
    load_before = os.getloadavg()[0]
    samples: dict[str, list[float]] = {k: [] for k in TARGETS}
    for r in range(args.rounds):
        w, pct, unit = (5, 90.0, "bits") if r % 2 == 0 else (6, 92.5, "bits")
        measures = apptest_round(long_path, layers_path, w, pct, unit)
        if not args.no_browser:
            measures.update(browser_round(long_path, layers_path, w,
                                          (args.only,) if args.only else ("explorer", "layers")))
        for k, v in measures.items():
            samples[k].append(v)
        print(f"round {r + 1}: " + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in measures.items()), flush=True)
    print(f"\nmedian of {args.rounds} rounds; ratio = median / target (<= 1 meets the target); "
          f"1-minute load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after")
    worst = 0.0
    for k, target in TARGETS.items():
        if not samples[k]:
            continue
        med = statistics.median(samples[k])
        spread = f"(range {min(samples[k]) * 1000:.0f}-{max(samples[k]) * 1000:.0f} ms)"
        if target is None:
            print(f"  {k:<44} {med * 1000:7.0f} ms  {'no target':>31}  {spread}")
            continue
        worst = max(worst, med / target)
        print(f"  {k:<44} {med * 1000:7.0f} ms  target {target * 1000:5.0f} ms  ratio {med / target:5.2f}  {spread}")
    print(f"worst ratio {worst:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
