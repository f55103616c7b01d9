"""Every logprob-derived value carries the temperature (and truncation) it was taken at: the
recorder and each reader store it with the run, labels say it, and an early-stop threshold
refuses a run whose entropies are at another temperature."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from analysis import early_stop as es
from analysis import metrics
from analysis.formats import ingest_file
from analysis.record import GenerationSettings
from analysis.store import Store
from analysis.trace import Trace

FIX = Path(__file__).resolve().parent / "fixtures" / "formats"


def _settings(store: Store, run_id: int) -> dict:
    return store.run_settings(run_id)


def test_generated_runs_record_their_logprob_temperature():
    sampled = GenerationSettings(temperature=0.7).to_dict()
    assert (sampled["temperature"], sampled["logprob_temperature"], sampled["logprob_truncation"]) == (0.7, 0.7, "none")
    greedy = GenerationSettings(temperature=0.7, do_sample=False).to_dict()
    assert greedy["temperature"] is None and greedy["top_p"] is None  # greedy decoding samples nothing
    assert (greedy["logprob_temperature"], greedy["logprob_truncation"]) == (1.0, "none")
    # what is stored still rebuilds the settings (resume, branching)
    names = GenerationSettings.__dataclass_fields__
    back = GenerationSettings(**{k: v for k, v in greedy.items() if k in names})
    assert back.effective_temperature == 1.0 and not back.do_sample


def test_older_runs_read_from_their_generation_settings():
    assert metrics.logprob_temperature({"temperature": 0.7, "do_sample": True}) == 0.7
    assert metrics.logprob_temperature({"temperature": 0.7, "do_sample": False}) == 1.0  # stored before the fix
    assert metrics.logprob_temperature({"file": "x.jsonl", "format": "openai_chat"}) is None
    assert metrics.logprob_temperature({"logprob_temperature": "unknown"}) is None
    assert metrics.estimator_temperature("full_t1", {"logprob_temperature": 0.7}) == 1.0
    assert metrics.estimator_temperature("topk_renorm", {"logprob_temperature": 0.7}) == 0.7


@pytest.mark.parametrize(("fixture", "temperature", "truncation"), [
    ("llamacpp_completion.json", 1.0, "none"),                    # n_probs: softmax of the raw logits
    ("llamacpp_post_sampling.jsonl", "unknown", "llama.cpp sampler chain"),
    ("openai_chat.jsonl", "unknown", "unknown"),                  # the file does not say
    ("sglang_chat.jsonl", "unknown", "unknown"),
])
def test_uploads_record_what_their_format_says(store, fixture, temperature, truncation):
    res = ingest_file(store, FIX / fixture)
    s = _settings(store, res.run_id)
    assert (s["logprob_temperature"], s["logprob_truncation"]) == (temperature, truncation)


def test_post_sampling_dump_takes_the_temperature_it_gives(store, tmp_path):
    rec = json.loads((FIX / "llamacpp_post_sampling.jsonl").read_text().splitlines()[0])
    rec["generation_settings"] = {"temperature": 0.6, "top_k": 20}
    p = tmp_path / "post.jsonl"
    p.write_text(json.dumps(rec) + "\n")
    s = _settings(store, ingest_file(store, p).run_id)
    assert (s["logprob_temperature"], s["logprob_truncation"]) == (0.6, "llama.cpp sampler chain")
    assert metrics.conditions_text("epr", s) == ("epr at T = 0.6, after llama.cpp's sampler chain (top-k/top-p/min-p) "
                                                 "truncation")


def test_labels_say_the_temperature():
    gen = GenerationSettings(temperature=0.7).to_dict()
    assert metrics.conditions_text("topk_renorm", gen) == "topk_renorm at T = 0.7, no top-p/top-k truncation"
    assert metrics.conditions_text("full_t1", gen) == "full_t1 at T = 1, no top-p/top-k truncation"
    assert metrics.conditions_text("epr", {"format": "openai_chat"}) == "epr at T unknown, truncation unknown"
    # settings can come from a file (an export's run settings): its own text is never shown
    hostile = {"logprob_temperature": "<b>9</b>", "logprob_truncation": "[x](javascript:alert(1))\x1b[2J"}
    assert metrics.conditions_text("epr", hostile) == "epr at T unknown, truncation unknown"
    assert metrics.logprobs_text(GenerationSettings(do_sample=False).to_dict()).startswith(
        "logprobs, top-k estimators and full at T = 1 (no top-p/top-k truncation)")
    from dashboard import charts
    fig = charts.entropy_curve(["a", "b"], np.array([0.1, 0.2]), np.array([0.2, np.nan]), None, np.array([], int),
                               "nats", "full", 4, conditions=metrics.conditions_text("full", gen))
    assert "H = %{y:.3f} nats (full)<br>full at T = 0.7" in fig.data[0].hovertemplate


def test_cli_show_names_the_temperature(capsys, tmp_path):
    from analysis.cli import main

    s = Store(tmp_path / "t.duckdb")
    rid = s.create_run("greedy", "generate", "tiny-llama", GenerationSettings(do_sample=False).to_dict())
    s.add_traces(rid, [Trace("q", ["a", " b"], np.zeros(2), entropy_full=np.array([0.5, 1.0]))])
    s.finish_run(rid)
    assert main(["--store", str(s.path), "show", str(rid)]) == 0
    out = capsys.readouterr().out
    assert "logprobs, top-k estimators and full at T = 1 (no top-p/top-k truncation); full_t1 at T = 1" in out
    assert '"temperature": null' in out and '"logprob_temperature": 1.0' in out


# --------------------------------------------------------------------------- early-stop thresholds


def _threshold(temperature):
    return es.EarlyStopConfig("tiny-llama", "full", es.StopRule("streaming", 0.69, 8, 16), temperature=temperature)


def test_threshold_file_records_its_temperature_and_refuses_another(tmp_path):
    p = tmp_path / "t.json"
    p.write_text(_threshold(0.7).to_json())
    assert json.loads(p.read_text())["logprob_temperature"] == 0.7
    cfg = es.load_config(p)
    assert cfg.temperature == 0.7
    assert cfg.check_compatible("tiny-llama", "full", 0.7) is None
    # the case of the report: calibrated on T = 0.7 `full`, applied to a greedy run (full at T = 1)
    greedy = metrics.estimator_temperature("full", GenerationSettings(do_sample=False).to_dict())
    with pytest.raises(es.EarlyStopError, match=r"its full entropies were taken at T = 0.7, this run's at T = 1\b"):
        cfg.check_compatible("tiny-llama", "full", greedy)
    assert "temperature is unknown" in cfg.check_compatible("tiny-llama", "full", None)


def test_threshold_file_without_its_temperature_is_a_warning(tmp_path):
    old = json.loads(_threshold(None).to_json())
    old.pop("logprob_temperature")
    old["temperature"] = 0.7  # older files wrote the run's setting, 0.7 even for greedy runs: not trusted
    cfg = es.EarlyStopConfig.from_json(json.dumps(old))
    assert cfg.temperature is None
    warning = cfg.check_compatible("tiny-llama", "full", 1.0)
    assert "does not say at which temperature" in warning and "T = 1" in warning


def test_generation_refuses_a_threshold_from_another_temperature():
    from analysis.stopping import EarlyStop

    class _LM:
        name = "tiny-llama"

    with pytest.raises(es.EarlyStopError, match="taken at T = 0.7, this run's at T = 1"):
        EarlyStop(_threshold(0.7)).check(_LM(), GenerationSettings(do_sample=False))
    stop = EarlyStop(_threshold(None))
    stop.check(_LM(), GenerationSettings(temperature=0.7))
    assert "does not say at which temperature" in stop.summary["warning"]
    EarlyStop(_threshold(0.7)).check(_LM(), GenerationSettings(temperature=0.7))  # same temperature: accepted


def test_explorer_and_difficulty_pages_caption_the_temperature(tmp_path, monkeypatch):
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    from tests.browser import ROOT

    s = Store(tmp_path / "pages.duckdb")
    rid = s.create_run("sampled", "generate", "tiny-llama", GenerationSettings(temperature=0.7).to_dict())
    rng = np.random.default_rng(0)
    s.add_traces(rid, [Trace("q", [f" t{i}" for i in range(12)], np.full(12, -0.5),
                             entropy_full=rng.random(12), entropy_full_t1=rng.random(12),
                             metadata={"problem_id": f"p{j}", "level": 1 + j % 2, "correct": bool(j % 2)})
                       for j in range(4)])
    s.finish_run(rid)
    monkeypatch.setenv("THINKSCOPE_STORE", str(s.path))
    st.cache_data.clear()
    for name, want in (("explorer.py", "full at T = 0.7, no top-p/top-k truncation"),
                       ("difficulty.py", "full at T = 0.7, no top-p/top-k truncation")):
        at = AppTest.from_file(str(ROOT / "dashboard" / "views" / name), default_timeout=120).run()
        assert not at.exception, [e.value for e in at.exception]
        shown = [c.value.replace("\\", "") for c in at.caption]  # markdown escapes of untrusted run names
        assert any(want in c for c in shown), shown


def test_greedy_generation_and_its_rescoring_store_t1(store, tiny_lm):
    from analysis import compare
    from analysis.record import Prompt, record_run

    res = record_run(store, tiny_lm, [Prompt("What is 2 + 3?")],
                     GenerationSettings(temperature=0.7, do_sample=False, max_new_tokens=6, top_k=3), "greedy")
    s = store.run_settings(res.run_id)
    assert s["temperature"] is None and (s["logprob_temperature"], s["logprob_truncation"]) == (1.0, "none")
    again = store.run_settings(compare.rescore_run(store, res.run_id, tiny_lm).run_id)
    assert (again["logprob_temperature"], again["logprob_truncation"]) == (1.0, "none")


def test_preview_says_what_the_logprobs_are():
    from analysis.formats import preview

    p = preview(FIX / "llamacpp_completion.json")
    assert p.logprobs == {"logprob_temperature": 1.0, "logprob_truncation": "none"}
    assert metrics.conditions_text(p.traces[0].estimator, p.logprobs).endswith("at T = 1, no top-p/top-k truncation")


def test_cli_difficulty_names_each_runs_temperature(capsys, tmp_path):
    from analysis.cli import main

    s = Store(tmp_path / "d.duckdb")
    for t, greedy in ((0.7, False), (0.7, True)):
        rid = s.create_run("r", "generate", "tiny-llama", GenerationSettings(temperature=t, do_sample=not greedy).to_dict())
        s.add_traces(rid, [Trace("q", [" a", " b", " c"], np.full(3, -0.5), entropy_full=np.array([0.2, 0.4, 0.6]),
                                 metadata={"problem_id": f"p{j}", "level": 1 + j % 2, "correct": bool(j % 2)})
                           for j in range(4)])
        s.finish_run(rid)
    assert main(["--store", str(s.path), "difficulty", "1", "2", "--estimator", "full"]) == 0
    out = capsys.readouterr().out
    assert "run 1: full at T = 0.7, no top-p/top-k truncation" in out
    assert "run 2: full at T = 1, no top-p/top-k truncation" in out
