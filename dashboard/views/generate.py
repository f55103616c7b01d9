"""Generate: run a local model on prompts or the bundled problems, from the browser."""

from __future__ import annotations

import time

import streamlit as st

from analysis import grading
from analysis import settings as defaults
from analysis.errors import ThinkscopeError
from analysis.problems import ANSWER_CUE, generate_problem_set
from analysis.record import GenerationSettings, Prompt, record_run
from dashboard import state
from dashboard.text import md

PENDING = "generate.pending"  # the run being generated: {"after": newest run id before it, "name": ...}
RESULT = "generate.result"    # the last run generated here, as shown under the button
STOP_WAIT_S = 600             # how long a stop waits for the batch being generated

st.title("Generate traces")
st.caption("Runs a local transformers model and records, per token, the full-vocabulary entropy, "
           "the chosen token's logprob and the top-k alternatives. Each batch is stored as it finishes: "
           "**Stop** ends the run after the current batch and keeps the finished traces (the run is "
           "marked 'interrupted').")


@st.cache_resource(show_spinner="Loading the model ...", max_entries=2)
def get_model(spec: str):
    from analysis.models import load_model
    return load_model(spec or None)


def settle_pending() -> None:
    """A run whose script was stopped (Stop, or any other click) ends after its current batch,
    in the stopped script's thread: wait for that, then say what was kept."""
    pending = st.session_state.pop(PENDING, None)
    if pending is None:
        return
    s = state.store()
    with st.spinner("Stopping after the current batch ..."):
        t0 = time.monotonic()
        while True:
            runs = s.runs()
            mine = runs[(runs["run_id"] > pending["after"]) & (runs["name"] == pending["name"])]
            waited = time.monotonic() - t0
            # the run row is written as the run starts: none after a few seconds means none at all
            if mine.empty and waited > 5 or not mine.empty and mine["status"].iloc[-1] != "running" \
                    or waited > STOP_WAIT_S:
                break
            time.sleep(0.5)
    st.cache_data.clear()
    if mine.empty:
        st.session_state[RESULT] = {"run_id": None}
        return
    r = mine.iloc[-1]
    st.session_state[RESULT] = {"run_id": int(r["run_id"]), "n_traces": int(r["n_traces"]),
                                "n_tokens": int(r["n_tokens"]), "status": str(r["status"]), "seconds": None}


def show_result() -> None:
    res = st.session_state.get(RESULT)
    if res is None:
        return
    if res["run_id"] is None:
        st.warning("Stopped before the first batch was stored: nothing was kept.")
        return
    what = f"Run #{res['run_id']}: {res['n_traces']} traces, {res['n_tokens']} tokens"
    if res["status"] == "complete":
        st.success(what + (f" in {res['seconds']:.1f} s." if res["seconds"] is not None else "."))
    elif res["status"] == "running":
        st.warning(f"{what} so far; the stopped batch is still being generated (the run will be "
                   "marked 'interrupted').")
    else:
        st.warning(f"{what} kept; the run was stopped and is marked '{res['status']}'.")
    if res["n_traces"] and st.button("Open in the trace explorer", key="generate.open"):
        state.open_page("views/explorer.py", res["run_id"])


settle_pending()

source = st.radio("Prompts", ["bundled problems", "my prompts"], horizontal=True, key="generate.source")
if source == "bundled problems":
    c1, c2 = st.columns(2)
    per_level = c1.number_input("Problems per level (6 levels)", 1, 50, 2, key="generate.per_level")
    seed_p = c2.number_input("Problem seed", 0, 10_000, 0, key="generate.problem_seed")
    prompts = [p.to_prompt() for p in generate_problem_set(per_level=int(per_level), seed=int(seed_p))]
    marker_default = ANSWER_CUE
    auto_name = f"arithmetic problems · {int(per_level)} per level · seed {int(seed_p)}"
else:
    text = st.text_area("One prompt per line", "What is 17 + 25? Think step by step.", height=120,
                        key="generate.prompts")
    prompts = [Prompt(line.strip()) for line in text.splitlines() if line.strip()]
    marker_default = defaults.THINK_MARKER
    first = prompts[0].text if prompts else ""
    auto_name = (f"{first[:40]}…" if len(first) > 40 else first) + (f" (+{len(prompts) - 1} prompts)"
                                                                    if len(prompts) > 1 else "")

with st.expander("Model and sampling", expanded=False):
    backend = st.radio("Backend", ["local model", "inference server"], horizontal=True, key="generate.backend",
                       help="An inference server (vLLM, SGLang, llama.cpp, Ollama or an OpenAI-compatible gateway) "
                            "gives the top-k logprobs; a local model also the full-vocabulary entropy.")
    if backend == "inference server":
        s1, s2, s3, s4 = st.columns([3, 2, 2, 1])
        server_url = s1.text_input("Server URL", "http://127.0.0.1:8000", key="generate.server_url")
        model_spec = s2.text_input("Served model (empty: the first it lists)", "", key="generate.server_model")
        key_env = s3.text_input("API key variable (its name; the key is never stored)", "", key="generate.key_env")
        concurrency = s4.number_input("In flight", 1, 256, 4, key="generate.concurrency")
    else:
        model_spec = st.text_input("Model (folder, .gguf file or cached hub id; empty = embedded SmolLM2-135M-Instruct)",
                                   "", key="generate.model")
    c1, c2, c3, c4 = st.columns(4)
    temperature = c1.number_input("Temperature", 0.05, 2.0, defaults.TEMPERATURE, 0.05, key="generate.temperature")
    top_p = c2.number_input("Top-p", 0.05, 1.0, defaults.TOP_P, 0.05, key="generate.top_p")
    max_tokens = c3.number_input("Max new tokens", 8, 4096, defaults.MAX_NEW_TOKENS, 8, key="generate.max_tokens")
    samples = c4.number_input("Samples per prompt", 1, 32, 1, key="generate.samples")
    c5, c6, c7, c8 = st.columns(4)
    greedy = c5.toggle("Greedy decoding", False, key="generate.greedy")
    seed = c6.number_input("Seed", 0, 1_000_000, defaults.SEED, key="generate.seed")
    marker = c7.text_input("End-of-thinking marker", marker_default, key=f"generate.marker.{source}")
    batch_size = c8.number_input("Batch size (traces stored together; Stop ends after one)", 1, 64, defaults.BATCH_SIZE,
                                 key="generate.batch_size")

with st.expander("Per-layer records (Layers page; slower)", expanded=False):
    c1, c2 = st.columns(2)
    lens = c1.toggle("Logit-lens entropy per layer (--logit-lens)", False, key="generate.lens",
                     help="Entropy-Lens (arXiv 2502.16570): every layer's entropy and top-1 token.")
    lens_every = c1.number_input("Keep every N-th layer (--lens-every; the last is always kept)", 1, 64, 1,
                                 key="generate.lens_every", disabled=not lens)
    attn = c2.toggle("Attention entropy per layer (--attention-entropy)", False, key="generate.attn",
                     help="Per layer, mean over heads, raw and normalised by ln(t+1).")
    head_layer = c2.number_input("Layer whose per-head entropy is kept (--head-layer; 0 = the middle one)",
                                 0, 256, 0, key="generate.head_layer", disabled=not attn)

name = st.text_input("Run name (empty: named after the prompts)", "", placeholder=auto_name,
                     key="generate.name").strip() or auto_name

graded = source == "bundled problems"
st.write(f"{len(prompts)} prompt(s) × {int(samples)} sample(s) = **{len(prompts) * int(samples)} traces**"
         + (" (graded against the problems' answers)" if graded else ""))
go = st.button("Generate", type="primary", disabled=not prompts, key="generate.go")
if go:
    st.session_state.pop(RESULT, None)
    settings = GenerationSettings(temperature=float(temperature), top_p=float(top_p),
                                  max_new_tokens=int(max_tokens), seed=int(seed), samples=int(samples),
                                  do_sample=not greedy, marker=marker or defaults.THINK_MARKER, batch_size=int(batch_size),
                                  logit_lens=lens, lens_every=int(lens_every), attention_entropy=attn,
                                  head_layer=int(head_layer) or None)
    # Stop reruns the page; the rerun interrupts this script at its next progress update, which
    # comes after a batch is stored, and the run is marked 'interrupted' (record_run)
    stop = st.empty()
    stop.button("Stop after this batch", key="generate.stop")
    try:
        run_kwargs = dict(on_traces=grading.grade_traces if graded else None,
                          progress=lambda d, t: bar.progress(d / max(t, 1), text=f"{d} / {t} traces"))
        if backend == "inference server":  # requests in flight; Stop keeps every trace stored so far
            from analysis.server.generate import record_server_run
            from analysis.server.servers import connect
            server = connect(server_url.strip(), model_spec.strip() or None, api_key_env=key_env.strip() or None,
                             top_k=settings.top_k)
        else:
            lm = get_model(model_spec.strip())
        bar = st.progress(0.0, text="generating ...")
        st.session_state[PENDING] = {"after": max(state.store().runs()["run_id"], default=0), "name": name}
        if backend == "inference server":
            res = record_server_run(state.store(), server, prompts, settings, name, concurrency=int(concurrency),
                                    api_key_env=key_env.strip() or None, **run_kwargs)
            if res.failed:
                st.warning(f"{len(res.failed)} request(s) failed for good; they are listed in the run's settings "
                           f"(Runs page), e.g. {md(res.failed[0]['reason'])}")
        else:
            res = record_run(state.store(), lm, prompts, settings, name, source="generate", **run_kwargs)
    except ThinkscopeError as e:
        st.session_state.pop(PENDING, None)
        st.error(md(e))
    else:  # an interruption (Stop) leaves PENDING for the next run to settle
        st.session_state.pop(PENDING, None)
        st.cache_data.clear()
        st.session_state[RESULT] = {"run_id": res.run_id, "n_traces": res.n_traces, "n_tokens": res.n_tokens,
                                    "status": res.status, "seconds": res.seconds}
    stop.empty()
show_result()  # also on the next run, so that its button works
