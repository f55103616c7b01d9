"""Thresholds by hand, savings/accuracy curves on constructed sets, configs, replay on a tiny model."""

from __future__ import annotations

import math

import numpy as np
import pytest

from analysis import early_stop as es
from analysis import stopping
from analysis.early_stop import RunTokens, StopModel, StopRule
from tests.difficulty_data import graded_traces, make_graded_store


def test_thresholds_by_hand():
    # correct 1, 2, 3: mean 2, sd 1; incorrect 4, 6: mean 5, var 2; pooled sd = sqrt((2*1 + 1*2) / 3)
    th = es.thresholds(np.array([1, 2, 3, 4, 6.0]), np.array([1, 1, 1, 0, 0]))
    d = (5 - 2) / math.sqrt(4 / 3)
    assert th.tau_mean == pytest.approx(2.0)
    assert th.cohens_d == pytest.approx(d) == pytest.approx(2.598076211)
    assert th.tau_info == pytest.approx(2.0 + 1.0 * math.log(1 + d)) == pytest.approx(3.2803993)
    assert (th.n_correct, th.n_incorrect) == (3, 2)


def test_thresholds_edge_cases():
    th = es.thresholds(np.array([1.0, 3.0, np.nan]), np.array([1, 1, 0], dtype=object))
    assert th.tau_info == th.tau_mean == 2.0 and math.isnan(th.cohens_d)  # no incorrect example left
    th = es.thresholds(np.array([1.0, 2.0, 5.0]), np.array([True, None, False], dtype=object))
    assert th.n_correct == 1 and th.n_incorrect == 1  # ungraded left out
    with pytest.raises(es.EarlyStopError, match="no correct example"):
        es.thresholds(np.array([1.0, 2.0]), np.array([0, 0]))


def _gate_set():
    # A: calm prefix (0.1), correct, answer at token 1 -> stopping at b=2 keeps it right, saves 4
    # B: prefix 0.5, correct, answer only at token 3 -> stopping loses it, saves 2
    # C: prefix 2.0, wrong -> saves 8, stays wrong. 20 tokens, no-stop accuracy 2/3.
    h = [.1, .1, 1, 1, 1, 1] + [.5, .5, 1, 1] + [2.0] * 10
    return RunTokens(np.array([1, 2, 3]), [6, 4, 10], np.array(h), [1, 1, 0], [1, 3, -1])


def test_gate_curve_on_constructed_set():
    m = StopModel(_gate_set(), StopRule("gate", budget=2))
    c = m.curve(np.array([0.0, 0.1, 0.3, 0.5, 1.0, 2.0, 3.0]))
    assert c["tokens_saved_pct"].tolist() == pytest.approx([0, 20, 20, 30, 30, 70, 70])
    assert c["accuracy"].tolist() == pytest.approx([2 / 3, 2 / 3, 2 / 3, 1 / 3, 1 / 3, 1 / 3, 1 / 3])
    assert c["accuracy_kept_pct"].tolist()[-1] == pytest.approx(50.0)
    assert m.stops(0.3).tolist() == [1, -1, -1]
    assert m.point(0.5)["stopped"] == 2
    # the default thresholds are exactly where the curve changes
    assert m.default_taus().tolist()[1:] == pytest.approx([0.1, 0.5, 2.0])


def test_streaming_stops_by_hand():
    # k=2, min 2 tokens: running means [nan, 2, 1, 2, 1.5, 0], running minimum [nan, 2, 1, 1, 1, 0]
    rt = RunTokens(np.array([7]), [6], np.array([3, 1, 1, 3, 0, 0.0]), [1], [4])
    np.testing.assert_allclose(es.running_mean(rt, 2), [np.nan, 2, 1, 2, 1.5, 0])
    m = StopModel(rt, StopRule("streaming", k=2, min_tokens=2))
    assert [int(m.stops(t)[0]) for t in (-1, 0.0, 0.5, 1.0, 1.5, 2.0, 9)] == [-1, 5, 5, 2, 2, 1, 1]
    c = m.curve(np.array([-1, 0.5, 1.0, 2.0]))
    assert c["tokens_saved_pct"].tolist() == pytest.approx([0, 0, 50, 100 * 4 / 6])
    # the answer is complete at token 4: a stop at 5 keeps it, a stop at 2 does not
    assert c["accuracy"].tolist() == [1, 1, 0, 0]


def test_streaming_min_tokens_and_window():
    rt = RunTokens(np.array([1]), [5], np.zeros(5), [1], [0])
    assert int(StopModel(rt, StopRule("streaming", k=3, min_tokens=0)).stops(0.0)[0]) == 2
    assert int(StopModel(rt, StopRule("streaming", k=1, min_tokens=4)).stops(0.0)[0]) == 3
    assert int(StopModel(rt, StopRule("streaming", k=1, min_tokens=9)).stops(0.0)[0]) == -1


@pytest.mark.parametrize("mode", ["gate", "streaming"])
def test_curve_agrees_with_per_trace_stops(mode):
    """The sorted-array curve equals a direct count over every trace's stop position."""
    rng = np.random.default_rng(3)
    lengths = rng.integers(1, 80, size=60)
    h = rng.gamma(2.0, 0.5, size=int(lengths.sum()))
    h[rng.random(h.size) < 0.02] = np.nan
    correct = rng.choice([0.0, 1.0, np.nan], size=60, p=[0.4, 0.5, 0.1])
    ans = np.where(rng.random(60) < 0.8, rng.integers(0, 80, size=60) % lengths, -1)
    rt = RunTokens(np.arange(60), lengths, h, correct, ans)
    m = StopModel(rt, StopRule(mode, k=5, min_tokens=8, budget=20))
    graded = ~np.isnan(correct)
    for tau in np.linspace(0.2, 2.5, 17):
        s = m.stops(tau)
        used = np.where(s >= 0, s + 1, lengths)
        ok = np.where(s >= 0, (correct == 1) & (ans >= 0) & (ans <= s), correct == 1)
        p = m.curve(np.array([tau])).iloc[0]
        assert p["tokens_saved_pct"] == pytest.approx(100 * (1 - used.sum() / lengths.sum()))
        assert p["accuracy"] == pytest.approx(ok[graded].mean())


def test_split_is_reproducible():
    a, b = es.calibration_split(10, 4, seed=1), es.calibration_split(10, 4, seed=1)
    assert a.sum() == 4 and (a == b).all()
    with pytest.raises(es.EarlyStopError):
        es.calibration_split(3, 4)


def test_store_round_trip_and_answer_positions(tmp_path):
    store = make_graded_store(tmp_path / "s.duckdb", runs=1)
    rt = es.load_run_tokens(store, 1, "full")
    tr = graded_traces(seed=0)
    assert rt.n == len(tr) and rt.lengths.tolist() == [t.n_tokens for t in tr]
    # the answer first appears after ' is' (4th word from the end of the thinking part)
    for i, t in enumerate(tr[:5]):
        want = t.tokens.index(f" {t.metadata['pred_answer']}")
        assert rt.answer_pos[i] == want
    assert es.answer_char_end("3 + 5 = 8, so 18", "18", None) == len("3 + 5 = 8, so 18")
    assert es.answer_char_end("nothing", "4", "4") == -1


def test_config_round_trip_and_refusal(tmp_path):
    cfg = es.EarlyStopConfig("embedded:SmolLM2-135M-Instruct", "full", StopRule("streaming", 0.8, 8, 16),
                             calibration={"tau_mean": 0.7})
    p = tmp_path / "t.json"
    p.write_text(cfg.to_json())
    back = es.load_config(p, model="embedded:SmolLM2-135M-Instruct", estimator="full")
    assert back.rule == cfg.rule and back.calibration["tau_mean"] == 0.7
    with pytest.raises(es.EarlyStopError, match="calibrated on model 'embedded:SmolLM2-135M-Instruct', this is 'other'"):
        es.load_config(p, model="other", estimator="full")
    with pytest.raises(es.EarlyStopError, match="uses estimator 'full', this uses 'topk_renorm'"):
        es.load_config(p, model="embedded:SmolLM2-135M-Instruct", estimator="topk_renorm")
    (tmp_path / "bad.json").write_text('{"kind": "something else"}')
    with pytest.raises(es.EarlyStopError, match="not a thinkscope early-stop file"):
        es.load_config(tmp_path / "bad.json")
    (tmp_path / "bits.json").write_text(cfg.to_json().replace('"nats"', '"bits"'))
    with pytest.raises(es.EarlyStopError, match="must be in nats"):
        es.load_config(tmp_path / "bits.json")


# --------------------------------------------------------------------------- with a tiny model


def test_stopper_inside_generation(tiny_lm):
    import torch

    from analysis.record import GenerationSettings, Prompt, generate_batch

    settings = GenerationSettings(max_new_tokens=12, do_sample=False, top_k=0, batch_size=2)
    stopper = stopping.EntropyStopper(StopRule("streaming", tau=100.0, k=2, min_tokens=3), settings.effective_temperature)
    traces = generate_batch(tiny_lm, [Prompt("What is 12 + 7?"), Prompt("Tom has 3 apples")], settings, seed=0,
                            extra_processors=[stopper.processor], stopping_criteria=[stopper.criterion])
    # tau above any entropy: every row stops as soon as it may, after min_tokens = 3 tokens
    assert stopper.stop_at.tolist() == [2, 2]
    assert all(t.n_tokens <= 3 for t in traces)
    never = stopping.EntropyStopper(StopRule("streaming", tau=-1.0, k=2, min_tokens=3), 1.0)
    generate_batch(tiny_lm, [Prompt("hi")], settings, seed=0, extra_processors=[never.processor],
                   stopping_criteria=[never.criterion])
    assert never.stop_at.tolist() == [-1]
    assert isinstance(never.h[0], torch.Tensor) and len(never.h) >= 3


def test_replay_on_tiny_model_with_progress_and_cancel(tiny_lm, store):
    from analysis.grading import grade_traces
    from analysis.record import GenerationSettings, Prompt, record_run

    settings = GenerationSettings(max_new_tokens=10, do_sample=False, top_k=5, batch_size=4, chat_template=True)
    prompts = [Prompt(f"What is {a} + 1?", {"problem_id": f"p{a}", "gold_answer": str(a + 1)}) for a in range(5)]
    res = record_run(store, tiny_lm, prompts, settings, "tiny", on_traces=grade_traces)
    rt = es.load_run_tokens(store, res.run_id, "full")
    m = StopModel(rt, StopRule("streaming", tau=100.0, k=2, min_tokens=3))
    stops = {int(t): int(s) for t, s in zip(rt.trace_ids, m.stops(100.0)) if s >= 0}
    assert len(stops) == 5
    seen = []
    batches = list(stopping.replay(tiny_lm, store, res.run_id, stops, answer_tokens=3, batch_size=2,
                             progress=lambda d, n: seen.append((d, n))))
    results = [r for b in batches for r in b]
    assert [len(b) for b in batches] == [2, 2, 1] and seen[0] == (0, 5) and seen[-1] == (5, 5)
    assert {r.trace_id for r in results} == set(stops) and all(r.stop == 2 for r in results)
    assert all(r.correct in (True, False, None) for r in results)
    acc = es.replay_accuracy(m, 100.0, results)
    assert acc["replayed"] == acc["stopped"] == 5 and acc["coverage"] == 1.0
    # cancel after the first batch: what finished is kept, nothing else runs
    calls = []
    kept = []
    for b in stopping.replay(tiny_lm, store, res.run_id, stops, answer_tokens=3, batch_size=2,
                       cancelled=lambda: bool(calls)):
        kept.extend(b)
        calls.append(1)
    assert len(kept) == 2
    assert es.replay_accuracy(m, 100.0, kept)["coverage"] == pytest.approx(2 / 5)
    # the forced answer continues the kept tokens after the cue
    cue_ids, ans = stopping.force_answers(tiny_lm, [[1, 2, 3]], "\nFinal answer:", 4)
    assert len(cue_ids) > 0 and len(ans[0]["ids"]) <= 4 and ans[0]["entropy"].shape == (len(ans[0]["ids"]),)


def test_replay_refuses_a_run_without_token_ids(tmp_path):
    from analysis.trace import Trace

    store = make_graded_store(tmp_path / "s.duckdb", runs=0)
    rid = store.create_run("upload", "upload:jsonl")
    store.add_traces(rid, [Trace("q", ["a", "b"], np.zeros(2), entropy_full=np.ones(2),
                                 metadata={"gold_answer": "1", "correct": True})])
    with pytest.raises(es.EarlyStopError, match="no token ids"):
        es.replay_items(store, rid, {1: 0})


def test_record_run_with_early_stop(tiny_lm, store):
    from analysis.grading import grade_traces
    from analysis.record import GenerationSettings, Prompt

    settings = GenerationSettings(max_new_tokens=12, do_sample=False, top_k=4, batch_size=3,
                                  marker="Final answer:")
    cfg = es.EarlyStopConfig("tiny-llama", "full", StopRule("streaming", tau=100.0, k=2, min_tokens=3),
                             answer_tokens=3)
    prompts = [Prompt(f"What is {a} + 1?", {"problem_id": f"p{a}", "gold_answer": str(a + 1), "level": 1.0})
               for a in range(4)]
    res, summary = stopping.record_run_early_stop(store, tiny_lm, prompts, settings, "es", cfg, on_traces=grade_traces)
    assert summary["stopped_early"] == 4 and summary["budget_saved"] == 4 * (12 - 3)
    tr = store.query("SELECT trace_id, completion, metadata FROM traces JOIN completions($1) USING (trace_id) WHERE run_id = $1 ORDER BY trace_id",
                     [res.run_id])
    assert (tr["completion"].str.contains("Final answer:")).all()
    meta = [__import__("json").loads(m) for m in tr["metadata"]]
    assert all(m["early_stop"]["tokens_kept"] == 3 and m["stopped"] == "early_stop" for m in meta)
    # the forced cue has no entropy (it was not sampled); the kept part and the answer do
    tok = store.tokens(int(tr["trace_id"].iloc[0]))
    assert tok["entropy_full"].iloc[:3].notna().all() and tok["entropy_full"].iloc[3:].isna().any()
    settings_json = __import__("json").loads(store.runs()["settings"].iloc[0])
    assert settings_json["early_stop"]["tau"] == 100.0 and settings_json["early_stop_result"]["stopped_early"] == 4
    with pytest.raises(es.EarlyStopError, match="calibrated on model 'other'"):
        stopping.record_run_early_stop(store, tiny_lm, prompts, settings, "x",
                                 es.EarlyStopConfig("other", "full", StopRule()))


def test_cli_grade_difficulty_calibrate(tmp_path, capsys):
    from analysis.cli import main

    store = make_graded_store(tmp_path / "s.duckdb", runs=2)
    s = str(store.path)
    assert main(["--store", s, "grade", "1", "--rule", "final_answer"]) == 0
    assert "re-graded (final_answer)" in capsys.readouterr().out
    assert main(["--store", s, "difficulty", "1", "2", "--phase", "thinking"]) == 0
    out = capsys.readouterr().out
    assert "level 1" in out and "entropy change" in out
    cfg = tmp_path / "cfg.json"
    assert main(["--store", s, "calibrate", "1", "--out", str(cfg), "--n-calib", "12"]) == 0
    out = capsys.readouterr().out
    assert "tau_info" in out and "held-out" in out
    loaded = es.load_config(cfg, model="tiny-llama", estimator="full")
    assert loaded.source_run == 1 and loaded.rule.tau == pytest.approx(loaded.calibration["tau_info"])
    assert main(["--store", s, "grade", "1", "--rule", "regex", "--regex", "("]) == 2
    assert "bad regular expression" in capsys.readouterr().err


def test_generate_graded_records_pass_rates(tiny_lm, store, tmp_path, capsys):
    import argparse
    import json

    from analysis.cli_difficulty import generate_graded, problem_prompts
    from analysis.record import GenerationSettings

    pfile = tmp_path / "p.jsonl"
    pfile.write_text("\n".join(json.dumps(r) for r in [
        {"id": "a", "question": "What is 1 + 1?", "answer": "2", "level": 1},
        {"id": "b", "question": "Pick one", "choices": ["x", "y"], "answer": "B", "level": 2}]))
    prompts = problem_prompts(str(pfile))
    assert "letter of your choice" in prompts[1].text and "followed by the number" in prompts[0].text
    settings = GenerationSettings(max_new_tokens=6, do_sample=False, top_k=0, samples=2, marker="Final answer:")
    cfg = tmp_path / "cfg.json"
    cfg.write_text(es.EarlyStopConfig("tiny-llama", "full", StopRule("streaming", 100.0, 1, 2),
                                      answer_tokens=2).to_json())
    for early in (None, str(cfg)):
        args = argparse.Namespace(problems=str(pfile), early_stop=early)
        assert generate_graded(args, store, tiny_lm, prompts, settings, "g", None) == 0
    out = capsys.readouterr().out
    assert "level  traces  graded  correct  pass rate" in out and "early stop: 4 of 4 traces stopped" in out
    settings_json = [json.loads(x) for x in store.runs()["settings"]]
    assert [r["level"] for r in settings_json[0]["pass_rates"]] == [1.0, 2.0]
    assert settings_json[0]["pass_rates"][0]["n"] == 2 and "early_stop_result" in settings_json[1]


# --------------------------------------------------------------------------- one calibration, its signal


def test_the_calibration_module_is_numpy_only():
    import subprocess
    import sys
    code = "import sys, analysis.early_stop; sys.exit('torch' in sys.modules or 'transformers' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def _rt_by_hand():
    # trace 0: calm start, busy end; trace 1: busy start, calm end; trace 2: too short to check
    h0 = [0.1] * 6 + [2.0] * 6
    h1 = [2.0] * 6 + [0.3] * 6
    h2 = [0.5] * 3
    return RunTokens(np.arange(3), [12, 12, 3], np.array(h0 + h1 + h2), np.array([1.0, 0.0, 1.0]),
                     np.array([-1, -1, -1]))


def test_streaming_is_calibrated_on_the_signal_it_applies():
    rt = _rt_by_hand()
    rule = StopRule("streaming", 0.0, k=3, min_tokens=4)
    signal, name = es.rule_signal(rt, rule)
    # by hand: the lowest mean of 3 consecutive tokens ending at token 4 (index 3) or later
    def lowest(h):
        return min(np.mean(h[t - 2: t + 1]) for t in range(3, len(h)))
    assert signal[0] == pytest.approx(lowest(rt.trace_entropy(0))) == pytest.approx(0.1)
    assert signal[1] == pytest.approx(0.3) and np.isnan(signal[2])
    assert "lowest running mean of 3 tokens" in name
    # not the whole-trace mean the calibration used before
    assert signal[0] != pytest.approx(rt.trace_entropy(0).mean())
    # a trace stops at tau exactly when its signal is <= tau
    m = StopModel(rt, rule)
    for tau in (0.05, 0.1, 0.2, 0.3, 1.0):
        assert ((m.stops(tau) >= 0) == (np.nan_to_num(signal, nan=np.inf) <= tau)).all()
    cal = es.calibrate(rt, rule, n_calib=3)
    assert cal.calib.all() and not cal.held.any() and cal.signal_name == name
    # tau_mean is the correct traces' mean signal (trace 2 has none)
    assert cal.thresholds.tau_mean == pytest.approx(0.1) and cal.thresholds.n_correct == 1
    gate, gname = es.rule_signal(rt, StopRule("gate", 0.0, budget=4))
    assert gate.tolist() == pytest.approx([0.1, 2.0, 0.5]) and "first 4 tokens" in gname


def test_a_reversed_signal_is_said(tmp_path, capsys):
    from analysis.cli import main

    th = es.thresholds(np.array([1.0, 1.2, 0.5, 0.6]), np.array([True, True, False, False]))
    assert th.cohens_d < 0 and th.tau_info > th.tau_mean
    note = es.reversed_signal_note(th)
    assert note.startswith(f"Cohen's d is {th.cohens_d:.2f}: the wrong answers have lower entropy")
    assert "reversed signal" in note and es.reversed_signal_note(es.thresholds(np.array([0.5, 1.0]),
                                                                               np.array([True, False]))) is None
    store = _reversed_store(tmp_path)
    rid = 1
    out_file = tmp_path / "stop.json"
    assert main(["--store", str(store.path), "calibrate", str(rid), "--out", str(out_file)]) == 0
    out = capsys.readouterr().out
    assert "warning: Cohen's d is -" in out and "reversed signal" in out
    cfg = es.load_config(out_file)
    assert cfg.calibration["cohens_d"] < 0 and cfg.calibration["n_calib"] == 4  # a quarter of 16
    assert cfg.temperature == 0.7 and "lowest running mean" in cfg.calibration["signal"]


def _reversed_store(tmp_path):
    """A run whose wrong answers are calmer than its right ones."""
    from analysis.store import Store
    from analysis.trace import Trace

    store = Store(tmp_path / "rev.duckdb")
    rid = store.create_run("reversed", "test", "tiny-llama", {"temperature": 0.7, "do_sample": True})
    rng = np.random.default_rng(0)
    traces = []
    for i in range(16):
        ok = i % 2 == 0
        h = (1.5 if ok else 0.5) + 0.1 * rng.random(40)
        traces.append(Trace("q", [f" w{j}" for j in range(40)], np.zeros(40), token_ids=np.arange(40),
                            entropy_full=h, metadata={"problem_id": f"p{i}", "gold_answer": "1", "correct": ok}))
    store.add_traces(rid, traces)
    store.finish_run(rid)
    return store


def test_the_page_and_the_cli_calibrate_alike(tmp_path, capsys):
    from pathlib import Path

    from streamlit.testing.v1 import AppTest

    from analysis.cli import main

    store = _reversed_store(tmp_path)
    page = Path(__file__).resolve().parent.parent / "dashboard" / "views" / "early_stop.py"
    at = AppTest.from_file(str(page), default_timeout=60)
    at.session_state["store.path"] = str(store.path)
    at.run()
    assert not at.exception
    for mode in ("gate", "streaming"):
        at.radio(key="early_stop.mode").set_value(mode).run()
        assert not at.exception
        shown = {m.label: m.value for m in at.metric}
        assert any("reversed signal" in w.value for w in at.warning)
        out_file = tmp_path / f"{mode}.json"
        assert main(["--store", str(store.path), "calibrate", "1", "--out", str(out_file), "--mode", mode]) == 0
        cal = es.load_config(out_file).calibration
        assert shown["τ_mean"] == f"{cal['tau_mean']:.3f} nats" and shown["τ_info"] == f"{cal['tau_info']:.3f} nats"
        assert shown["Cohen's d"] == f"{cal['cohens_d']:.2f}"


def test_cli_early_stop_curve_stops_and_replay(tiny_lm, store, tmp_path, capsys, monkeypatch):
    import analysis.models as models
    from analysis.cli import main
    from analysis.grading import grade_traces
    from analysis.record import GenerationSettings, Prompt, record_run

    settings = GenerationSettings(max_new_tokens=10, do_sample=False, top_k=5, batch_size=4)
    prompts = [Prompt(f"What is {a} + 1?", {"problem_id": f"p{a}", "gold_answer": str(a + 1)}) for a in range(5)]
    res = record_run(store, tiny_lm, prompts, settings, "tiny", on_traces=grade_traces)
    s = str(store.path)
    monkeypatch.setattr(models, "load_model", lambda name=None, **kw: tiny_lm)
    assert main(["--store", s, "early-stop", str(res.run_id), "--tau", "100", "--k", "2", "--min-tokens", "3",
                 "--curve", "4", "--stops", "--replay", "--n-calib", "2", "--answer-tokens", "3"]) == 0
    out = capsys.readouterr().out
    # tau above every entropy: each trace stops as soon as it may, after 3 tokens
    assert "2 of 2 traces stop early" in out and "3 of 3 traces stop early" in out
    assert "tokens_saved_pct" in out and "nan%" not in out
    stops = [line.split() for line in out.splitlines() if line.strip().split(" ")[0].isdigit()]
    assert [r[-1] for r in stops][-5:] == ["2"] * 5
    assert "replayed 5 of 5 stops: accuracy" in out and "with the forced answers (measured" in out
    cfg = tmp_path / "other.json"
    cfg.write_text(es.EarlyStopConfig("other", "full", StopRule()).to_json())
    assert main(["--store", s, "early-stop", str(res.run_id), "--config", str(cfg)]) == 2
    assert "calibrated on model 'other'" in capsys.readouterr().err
    assert main(["--store", s, "early-stop", str(res.run_id), "--tau", "100", "--format", "csv", "--curve", "2"]) == 0
    captured = capsys.readouterr()
    assert captured.out.splitlines()[0] == "tau,tokens_saved_pct,accuracy,accuracy_kept_pct"
    assert "held-out" in captured.err
