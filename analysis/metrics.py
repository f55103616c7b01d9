"""Entropy metrics over reasoning traces: pure functions, arrays in, arrays out.

Every quantity is in nats (natural log); ``convert`` (and ``Quantity.to``) is the one
conversion to a display unit. The estimators and their papers are described in the README
and in ``ESTIMATORS`` below; a value always travels with its estimator name, and with the
temperature its logprobs were taken at where that is known (``logprob_temperature``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterable, Sequence

import numpy as np

from .settings import THINK_MARKER

if TYPE_CHECKING:  # torch is imported where logits are handled, not by readers of trace files
    import torch

LN2 = math.log(2.0)

#: estimator name -> one-line description (shown in the dashboard next to figures)
ESTIMATORS: dict[str, str] = {
    "full": "exact entropy of the full next-token distribution (all logits, at the run's logprob temperature: "
            "the sampling temperature, 1 when greedy)",
    "full_t1": "exact entropy of the full next-token distribution at temperature 1",
    "topk_renorm": "top-k probabilities renormalised to sum 1 (Think Just Enough, arXiv 2510.08146)",
    "topk_tail": "top-k probabilities plus one tail bucket of mass 1 - sum p_k (ARES, arXiv 2510.08457)",
    "epr": "sum of -p ln p over the top-k, no renormalisation: a lower bound (EPR, arXiv 2509.04492)",
}
TOPK_ESTIMATORS = ("topk_renorm", "topk_tail", "epr")
#: the display units, and how many of each one nat is
UNITS: dict[str, float] = {"nats": 1.0, "bits": 1.0 / math.log(2.0)}

#: logprobs at or below this are "probability 0": OpenAI/vLLM write -9999.0 for
#: "not in the top-k", llama.cpp about -3.4e38 for probability 0.
SENTINEL_LOGPROB = -9999.0

#: default discourse lexicon for lexicon-restricted forking points (editable in the UI)
DEFAULT_LEXICON: tuple[str, ...] = (
    "wait", "but", "however", "hmm", "alternatively", "so", "let me", "actually",
    "maybe", "perhaps", "instead", "then", "therefore", "thus", "check", "verify",
    "no", "oh", "hold on", "first", "next", "finally", "if", "since",
)
#: markers that tokenizers put in front of a token to mean "preceded by a space"
SPACE_MARKERS = ("\u0120", "\u2581", "\u010a")  # GPT-2 byte-level 'Ġ', SentencePiece '▁', 'Ċ'


@dataclass(frozen=True)
class Quantity:
    """A metric value with the name, unit and estimator it was computed with."""

    name: str
    values: np.ndarray
    unit: str = "nats"
    estimator: str = "full"
    meta: dict = field(default_factory=dict)

    def to(self, unit: str) -> "Quantity":
        """The same quantity in ``unit`` ('nats' or 'bits')."""
        if unit == self.unit:
            return self
        return Quantity(self.name, convert(self.values, unit, self.unit), unit, self.estimator, self.meta)

    @property
    def label(self) -> str:
        return f"{self.name} ({self.unit}, {self.estimator})"

    @property
    def temperature(self) -> str:
        """'T = 0.7', or 'T unknown' when the value does not say at which temperature it was taken."""
        return temperature_text(self.meta.get("temperature"))


def unit_scale(unit: str, from_unit: str = "nats") -> float:
    """The factor that turns a value in ``from_unit`` into ``unit`` (bits = nats / ln 2)."""
    try:
        return UNITS[unit] / UNITS[from_unit]
    except KeyError:
        raise ValueError(f"unknown unit {unit if unit not in UNITS else from_unit!r}; use one of "
                         f"{', '.join(UNITS)}") from None


def convert(values, unit: str, from_unit: str = "nats"):
    """Entropies in ``from_unit`` (nats) as float64 in ``unit``: the one conversion for display."""
    v = np.asarray(values, dtype=np.float64)
    s = unit_scale(unit, from_unit)
    return v if s == 1.0 else v * s


def to_bits(nats):
    """Convert nats to bits (bits = nats / ln 2)."""
    return convert(nats, "bits")


# --------------------------------------------------------------------------- full entropy


def entropy_from_logits(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Entropy in nats of softmax(logits / T) over the last axis.

    Safe with -inf logits (masked vocabulary entries contribute 0, not NaN) and with
    float16/bfloat16 input (computed in float32). Shape [..., V] -> [...].
    """
    import torch

    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    z = logits.float()
    if temperature != 1.0:
        z = z / temperature
    return entropy_from_logp(torch.log_softmax(z, dim=-1))


def entropy_from_logp(logp: torch.Tensor) -> torch.Tensor:
    """Entropy in nats, -sum p ln p over the last axis, from log-probabilities.

    Entries with p = 0 (logp = -inf) contribute nothing. Without such entries (the usual
    case) the plain sum is the same number bit for bit and costs half as much, so only rows
    where it is NaN (0 * -inf) are summed again with the mask: the recorder calls this once
    per generation step.
    """
    import torch

    p = logp.exp()
    h = -(p * logp).sum(-1)
    bad = torch.isnan(h)
    if bad.any():
        pb, lb = p[bad], logp[bad]
        h[bad] = -torch.where(pb > 0, pb * lb, torch.zeros((), dtype=pb.dtype, device=pb.device)).sum(-1)
    return h


def token_entropy(logits, temperature: float = 1.0) -> Quantity:
    """Full-vocabulary token entropy (estimator ``full``) from logits [T, V]."""
    import torch

    t = torch.as_tensor(logits)
    h = entropy_from_logits(t, temperature).cpu().numpy().astype(np.float64)
    return Quantity("token entropy", h, "nats", "full", {"temperature": temperature})


# --------------------------------------------------------------------------- top-k estimators


def clean_logprobs(logprobs, inplace: bool = False) -> np.ndarray:
    """Top-k logprobs as float64 with every 'probability 0' sentinel set to -inf.

    NaN, +inf, -inf, values <= -9999 (OpenAI/vLLM) and the lowest float (llama.cpp)
    all mean 'no probability mass here'. Positive values (> 0) are clipped to 0.
    ``inplace=True`` cleans a float64 array in place (no copy) and returns it.
    """
    lp = np.asarray(logprobs, dtype=np.float64)
    if not inplace:
        lp = lp.copy()
    usable = (lp > SENTINEL_LOGPROB) & (lp < np.inf)  # False for NaN as well
    np.copyto(lp, -np.inf, where=~usable)
    np.minimum(lp, 0.0, out=lp)
    return lp


def all_topk_entropies(logprobs, cleaned: bool = False) -> dict[str, np.ndarray]:
    """Every top-k estimator (nats) for the same [T, k] logprobs, by estimator name.

    Padding and sentinels count as probability 0. A row with no usable probability gives NaN.
    - ``topk_renorm``: renormalise the k probabilities, then H = -(1/m) sum p ln p + ln m.
    - ``topk_tail``: H over the k probabilities plus one tail bucket of mass 1 - m.
    - ``epr``: sum of -p ln p over the k, no renormalisation (never exceeds the full H).

    Probabilities that sum to more than 1 (rounded logprobs; readers refuse larger excesses)
    are scaled to sum 1 first, so every estimate is the entropy of at most k + 1 outcomes and
    never exceeds ln(k + 1) for k alternatives (clipped there against float rounding).

    ``cleaned=True`` says the logprobs already went through ``clean_logprobs`` (float64), so
    they are not cleaned a second time; they are modified in place.
    """
    lp = logprobs if cleaned else clean_logprobs(logprobs)
    if lp.ndim == 1:
        lp = lp[None, :]
    if lp.ndim != 2:
        raise ValueError(f"top-k logprobs must have shape [T, k], got {lp.shape}")
    p = np.exp(lp)  # exp(-inf) = 0
    lp[p == 0] = 0.0  # so that p * lp is 0, not NaN, where p = 0
    mass = p.sum(axis=1)
    over = mass > 1.0
    if over.any():
        p[over] /= mass[over, None]
        lp[over] -= np.log(mass[over])[:, None]
        mass[over] = 1.0
    s = np.einsum("ij,ij->i", p, lp)  # sum p ln p (<= 0)
    has = mass > 0
    safe_mass = np.where(has, mass, 1.0)
    tail = np.clip(1.0 - mass, 0.0, 1.0)
    tail_term = -tail * np.log(np.where(tail > 0, tail, 1.0))
    out = {"topk_renorm": -s / safe_mass + np.log(safe_mass), "topk_tail": -s + tail_term, "epr": -s}
    bound = np.log(np.count_nonzero(p, axis=1) + 1.0)
    for name, h in out.items():
        out[name] = np.where(has, np.clip(h, 0.0, bound), np.nan)
    return out


def topk_entropy(logprobs, estimator: str = "topk_renorm") -> Quantity:
    """Entropy estimate in nats from top-k logprobs [T, k] with one of ``TOPK_ESTIMATORS``."""
    if estimator not in TOPK_ESTIMATORS:
        raise ValueError(f"unknown top-k estimator {estimator!r}; use one of {TOPK_ESTIMATORS}")
    return Quantity("token entropy", all_topk_entropies(logprobs)[estimator], "nats", estimator)


# --------------------------------------------------------------------------- window / forking


def window_entropy(h, w: int = 4) -> Quantity:
    """Window entropy at each position t: mean of H over the w tokens that follow t.

    Positions t+1 .. t+w (ARES, arXiv 2510.08457). Near the end of a trace the window
    holds fewer tokens and the mean is over those; the last position has no following
    token and gets NaN. NaN entropies inside a window are ignored.
    """
    if w < 1:
        raise ValueError(f"window size must be >= 1, got {w}")
    x = np.asarray(h, dtype=np.float64)
    if x.ndim != 1:
        raise ValueError(f"entropies must be 1-D, got shape {x.shape}")
    n = x.size
    if n == 0:
        return Quantity("window entropy", np.empty(0), "nats", meta={"w": w})
    valid = ~np.isnan(x)
    cs = np.concatenate([[0.0], np.cumsum(np.where(valid, x, 0.0))])
    cc = np.concatenate([[0], np.cumsum(valid)])
    t = np.arange(n)
    lo = np.minimum(t + 1, n)
    hi = np.minimum(t + 1 + w, n)
    cnt = cc[hi] - cc[lo]
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(cnt > 0, (cs[hi] - cs[lo]) / np.maximum(cnt, 1), np.nan)
    return Quantity("window entropy", out, "nats", meta={"w": w})


def strip_space_marker(token: str) -> str:
    """Token text without the tokenizer's leading space marker and surrounding blanks."""
    s = token
    while s and (s[0] in SPACE_MARKERS or s[0].isspace()):
        s = s[1:]
    return s.strip().lower()


def lexicon_mask(tokens: Sequence[str], lexicon: Iterable[str]) -> np.ndarray:
    """True where a token (or a multi-word lexicon entry starting at it) is in the lexicon.

    Matching is case-insensitive after stripping the tokenizer's space marker; an entry of
    several words ("let me") matches when the following tokens spell it out.
    """
    words = [strip_space_marker(t) for t in tokens]
    entries = [e.strip().lower() for e in lexicon if e and e.strip()]
    single = {e for e in entries if " " not in e}
    multi = [e.split() for e in entries if " " in e]
    mask = np.zeros(len(words), dtype=bool)
    for i, wd in enumerate(words):
        if wd in single:
            mask[i] = True
            continue
        for parts in multi:
            if wd == parts[0] and [strip_space_marker(x) for x in words[i : i + len(parts)]] == parts:
                mask[i] = True
                break
    return mask


def forking_threshold(window: np.ndarray, method: str = "percentile", value: float = 95.0,
                      corpus: np.ndarray | None = None) -> float:
    """Threshold tau on window entropy (nats).

    - ``percentile``: the ``value``-th percentile of this trace's window entropy (ARES: 95).
    - ``corpus``: the (1 - value/100) quantile over ``corpus`` window entropies, i.e.
      value=20 marks the top 20% of a run's tokens (Beyond the 80/20 rule, arXiv 2506.01939).
    - ``fixed``: ``value`` itself, in nats.
    """
    w = np.asarray(window, dtype=np.float64)
    if method == "fixed":
        return float(value)
    if method == "percentile":
        ok = w[~np.isnan(w)]
        return float(np.percentile(ok, value)) if ok.size else float("inf")
    if method == "corpus":
        if corpus is None:
            raise ValueError("method 'corpus' needs the corpus window entropies")
        c = np.asarray(corpus, dtype=np.float64)
        c = c[~np.isnan(c)]
        return float(np.quantile(c, 1.0 - value / 100.0)) if c.size else float("inf")
    raise ValueError(f"unknown threshold method {method!r}; use percentile, corpus or fixed")


def forking_points(window, tau: float, tokens: Sequence[str] | None = None,
                   lexicon: Iterable[str] | None = None) -> np.ndarray:
    """Positions whose window entropy is at or above ``tau`` (optionally lexicon-restricted)."""
    w = np.asarray(window, dtype=np.float64)
    mask = np.nan_to_num(w, nan=-np.inf) >= tau
    if lexicon is not None:
        if tokens is None:
            raise ValueError("a lexicon restriction needs the tokens")
        mask &= lexicon_mask(tokens, lexicon)
    return np.flatnonzero(mask)


# --------------------------------------------------------------------------- phases / sequence


def phase_boundary(tokens: Sequence[str], marker: str | None = THINK_MARKER) -> int:
    """Index of the first answer token: the first token that starts at or after the end of
    the first ``marker`` in the concatenated token text. No marker: len(tokens) (all thinking).

    The marker tokens themselves count as thinking.
    """
    n = len(tokens)
    if not marker:
        return n
    text = "".join(tokens)
    at = text.find(marker)
    if at < 0:
        return n
    end = at + len(marker)
    starts = np.cumsum([0] + [len(t) for t in tokens[:-1]]) if n else np.empty(0)
    idx = int(np.searchsorted(starts, end, side="left"))
    return min(idx, n)


def sequence_entropy(h, boundary: int | None = None, phase: str = "all") -> float:
    """Mean token entropy (nats) over the completion, its thinking part or its answer part.

    ``boundary`` is the first answer token (see ``phase_boundary``). NaN entries are ignored;
    an empty part gives NaN.
    """
    x = np.asarray(h, dtype=np.float64)
    b = x.size if boundary is None else int(np.clip(boundary, 0, x.size))
    if phase == "all":
        part = x
    elif phase == "thinking":
        part = x[:b]
    elif phase == "answer":
        part = x[b:]
    else:
        raise ValueError(f"unknown phase {phase!r}; use all, thinking or answer")
    part = part[~np.isnan(part)]
    return float(part.mean()) if part.size else float("nan")


PHASES = ("all", "thinking", "answer")



# --------------------------------------------------------------------------- pass rate


def pass_rates(df, by, dropna: bool = False):
    """Pass rate per group of ``df`` rows (samples): correct / graded, where ``df['correct']``
    is True, False or missing (ungraded). Columns: the ``by`` keys, samples, graded, correct,
    pass_rate (NaN for a group with no graded sample)."""
    d = df.assign(_graded=df["correct"].notna(), _ok=df["correct"].fillna(False).astype(bool))
    out = d.groupby(by, dropna=dropna).agg(samples=("_graded", "size"), graded=("_graded", "sum"),
                                           correct=("_ok", "sum")).reset_index()
    out["pass_rate"] = out["correct"] / out["graded"].where(out["graded"] > 0)
    return out


# --------------------------------------------------------------------------- which estimators

#: every estimator, best first (the order estimator choices are offered in)
ESTIMATOR_ORDER: tuple[str, ...] = ("full", "full_t1", *TOPK_ESTIMATORS)


def available_estimators(full: bool = False, full_t1: bool = False, k: int = 0) -> list[str]:
    """The estimators a trace (or run) has, best first: ``full``/``full_t1`` where its source
    gave all logits, the top-k estimators where it gave ``k`` > 0 alternatives per token."""
    have = {"full": full, "full_t1": full_t1, **{e: k > 0 for e in TOPK_ESTIMATORS}}
    return [e for e in ESTIMATOR_ORDER if have[e]]


def best_first(estimators: Iterable[str]) -> list[str]:
    """Known estimator names among ``estimators``, best first, each once."""
    have = set(estimators)
    return [e for e in ESTIMATOR_ORDER if e in have]


# --------------------------------------------------------------------------- logprob temperature

#: what is stored where the source does not say at which temperature (or truncation) its
#: logprobs were taken
UNKNOWN = "unknown"
#: run-settings keys: the temperature T of the chosen token's logprob, the top-k logprobs and
#: every estimator computed from them (and of ``full``), and whether the distribution they
#: come from was cut by top-p/top-k before ('none', 'top-p/top-k', or UNKNOWN)
LOGPROB_TEMPERATURE = "logprob_temperature"
LOGPROB_TRUNCATION = "logprob_truncation"
#: the truncations recorded, as captions say them
TRUNCATIONS = {"none": "no top-p/top-k truncation", UNKNOWN: "truncation unknown",
               "llama.cpp sampler chain": "after llama.cpp's sampler chain (top-k/top-p/min-p) truncation",
               "mixed in this file": "truncation differs within the file"}


def logprob_conditions(temperature: float | str | None, truncation: str | None) -> dict:
    """The run-settings entries for logprobs taken at ``temperature`` (None: unknown)."""
    t = UNKNOWN if temperature is None or temperature == UNKNOWN else float(temperature)
    return {LOGPROB_TEMPERATURE: t, LOGPROB_TRUNCATION: truncation or UNKNOWN}


def logprob_temperature(settings: dict | None) -> float | None:
    """The temperature a run's logprobs (and ``full``) were taken at, None when unknown.

    Runs recorded before the temperature was stored are read from their generation settings:
    a generated run's logprobs are at its temperature, or at T = 1 when greedy."""
    s = settings or {}
    t = s.get(LOGPROB_TEMPERATURE)
    if t is None and "do_sample" in s:  # generation settings of an older run
        t = s.get("temperature") if s.get("do_sample") else 1.0
    try:
        t = float(t)
    except (TypeError, ValueError):
        return None
    return t if math.isfinite(t) and t > 0 else None


def estimator_temperature(estimator: str, settings: dict | None) -> float | None:
    """The temperature an estimator's values of a run are at (``full_t1``: always 1)."""
    return 1.0 if estimator == "full_t1" else logprob_temperature(settings)


def temperature_text(t: float | str | None) -> str:
    """'T = 0.7', 'T = 1' or 'T unknown'."""
    try:
        t = float(t)
    except (TypeError, ValueError):
        return "T unknown"
    return f"T = {t:g}" if math.isfinite(t) else "T unknown"


def conditions_text(estimator: str, settings: dict | None) -> str:
    """Where an estimator's values of a run come from, for a caption: temperature and truncation."""
    s = settings or {}
    trunc = s.get(LOGPROB_TRUNCATION, UNKNOWN)
    if estimator in ("full", "full_t1") or ("do_sample" in s and trunc == UNKNOWN):
        trunc = "none"  # all logits; a generated run's top-k come from them too
    # stored settings may come from a file: only the known values are shown, never its text
    cut = TRUNCATIONS.get(trunc, TRUNCATIONS[UNKNOWN]) if isinstance(trunc, str) else TRUNCATIONS[UNKNOWN]
    return f"{estimator} at {temperature_text(estimator_temperature(estimator, s))}, {cut}"


#: sources whose logprobs are at T = 1 over all logits whatever the sampling temperature:
#: llama.cpp (``n_probs`` is the softmax of the raw logits; llama-cpp-python's server likewise)
#: and vLLM in its default ``--logprobs-mode raw_logprobs``
RAW_LOGPROB_SOURCES = ("llamacpp", "llama-server", "llama-cpp-python", "vllm")


def source_logprob_conditions(source: str) -> dict:
    """The run-settings entries for logprobs read from ``source`` (a format or server kind)."""
    return logprob_conditions(1.0, "none") if source in RAW_LOGPROB_SOURCES else logprob_conditions(None, None)


def logprobs_text(settings: dict | None) -> str:
    """One line for a run: the temperature and truncation of its logprobs and estimators."""
    s = settings or {}
    cut = conditions_text("topk_renorm", s).split(", ", 1)[1]
    return (f"logprobs, top-k estimators and full at {temperature_text(logprob_temperature(s))} ({cut}); "
            f"full_t1 at T = 1")
