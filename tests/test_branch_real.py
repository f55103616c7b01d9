"""Branching with the real embedded model on a demo trace, end to end: stored, graded, linked,
shown on the Branches page (AppTest) and in a real browser (click a token, branch, see outcomes)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from streamlit.testing.v1 import AppTest

from analysis import branch as br
from analysis.demo import load_demo
from tests.browser import ROOT, browser_page, streamlit_server, wait_for_app

pytestmark = pytest.mark.slow

PAGE = str(ROOT / "dashboard" / "views" / "branches.py")
#: demo trace 3 (gold 7) ends "... So the answer is 7.": at 41 ' answer' (p .58) or ' final' (.38);
#: at 44 '7' (p .98) or '3' (.02)
TRACE, POSITIONS = 3, [41, 44]


@pytest.fixture(scope="module")
def branched(tmp_path_factory, embedded_lm):
    from analysis.store import Store
    store = Store(tmp_path_factory.mktemp("branch") / "demo.duckdb")
    load_demo(store)
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # the machine's cores are shared
    try:
        parent = br.load_parent(store, TRACE)
        settings = br.BranchSettings(n=2, p_min=0.01, max_alternatives=1, fresh=False, max_new_tokens=12)
        out = br.sweep(store, embedded_lm, parent, POSITIONS, settings)
    finally:
        torch.set_num_threads(before)
    return store, parent, out


def test_two_positions_two_branches_two_rollouts_stored_graded_linked(branched):
    store, parent, out = branched
    assert (out["done"], out["rollouts"]) == (2, 8)
    links = store.branch_rollouts(TRACE)
    assert len(links) == 8 and sorted(set(links["pos"])) == POSITIONS
    assert (links.groupby(["pos", "kind"]).size() == 2).all()
    assert set(links.loc[links["pos"] == 44, "forced_token"]) == {"7", "3"}
    # the original token's rollouts finish the trace's own answer; forcing '3' answers 3
    at44 = links[links["pos"] == 44].set_index("forced_token")
    assert set(at44.loc["7", "answer"]) == {"7"} and at44.loc["7", "correct"].all()
    assert set(at44.loc["3", "answer"]) == {"3"} and not at44.loc["3", "correct"].any()
    for rid in links["trace_id"]:
        tok = store.tokens(int(rid))
        assert np.isfinite(tok["entropy_full"]).all() and len(tok) <= 13
        assert store.rollout_parent(int(rid))["parent_trace_id"] == TRACE
    table, stats = br.position_table(store, TRACE)
    p3 = float(at44.loc["3", "forced_p"].iloc[0])
    assert 0.005 < p3 < 0.05
    assert table.set_index("pos").loc[44, "fork_strength"] == pytest.approx(p3)
    assert table["survival"].iloc[-1] <= 1 - p3 + 1e-9


def test_branches_page_shows_outcomes(branched, monkeypatch):
    store, _, _ = branched
    monkeypatch.setenv("THINKSCOPE_STORE", str(store.path))
    at = AppTest.from_file(PAGE, default_timeout=120)
    at.query_params["run"] = "1"
    at.query_params["trace"] = str(TRACE)
    at.query_params["pos"] = "44"
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.title[0].value == "Branches"
    assert {m.label: m.value for m in at.metric}["Swept positions"] == "2"
    (table,) = [d.value for d in at.dataframe if "outcomes (share)" in d.value.columns]
    assert list(table["branch"]) == ["alternative", "original"] or list(table["branch"]) == ["original", "alternative"]
    assert set(table["outcomes (share)"]) == {"3: 100%", "7: 100%"}
    assert any("Fork strength at t = 44" in c.value for c in at.caption)
    keys = {c.proto.id for c in at.get("plotly_chart")}
    assert len(keys) >= 3  # curve, Sankey, survival
    htmls = [h.proto.body for h in at.get("html")]
    assert any('href="?run=1&amp;trace=3&amp;pos=44"' in h for h in htmls), "tokens are links to their branches"
    assert any("answer <b>3</b>" in h for h in htmls), "the rollouts' texts with their answers"


def test_browser_click_a_token_branch_and_see_outcomes(branched, monkeypatch):
    store, _, _ = branched
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the server's torch: one thread on shared cores
    with streamlit_server(store.path) as url, browser_page() as page:
        page.goto(url + f"/branches?run=1&trace={TRACE}")
        wait_for_app(page)
        page.locator('a.tok[data-pos="29"]').click(timeout=120000)  # '7' (p .55) against '1' (p .45)
        wait_for_app(page)
        page.get_by_text("Position 29 has not been branched yet.").wait_for(timeout=60000)
        page.get_by_role("button", name="Branch at t = 29").click()
        page.get_by_text("Branched at t = 29").wait_for(timeout=400000)
        wait_for_app(page)
        page.get_by_text("Fork strength at t = 29").wait_for(timeout=60000)
        sankey = page.locator(".st-key-branches-sankey")  # alternatives -> outcomes
        sankey.scroll_into_view_if_needed(timeout=60000)
        sankey.locator(".sankey-node").first.wait_for(timeout=60000)
        assert page.locator("[data-testid='stDataFrame']").count() >= 1
    links = store.branch_rollouts(TRACE)
    assert 29 in set(links["pos"]) and len(links[links["pos"] == 29]) == 4  # original + '1', 2 rollouts each
