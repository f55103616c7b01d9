"""The explorer's canvas line chart (dashboard/line_chart.py + line_chart.js): what it accepts,
and in a real browser its hover, legend and zoom, with hostile token text shown as text."""

from __future__ import annotations

import json

import numpy as np
import plotly.graph_objects as go
import pytest

from analysis.store import Store
from dashboard.line_chart import figure_spec
from tests.browser import browser_page, streamlit_server, wait_for_app
from tests.long_traces import synthetic_trace, vocab

HOSTILE = '<img src=x onerror="window.__pwned=1">'
HOSTILE_AT = 30


def test_figure_spec_sends_the_figure_without_its_template_and_refuses_what_it_cannot_draw():
    fig = go.Figure(go.Scatter(x=np.arange(5), y=np.linspace(0, 1, 5), name="a &lt;b&gt;"))
    fig.update_layout(template="plotly_white", shapes=[dict(type="line", x0=0, x1=1, y0=0, y1=0)])
    spec = json.loads(figure_spec(fig))
    assert "template" not in spec["layout"] and spec["data"][0]["name"] == "a &lt;b&gt;"
    assert spec["data"][0]["y"]["dtype"] == "f8"  # plotly's typed-array encoding, decoded by the chart
    with pytest.raises(ValueError, match="scatter traces only"):
        figure_spec(go.Figure(go.Bar(x=[1], y=[2])))
    with pytest.raises(ValueError, match="line shapes only"):
        figure_spec(go.Figure(layout=dict(shapes=[dict(type="rect", x0=0, x1=1, y0=0, y1=1)])))


def hover_at(page, box, pos: int) -> str:
    """Move over the chart until its hover is at token ``pos``; the hover's text."""
    x = box["x"] + box["width"] * 0.5
    for _ in range(12):
        page.mouse.move(x, box["y"] + box["height"] * 0.6)
        page.wait_for_function("() => document.querySelector('.ts-lc-hover').style.display === 'block'",
                               timeout=10000)
        text = page.locator(".ts-lc-hover").text_content()
        at = int(page.locator(".ts-lc-hx").text_content().rsplit(" ", 1)[1])
        if at == pos:
            return text
        x += (pos - at) * box["width"] / 70
    raise AssertionError(f"the hover did not reach token {pos}")


@pytest.mark.slow
def test_curve_hover_legend_and_zoom_in_a_browser(tmp_path):
    store = Store(tmp_path / "s.duckdb")
    trace = synthetic_trace(60, seed=3)
    trace.tokens[HOSTILE_AT] = HOSTILE
    run = store.create_run("short", "synthetic", model="synthetic")
    store.add_traces(run, [trace], vocab())
    store.finish_run(run)
    with streamlit_server(store.path) as url, browser_page(width=1440, height=1000) as page:
        dialogs = []
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        page.goto(url + "/explorer")
        wait_for_app(page)
        page.wait_for_selector(".ts-lc[data-state='drawn'] .ts-lc-xtitle", timeout=60000)
        chart = page.locator(".ts-lc-canvas")
        chart.scroll_into_view_if_needed()
        box = chart.bounding_box()
        text = hover_at(page, box, HOSTILE_AT)
        # the token's label, literally, with its entropy's unit and estimator
        assert HOSTILE in text and "nats (full)" in text and "window H (next 4)" in text
        assert page.locator(".ts-lc img, .ts-lc b").count() == 0
        assert page.evaluate("() => window.__pwned") is None and not dialogs
        # the legend hides a trace: its hover line goes
        page.locator(".ts-lc-item", has_text="token entropy").click()
        assert "ts-lc-off" in page.locator(".ts-lc-item", has_text="token entropy").get_attribute("class")
        text = hover_at(page, box, 20)
        assert "window H (next 4)" in text and "H = " not in text.replace("window H", "")
        page.locator(".ts-lc-item", has_text="token entropy").click()
        # drag across a third of the plot: a zoom into those positions; double-click: all again
        y = box["y"] + box["height"] * 0.5
        page.mouse.move(box["x"] + box["width"] * 0.4, y)
        page.mouse.down()
        page.mouse.move(box["x"] + box["width"] * 0.7, y, steps=6)
        page.mouse.up()
        assert page.locator(".ts-lc-reset").is_visible()
        page.mouse.move(box["x"] + box["width"] * 0.08, y)
        first = int(page.locator(".ts-lc-hx").text_content().rsplit(" ", 1)[1])
        assert first >= 15, first  # the left edge is now well inside the trace
        # a new window width redraws the curve and keeps the zoom, and a line hidden stays hidden
        page.locator(".ts-lc-item", has_text="window entropy").click()
        thumb = page.locator("[data-testid='stSlider']").filter(has_text="Window w").locator("input[type='range']")
        thumb.focus()
        page.keyboard.press("ArrowRight")
        page.wait_for_function("() => document.querySelector('.ts-lc-legend').textContent.includes('next 5 tokens')",
                               timeout=60000)
        assert page.locator(".ts-lc-reset").is_visible()
        assert "ts-lc-off" in page.locator(".ts-lc-item", has_text="window entropy").get_attribute("class")
        page.locator(".ts-lc-item", has_text="window entropy").click()
        page.mouse.move(box["x"] + box["width"] * 0.08, y)
        assert int(page.locator(".ts-lc-hx").text_content().rsplit(" ", 1)[1]) == first
        page.mouse.dblclick(box["x"] + box["width"] * 0.5, y)
        assert not page.locator(".ts-lc-reset").is_visible()
        page.mouse.move(box["x"] + box["width"] * 0.08, y)
        assert int(page.locator(".ts-lc-hx").text_content().rsplit(" ", 1)[1]) < 8
        page.screenshot(path=str(tmp_path / "line-chart.png"))
