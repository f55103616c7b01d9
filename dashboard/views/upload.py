"""Upload: import trace files people already have, preview them, then land on the new run.

Each file is staged on disk as it arrives (``dashboard.uploads``: the uploader is cleared so
that its bytes leave memory), previewed with its own status and run name, and imported as
its own atomic run: a broken file or a duplicate blocks only itself.
"""

from __future__ import annotations

import html
import json

import numpy as np
import streamlit as st
from streamlit.runtime.scriptrunner import get_script_run_ctx

from analysis.errors import ThinkscopeError
from analysis.metrics import conditions_text
from analysis.settings import THINK_MARKER
from analysis.formats import FORMATS, ingest_files, preview
from analysis.formats.base import META_SYNONYMS
from analysis.formats.batch import INPUT_NAME as BATCH_INPUT
from analysis.formats.batch import NAME as BATCH_OUTPUT
from analysis.formats.plaintext import NAME as PLAIN_TEXT
from analysis.formats.tables import TABLE
from analysis.store import Store
from dashboard import charts, state, uploads
from dashboard.text import md

EXPLORER = "views/explorer.py"
#: files up to this size are read in full for the preview (counts and every problem)
COUNT_LIMIT = 64 << 20
AUTO, NONE = "(automatic)", "(none)"
TABLE_ROLES = ("trace", "pos", "token", "logprob", "token_id", "topk_tokens", "topk_logprobs", "prompt")
PLAIN_ROLES = ("prompt", "completion", "thinking")
STAGED, FAILED, DONE, NOTES = "upload.staged", "upload.failed", "upload.done", "upload.notes"

st.title("Upload trace files")
st.caption("Dumps from OpenAI, vLLM, SGLang, llama.cpp or Ollama with logprobs, Batch API output, token "
           "tables, plain-text traces (scored by a local model) and thinkscope exports. Each file becomes "
           "one run, imported whole or not at all.")

session_id = get_script_run_ctx().session_id
staged: dict[str, uploads.Staged] = st.session_state.setdefault(STAGED, {})
failed: dict[str, str] = st.session_state.setdefault(FAILED, {})

# the uploader is an inbox: what arrives is staged on disk, then a fresh (empty) uploader replaces it
generation = st.session_state.get("upload.generation", 0)
incoming = st.file_uploader("Trace files", accept_multiple_files=True,
                            key="upload.files" if generation == 0 else f"upload.files.{generation}",
                            help="JSON Lines, JSON, CSV or Parquet. Several files: each becomes its own run; a Batch "
                                 "API input file next to its output joins the prompts on custom_id.")
if incoming:
    known = {s.sha256: s.name for s in staged.values()}
    notes = st.session_state.setdefault(NOTES, [])
    for f in incoming:
        s = uploads.stage(f, session_id)
        uploads.release(f)
        if s.sha256 in known:
            uploads.discard(s)
            notes.append(f"{s.name} is the same file as {known[s.sha256]}, already in the list.")
        else:
            staged[s.id] = s
            known[s.sha256] = s.name
    st.session_state["upload.generation"] = generation + 1
    st.session_state.pop(DONE, None)
    st.rerun()

for note in st.session_state.pop(NOTES, []):
    st.info(md(note))
for key in [k for k, s in staged.items() if not s.path.exists()]:  # swept after a long disconnect
    st.warning(md(f"{staged.pop(key).name} is no longer on the server; drop it again."))


def open_run(run_id: int) -> None:
    state.open_page(EXPLORER, run_id)  # the new run becomes every page's run


for i, (run_id, text) in enumerate(st.session_state.get(DONE, [])):
    c1, c2 = st.columns([4, 1])
    c1.success(md(text))
    if c2.button(f"Open run #{run_id}", key=f"upload.open_done.{i}"):
        open_run(run_id)

if not staged:
    with st.expander("Formats read"):
        st.markdown("\n".join(f"- `{html.escape(k)}`: {html.escape(v)}" for k, v in FORMATS.items()))
    st.stop()


@st.cache_data(show_spinner="Reading the file…", max_entries=16, ttl=900)
def cached_preview(sha256: str, _path: str, size: int, name: str, fmt: str | None, field_map_json: str,
                   marker: str):
    """Preview of a file (first traces, counts, problems); keyed by its content and everything
    that changes the reading, not by where this session staged it."""
    try:
        p = preview(_path, fmt, n=3, field_map=json.loads(field_map_json) or None, count=size <= COUNT_LIMIT,
                    name=name, marker=marker)
        return p, None
    except ThinkscopeError as e:
        return None, str(e)


@st.cache_data(show_spinner=False, max_entries=64)
def imported_as(path: str, version: int, sha256: str) -> tuple[int, str, str] | None:
    """The run a file with this content was imported as: (run id, name, created), or None."""
    df = Store(path).find_run_by_hash(sha256)
    if df.empty:
        return None
    r = df.iloc[0]
    return int(r.run_id), str(r["name"]), str(r.created_at)[:16]


@st.cache_resource(show_spinner="Loading the scoring model…")
def scoring_model(spec: str | None):
    from analysis.models import load_model
    return load_model(spec or None)


c1, c2 = st.columns([1.3, 1])
fmt_choice = c1.selectbox("Format", ["auto-detect", *FORMATS], key="upload.format",
                          format_func=lambda f: f if f == "auto-detect" else f"{f}: {FORMATS[f]}",
                          help="Detected from each file's first records; choose one to override the detection.")
fmt = None if fmt_choice == "auto-detect" else fmt_choice
marker = c2.text_input("End-of-thinking marker", THINK_MARKER, key="upload.marker",
                       help="Splits thinking from answer where the thinking is inline.")

field_map: dict[str, str] = st.session_state.get("upload.field_map", {})
previews = {k: cached_preview(s.sha256, str(s.path), s.size, s.name, fmt, json.dumps(field_map, sort_keys=True),
                              marker) for k, s in staged.items()}
batch_inputs = [k for k, (p, _) in previews.items() if p is not None and p.detection.format == BATCH_INPUT]
broken_inputs = [staged[k].name for k in batch_inputs if previews[k][0].n_problems]


def show_preview(p, unit: str) -> None:
    """Counts, warnings and the first traces of one file, coloured as in the trace explorer."""
    d = p.detection
    m = st.columns(3)
    m[0].metric("Format", d.format, help=FORMATS.get(d.format, ""))
    m[1].metric("Traces", "?" if p.n_traces is None else f"{p.n_traces:,}",
                help=None if p.n_traces is not None else "Counted during the import (large file).")
    m[2].metric("Tokens", "after scoring" if d.format == PLAIN_TEXT else
                ("?" if p.n_tokens is None else f"{p.n_tokens:,}"))
    for w in p.warnings:
        st.warning(md(w))
    for i, t in enumerate(p.traces):
        label = t.source_id or f"trace {i + 1}"
        st.markdown(f"Preview · {md(label)} · {t.n_tokens} tokens · estimator `{t.estimator}`")
        if p.logprobs and t.estimator != "none":
            st.caption(f"Entropies: {md(conditions_text(t.estimator, p.logprobs))}.")
        if t.prompt:
            st.html('<div style="white-space: pre-wrap; color:#4b5563; font-size:0.85rem;">'
                    + html.escape(t.prompt[:600]) + "</div>")
        h = t.primary_entropy()
        finite = h[np.isfinite(h)]
        vmax = float(np.percentile(state.convert(finite), 99)) if finite.size else 1.0
        alts = None
        if t.k:
            rows = t.topk_tokens if t.topk_tokens is not None else \
                [[p.vocab.get(int(i)) for i in ids] for ids in t.topk_ids]
            alts = [[(a, lp) for a, lp in zip(row, lps) if a is not None and np.isfinite(lp)]
                    for row, lps in zip(rows, t.topk_logprobs)]
        shown = min(t.n_tokens, 400)
        st.html(charts.token_html(t.tokens[:shown], state.convert(h[:shown]), max(vmax, 1e-6), unit,
                                  t.estimator, alts, set(), t.boundary))


unit = state.unit()
ready: list[str] = []  # staged ids that the Import button imports
needs_model = False
for key, s in list(staged.items()):
    p, err = previews[key]
    with st.container(border=True, key=f"upload.card.{key}"):
        h1, h2 = st.columns([6, 1])
        h1.markdown(f"**{md(s.name)}** · {s.size / 1024:,.1f} KB")
        if h2.button("Remove", key=f"upload.remove.{key}", help="Take this file off the list (and the server)."):
            uploads.discard(staged.pop(key))
            failed.pop(key, None)
            st.rerun()
        dup = state.cached(imported_as, s.sha256)
        if dup:
            st.warning(md(f"{s.name}: the very same file (sha256 {s.sha256[:12]}…) was already imported as run "
                          f"#{dup[0]} '{dup[1]}' on {dup[2]}; it will not be imported again."))
            if st.button(f"Open run #{dup[0]} in the trace explorer", key=f"upload.open_duplicate.{key}"):
                open_run(dup[0])
        if err:
            st.error(md(err))
            continue
        if p.detection.format == BATCH_INPUT:
            st.info("A Batch API input file: its prompts are joined to the output files on custom_id.")
            continue
        if p.n_problems:
            more = f" (the first {len(p.problems)} shown)" if p.n_problems > len(p.problems) else ""
            st.error(f"{p.n_problems} problem(s){more}; fix the file or the mapping, this file cannot be "
                     "imported:\n\n" + "\n".join(f"- {md(x)}" for x in p.problems))
        elif p.detection.format == BATCH_OUTPUT and broken_inputs:
            st.error(md(f"Waiting for the Batch API input file(s) {', '.join(broken_inputs)}: fix or remove "
                        "them first, or the prompts would be missing."))
        elif not dup:
            ready.append(key)
            needs_model |= p.detection.format == PLAIN_TEXT
            st.text_input("Run name", s.stem, key=f"upload.name.{key}", help="Default: the file name.")
            if key in failed:
                st.error(md(failed[key]))
        show_preview(p, unit)

with st.expander("Field mapping (when the file's names differ)"):
    st.caption("Which field of the file holds each value. Automatic: the usual names (problem_id, "
               "question_id, gold_answer, difficulty, is_correct, ...). It applies to every file.")
    first_ok = next((p for p, _ in previews.values() if p is not None), None)
    fields = first_ok.fields if first_ok else []
    roles = list(META_SYNONYMS)
    if first_ok and first_ok.detection.format == TABLE:
        roles = [*TABLE_ROLES, *roles]
    if first_ok and first_ok.detection.format == PLAIN_TEXT:
        roles = [*PLAIN_ROLES, *roles]
    new_map: dict[str, str] = {}
    cols = st.columns(3)
    for i, role in enumerate(roles):
        cur = field_map.get(role)
        options = [AUTO, NONE, *fields]
        index = options.index(cur) if cur in options else (1 if cur == "" else 0)
        choice = cols[i % 3].selectbox(role, options, index=index, key=f"upload.map.{role}")
        if choice == NONE:
            new_map[role] = ""
        elif choice != AUTO:
            new_map[role] = choice
    if new_map != field_map:
        st.session_state["upload.field_map"] = new_map
        st.rerun()

model_spec = None
if needs_model:
    model_spec = st.text_input("Scoring model for plain-text traces", "", key="upload.model",
                               placeholder="embedded SmolLM2-135M-Instruct",
                               help="A local model folder, .gguf file or cached hub id; it teacher-forces each "
                                    "completion to get full entropies.")

label = "Import" if len(ready) <= 1 else f"Import {len(ready)} files"
if st.button(label, type="primary", disabled=not ready, key="upload.import",
             help="Each file is imported as its own run, whole or not at all; a file that fails leaves the "
                  "others imported.") and ready:
    bar = st.progress(0.0, text="Importing…")
    companions = [staged[k] for k in batch_inputs]
    done: list[tuple[int, str]] = []
    last_run = None
    failed.clear()
    for n, key in enumerate(ready, 1):
        s = staged[key]

        def progress(name: str, got: int, total: int, n=n) -> None:
            bar.progress(min(1.0, got / max(total, 1)), text=f"Importing file {n} of {len(ready)}, {name}: "
                                                              f"{got / (1 << 20):,.1f} of {total / (1 << 20):,.1f} MB")
        try:
            plain_text = previews[key][0].detection.format == PLAIN_TEXT
            lm = scoring_model(model_spec) if plain_text else None
            r = ingest_files(state.store(), [*(c.path for c in companions), s.path], format=fmt,
                             run_name=st.session_state.get(f"upload.name.{key}") or None, progress=progress,
                             lm=lm, names=[*(c.name for c in companions), s.name], field_map=field_map or None,
                             marker=marker)[-1]
        except (ThinkscopeError, OSError) as e:  # this file only: the others still import
            failed[key] = str(e)
        else:
            last_run = r.run_id
            done.append((r.run_id, f"{s.name}: imported as run #{r.run_id} '{r.name}', {r.n_traces:,} traces, "
                                   f"{r.n_tokens:,} tokens."))
            uploads.discard(staged.pop(key))
    bar.empty()
    if not any(v.detection.format == BATCH_OUTPUT for k in staged if (v := previews[k][0]) is not None):
        for k in batch_inputs:  # no output file is left to join them to
            uploads.discard(staged.pop(k))
    if last_run is not None and not staged:
        open_run(last_run)
    st.session_state[DONE] = done
    st.rerun()
