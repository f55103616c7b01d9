"""Every core page runs through Streamlit's AppTest against a real store file."""

from __future__ import annotations

import pytest
from streamlit.testing.v1 import AppTest

from tests.browser import ROOT
from tests.helpers import chart_json, chart_specs, fill_store

APP = str(ROOT / "dashboard" / "app.py")


@pytest.fixture
def filled(store, tiny_lm, monkeypatch):
    run_id = fill_store(store, tiny_lm)
    monkeypatch.setenv("THINKSCOPE_STORE", str(store.path))
    return store, run_id


def run_page(page: str | None = None) -> AppTest:
    """Run the app (default page) or one page file on its own, as st.navigation would."""
    at = AppTest.from_file(str(ROOT / "dashboard" / page) if page else APP, default_timeout=60)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_runs_page_lists_runs(filled):
    at = run_page()
    assert at.title[0].value == "Runs"
    df = at.dataframe[0].value
    assert list(df["name"]) == ["tiny run"]
    assert int(df["traces"].iloc[0]) == 4
    assert any("mean entropy (nats)" == c for c in df.columns)


def test_explorer_shows_curve_text_and_forks(filled):
    at = run_page("views/explorer.py")
    assert at.title[0].value == "Trace explorer"
    htmls = [h.proto.body for h in at.get("html")]
    assert any('class="tok"' in h for h in htmls), "coloured token text missing"
    assert len(chart_specs(at)) >= 1
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Tokens"] == "24"
    # switching to bits changes every displayed value by 1/ln 2
    before = metrics["Mean H, all (nats)"]
    at.session_state["unit"] = "bits"
    at.run()
    after = {m.label: m.value for m in at.metric}["Mean H, all (bits)"]
    assert abs(float(after) - float(before) / 0.6931471805599453) < 2e-3


def test_explorer_threshold_methods_and_estimators(filled):
    at = run_page("views/explorer.py")
    est = at.selectbox(key="explorer.estimator")
    assert set(est.options) >= {"full", "full_t1", "topk_renorm", "topk_tail", "epr"}
    forks = {}
    for method in ("fixed", "corpus", "percentile"):
        at = AppTest.from_file(str(ROOT / "dashboard" / "views" / "explorer.py"), default_timeout=60)
        at.session_state["explorer.method"] = method
        at.session_state["explorer.estimator"] = "full" if method == "fixed" else "epr"
        at.session_state["explorer.use_lexicon"] = method == "percentile"
        at.run()
        assert not at.exception, [e.value for e in at.exception]
        forks[method] = {m.label: m.value for m in at.metric}["Forking points"]
        assert at.session_state["explorer.estimator"] in chart_json(at)[0]
    # a fixed threshold of 1.0 nats on a random model (entropy ~ ln 320 = 5.8) marks every position
    assert int(forks["fixed"]) >= 20


def test_explorer_escapes_token_text(store, tiny_lm, monkeypatch):
    import numpy as np
    from analysis.trace import Trace
    run_id = store.create_run("xss", "upload:test")
    evil = ["<img src=x onerror=alert(1)>", "</script>", " ok"]
    store.add_traces(run_id, [Trace(prompt="<b>p</b>", tokens=evil, logprobs=np.log([0.5, 0.4, 0.9]),
                                    topk_tokens=[["<script>", "a"], ["b", "c"], ["d", "e"]],
                                    topk_logprobs=np.log([[0.5, 0.2], [0.4, 0.3], [0.9, 0.05]]))])
    store.finish_run(run_id)
    monkeypatch.setenv("THINKSCOPE_STORE", str(store.path))
    at = run_page("views/explorer.py")
    body = "".join(h.proto.body for h in at.get("html"))
    assert "<img src=x" not in body and "</script>" not in body and "<script>" not in body
    assert "&lt;img src=x onerror=alert(1)&gt;" in body


def test_generate_page_renders(filled):
    at = run_page("views/generate.py")
    assert at.button(key="generate.go") is not None
    assert "traces" in "".join(m.value for m in at.markdown)


def test_empty_store_says_what_to_do(store, monkeypatch):
    monkeypatch.setenv("THINKSCOPE_STORE", str(store.path))
    at = run_page()
    assert "no runs yet" in at.info[0].value


def test_generate_page_records_a_run(store, tiny_lm, tmp_path, monkeypatch):
    """Generate from the page with a local model folder: the run lands in the store."""
    folder = tmp_path / "tiny-model"
    tiny_lm.model.save_pretrained(folder)
    tiny_lm.tokenizer.save_pretrained(folder)
    monkeypatch.setenv("THINKSCOPE_STORE", str(store.path))
    at = AppTest.from_file(str(ROOT / "dashboard" / "views" / "generate.py"), default_timeout=120)
    at.session_state["generate.source"] = "my prompts"
    at.session_state["generate.prompts"] = "What is 1 + 1?\nWhat is 2 + 2?"
    at.session_state["generate.model"] = str(folder)
    at.session_state["generate.max_tokens"] = 8
    at.session_state["generate.samples"] = 2
    at.session_state["generate.lens"] = True
    at.run()
    at.button(key="generate.go").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert "4 traces" in at.success[0].value
    runs = store.runs()
    assert list(runs["n_traces"]) == [4] and runs["model"].iloc[0] == str(folder.resolve())
    tid = int(store.traces(int(runs["run_id"].iloc[0]))["trace_id"].iloc[0])
    assert len(store.token_layers(tid)) == 8
