"""The trace explorer in a real browser (Debian's Chromium via Playwright)."""

from __future__ import annotations

import pytest

from tests.browser import browser_page, streamlit_server, wait_for_app
from tests.helpers import fill_store

pytestmark = pytest.mark.slow


def test_explorer_shows_chart_and_coloured_text(store, tiny_lm, tmp_path):
    fill_store(store, tiny_lm, max_new_tokens=40)
    with streamlit_server(store.path) as url, browser_page() as page:
        page.goto(url + "/explorer")
        wait_for_app(page)
        page.wait_for_selector(".ts-lc[data-state='drawn'] .ts-lc-xtitle", timeout=60000)
        page.wait_for_selector("span.tok", timeout=60000)
        toks = page.locator("span.tok")
        assert toks.count() == 40
        title = toks.nth(3).get_attribute("title")
        assert "entropy (nats, full)" in title and "%" in title  # top-k alternatives with probabilities
        assert page.get_by_text("Forking points").first.is_visible()
        page.screenshot(path=str(tmp_path / "explorer.png"), full_page=True)
