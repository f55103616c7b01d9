"""Real browser: state that belongs to its run, links that open what they name, Generate's
Stop and "Open in the trace explorer" (tests/varied_store.py; the embedded model generates)."""

from __future__ import annotations

import re
import time
from urllib.parse import parse_qs, urlparse

import pytest

from analysis.store import Store
from tests.browser import browser_page, streamlit_server, wait_for_app
from tests.varied_store import varied_store


@pytest.fixture(scope="module")
def varied(tmp_path_factory):
    return varied_store(tmp_path_factory.mktemp("browser_state") / "varied.duckdb")


def opened(page, url: str) -> None:
    page.set_default_timeout(90_000)  # two cores shared with other tests: a rerun can take a while
    page.goto(url)
    wait_for_app(page)


def settle(page) -> None:
    page.wait_for_timeout(300)  # the rerun starts after the input event
    wait_for_app(page)


def errors(page) -> list[str]:
    return page.locator("[data-testid='stException']").all_inner_texts()


def choose(page, label: str, option: str) -> None:
    box = page.get_by_role("combobox", name=label, exact=True).first
    box.click()
    if not until(lambda: page.get_by_role("option").count(), timeout=3):
        box.press("ArrowDown")  # a click that lands while the box is still focusing opens nothing
    page.get_by_role("option").filter(has_text=option).first.click()
    settle(page)


def shown(page, label: str) -> str:
    """The option a selectbox shows."""
    return page.get_by_role("combobox", name=label, exact=True).first.input_value()


def until(fn, timeout: float = 60.0):
    """Poll ``fn`` until it returns something true (a rerun ends a little after its input)."""
    end = time.monotonic() + timeout
    while True:
        v = fn()
        if v or time.monotonic() > end:
            return v
        time.sleep(0.25)


def trace_of(chip: str) -> int:
    return int(re.match(r"trace (\d+)", chip).group(1))


def url_params(page) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlparse(page.url).query).items()}


def chips(page) -> list[str]:
    return page.locator("[data-testid='stMultiSelect'] [data-tag]:visible").evaluate_all(
        "els => els.map(e => e.getAttribute('aria-label'))")


def metric(page, label: str) -> str:
    box = page.locator("[data-testid='stMetric']").filter(has_text=label).first
    return box.locator("[data-testid='stMetricValue']").inner_text()


def tau_slider(page):
    return page.locator("[data-testid='stSlider']").filter(has_text="Threshold τ").get_by_role("slider")


def nav(page, title: str) -> None:
    page.locator("[data-testid='stSidebarNav'] a").filter(has_text=title).click()
    settle(page)


@pytest.mark.slow
def test_early_stop_run_switches_and_threshold(varied, tmp_path):
    """The crash sequence of issue 11: switch runs and move τ; chips, τ and units follow the run."""
    own = {int(r): {int(t) for t in varied.traces(int(r))["trace_id"]} for r in varied.runs()["run_id"]}
    with streamlit_server(varied.path) as url, browser_page() as page:
        opened(page, url)
        nav(page, "Early stopping")
        assert shown(page, "Run").startswith("#1 ")  # the run with the most graded traces
        moved = {}
        for run in (1, 2, 4, 1):
            choose(page, "Run", f"#{run} ")
            # the chips are this run's traces (they listed the previous run's)
            drawn = until(lambda: (c := chips(page)) and {trace_of(x) for x in c} <= own[run] and c)
            assert drawn, (run, chips(page))
            assert not errors(page), errors(page)
            tau = float(tau_slider(page).input_value())
            if run in moved:  # back on a run: its own τ, as it was left
                assert tau == pytest.approx(moved[run], abs=2e-3)
            elif run != 4:  # a run's first τ is τ_mean (run 4 has no correct calibration trace)
                assert tau == pytest.approx(float(metric(page, "τ_mean").split()[0]), abs=2e-3)
            tau_slider(page).focus()
            tau_slider(page).press("End")
            settle(page)
            moved[run] = float(tau_slider(page).get_attribute("max"))
            assert until(lambda: float(tau_slider(page).input_value()) == moved[run])
            assert not errors(page), errors(page)  # the TypeError replaced the rest of the page
            assert page.locator("[data-testid='stHeading']").filter(has_text="Export or load a threshold").count()
        # a rule change keeps the traces drawn, and the chart draws them
        before = chips(page)
        page.get_by_text("confidence gate").click()
        settle(page)
        assert chips(page) == before
        assert page.locator(".js-plotly-plot").filter(has_text="stop (×)").locator(".scatterlayer .trace").count()
        # bits: the threshold and the trace picker elsewhere name the unit shown
        page.locator("[data-testid='stSidebar']").get_by_text("bits").click()
        settle(page)
        assert "bits" in tau_slider(page).locator("xpath=ancestor::*[@data-testid='stSlider']").inner_text()
        nav(page, "Trace explorer")
        assert "bits" in shown(page, "Trace") or "H̄" not in shown(page, "Trace")
        assert "nats" not in shown(page, "Trace")
        page.screenshot(path=str(tmp_path / "explorer_bits.png"), full_page=True)
        assert not errors(page)


@pytest.mark.slow
def test_deep_links(varied):
    ids = [int(t) for t in varied.traces(4)["trace_id"]]
    with streamlit_server(varied.path) as url, browser_page() as page:
        opened(page, f"{url}/explorer?run=4&trace={ids[1]}")
        assert shown(page, "Run").startswith("#4 ")
        assert shown(page, "Trace").startswith("#1 ")  # the second trace of run 4
        assert url_params(page) == {"run": "4", "trace": str(ids[1])}
        # a pick goes into the URL and to the other pages
        choose(page, "Trace", "#2 ")
        assert url_params(page) == {"run": "4", "trace": str(ids[2])}
        nav(page, "Layers")
        assert shown(page, "Run").startswith("#4 ") and shown(page, "Trace").startswith("#2 ")
        assert url_params(page)["run"] == "4"
        nav(page, "Difficulty (U-shape)")
        assert shown(page, "Run").startswith("#4 ")  # the user's choice, not the page's default

        page.goto(f"{url}/explorer?trace={ids[0]}")  # a trace alone: its run is found
        wait_for_app(page)
        assert shown(page, "Run").startswith("#4 ") and shown(page, "Trace").startswith("#0 ")

        page.goto(f"{url}/early-stop?run=2")
        wait_for_app(page)
        assert shown(page, "Run").startswith("#2 ")

        page.goto(f"{url}/runs")
        wait_for_app(page)
        assert page.locator("h1").first.inner_text() == "Runs"
        assert not page.get_by_text("Page not found").count()

        for link, says in ((f"{url}/explorer?run=99", "Run #99 is not in this store"),
                           (f"{url}/explorer?run=abc", "not a run number"),
                           (f"{url}/layers?run=4&trace=1", "belongs to run #1, not to run #4")):
            page.goto(link)
            wait_for_app(page)
            assert page.get_by_text(says).count(), link
            assert not errors(page), (link, errors(page))


@pytest.mark.slow
def test_runs_open_in_explorer(varied):
    with streamlit_server(varied.path) as url, browser_page() as page:
        opened(page, url)
        page.get_by_text("Run details and settings").click()
        choose(page, "Run", "#2 ")
        assert "#2 · graded small" in shown(page, "Run")  # the run's name, not its row number
        page.get_by_role("button", name="Open in the trace explorer").click()
        assert until(lambda: page.locator("h1").first.inner_text() == "Trace explorer")
        settle(page)
        assert shown(page, "Run").startswith("#2 ")
        assert urlparse(page.url).path.endswith("/explorer") and url_params(page)["run"] == "2"


@pytest.mark.slow
def test_generate_stop_keeps_finished_batches_and_opens_explorer(tmp_path):
    """The embedded model generates one batch per prompt; Stop ends the run after a batch."""
    store = Store(tmp_path / "gen.duckdb")
    prompts = [f"What is {a} + {a}?" for a in range(1, 9)]
    with streamlit_server(store.path) as url, browser_page() as page:
        opened(page, f"{url}/generate")
        page.get_by_text("my prompts").click()
        settle(page)
        page.get_by_label("One prompt per line").fill("\n".join(prompts))
        page.get_by_text("Model and sampling").click()
        for label, value in (("Max new tokens", "16"), ("Batch size", "1")):
            box = page.locator("[data-testid='stNumberInput']").filter(has_text=label).locator("input")
            box.fill(value)
            box.press("Enter")
            settle(page)
        assert page.get_by_text("8 prompt(s) × 1 sample(s)").count()
        page.get_by_role("button", name="Generate").click()
        # the model loads first (minutes at most); stop once two traces are stored
        page.get_by_text(re.compile(r"^2 / 8 traces")).wait_for(timeout=300_000)
        page.get_by_role("button", name="Stop after this batch").click()
        page.get_by_text("the run was stopped and is marked 'interrupted'").wait_for(timeout=120_000)
        runs = store.runs()
        assert list(runs["status"]) == ["interrupted"]
        assert 2 <= int(runs["n_traces"].iloc[0]) < 8
        assert runs["name"].iloc[0] == "What is 1 + 1? (+7 prompts)"  # named after the prompts
        assert not errors(page)
        page.get_by_role("button", name="Open in the trace explorer").click()
        assert until(lambda: page.locator("h1").first.inner_text() == "Trace explorer")
        settle(page)
        assert shown(page, "Run").startswith(f"#{int(runs['run_id'].iloc[0])} ")
        assert not errors(page)
