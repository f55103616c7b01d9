"""Upload: import trace files people already have, preview them, then land on the new run."""

from __future__ import annotations

import html
import json
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
import streamlit as st

from analysis.errors import ThinkscopeError
from analysis.formats import FORMATS, ingest_files, preview
from analysis.formats.base import META_SYNONYMS
from analysis.formats.ingest import DuplicateFileError
from analysis.formats.plaintext import NAME as PLAIN_TEXT
from analysis.formats.tables import TABLE
from dashboard import charts, state

EXPLORER = "views/explorer.py"
#: files up to this size are read in full for the preview (counts and every problem)
COUNT_LIMIT = 64 << 20
AUTO, NONE = "(automatic)", "(none)"
TABLE_ROLES = ("trace", "pos", "token", "logprob", "token_id", "topk_tokens", "topk_logprobs", "prompt")
PLAIN_ROLES = ("prompt", "completion", "thinking")

_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|>~])")


def plain(text: str) -> str:
    """Untrusted text (file names, ids, messages quoting a file) shown as text in markdown:
    HTML escaped, and markdown's own syntax (links, images, emphasis) made literal."""
    return _MD_SPECIAL.sub(r"\\\1", html.escape(str(text), quote=False))


st.title("Upload trace files")
st.caption("Dumps from OpenAI, vLLM, SGLang, llama.cpp or Ollama with logprobs, Batch API output, token "
           "tables, plain-text traces (scored by a local model) and thinkscope exports. Each file becomes "
           "one run, imported whole or not at all.")

files = st.file_uploader("Trace files", accept_multiple_files=True, key="upload.files",
                         help="JSON Lines, JSON, CSV or Parquet. Several files: each becomes its own run; a Batch "
                              "API input file next to its output joins the prompts on custom_id.")
if not files:
    with st.expander("Formats read"):
        st.markdown("\n".join(f"- `{html.escape(k)}`: {html.escape(v)}" for k, v in FORMATS.items()))
    st.stop()


def local_copy(upload) -> Path:
    """The upload as a file on disk (readers stream from files), one per upload id."""
    paths = st.session_state.setdefault("upload.paths", {})
    folder = st.session_state.setdefault("upload.dir", tempfile.mkdtemp(prefix="thinkscope-upload-"))
    fid = getattr(upload, "file_id", None) or upload.name
    p = paths.get(fid)
    if p is None or not Path(p).exists():
        Path(folder).mkdir(parents=True, exist_ok=True)
        p = str(Path(folder) / f"{len(paths)}-{Path(upload.name).name}")
        upload.seek(0)
        with open(p, "wb") as out:
            shutil.copyfileobj(upload, out, 1 << 20)
        paths[fid] = p
    return Path(p)


@st.cache_data(show_spinner="Reading the file…", max_entries=16)
def cached_preview(path: str, size: int, name: str, fmt: str | None, field_map_json: str, marker: str):
    """Preview of a file (first traces, counts, problems); keyed by everything that changes it."""
    try:
        p = preview(path, fmt, n=3, field_map=json.loads(field_map_json) or None, count=size <= COUNT_LIMIT,
                    name=name, marker=marker)
        return p, None
    except ThinkscopeError as e:
        return None, str(e)


@st.cache_resource(show_spinner="Loading the scoring model…")
def scoring_model(spec: str | None):
    from analysis.models import load_model
    return load_model(spec or None)


paths = [local_copy(f) for f in files]
names = [f.name for f in files]

c1, c2, c3 = st.columns([1.3, 1, 1])
fmt_choice = c1.selectbox("Format", ["auto-detect", *FORMATS], key="upload.format",
                          format_func=lambda f: f if f == "auto-detect" else f"{f}: {FORMATS[f]}",
                          help="Detected from each file's first records; choose one to override the detection.")
fmt = None if fmt_choice == "auto-detect" else fmt_choice
marker = c2.text_input("End-of-thinking marker", "</think>", key="upload.marker",
                       help="Splits thinking from answer where the thinking is inline.")
default_name = Path(names[0]).stem if len(files) == 1 else ""
run_name = c3.text_input("Run name", default_name, key="upload.run_name",
                         help="Default: the file name. With several files, each run adds its file name.")

field_map: dict[str, str] = st.session_state.get("upload.field_map", {})
previews = []
for path, name in zip(paths, names):
    p, err = cached_preview(str(path), path.stat().st_size, name, fmt, json.dumps(field_map, sort_keys=True), marker)
    previews.append((name, path, p, err))

unit = state.unit()
blocked = False
needs_model = False
for name, path, p, err in previews:
    with st.container(border=True):
        st.markdown(f"**{plain(name)}** · {path.stat().st_size / 1024:,.1f} KB")
        if err:
            blocked = True
            st.error(plain(err))
            continue
        d = p.detection
        if d.format == "openai_batch_input":
            st.info("A Batch API input file: its prompts are joined to the output file on custom_id.")
            continue
        needs_model |= d.format == PLAIN_TEXT
        m = st.columns(3)
        m[0].metric("Format", d.format, help=FORMATS.get(d.format, ""))
        m[1].metric("Traces", "?" if p.n_traces is None else f"{p.n_traces:,}",
                    help=None if p.n_traces is not None else "Counted during the import (large file).")
        m[2].metric("Tokens", "after scoring" if d.format == PLAIN_TEXT else
                    ("?" if p.n_tokens is None else f"{p.n_tokens:,}"))
        if p.n_problems:
            blocked = True
            more = f" (the first {len(p.problems)} shown)" if p.n_problems > len(p.problems) else ""
            st.error(f"{p.n_problems} problem(s){more}; fix the file or the mapping, nothing can be imported:\n\n"
                     + "\n".join(f"- {plain(x)}" for x in p.problems))
        for w in p.warnings:
            st.warning(plain(w))
        for i, t in enumerate(p.traces):
            label = t.source_id or f"trace {i + 1}"
            st.markdown(f"Preview · {plain(label)} · {t.n_tokens} tokens · estimator `{t.estimator}`")
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

with st.expander("Field mapping (when the file's names differ)"):
    st.caption("Which field of the file holds each value. Automatic: the usual names (problem_id, "
               "question_id, gold_answer, difficulty, is_correct, ...).")
    first_ok = next((x for x in previews if x[2] is not None), None)
    fields = first_ok[2].fields if first_ok else []
    roles = list(META_SYNONYMS)
    if first_ok and first_ok[2].detection.format == TABLE:
        roles = [*TABLE_ROLES, *roles]
    if first_ok and first_ok[2].detection.format == PLAIN_TEXT:
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

if st.button("Import", type="primary", disabled=blocked, key="upload.import"):
    st.session_state.pop("upload.duplicate", None)
    bar = st.progress(0.0, text="Importing…")

    def progress(name: str, done: int, total: int) -> None:
        bar.progress(min(1.0, done / max(total, 1)), text=f"Importing {name}: {done / (1 << 20):,.1f} of "
                                                          f"{total / (1 << 20):,.1f} MB")
    try:
        lm = scoring_model(model_spec) if needs_model else None
        results = ingest_files(state.store(), paths, format=fmt, run_name=run_name or None, progress=progress,
                               lm=lm, names=names, field_map=field_map or None, marker=marker)
    except DuplicateFileError as e:
        bar.empty()
        st.session_state["upload.duplicate"] = (str(e), e.run_id)
    except ThinkscopeError as e:
        bar.empty()
        st.error(plain(e).replace("\n", "  \n"))
    else:
        bar.progress(1.0, text="Done")
        st.session_state["upload.last"] = [(r.run_id, r.name, r.n_traces, r.n_tokens) for r in results]
        st.session_state["selected.run_id"] = results[-1].run_id
        st.session_state.pop("explorer.trace_id", None)
        shutil.rmtree(st.session_state.pop("upload.dir", ""), ignore_errors=True)
        st.session_state.pop("upload.paths", None)
        st.switch_page(EXPLORER)

duplicate = st.session_state.get("upload.duplicate")
if duplicate:
    st.warning(plain(duplicate[0]))
    if st.button(f"Open run #{duplicate[1]} in the trace explorer", key="upload.open_duplicate"):
        st.session_state.pop("upload.duplicate", None)
        st.session_state["selected.run_id"] = duplicate[1]
        st.switch_page(EXPLORER)
