"""Long traces in a real browser at 1,280, 1,440 and 1,920 px: the token hover card, labels that
do not overlap, readable heatmap ticks. Screenshots go to $THINKSCOPE_SCREENSHOTS when set
(to be looked at), else to the test's temporary folder."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
from PIL import Image

from tests.browser import browser_page, streamlit_server, wait_for_app
from tests.long_traces import layer_trace_store, long_trace_store

pytestmark = pytest.mark.slow

WIDTHS = (1280, 1440, 1920)

# Axis-aligned boxes of every chart's title, legend, axis titles and annotations, and the
# pairs of them that intersect (by more than 1 px each way), per chart.
OVERLAPS = """() => {
  const out = [];
  document.querySelectorAll('.js-plotly-plot, .ts-lc').forEach((plot, i) => {
    const parts = [];
    for (const sel of ['.gtitle', '.legend', '.xtitle', '.ytitle', '.annotation', '.cbtitle',
                       '.ts-lc-legend', '.ts-lc-xtitle', '.ts-lc-ytitle', '.ts-lc-note']) {
      plot.querySelectorAll(sel).forEach((el) => {
        const r = el.getBoundingClientRect();
        if (r.width > 0 && r.height > 0) parts.push([sel, el.textContent.slice(0, 30), r]);
      });
    }
    for (let a = 0; a < parts.length; a++) for (let b = a + 1; b < parts.length; b++) {
      const [r, s] = [parts[a][2], parts[b][2]];
      const dx = Math.min(r.right, s.right) - Math.max(r.left, s.left);
      const dy = Math.min(r.bottom, s.bottom) - Math.max(r.top, s.top);
      if (dx > 1 && dy > 1) out.push([i, parts[a][0] + ' ' + parts[a][1], parts[b][0] + ' ' + parts[b][1]]);
    }
  });
  return out;
}"""

# For each layer x position heatmap's x axis (its y axis: layers or heads): the smallest distance
# between neighbouring tick labels, measured across their baselines (rotated by 50 degrees, each
# label ends at its tick: the right edge of its box), and the labels' font size.
TICK_GAPS = """() => Array.from(document.querySelectorAll('.js-plotly-plot')).filter(
    (p) => p.querySelector('.heatmaplayer')
      && /^(layer|head)/.test((p.querySelector('.ytitle') || {}).textContent || '')).map((p) => {
  const ticks = Array.from(p.querySelectorAll('.xtick text')).map((t) => t.getBoundingClientRect());
  const xs = ticks.map((r) => r.right).sort((a, b) => a - b);
  let gap = Infinity;
  for (let i = 1; i < xs.length; i++) gap = Math.min(gap, xs[i] - xs[i - 1]);
  const font = parseFloat(getComputedStyle(p.querySelector('.xtick text')).fontSize);
  return [ticks.length, gap * Math.sin(50 * Math.PI / 180), font];
})"""


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    d = Path(os.environ.get("THINKSCOPE_SCREENSHOTS") or tmp_path_factory.mktemp("shots"))
    d.mkdir(parents=True, exist_ok=True)
    return d


def settle(page) -> None:
    wait_for_app(page, timeout_ms=180000)
    page.wait_for_selector("[data-testid='stPlotlyChart'] .main-svg, .ts-lc[data-state='drawn']", timeout=180000)
    page.wait_for_function("() => document.querySelector('[data-testid=\"stApp\"]')"
                           ".getAttribute('data-test-script-state') === 'notRunning'", timeout=180000)
    page.wait_for_timeout(800)


def test_explorer_hover_card_and_labels_at_three_widths(tmp_path, shots):
    store = long_trace_store(tmp_path / "long.duckdb", n_tokens=2000)
    with streamlit_server(store.path) as url:
        for width in WIDTHS:
            with browser_page(width=width, height=1000) as page:
                page.goto(url + "/explorer")
                settle(page)
                page.wait_for_selector("span.tok", timeout=120000)
                assert page.locator("span.tok").count() == 1500
                assert page.evaluate(OVERLAPS) == []
                page.screenshot(path=str(shots / f"explorer-{width}.png"))
                tok = page.locator("span.tok").nth(20)
                tok.scroll_into_view_if_needed()
                tok.hover()
                card = tok.evaluate("(el) => { const s = getComputedStyle(el, '::after');"
                                    " return [s.content, s.display, s.position, s.backgroundColor]; }")
                assert "top-10 alternatives (probability, token)" in card[0] and "entropy (nats, full)" in card[0]
                assert card[1] != "none" and card[2] == "absolute"
                # the token text keeps its contrast: a dark-background token is written in white
                colours = page.evaluate("""() => Array.from(document.querySelectorAll('span.tok')).slice(0, 400)
                    .map((el) => [getComputedStyle(el).backgroundColor, getComputedStyle(el).color])""")
                assert any(fg == "rgb(255, 255, 255)" for _, fg in colours)
                assert any(fg == "rgb(0, 0, 0)" for _, fg in colours)
                page.screenshot(path=str(shots / f"explorer-hover-{width}.png"))
                # the last line's card is whole (the text block paints only inside its padding box),
                # and what lies under that padding (the colour legend) still takes the pointer
                last = page.locator("span.tok").last
                last.evaluate("(el) => el.scrollIntoView({block: 'center'})")
                last.hover()
                fits = last.evaluate("""(el) => { const t = el.getBoundingClientRect();
                    const h = parseFloat(getComputedStyle(el, '::after').height);
                    const box = el.closest('.ts-text').getBoundingClientRect();
                    return [t.bottom + 4 + h <= box.bottom + 1, h > 100, t.left, t.bottom + 4 + h]; }""")
                assert fits[:2] == [True, True], fits
                # and it is drawn over what follows the text: a red box put after the text, where the
                # card is, does not show through it
                page.evaluate("""([x, y, w, h]) => { const d = document.createElement('div');
                    d.style.cssText = `position:fixed; left:${x}px; top:${y}px; width:${w}px; height:${h}px;
                                       background:rgb(255,0,0); pointer-events:none`;
                    document.querySelector('[data-testid="stMain"]').appendChild(d); }""",
                              [fits[2], fits[3] - 60, 200, 50])
                page.wait_for_timeout(200)
                shot = Image.open(io.BytesIO(page.screenshot())).convert("RGB")
                probes = [shot.getpixel((int(fits[2]) + dx, int(fits[3]) - dy)) for dx in (6, 60, 120) for dy in (20, 40)]
                assert (255, 0, 0) not in probes, probes
                legend = page.get_by_text("outlined tokens are forking points").first
                legend.scroll_into_view_if_needed()
                lb = legend.bounding_box()
                hit = page.evaluate("([x, y]) => document.elementFromPoint(x, y).closest('.ts-text') === null",
                                    [lb["x"] + 5, lb["y"] + lb["height"] / 2])
                assert hit
                chart = page.locator(".ts-lc").first
                chart.scroll_into_view_if_needed()
                box = chart.bounding_box()
                page.mouse.move(box["x"] + box["width"] * 0.45, box["y"] + box["height"] * 0.55)
                page.wait_for_function("() => (document.querySelector('.ts-lc-hover') || {}).textContent"
                                       "?.includes('nats (full)')", timeout=20000)
                hover = page.locator(".ts-lc-hover").first.text_content()
                assert "H = " in hover and "window H (next 4) = " in hover
                page.screenshot(path=str(shots / f"explorer-curve-{width}.png"))


def test_layers_ticks_readable_and_labels_apart_at_three_widths(tmp_path, shots):
    store = layer_trace_store(tmp_path / "layers.duckdb", n_traces=2, n_tokens=400, n_layers=30)
    with streamlit_server(store.path) as url:
        for width in WIDTHS:
            with browser_page(width=width, height=1100) as page:
                page.goto(url + "/layers")
                settle(page)
                page.wait_for_selector(".js-plotly-plot .heatmaplayer", timeout=120000)
                page.wait_for_timeout(500)
                assert page.evaluate(OVERLAPS) == []
                gaps = page.evaluate(TICK_GAPS)
                assert len(gaps) == 2
                for n_ticks, gap, font in gaps:
                    assert 10 <= n_ticks <= 24 and font >= 11
                    assert gap >= font * 1.2, (width, gaps)  # rotated labels a line apart at least
                texts = page.locator(".js-plotly-plot").first.locator(".xtick text").all_text_contents()
                assert all(t.strip() for t in texts) and any("␣" in t or "↵" in t for t in texts)
                page.screenshot(path=str(shots / f"layers-{width}.png"))
                page.locator("[data-testid='stPlotlyChart']").first.screenshot(
                    path=str(shots / f"layers-heatmap-{width}.png"))
                page.locator("[data-testid='stHeadingWithActionElements']",
                             has_text="Entropy profile of this trace").scroll_into_view_if_needed()
                page.wait_for_timeout(500)
                page.screenshot(path=str(shots / f"layers-profiles-{width}.png"))


def test_difficulty_and_early_stop_labels_apart_at_three_widths(tmp_path, shots):
    """The U-shape's title above its legend, and the τ_mean / τ_info labels on either side of
    their lines, on the demo store (whose thresholds lie close together)."""
    from analysis.demo import load_demo
    from analysis.store import Store

    store = Store(tmp_path / "demo.duckdb")
    load_demo(store)
    with streamlit_server(store.path) as url:
        for width in WIDTHS:
            with browser_page(width=width, height=1000) as page:
                for path in ("/difficulty", "/early-stop"):
                    page.goto(url + path)
                    settle(page)
                    page.wait_for_timeout(1500)
                    name = path.strip("/")
                    charts = [c for c in page.locator("[data-testid='stPlotlyChart']").all() if c.is_visible()]
                    for i, chart in enumerate(charts[:4]):
                        chart.screenshot(path=str(shots / f"{name}-{width}-chart{i}.png"), timeout=60000)
                    assert page.evaluate(OVERLAPS) == [], (path, width)
