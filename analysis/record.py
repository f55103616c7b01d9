"""Running a model: generate or score completions and hand back per-token records.

Generation uses ``transformers`` ``generate`` with a logits processor that sees the raw
logits of every step (custom processors run before the temperature/top-p warpers) and
reduces them at once to what is kept: full-vocabulary entropy at the sampling temperature
and at T=1, the chosen token's logprob, and the top-k alternatives. Nothing of size
[steps x vocabulary] is held.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable, Iterator, Protocol, Sequence

import numpy as np
import torch

from . import settings as defaults
from .metrics import entropy_from_logp, logprob_conditions
from .models import LoadedModel
from .trace import Trace


@dataclass
class GenerationSettings:
    """How traces are generated; stored with every run."""

    temperature: float = defaults.TEMPERATURE
    top_p: float = defaults.TOP_P
    max_new_tokens: int = defaults.MAX_NEW_TOKENS
    seed: int = defaults.SEED
    samples: int = 1
    top_k: int = defaults.TOP_K     # alternatives recorded per token
    do_sample: bool = True          # False: greedy decoding (entropies at T = 1)
    chat_template: bool = True
    system_prompt: str | None = None
    batch_size: int = defaults.BATCH_SIZE
    marker: str = defaults.THINK_MARKER
    # opt-in per-layer records (analysis.layers): they cost one extra forward pass per trace
    logit_lens: bool = False
    lens_every: int = 1             # keep every n-th layer's logit lens (the last always)
    attention_entropy: bool = False
    head_layer: int | None = None   # layer (1-based) whose per-head attention entropy is kept

    @property
    def effective_temperature(self) -> float:
        return self.temperature if self.do_sample else 1.0

    def to_dict(self) -> dict:
        d = asdict(self)
        if not self.do_sample:  # greedy decoding samples nothing: no sampling temperature or top-p
            d["temperature"] = d["top_p"] = None
        # logprobs, top-k and entropies come from all logits, before top-p, at the effective T
        return {**d, **logprob_conditions(self.effective_temperature, "none")}


@dataclass
class Prompt:
    """A prompt to generate from, with optional problem metadata carried into the trace."""

    text: str
    metadata: dict = field(default_factory=dict)


ProgressFn = Callable[[int, int], None]


# --------------------------------------------------------------------------- text helpers


def build_prompt_ids(lm: LoadedModel, text: str, settings: GenerationSettings) -> list[int]:
    """Token ids of a prompt, through the chat template when the tokenizer has one."""
    tok = lm.tokenizer
    if settings.chat_template and getattr(tok, "chat_template", None):
        msgs = []
        if settings.system_prompt:
            msgs.append({"role": "system", "content": settings.system_prompt})
        msgs.append({"role": "user", "content": text})
        rendered = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
        return tok(rendered, add_special_tokens=False)["input_ids"]
    return tok(text)["input_ids"]


def token_pieces(tok, ids: Sequence[int]) -> list[str]:
    """The text each token adds, such that ''.join(pieces) == decode(ids).

    Decoded incrementally over a short window (as streaming servers do), so a character
    split over several byte-level tokens is given to the token that completes it and the
    earlier ones get ''.
    """
    ids = [int(i) for i in ids]
    pieces: list[str] = []
    emitted = 0
    for i in range(len(ids)):
        lo = max(0, emitted - 4)
        prefix = tok.decode(ids[lo:emitted], skip_special_tokens=False) if emitted > lo else ""
        full = tok.decode(ids[lo : i + 1], skip_special_tokens=False)
        if full.endswith("\ufffd") and i < len(ids) - 1:
            pieces.append("")
            continue
        if full.startswith(prefix):
            pieces.append(full[len(prefix):])
        else:  # a decoder that rewrites its context: fall back to the token alone
            pieces.append(tok.decode(ids[emitted : i + 1], skip_special_tokens=False))
        emitted = i + 1
    return pieces


class VocabText:
    """Cached text of single token ids, for the top-k alternatives; ``cache`` may be a dict
    the caller keeps (it receives every text decoded)."""

    def __init__(self, tok, cache: dict[int, str] | None = None):
        self.tok = tok
        self.cache: dict[int, str] = {} if cache is None else cache

    def __call__(self, ids: Iterable[int]) -> dict[int, str]:
        out = {}
        for i in ids:
            i = int(i)
            if i not in self.cache:
                self.cache[i] = self.tok.decode([i], skip_special_tokens=False)
            out[i] = self.cache[i]
        return out


# --------------------------------------------------------------------------- step recorder


class StepRecorder:
    """A logits processor that records entropies and top-k at every generation step.

    It receives the raw float32 logits of the step (before temperature and top-p) and
    keeps, per row: entropy at temperature T and at T=1 (nats), the top-k logprobs at T,
    and the logprob at T of the token chosen at the previous step.
    """

    def __init__(self, temperature: float, k: int):
        self.t = float(temperature)
        self.k = int(k)
        self.entropy: list[torch.Tensor] = []
        self.entropy_t1: list[torch.Tensor] = []
        self.topk_ids: list[torch.Tensor] = []
        self.topk_lp: list[torch.Tensor] = []
        self.chosen_lp: list[torch.Tensor] = []
        self._prev_logp: torch.Tensor | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self._prev_logp is not None:
            self.chosen_lp.append(self._prev_logp.gather(1, input_ids[:, -1:]).squeeze(1))
        z = scores.float()
        logp_t1 = torch.log_softmax(z, dim=-1)
        self.entropy_t1.append(entropy_from_logp(logp_t1))
        logp = logp_t1 if self.t == 1.0 else torch.log_softmax(z / self.t, dim=-1)
        self.entropy.append(self.entropy_t1[-1] if self.t == 1.0 else entropy_from_logp(logp))
        if self.k:
            v, i = torch.topk(logp, self.k, dim=-1)
            self.topk_lp.append(v)
            self.topk_ids.append(i)
        self._prev_logp = logp
        return scores

    def finish(self, sequences: torch.LongTensor) -> None:
        """Record the last step's chosen token from the finished sequences."""
        if self._prev_logp is not None and len(self.chosen_lp) < len(self.entropy):
            self.chosen_lp.append(self._prev_logp.gather(1, sequences[:, -1:]).squeeze(1))
        self._prev_logp = None

    def arrays(self) -> dict[str, np.ndarray]:
        """[B, steps] / [B, steps, k] numpy arrays."""
        stack = lambda xs: torch.stack(xs, dim=1).cpu().numpy()  # noqa: E731
        out = {"entropy": stack(self.entropy), "entropy_t1": stack(self.entropy_t1),
               "chosen_lp": stack(self.chosen_lp)}
        if self.k:
            out["topk_lp"] = stack(self.topk_lp)
            out["topk_ids"] = stack(self.topk_ids)
        return out


# --------------------------------------------------------------------------- generation


def stop_ids(lm: LoadedModel) -> set[int]:
    """The token ids that end a generation (end of sequence)."""
    ids = set()
    eos = lm.model.generation_config.eos_token_id
    for e in (eos if isinstance(eos, (list, tuple)) else [eos]):
        if e is not None:
            ids.add(int(e))
    if lm.tokenizer.eos_token_id is not None:
        ids.add(int(lm.tokenizer.eos_token_id))
    return ids


class Stopping(Protocol):
    """Ends rows of a generation early; ``iter_generate`` and ``record_run`` apply one to every
    batch (``analysis.stopping.EarlyStop`` is the entropy rule)."""

    def check(self, lm: LoadedModel, settings: GenerationSettings) -> None:
        """Raise before anything is generated or stored when it cannot apply."""

    def run_settings(self) -> dict:
        """Stored with the run's settings when it is created."""

    def start(self, settings: GenerationSettings) -> tuple[list, list]:
        """Fresh (logits processors, stopping criteria) for one ``generate`` call."""

    def finish(self, lm: LoadedModel, prompts: Sequence[Prompt], settings: GenerationSettings,
               traces: list[Trace]) -> list[Trace]:
        """The batch's traces after stopping (cut, answered)."""

    def result(self) -> dict:
        """Merged into the run's settings when the run ends."""


@torch.inference_mode()
def generate_batch(lm: LoadedModel, prompts: Sequence[Prompt], settings: GenerationSettings,
                   seed: int, vocab: VocabText | None = None,
                   extra_processors: Sequence = (), stopping_criteria: Sequence = ()) -> list[Trace]:
    """Generate one completion per prompt (one padded batch) and return the traces."""
    from transformers import LogitsProcessorList, StoppingCriteriaList

    tok, model = lm.tokenizer, lm.model
    encoded = [build_prompt_ids(lm, p.text, settings) for p in prompts]
    width = max(len(e) for e in encoded)
    pad = tok.pad_token_id
    input_ids = torch.tensor([[pad] * (width - len(e)) + e for e in encoded], device=lm.device)
    attention = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in encoded], device=lm.device)
    rec = StepRecorder(settings.effective_temperature, settings.top_k)
    torch.manual_seed(seed)
    gen_kwargs = dict(max_new_tokens=settings.max_new_tokens, do_sample=settings.do_sample,
                      pad_token_id=pad, return_dict_in_generate=True)
    if settings.do_sample:
        gen_kwargs.update(temperature=settings.temperature, top_p=settings.top_p, top_k=0)
    else:
        gen_kwargs.update(temperature=None, top_p=None, top_k=None)
    out = model.generate(input_ids=input_ids, attention_mask=attention,
                         logits_processor=LogitsProcessorList([rec, *extra_processors]),
                         stopping_criteria=StoppingCriteriaList(list(stopping_criteria)),
                         **gen_kwargs)
    seqs = out.sequences
    rec.finish(seqs)
    arr = rec.arrays()
    new = seqs[:, width:].cpu().numpy()
    stops = stop_ids(lm)
    vocab = vocab or VocabText(tok)
    traces = []
    for b, p in enumerate(prompts):
        row = new[b]
        steps = arr["entropy"].shape[1]
        n = min(len(row), steps)
        ends = [i for i in range(n) if int(row[i]) in stops]
        n = ends[0] + 1 if ends else n  # keep the end-of-sequence token: its entropy is the stop decision
        ids = row[:n]
        meta = dict(p.metadata)
        meta["stopped"] = "eos" if ends else "max_tokens"
        traces.append(Trace(
            prompt=p.text, tokens=token_pieces(tok, ids), token_ids=ids,
            logprobs=arr["chosen_lp"][b, :n].astype(np.float64),
            topk_ids=arr["topk_ids"][b, :n] if settings.top_k else None,
            topk_logprobs=arr["topk_lp"][b, :n].astype(np.float64) if settings.top_k else None,
            entropy_full=arr["entropy"][b, :n].astype(np.float64),
            entropy_full_t1=arr["entropy_t1"][b, :n].astype(np.float64),
            marker=settings.marker, metadata=meta))
    _attach_layers(lm, traces, encoded, settings)
    return traces


def _attach_layers(lm: LoadedModel, traces: Sequence[Trace], prompt_ids: Sequence[Sequence[int]],
                   settings: GenerationSettings) -> None:
    """Per-layer arrays (logit lens, attention entropy) when the settings ask for them."""
    from .layers import LayerOptions, attach_layers, find_lens_parts

    options = LayerOptions.from_settings(settings)
    if not options.enabled:
        return
    parts = find_lens_parts(lm.model)
    for trace, ids in zip(traces, prompt_ids):
        attach_layers(lm.model, trace, ids, options, parts)


def expand_samples(prompts: Sequence[Prompt], samples: int) -> list[Prompt]:
    """Each prompt repeated ``samples`` times, with ``sample_idx`` in its metadata."""
    return [Prompt(p.text, {**p.metadata, "sample_idx": s}) for p in prompts for s in range(samples)]


def iter_generate(lm: LoadedModel, prompts: Sequence[Prompt], settings: GenerationSettings,
                  progress: ProgressFn | None = None, stopping: Stopping | None = None,
                  **kwargs) -> Iterator[list[Trace]]:
    """Generate every prompt x sample in batches; yield each finished batch of traces.
    ``stopping`` may end rows early (see ``Stopping``)."""
    todo = expand_samples(prompts, settings.samples)
    vocab = VocabText(lm.tokenizer)
    done = 0
    if progress:
        progress(0, len(todo))
    for start in range(0, len(todo), max(1, settings.batch_size)):
        chunk = todo[start : start + settings.batch_size]
        if stopping is None:
            traces = generate_batch(lm, chunk, settings, seed=settings.seed + start, vocab=vocab, **kwargs)
        else:
            processors, criteria = stopping.start(settings)
            traces = generate_batch(lm, chunk, settings, seed=settings.seed + start, vocab=vocab,
                                    extra_processors=[*kwargs.pop("extra_processors", ()), *processors],
                                    stopping_criteria=[*kwargs.pop("stopping_criteria", ()), *criteria], **kwargs)
            traces = stopping.finish(lm, chunk, settings, traces)
        done += len(chunk)
        yield traces
        if progress:
            progress(done, len(todo))


def vocab_for(lm: LoadedModel, traces: Sequence[Trace], cache: VocabText | None = None) -> dict[int, str]:
    """Text of every token id used by the traces' top-k alternatives and chosen tokens."""
    cache = cache or VocabText(lm.tokenizer)
    ids: set[int] = set()
    for t in traces:
        if t.topk_ids is not None:
            ids.update(np.unique(t.topk_ids).tolist())
        if t.token_ids is not None:
            ids.update(np.unique(t.token_ids).tolist())
        if t.layers and t.layers.get("lens_top1") is not None:  # hover text of the logit lens
            top1 = np.unique(t.layers["lens_top1"])
            ids.update(top1[top1 >= 0].tolist())
    return cache(sorted(i for i in ids if i >= 0))  # -1 marks an empty top-k slot


# --------------------------------------------------------------------------- scoring


def _byte_level_table() -> dict[int, str]:
    """GPT-2's byte -> character map, under which byte-level BPE vocabularies spell bytes:
    printable bytes stand for themselves, the others for the characters from U+0100 on."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("\u00a1"), ord("\u00ac") + 1),
            *range(ord("\u00ae"), ord("\u00ff") + 1)]
    table = {b: chr(b) for b in keep}
    n = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + n)
            n += 1
    return table


def ids_of_pieces(tok, pieces: Sequence[str | bytes]) -> list[int] | None:
    """The tokenizer's id of each token given by its exact text or bytes, or None when some
    piece is not one of its tokens (spelled as byte-level BPE, SentencePiece or plainly)."""
    vocab = tok.get_vocab()
    table = _byte_level_table()
    out = []
    for p in pieces:
        raw = p if isinstance(p, bytes) else str(p).encode("utf-8")
        text = raw.decode("utf-8", "replace")
        for cand in ("".join(table[b] for b in raw), text.replace(" ", "\u2581"), text):
            i = vocab.get(cand)
            if i is not None:
                out.append(int(i))
                break
        else:
            return None
    return out


def _tokens_differ(file_tokens: Sequence, model_tokens: Sequence) -> int:
    """How many of the file's tokens have no counterpart in the model's tokens (longest
    matching blocks, difflib): 0 when the two sequences are the same."""
    import difflib
    m = difflib.SequenceMatcher(None, list(file_tokens), list(model_tokens), autojunk=False)
    return len(file_tokens) - sum(b.size for b in m.get_matching_blocks())


def completion_ids(tok, completion: str, token_ids: Sequence[int] | None = None,
                   token_pieces_: Sequence[str | bytes] | None = None) -> tuple[list[int], dict | None]:
    """The token ids to score for ``completion``, and a report on the file's own tokens.

    Where the file gives its tokens (ids, or each token's exact text or bytes) and they are
    this tokenizer's tokens of exactly this text, those are scored (report 'scored': 'file').
    Otherwise the text is re-tokenised and the report says how many of the file's tokens
    differ ('scored': 'retokenised', 'differ', 'file_tokens', 'model_tokens'). No file tokens:
    the text is tokenised and the report is None.
    """
    plain = tok(completion, add_special_tokens=False)["input_ids"]
    if token_ids is None and token_pieces_ is None:
        return plain, None
    n_file = len(token_ids) if token_ids is not None else len(token_pieces_)
    size = len(tok)
    candidates = []
    if token_ids is not None and all(0 <= int(i) < size for i in token_ids):
        candidates.append(("token ids", [int(i) for i in token_ids]))
    if token_pieces_ is not None:
        ids = ids_of_pieces(tok, token_pieces_)
        if ids is not None:
            candidates.append(("token bytes" if any(isinstance(p, bytes) for p in token_pieces_) else "token texts",
                               ids))
    for source, ids in candidates:
        if "".join(token_pieces(tok, ids)) == completion:
            return ids, {"scored": "file", "source": source, "file_tokens": n_file, "model_tokens": n_file,
                         "differ": 0}
    if token_pieces_ is not None:  # compare as text: ids of another tokenizer mean nothing here
        file_seq = [p.decode("utf-8", "replace") if isinstance(p, bytes) else str(p) for p in token_pieces_]
        differ = _tokens_differ(file_seq, token_pieces(tok, plain))
    else:
        differ = _tokens_differ([int(i) for i in token_ids], plain)
    return plain, {"scored": "retokenised", "file_tokens": n_file, "model_tokens": len(plain), "differ": differ}


@torch.inference_mode()
def score_completion(lm: LoadedModel, prompt: str, completion: str, settings: GenerationSettings,
                     chunk: int = 256, metadata: dict | None = None, token_ids: Sequence[int] | None = None,
                     token_texts: Sequence[str | bytes] | None = None,
                     vocab: dict[int, str] | None = None) -> Trace:
    """Teacher-force ``completion`` after ``prompt`` and record it as if it were generated.

    The forward pass runs in chunks of ``chunk`` tokens over a KV cache, so the logits held
    at once are [chunk x vocabulary]. Entropies at ``settings.effective_temperature`` and T=1.
    ``token_ids`` / ``token_texts``: the completion's tokens as a file gives them; they are
    scored exactly when they are this tokenizer's tokens of this text (``completion_ids``),
    and metadata['tokenization'] reports on them. ``vocab`` receives the text of every token
    id the trace uses (the alternatives' too), for the store's vocab rows.
    """
    tok, model = lm.tokenizer, lm.model
    prompt_ids = build_prompt_ids(lm, prompt, settings)
    comp_ids, report = completion_ids(tok, completion, token_ids, token_texts)
    ids = torch.tensor([prompt_ids + comp_ids], device=lm.device)
    n_prompt, n = len(prompt_ids), len(comp_ids)
    rec = StepRecorder(settings.effective_temperature, settings.top_k)
    past = None
    # logits at position i predict token i+1: we need positions n_prompt-1 .. n_prompt+n-2
    pos = 0
    total = ids.shape[1] - 1 if n else 0
    while pos < total:
        end = min(pos + (chunk if pos >= n_prompt else max(n_prompt, 1)), total)
        out = model(input_ids=ids[:, pos:end], past_key_values=past, use_cache=True)
        past = out.past_key_values
        logits = out.logits[0]
        for j in range(max(pos, n_prompt - 1), end):
            rec(ids[:, : j + 1], logits[j - pos][None, :])
        pos = end
    if n:
        rec.finish(ids)
        arr = rec.arrays()
    comp = np.asarray(comp_ids, dtype=np.int64)
    empty = np.empty(0)
    trace = Trace(
        prompt=prompt, tokens=token_pieces(tok, comp_ids), token_ids=comp,
        logprobs=arr["chosen_lp"][0].astype(np.float64) if n else empty,
        topk_ids=arr["topk_ids"][0] if n and settings.top_k else None,
        topk_logprobs=arr["topk_lp"][0].astype(np.float64) if n and settings.top_k else None,
        entropy_full=arr["entropy"][0].astype(np.float64) if n else empty,
        entropy_full_t1=arr["entropy_t1"][0].astype(np.float64) if n else empty,
        marker=settings.marker, metadata=dict(metadata or {}))
    if report is not None:
        trace.metadata["tokenization"] = report
    _attach_layers(lm, [trace], [prompt_ids], settings)
    if vocab is not None:
        vocab_for(lm, [trace], VocabText(tok, vocab))
    return trace


# --------------------------------------------------------------------------- runs


class Terminated(KeyboardInterrupt):
    """SIGTERM during a generation: handled as Ctrl-C is (the finished batches are kept)."""


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises Terminated in the main thread, as Ctrl-C raises
    KeyboardInterrupt; further SIGTERMs are ignored until the block has cleaned up. Nothing
    changes outside the main thread (signal handlers can only be set there)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    state = {"raised": False}

    def handler(signum, frame):
        if not state["raised"]:
            state["raised"] = True
            raise Terminated(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@dataclass
class RunResult:
    run_id: int
    n_traces: int
    n_tokens: int
    status: str
    seconds: float


def record_run(store, lm: LoadedModel, prompts: Sequence[Prompt], settings: GenerationSettings,
               name: str, source: str = "generate", progress: ProgressFn | None = None,
               on_traces: Callable[[list[Trace]], None] | None = None, stopping: Stopping | None = None,
               **kwargs) -> RunResult:
    """Generate and store a run, one transaction per batch.

    An interruption (KeyboardInterrupt, SIGTERM, or any error) keeps every finished batch and
    marks the run 'interrupted'. ``on_traces`` may modify each batch before it is stored
    (grading, for instance). ``stopping`` ends rows early (an early-stop rule); its settings
    and result are stored with the run. A process killed outright leaves the run 'running';
    it is shown as interrupted once the process is gone (``Store.runs``).
    """
    if stopping is not None:
        stopping.check(lm, settings)
    with sigterm_as_interrupt():
        run_id = store.create_run(name, source, lm.name, {**settings.to_dict(), "n_prompts": len(prompts),
                                                           **(stopping.run_settings() if stopping else {})})
        vocab = VocabText(lm.tokenizer)
        n_traces = n_tokens = 0
        t0 = time.perf_counter()
        status = "complete"
        try:
            for traces in iter_generate(lm, prompts, settings, progress=progress, stopping=stopping, **kwargs):
                if on_traces:
                    on_traces(traces)
                store.add_traces(run_id, traces, vocab_for(lm, traces, vocab))
                n_traces += len(traces)
                n_tokens += sum(t.n_tokens for t in traces)
        except BaseException:
            status = "interrupted"
            raise
        finally:
            store.finish_run(run_id, status)
    if stopping is not None:
        store.merge_settings(run_id, stopping.result())
    return RunResult(run_id, n_traces, n_tokens, status, time.perf_counter() - t0)
