"""Early stopping with a model (torch): the rule applied inside generation, answers forced at
a stop, and replay of a stored run's stops. The arithmetic (thresholds, curves, calibration,
threshold files) is numpy in ``analysis.early_stop``.

``EarlyStop`` is what the one recorder, ``record.record_run(stopping=...)``, accepts: it
gives each ``generate`` call its logits processor and stopping criterion, then cuts every
stopped trace after its stop token and appends the forced answer.
"""

from __future__ import annotations

import json
from typing import Callable, Iterator, Sequence

import numpy as np

from .early_stop import (DEFAULT_CUE, EarlyStopConfig, EarlyStopError, ReplayResult, StopRule,
                         replay_items)
from .metrics import entropy_from_logits, estimator_temperature


# --------------------------------------------------------------------------- inside generation


class EntropyStopper:
    """Applies a streaming/gate rule inside ``transformers`` generation.

    ``processor`` is a logits processor that reads each step's raw logits (it must come
    before any warper, as record.generate_batch's extra processors do) and keeps the entropy
    at the sampling temperature; ``criterion`` is a ``StoppingCriteria`` that ends a row when
    the rule fires. ``stop_at[b]`` is the 0-based index of the last kept token of row b (-1:
    not stopped). Use one instance per ``generate`` call.
    """

    def __init__(self, rule: StopRule, temperature: float = 1.0):
        from transformers import LogitsProcessor, StoppingCriteria

        self.rule, self.t = rule, float(temperature)
        self.h: list = []
        self.stop_at = None
        outer = self

        class _Proc(LogitsProcessor):
            def __call__(self, input_ids, scores):
                outer.h.append(entropy_from_logits(scores, outer.t))
                return scores

        class _Crit(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs):
                return outer._check(input_ids)

        self.processor, self.criterion = _Proc(), _Crit()

    def _check(self, input_ids):
        import torch
        b = input_ids.shape[0]
        if self.stop_at is None:
            self.stop_at = np.full(b, -1, np.int64)
        t = len(self.h) - 1                      # index of the token just generated
        done = torch.zeros(b, dtype=torch.bool)
        r = self.rule
        if r.mode == "gate":
            if t == r.budget - 1:
                mean = torch.stack(self.h, 1).mean(1)
                done = mean <= r.tau
        elif t >= r.first_check:
            mean = torch.stack(self.h[t - r.k + 1:], 1).mean(1)
            done = mean <= r.tau
        newly = done.cpu().numpy() & (self.stop_at < 0)
        self.stop_at[newly] = t
        return torch.as_tensor(self.stop_at >= 0)


def force_answers(lm, prefixes: Sequence[Sequence[int]], cue: str = DEFAULT_CUE, n_tokens: int = 12,
                  temperature: float = 1.0, top_k: int = 0):
    """Append ``cue`` to each token-id prefix and decode ``n_tokens`` greedily (one padded batch).

    Returns (cue_ids, one dict per prefix with 'ids', 'text', 'entropy' (nats at
    ``temperature``), 'entropy_t1', 'logprobs' and, with ``top_k``, 'topk_ids'/'topk_lp').
    The answer is what the model says when made to answer now.
    """
    import torch

    from .record import StepRecorder, stop_ids

    tok = lm.tokenizer
    cue_ids = tok(cue, add_special_tokens=False)["input_ids"] if cue else []
    seqs = [list(map(int, p)) + cue_ids for p in prefixes]
    width = max(len(s) for s in seqs)
    pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    ids = torch.tensor([[pad] * (width - len(s)) + s for s in seqs], device=lm.device)
    att = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in seqs], device=lm.device)
    rec = StepRecorder(temperature, top_k)
    with torch.inference_mode():
        out = lm.model.generate(input_ids=ids, attention_mask=att, max_new_tokens=n_tokens, do_sample=False,
                                temperature=None, top_p=None, top_k=None, pad_token_id=pad,
                                logits_processor=[rec], return_dict_in_generate=True)
    rec.finish(out.sequences)
    arr = rec.arrays()
    new = out.sequences[:, width:].cpu().numpy()
    stops = stop_ids(lm)
    res = []
    for b in range(len(seqs)):
        row = new[b][: arr["entropy"].shape[1]]
        ends = [i for i, x in enumerate(row) if int(x) in stops]
        n = ends[0] if ends else len(row)
        ids_b = row[:n]
        item = {"ids": ids_b, "text": tok.decode(ids_b, skip_special_tokens=True),
                "entropy": arr["entropy"][b, :n].astype(np.float64),
                "entropy_t1": arr["entropy_t1"][b, :n].astype(np.float64),
                "logprobs": arr["chosen_lp"][b, :n].astype(np.float64)}
        if top_k:
            item["topk_ids"], item["topk_lp"] = arr["topk_ids"][b, :n], arr["topk_lp"][b, :n].astype(np.float64)
        res.append(item)
    return cue_ids, res


# --------------------------------------------------------------------------- replay


def replay(lm, store, run_id: int, stops: dict[int, int], cue: str = DEFAULT_CUE, answer_tokens: int = 12,
           rule=None, batch_size: int = 8, progress: Callable[[int, int], None] | None = None,
           cancelled: Callable[[], bool] | None = None) -> Iterator[list[ReplayResult]]:
    """Force the answer at each stop with the model and grade it; yields results per batch.

    ``stops`` maps trace id -> index of the last kept token. The prompt is rebuilt with the
    run's chat-template settings. Stopping the iteration (or ``cancelled()`` returning True)
    keeps every batch already yielded.
    """
    from .grading import GradingRule, grade
    from .record import GenerationSettings, build_prompt_ids

    rule = rule or GradingRule()
    s = store.run_settings(int(run_id)) or {}
    gs = GenerationSettings(chat_template=bool(s.get("chat_template", True)), system_prompt=s.get("system_prompt"))
    items = replay_items(store, run_id, stops)
    total = len(items)
    if progress:
        progress(0, total)
    for start in range(0, total, max(1, batch_size)):
        if cancelled is not None and cancelled():
            return
        chunk = items[start: start + batch_size]
        prefixes = [build_prompt_ids(lm, it["prompt"] or "", gs) + it["ids"].tolist() for it in chunk]
        _, answers = force_answers(lm, prefixes, cue, answer_tokens)
        batch = []
        for it, a in zip(chunk, answers):
            g = grade(cue + a["text"], it["gold"] if isinstance(it["gold"], str) else None, rule)
            batch.append(ReplayResult(it["trace_id"], it["stop"], a["text"], g.pred, g.correct))
        if progress:
            progress(start + len(chunk), total)
        yield batch


# --------------------------------------------------------------------------- generating with the rule


def _truncate(trace, n: int):
    """The first ``n`` tokens of a trace (phase boundary recomputed from its marker)."""
    from .trace import Trace

    cut = lambda a: None if a is None else a[:n]  # noqa: E731
    layers = {k: v[:n] for k, v in trace.layers.items()} if trace.layers else None
    return Trace(prompt=trace.prompt, tokens=trace.tokens[:n], logprobs=trace.logprobs[:n],
                 token_ids=cut(trace.token_ids), topk_ids=cut(trace.topk_ids),
                 topk_tokens=cut(trace.topk_tokens), topk_logprobs=cut(trace.topk_logprobs),
                 entropy_full=cut(trace.entropy_full), entropy_full_t1=cut(trace.entropy_full_t1),
                 marker=trace.marker, source_id=trace.source_id, metadata=dict(trace.metadata), layers=layers)


def _append_answer(trace, lm, cue_ids: Sequence[int], ans: dict, k: int):
    """The trace followed by the forced cue (not sampled: no entropy, NaN) and the answer."""
    from .record import token_pieces
    from .trace import Trace

    ids = np.concatenate([trace.token_ids, np.asarray(cue_ids, np.int64), np.asarray(ans["ids"], np.int64)])
    n_cue, n_ans = len(cue_ids), len(ans["ids"])
    pieces = token_pieces(lm.tokenizer, ids.tolist())
    nan = np.full(n_cue, np.nan)

    def cat(old, answer):
        return np.concatenate([old, nan, answer])

    topk_ids = topk_lp = None
    if k and trace.topk_logprobs is not None:
        kk = trace.topk_logprobs.shape[1]
        pad_ids, pad_lp = np.full((n_cue, kk), -1, np.int64), np.full((n_cue, kk), -np.inf)
        a_ids = ans.get("topk_ids", np.full((n_ans, kk), -1))[:, :kk]
        a_lp = ans.get("topk_lp", np.full((n_ans, kk), -np.inf))[:, :kk]
        topk_ids = np.concatenate([trace.topk_ids, pad_ids, a_ids])
        topk_lp = np.concatenate([trace.topk_logprobs, pad_lp, a_lp])
    # per-layer arrays stop at the truncation: the forced part has none
    return Trace(prompt=trace.prompt, tokens=pieces, logprobs=cat(trace.logprobs, ans["logprobs"]),
                 token_ids=ids, topk_ids=topk_ids, topk_logprobs=topk_lp,
                 entropy_full=cat(trace.entropy_full, ans["entropy"]),
                 entropy_full_t1=cat(trace.entropy_full_t1, ans["entropy_t1"]), marker=trace.marker,
                 source_id=trace.source_id, metadata=dict(trace.metadata), layers=None)


class EarlyStop:
    """An early-stop config applied by ``record.record_run`` (its ``stopping``).

    A stopped trace is cut after its stop token, then the answer is forced (cue + greedy
    decoding of ``cfg.answer_tokens``) and appended; metadata['early_stop'] records where it
    stopped. Traces that end on their own are left as they are. ``summary`` counts the run's
    traces, the stopped ones and ``budget_saved``, the tokens left of ``max_new_tokens`` at
    each stop: an upper bound on the tokens saved, since how long an unstopped trace would
    have run is unknown without a baseline run of the same settings.
    """

    def __init__(self, cfg: EarlyStopConfig):
        self.cfg = cfg
        self.summary = {"traces": 0, "stopped_early": 0, "tokens": 0, "budget_saved": 0, "budget": 0}
        self._stopper: EntropyStopper | None = None

    def check(self, lm, settings) -> None:
        """Refuse a threshold made for another model or estimator before anything is stored."""
        cfg = self.cfg
        warning = cfg.check_compatible(lm.name, cfg.estimator, estimator_temperature(cfg.estimator, settings.to_dict()))
        if warning:
            self.summary["warning"] = warning
        if cfg.estimator not in ("full", "full_t1"):
            raise EarlyStopError(f"threshold file refused: estimator {cfg.estimator!r} cannot be computed inside "
                                 "generation here (full and full_t1 can); calibrate on a 'full' run")

    def run_settings(self) -> dict:
        return {"early_stop": json.loads(self.cfg.to_json())}

    def start(self, settings) -> tuple[list, list]:
        """A fresh (logits processors, stopping criteria) pair for one ``generate`` call."""
        temp = settings.effective_temperature if self.cfg.estimator == "full" else 1.0
        self._stopper = EntropyStopper(self.cfg.rule, temp)
        return [self._stopper.processor], [self._stopper.criterion]

    def finish(self, lm, prompts, settings, traces: list) -> list:
        """The batch's traces with every stopped one cut and answered."""
        from .record import build_prompt_ids

        cfg, stopper = self.cfg, self._stopper
        stop_at = stopper.stop_at if stopper is not None and stopper.stop_at is not None else np.full(len(traces), -1)
        out, todo = list(traces), []
        for b, t in enumerate(traces):
            s = int(stop_at[b])
            ended_itself = t.metadata.get("stopped") == "eos" and t.n_tokens - 1 <= s  # its EOS came first
            if s >= 0 and not ended_itself:
                todo.append(b)
        if todo:
            temp = settings.effective_temperature if cfg.estimator == "full" else 1.0
            cut = {b: _truncate(traces[b], int(stop_at[b]) + 1) for b in todo}
            prefixes = [build_prompt_ids(lm, prompts[b].text, settings) + cut[b].token_ids.tolist() for b in todo]
            cue_ids, answers = force_answers(lm, prefixes, cfg.answer_cue, cfg.answer_tokens, temp, settings.top_k)
            for b, ans in zip(todo, answers):
                full = _append_answer(cut[b], lm, cue_ids, ans, settings.top_k)
                s = int(stop_at[b])
                full.metadata["stopped"] = "early_stop"
                full.metadata["early_stop"] = {"stop": s, "tokens_kept": s + 1,
                                               "forced_tokens": len(cue_ids) + len(ans["ids"]),
                                               "budget_left": settings.max_new_tokens - (s + 1),
                                               "tau": cfg.rule.tau, "mode": cfg.rule.mode}
                out[b] = full
        sm = self.summary
        sm["traces"] += len(out)
        sm["tokens"] += sum(t.n_tokens for t in out)
        sm["budget"] += len(out) * settings.max_new_tokens
        for t in out:
            if "early_stop" in t.metadata:
                sm["stopped_early"] += 1
                sm["budget_saved"] += t.metadata["early_stop"]["budget_left"]
        return out

    def result(self) -> dict:
        """Merged into the run's settings when the run ends."""
        return {"early_stop_result": dict(self.summary)}


def record_run_early_stop(store, lm, prompts, settings, name: str, cfg: EarlyStopConfig,
                          on_traces: Callable | None = None, progress: Callable[[int, int], None] | None = None,
                          source: str = "generate"):
    """``record.record_run`` with ``cfg``'s early stopping; returns (RunResult, summary dict)."""
    from .record import record_run

    stop = EarlyStop(cfg)
    res = record_run(store, lm, prompts, settings, name, source, progress=progress, on_traces=on_traces,
                     stopping=stop)
    return res, dict(stop.summary)
