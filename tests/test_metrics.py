"""Invariants of the entropy metrics (analysis/metrics.py): nats throughout."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from analysis import metrics
from analysis.metrics import (
    all_topk_entropies,
    entropy_from_logits,
    forking_points,
    forking_threshold,
    lexicon_mask,
    phase_boundary,
    sequence_entropy,
    token_entropy,
    topk_entropy,
    window_entropy,
)


def full_entropy_np(logits: np.ndarray) -> np.ndarray:
    """Reference: H = -sum p ln p in float64, straight from the definition."""
    z = logits - logits.max(axis=-1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=-1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        return -np.where(p > 0, p * np.log(p), 0.0).sum(axis=-1)


# --------------------------------------------------------------------------- full entropy


@pytest.mark.parametrize("vocab", [2, 7, 320, 49_152])
@pytest.mark.parametrize("temperature", [0.3, 1.0, 2.0])
def test_uniform_logits_give_ln_v(vocab, temperature):
    logits = torch.full((3, vocab), 1.7)
    h = entropy_from_logits(logits, temperature)
    assert h.shape == (3,)
    np.testing.assert_allclose(h.numpy(), math.log(vocab), rtol=1e-5)


def test_one_hot_gives_zero():
    logits = torch.full((2, 100), float("-inf"))
    logits[0, 3] = 5.0
    logits[1, 99] = -2.0
    h = entropy_from_logits(logits)
    assert torch.isfinite(h).all()
    np.testing.assert_allclose(h.numpy(), 0.0, atol=1e-7)
    # a finite but overwhelming peak is 0 to float precision too
    peaked = torch.zeros(1, 1000)
    peaked[0, 0] = 1e4
    assert entropy_from_logits(peaked).item() == pytest.approx(0.0, abs=1e-6)


def test_neg_inf_logits_are_safe_and_count_as_probability_zero():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(4, 50)).astype(np.float32)
    masked = z.copy()
    masked[:, 25:] = -np.inf  # e.g. a vocabulary restricted by a logits processor
    h = entropy_from_logits(torch.from_numpy(masked)).numpy()
    assert np.isfinite(h).all()
    np.testing.assert_allclose(h, full_entropy_np(z[:, :25].astype(np.float64)), rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_input_is_safe(dtype):
    rng = np.random.default_rng(1)
    z = torch.from_numpy(rng.normal(scale=4.0, size=(5, 49_152)).astype(np.float32)).to(dtype)
    z[0, 10:] = float("-inf")
    h = entropy_from_logits(z, temperature=0.7)
    assert h.dtype == torch.float32 and torch.isfinite(h).all()
    ref = entropy_from_logits(z.float(), temperature=0.7)  # same rounded inputs, float32 maths
    np.testing.assert_allclose(h.numpy(), ref.numpy(), rtol=1e-5)


def test_temperature_scales_the_logits():
    z = torch.randn(3, 64, generator=torch.Generator().manual_seed(2))
    np.testing.assert_allclose(entropy_from_logits(z, 0.5).numpy(), entropy_from_logits(z / 0.5).numpy(),
                               rtol=1e-6)
    np.testing.assert_allclose(entropy_from_logits(z).numpy(), full_entropy_np(z.double().numpy()), rtol=1e-5)
    with pytest.raises(ValueError, match="temperature"):
        entropy_from_logits(z, 0.0)


def test_token_entropy_says_its_unit_and_estimator():
    q = token_entropy(torch.zeros(4, 8))
    assert (q.unit, q.estimator) == ("nats", "full")
    np.testing.assert_allclose(q.values, math.log(8), rtol=1e-6)  # float32 maths
    bits = q.to("bits")
    np.testing.assert_allclose(bits.values, 3.0, rtol=1e-6)
    assert bits.label == "token entropy (bits, full)"
    np.testing.assert_allclose(bits.to("nats").values, q.values)
    assert token_entropy(torch.zeros(0, 8)).values.shape == (0,)


# --------------------------------------------------------------------------- top-k estimators


@pytest.mark.parametrize("estimator", metrics.TOPK_ESTIMATORS)
def test_topk_with_k_equal_v_is_the_full_entropy(estimator):
    rng = np.random.default_rng(3)
    z = rng.normal(scale=3.0, size=(6, 40))
    logp = torch.log_softmax(torch.from_numpy(z), dim=-1).numpy()
    q = topk_entropy(logp, estimator)
    assert q.estimator == estimator and q.unit == "nats"
    np.testing.assert_allclose(q.values, full_entropy_np(z), rtol=1e-9, atol=1e-12)


def test_topk_estimators_on_a_known_distribution():
    p = np.array([0.5, 0.25])  # top-2 of a distribution with 0.25 more mass elsewhere
    h = all_topk_entropies(np.log(p)[None, :])
    epr = -(p * np.log(p)).sum()
    assert h["epr"][0] == pytest.approx(epr)
    assert h["topk_tail"][0] == pytest.approx(epr - 0.25 * math.log(0.25))
    r = p / p.sum()
    assert h["topk_renorm"][0] == pytest.approx(-(r * np.log(r)).sum())


@settings(max_examples=200, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), vocab=st.integers(1, 300), k=st.integers(1, 300),
       scale=st.floats(0.01, 30.0), half=st.booleans())
def test_epr_never_exceeds_the_full_entropy(seed, vocab, k, scale, half):
    rng = np.random.default_rng(seed)
    z = torch.from_numpy(rng.normal(scale=scale, size=(3, vocab)).astype(np.float32))
    if half:
        z = z.half()
    full = entropy_from_logits(z).double().numpy()
    logp = torch.log_softmax(z.float(), dim=-1)
    top = torch.topk(logp, min(k, vocab), dim=-1).values.double().numpy()
    h = all_topk_entropies(top)
    assert np.all(h["epr"] <= full + 1e-5)
    assert np.all(h["epr"] <= h["topk_tail"] + 1e-12)  # the tail bucket only adds
    assert np.all(h["topk_renorm"] <= math.log(min(k, vocab)) + 1e-9)


@pytest.mark.parametrize("sentinel", [-9999.0, -1e5, -3.4e38, float("nan"), float("inf"), float("-inf")])
def test_sentinels_are_probability_zero(sentinel):
    lp = np.log(np.array([0.6, 0.3]))
    with_sentinel = all_topk_entropies(np.array([[lp[0], sentinel, lp[1], sentinel]]))
    without = all_topk_entropies(lp[None, :])
    for est in metrics.TOPK_ESTIMATORS:
        assert np.isfinite(with_sentinel[est][0])
        assert with_sentinel[est][0] == pytest.approx(without[est][0]), est
    cleaned = metrics.clean_logprobs([sentinel, -0.5, 0.2])
    assert cleaned[0] == -np.inf and cleaned[1] == -0.5 and cleaned[2] == 0.0


def test_a_row_with_no_probability_gives_nan_and_shapes_are_checked():
    h = all_topk_entropies(np.array([[-9999.0, np.nan], [-0.1, -3.0]]))
    for est in metrics.TOPK_ESTIMATORS:
        assert np.isnan(h[est][0]) and np.isfinite(h[est][1])
    assert all(v.shape == (0,) for v in all_topk_entropies(np.empty((0, 20))).values())
    with pytest.raises(ValueError, match="shape"):
        all_topk_entropies(np.zeros((2, 3, 4)))
    with pytest.raises(ValueError, match="unknown top-k estimator"):
        topk_entropy(np.zeros((1, 2)), "full")


# --------------------------------------------------------------------------- window entropy


def test_window_is_the_mean_of_the_following_tokens_with_short_windows_at_the_end():
    h = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    q = window_entropy(h, w=2)
    np.testing.assert_allclose(q.values, [2.5, 3.5, 4.5, 5.0, np.nan])
    assert q.meta == {"w": 2} and q.unit == "nats"
    np.testing.assert_allclose(window_entropy(h, w=10).values, [3.5, 4.0, 4.5, 5.0, np.nan])
    np.testing.assert_allclose(window_entropy([7.0], w=4).values, [np.nan])


def test_window_ignores_nan_entropies():
    h = np.array([0.0, np.nan, 2.0, np.nan, np.nan, 6.0])
    np.testing.assert_allclose(window_entropy(h, w=2).values, [2.0, 2.0, np.nan, 6.0, 6.0, np.nan])


def test_window_edge_cases():
    assert window_entropy([], w=4).values.shape == (0,)
    with pytest.raises(ValueError, match="window size"):
        window_entropy([1.0], w=0)
    with pytest.raises(ValueError, match="1-D"):
        window_entropy(np.zeros((2, 2)))


# --------------------------------------------------------------------------- forking points


def test_percentile_threshold_is_per_trace():
    win = np.array([0.1, 0.2, np.nan, 0.9, 0.4, 1.5])
    tau = forking_threshold(win, "percentile", 80)
    assert tau == pytest.approx(np.percentile([0.1, 0.2, 0.9, 0.4, 1.5], 80))
    np.testing.assert_array_equal(forking_points(win, tau), [5])
    np.testing.assert_array_equal(forking_points(win, forking_threshold(win, "percentile", 0)), [0, 1, 3, 4, 5])


def test_corpus_threshold_marks_the_top_share_of_the_run():
    corpus = np.arange(100, dtype=float)  # a run's window entropies
    tau = forking_threshold([], "corpus", 20, corpus=np.append(corpus, np.nan))
    assert tau == pytest.approx(np.quantile(corpus, 0.8))
    assert (corpus >= tau).sum() == 20
    with pytest.raises(ValueError, match="corpus"):
        forking_threshold([1.0], "corpus", 20)


def test_fixed_threshold_and_nan_never_forks():
    win = np.array([np.nan, 0.5, 0.49999, 2.0])
    assert forking_threshold(win, "fixed", 0.5) == 0.5
    np.testing.assert_array_equal(forking_points(win, 0.5), [1, 3])
    with pytest.raises(ValueError, match="unknown threshold method"):
        forking_threshold(win, "median", 1)


def test_forking_on_empty_traces():
    assert forking_threshold([], "percentile", 95) == float("inf")
    assert forking_threshold([np.nan], "percentile", 95) == float("inf")
    assert forking_threshold([], "corpus", 20, corpus=[]) == float("inf")
    assert forking_points([], 0.0).shape == (0,)
    assert forking_points([], 0.0, tokens=[], lexicon=["wait"]).shape == (0,)
    assert lexicon_mask([], ["wait"]).shape == (0,)


def test_lexicon_matches_case_insensitively_after_space_markers():
    tokens = ["\u0120Wait", "\u2581however", "\u010aSo", " but", "\u0120waiting", "x", "HMM"]
    mask = lexicon_mask(tokens, ["wait", "However", "so", "but", "hmm"])
    np.testing.assert_array_equal(mask, [True, True, True, True, False, False, True])


def test_lexicon_multi_word_entries_span_tokens():
    tokens = ["\u0120Let", "\u0120me", "\u0120check", "\u0120let", "\u0120us", "let", "me"]
    mask = lexicon_mask(tokens, ["let me", " hold  on "])
    np.testing.assert_array_equal(mask, [True, False, False, False, False, True, False])
    assert not lexicon_mask(["\u0120let"], ["let me"]).any()  # the entry runs past the end
    np.testing.assert_array_equal(lexicon_mask(["Hold", "\u0120on"], ["hold on"]), [True, False])


def test_forking_points_restricted_to_the_lexicon():
    tokens = ["So", " the", " answer", " wait", " is", " 4"]
    win = np.array([1.0, 3.0, 0.1, 3.0, 2.0, np.nan])
    np.testing.assert_array_equal(forking_points(win, 2.0), [1, 3, 4])
    np.testing.assert_array_equal(forking_points(win, 2.0, tokens, metrics.DEFAULT_LEXICON), [3])
    np.testing.assert_array_equal(forking_points(win, 0.5, tokens, ["so"]), [0])
    with pytest.raises(ValueError, match="tokens"):
        forking_points(win, 2.0, lexicon=["wait"])


# --------------------------------------------------------------------------- phases


def test_phase_boundary_with_the_marker_split_across_tokens():
    tokens = ["Think", " hard", "</", "think", ">", " The", " answer"]
    assert phase_boundary(tokens) == 5  # the marker's tokens count as thinking
    assert phase_boundary(["a", "</think>", "b"]) == 2
    assert phase_boundary(["</think>"]) == 1  # marker at the end: an empty answer


def test_phase_boundary_without_a_marker_is_all_thinking():
    tokens = ["no", " marker", " here", " </thin"]
    assert phase_boundary(tokens) == 4
    assert phase_boundary(tokens, None) == 4
    assert phase_boundary(tokens, "") == 4
    assert phase_boundary([]) == 0


def test_phase_boundary_with_a_custom_marker_and_the_first_occurrence():
    tokens = ["2", "+", "2", "\nFinal", " answer", ":", " 4", "\nFinal answer:", " 5"]
    assert phase_boundary(tokens, "Final answer:") == 6


def test_sequence_entropy_per_phase():
    h = np.array([1.0, 2.0, np.nan, 3.0, 5.0])
    assert sequence_entropy(h, 2, "all") == pytest.approx(11 / 4)
    assert sequence_entropy(h, 2, "thinking") == pytest.approx(1.5)
    assert sequence_entropy(h, 2, "answer") == pytest.approx(4.0)
    assert sequence_entropy(h, None, "thinking") == pytest.approx(11 / 4)
    assert math.isnan(sequence_entropy(h, 5, "answer"))  # no answer part
    assert math.isnan(sequence_entropy(h, 0, "thinking"))
    assert sequence_entropy(h, 99, "thinking") == pytest.approx(11 / 4)  # clipped
    assert math.isnan(sequence_entropy([], 0, "all"))
    with pytest.raises(ValueError, match="phase"):
        sequence_entropy(h, 2, "middle")


def test_bits_conversion():
    np.testing.assert_allclose(metrics.to_bits([math.log(2), 0.0]), [1.0, 0.0])


# --------------------------------------------------------------------------- one definition per quantity


def _masked_entropy(logp: torch.Tensor) -> torch.Tensor:
    """The definition with the mask on every entry (what the fast path must equal)."""
    p = logp.exp()
    return -torch.where(p > 0, p * logp, torch.zeros((), dtype=p.dtype)).sum(-1)


def _hard_logits(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(48, 700, generator=g) * 6
    z[3, :350] = float("-inf")          # masked vocabulary
    z[7, 5] = float("-inf")
    z[9] = 0.0                          # uniform
    z[11, 0] = 400.0                    # every other p underflows to 0
    return z


@pytest.mark.parametrize("temperature", [1.0, 0.7, 1.6])
def test_entropy_fast_path_is_the_masked_definition_bit_for_bit(temperature):
    z = _hard_logits()
    logp = torch.log_softmax(z / temperature, dim=-1)
    assert torch.equal(metrics.entropy_from_logp(logp.clone()), _masked_entropy(logp))
    assert torch.equal(entropy_from_logits(z, temperature), _masked_entropy(logp))
    ref = full_entropy_np(z.double().numpy() / temperature)
    np.testing.assert_allclose(entropy_from_logits(z, temperature).numpy(), ref, atol=2e-5)


def test_recorder_and_rescorer_entropies_are_the_metric():
    """The generation recorder's per-step entropies (at T and at T = 1) are metrics'."""
    from analysis.record import StepRecorder

    z = _hard_logits(1)
    rec = StepRecorder(0.7, 4)
    ids = torch.zeros((z.shape[0], 1), dtype=torch.long)
    rec(ids, z[:, :])
    rec(ids, z.flip(0))
    rec.finish(ids)
    a = rec.arrays()
    np.testing.assert_array_equal(a["entropy"][:, 0], entropy_from_logits(z, 0.7).numpy())
    np.testing.assert_array_equal(a["entropy_t1"][:, 1], entropy_from_logits(z.flip(0)).numpy())


def test_store_sequence_entropy_is_the_metric():
    """The store's vectorised per-phase sequence entropy equals metrics.sequence_entropy on
    random traces with NaNs, empty parts and boundaries anywhere."""
    from analysis.store import build_batch
    from analysis.trace import Trace

    rng = np.random.default_rng(3)
    traces = []
    for i in range(60):
        n = int(rng.integers(0, 25))
        h = rng.gamma(2.0, 0.6, n)
        h[rng.random(n) < 0.25] = np.nan
        lp = np.log(rng.dirichlet(np.ones(5), n) * 0.9) if i % 3 else None
        if lp is not None and n:
            lp[rng.random((n, 5)) < 0.1] = np.nan
        traces.append(Trace("p", [f"t{j}" for j in range(n)], np.full(n, -1.0),
                            topk_ids=None if lp is None else np.tile(np.arange(5), (n, 1)), topk_logprobs=lp,
                            entropy_full=h if i % 2 else None, entropy_full_t1=h * 1.3 if i % 2 else None,
                            boundary=int(rng.integers(0, n + 1))))
    stats = build_batch(traces, 1, 0, 1, None).tables["trace_stats"].to_pandas()
    got = {(r.trace_id, r.estimator, r.phase): r.mean_entropy for r in stats.itertuples()}
    want = {}
    for tid, t in enumerate(traces, start=1):
        for est, h in t.entropies().items():
            for phase in metrics.PHASES:
                want[(tid, est, phase)] = sequence_entropy(h, t.boundary, phase)
    assert got.keys() == want.keys()
    for key, v in want.items():
        assert (math.isnan(v) and math.isnan(got[key])) or got[key] == pytest.approx(v, rel=1e-12), key


def test_pass_rate_defined_once():
    import pandas as pd

    from analysis import difficulty, grading

    df = pd.DataFrame({"run_id": [1, 1, 1, 1, 2, 2], "problem_id": ["a", "a", "a", "b", "a", "c"],
                       "level": [1, 1, 1, 2, 1, 3], "correct": [True, False, None, None, True, False]})
    pr = difficulty.pass_rates(df).set_index(["run_id", "problem_id"])
    assert pr.loc[(1, "a"), ["samples", "graded", "correct"]].tolist() == [3, 2, 1]
    assert pr.loc[(1, "a"), "pass_rate"] == 0.5 and math.isnan(pr.loc[(1, "b"), "pass_rate"])
    by_level = grading.pass_rates(df).set_index("level")
    assert by_level.loc[1, ["n", "graded", "correct", "pass_rate"]].tolist() == [4, 3, 2, 2 / 3]
    both = metrics.pass_rates(df, "level").set_index("level")
    assert both["pass_rate"].equals(by_level["pass_rate"])


def test_estimators_best_first_everywhere():
    from analysis import difficulty
    from analysis.store import ENTROPY_COLUMNS

    assert tuple(ENTROPY_COLUMNS) == metrics.ESTIMATOR_ORDER == tuple(metrics.ESTIMATORS)
    assert metrics.available_estimators(True, True, 20) == list(metrics.ESTIMATOR_ORDER)
    assert metrics.available_estimators(False, False, 5) == ["topk_renorm", "topk_tail", "epr"]
    assert metrics.available_estimators() == []
    import pandas as pd
    stats = pd.DataFrame({"estimator": ["epr", "full", "topk_renorm", "full_t1"],
                          "mean_entropy": [0.1, 0.2, np.nan, 0.3]})
    assert difficulty.available_estimators(stats) == ["full", "full_t1", "epr"]


def test_units_converted_in_one_place():
    q = token_entropy(torch.zeros(2, 4))
    assert q.to("bits").values == pytest.approx([2.0, 2.0]) and q.to("bits").unit == "bits"
    assert q.to("bits").to("nats").values == pytest.approx(q.values)
    assert metrics.convert([math.log(2)], "bits") == pytest.approx([1.0])
    assert metrics.to_bits(math.log(8)) == pytest.approx(3.0)
    assert metrics.unit_scale("nats") == 1.0
    with pytest.raises(ValueError, match="unknown unit 'bans'"):
        metrics.convert([1.0], "bans")
    from pathlib import Path
    root = Path(__file__).resolve().parent.parent
    writers = sorted(p.relative_to(root).as_posix() for d in ("analysis", "dashboard") for p in (root / d).rglob("*.py")
                     if p.name != "metrics.py" and ("LN2" in p.read_text() or "log(2" in p.read_text()))
    assert writers == []


def test_values_carry_their_temperature():
    assert token_entropy(torch.zeros(1, 4), 0.7).temperature == "T = 0.7"
    assert topk_entropy(np.log([[0.5, 0.5]])).temperature == "T unknown"
    assert metrics.temperature_text(1.0) == "T = 1" and metrics.temperature_text("unknown") == "T unknown"


def test_stopping_rule_entropy_is_the_metric():
    """The entropy the early-stop rule reads inside generation is metrics' full entropy."""
    from analysis.early_stop import StopRule
    from analysis.stopping import EntropyStopper

    z = _hard_logits(2)
    stopper = EntropyStopper(StopRule("streaming", 0.5, 2, 1), 0.7)
    stopper.processor(torch.zeros((z.shape[0], 1), dtype=torch.long), z)
    assert torch.equal(stopper.h[-1], entropy_from_logits(z, 0.7))
