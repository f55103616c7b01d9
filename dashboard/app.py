"""thinkscope dashboard: `streamlit run dashboard/app.py` (or `thinkscope dashboard`)."""

from __future__ import annotations

import sys
from pathlib import Path

import streamlit as st

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `streamlit run` puts only dashboard/ on the path
    sys.path.insert(0, str(ROOT))

PAGES_DIR = Path(__file__).resolve().parent / "views"

#: (file in dashboard/views, title, icon, url path); the first is the default page
PAGES = [
    ("runs.py", "Runs", ":material/table_rows:", "runs"),
    ("explorer.py", "Trace explorer", ":material/timeline:", "explorer"),
    ("generate.py", "Generate", ":material/play_circle:", "generate"),
    ("upload.py", "Upload", ":material/upload_file:", "upload"),
    ("difficulty.py", "Difficulty (U-shape)", ":material/signal_cellular_alt:", "difficulty"),
    ("early_stop.py", "Early stopping", ":material/timer:", "early-stop"),
    ("layers.py", "Layers", ":material/stacks:", "layers"),
    ("signals.py", "Signals", ":material/query_stats:", "signals"),
    ("compare.py", "Compare", ":material/compare_arrows:", "compare"),
    ("branches.py", "Branches", ":material/call_split:", "branches"),
]


def main() -> None:
    st.set_page_config(page_title="thinkscope", page_icon=":material/insights:", layout="wide")
    from dashboard.auth import gate
    if not gate():  # before any page: nothing renders until the session has the token
        st.stop()
    # the default page is served at "/"; a hidden twin answers its own path too (/runs)
    pages = [st.Page(str(PAGES_DIR / f), title=t, icon=i, url_path="" if n == 0 else u, default=(n == 0))
             for n, (f, t, i, u) in enumerate(PAGES) if (PAGES_DIR / f).exists()]
    f, t, i, u = PAGES[0]
    pages.append(st.Page(str(PAGES_DIR / f), title=t, icon=i, url_path=u, visibility="hidden"))
    nav = st.navigation(pages)
    from analysis.errors import ThinkscopeError
    from dashboard.state import sidebar_store
    from dashboard.text import md
    try:
        sidebar_store()
        nav.run()
    except ThinkscopeError as e:  # a damaged, read-only or locked store: its one line, no traceback
        st.error(md(str(e)))


main()
