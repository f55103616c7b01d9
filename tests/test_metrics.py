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
