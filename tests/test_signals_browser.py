"""Real browser: the Signals page shows its verdict, ranked table and ROC curves; the calibration
signal can be changed; the Compare page's checkpoint tab draws the series."""

from __future__ import annotations

import pytest

from tests.browser import browser_page, streamlit_server, wait_for_app
from tests.signals_data import make_checkpoint_store


@pytest.mark.slow
def test_signals_and_compare_pages_in_chromium(tmp_path):
    store = make_checkpoint_store(tmp_path / "browser.duckdb", steps=(0, 100, 200))
    with streamlit_server(store.path) as url, browser_page() as page:
        page.goto(url)
        wait_for_app(page)
        page.locator("[data-testid='stSidebarNav'] a").filter(has_text="Signals").click()
        wait_for_app(page)
        page.wait_for_selector(".js-plotly-plot", timeout=60000)
        body = page.locator("[data-testid='stMain']").inner_text()
        assert "Better than chance on this run" in body or "No signal beats chance" in body
        assert page.locator("[data-testid='stDataFrame']").count() >= 1
        titles = page.locator(".js-plotly-plot .gtitle").all_text_contents()
        assert any("ROC curves" in t for t in titles) and any("Reliability diagram" in t for t in titles)
        # change the calibrated signal: the reliability diagram's title follows
        box = page.locator("[data-testid='stSelectbox']").filter(has_text="Signal")
        box.click()
        page.keyboard.type("length")  # the list scrolls; typing narrows it to the option
        page.get_by_role("option").filter(has_text="length").first.click()
        page.wait_for_function("() => [...document.querySelectorAll('.js-plotly-plot .gtitle')]"
                               ".some(e => e.textContent.includes('length'))", timeout=60000)
        assert not page.locator("[data-testid='stException']").count()

        page.locator("[data-testid='stSidebarNav'] a").filter(has_text="Compare").click()
        wait_for_app(page)
        page.get_by_role("tab", name="Checkpoints").click()
        page.wait_for_function("() => [...document.querySelectorAll('.js-plotly-plot .gtitle')]"
                               ".some(e => e.textContent.includes('over training'))", timeout=60000)
        text = page.locator("[data-testid='stMain']").inner_text()
        assert "Fit over 3 checkpoints" in text and "95% CI" in text
        assert not page.locator("[data-testid='stException']").count()
