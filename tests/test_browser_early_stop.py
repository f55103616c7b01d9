"""Real browser: move the early-stop threshold slider and see the figures and numbers change."""

from __future__ import annotations

import pytest

from tests.browser import browser_page, streamlit_server, wait_for_app
from tests.difficulty_data import make_graded_store


def _state(page) -> tuple[list[str], list[str]]:
    notes = page.locator(".js-plotly-plot .annotation-text").all_text_contents()
    metrics = page.locator("[data-testid='stMetricValue']").all_inner_texts()
    return notes, metrics


@pytest.mark.slow
def test_threshold_slider_moves_the_figures(tmp_path):
    store = make_graded_store(tmp_path / "browser.duckdb", runs=1)
    with streamlit_server(store.path) as url, browser_page() as page:
        page.goto(url)
        wait_for_app(page)
        # through the navigation, as a user would (a deep link can race the page registry)
        page.locator("[data-testid='stSidebarNav'] a").filter(has_text="Early stopping").click()
        wait_for_app(page)
        page.get_by_text("streaming stop").click()
        wait_for_app(page)
        page.wait_for_selector(".js-plotly-plot .annotation-text", timeout=60000)
        notes0, metrics0 = _state(page)
        assert any(n.startswith("τ = ") for n in notes0), notes0
        slider = page.locator("[data-testid='stSlider']").filter(has_text="Threshold τ").get_by_role("slider")
        slider.focus()
        slider.press("End")  # the highest threshold: every trace stops as early as allowed
        page.wait_for_function(
            "(before) => { const t = [...document.querySelectorAll('.js-plotly-plot .annotation-text')]"
            ".map(e => e.textContent); return t.length && JSON.stringify(t) !== before; }",
            arg=__import__("json").dumps(notes0), timeout=60000)
        wait_for_app(page)
        notes1, metrics1 = _state(page)
        tau0 = [n for n in notes0 if n.startswith("τ = ")]
        tau1 = [n for n in notes1 if n.startswith("τ = ")]
        assert tau1 and tau1 != tau0
        assert float(tau1[0].split("=")[1]) > float(tau0[0].split("=")[1])
        assert metrics1 != metrics0  # tokens saved / accuracy follow the threshold
        assert not page.locator("[data-testid='stException']").count()
