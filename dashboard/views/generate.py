"""Generate: run a local model on prompts or the bundled problems, from the browser."""

from __future__ import annotations

import streamlit as st

from analysis.errors import ThinkscopeError
from analysis.problems import ANSWER_CUE, generate_problem_set
from analysis.record import GenerationSettings, Prompt, record_run
from dashboard import state

st.title("Generate traces")
st.caption("Runs a local transformers model and records, per token, the full-vocabulary entropy, "
           "the chosen token's logprob and the top-k alternatives. Each batch is stored as it finishes: "
           "stopping the page keeps the finished traces (the run is marked 'interrupted').")


@st.cache_resource(show_spinner="Loading the model ...", max_entries=2)
def get_model(spec: str):
    from analysis.models import load_model
    return load_model(spec or None)


source = st.radio("Prompts", ["bundled problems", "my prompts"], horizontal=True, key="generate.source")
if source == "bundled problems":
    c1, c2 = st.columns(2)
    per_level = c1.number_input("Problems per level (6 levels)", 1, 50, 2, key="generate.per_level")
    seed_p = c2.number_input("Problem seed", 0, 10_000, 0, key="generate.problem_seed")
    prompts = [p.to_prompt() for p in generate_problem_set(per_level=int(per_level), seed=int(seed_p))]
    marker_default = ANSWER_CUE
else:
    text = st.text_area("One prompt per line", "What is 17 + 25? Think step by step.", height=120,
                        key="generate.prompts")
    prompts = [Prompt(line.strip()) for line in text.splitlines() if line.strip()]
    marker_default = "</think>"

with st.expander("Model and sampling", expanded=False):
    model_spec = st.text_input("Model (folder, .gguf file or cached hub id; empty = embedded SmolLM2-135M-Instruct)",
                               "", key="generate.model")
    c1, c2, c3, c4 = st.columns(4)
    temperature = c1.number_input("Temperature", 0.05, 2.0, 0.7, 0.05, key="generate.temperature")
    top_p = c2.number_input("Top-p", 0.05, 1.0, 0.95, 0.05, key="generate.top_p")
    max_tokens = c3.number_input("Max new tokens", 8, 4096, 128, 8, key="generate.max_tokens")
    samples = c4.number_input("Samples per prompt", 1, 32, 1, key="generate.samples")
    c5, c6, c7 = st.columns(3)
    greedy = c5.toggle("Greedy decoding", False, key="generate.greedy")
    seed = c6.number_input("Seed", 0, 1_000_000, 0, key="generate.seed")
    marker = c7.text_input("End-of-thinking marker", marker_default, key=f"generate.marker.{source}")
    c8, c9 = st.columns(2)
    lens = c8.toggle("Record logit-lens entropy per layer (slower)", False, key="generate.lens",
                     help="Entropy-Lens (arXiv 2502.16570): every layer's entropy and top-1 token; Layers page.")
    attn = c9.toggle("Record attention entropy per layer (slower)", False, key="generate.attn",
                     help="Per layer, mean over heads, raw and normalised by ln(t+1); Layers page.")
name = st.text_input("Run name", f"{source} · browser", key="generate.name")

st.write(f"{len(prompts)} prompt(s) × {int(samples)} sample(s) = **{len(prompts) * int(samples)} traces**")
if st.button("Generate", type="primary", disabled=not prompts, key="generate.go"):
    settings = GenerationSettings(temperature=float(temperature), top_p=float(top_p),
                                  max_new_tokens=int(max_tokens), seed=int(seed), samples=int(samples),
                                  do_sample=not greedy, marker=marker or "</think>",
                                  logit_lens=lens, attention_entropy=attn)
    try:
        lm = get_model(model_spec.strip())
        bar = st.progress(0.0, text="generating ...")
        res = record_run(state.store(), lm, prompts, settings, name, source="generate",
                         progress=lambda d, t: bar.progress(d / max(t, 1), text=f"{d} / {t} traces"))
    except ThinkscopeError as e:
        st.error(str(e))
    else:
        st.cache_data.clear()
        st.success(f"Run #{res.run_id}: {res.n_traces} traces, {res.n_tokens} tokens in {res.seconds:.1f} s.")
        st.session_state["selected.run_id"] = res.run_id
        if st.button("Open in the trace explorer", key="generate.open"):
            st.switch_page("views/explorer.py")
