"""Untrusted text (run, file, model and token names, messages quoting a file) made safe to show.

Streamlit renders markdown in st.markdown, st.error/warning/info/success, st.caption, widget
labels, radio options and metric labels: GitHub markdown plus ``:red[...]`` directives,
``:emoji:`` shortcodes, ``$...$`` LaTeX and HTML entities. ``md`` backslash-escapes every
ASCII punctuation character (CommonMark lets any of them be escaped), which makes all of
these literal: no emphasis, link, directive, shortcode, formula, entity or tag survives.

Plotly labels (trace names, annotations, hover and tick text) are a small HTML subset in
which only ``&amp; &lt; &gt;`` and numeric entities are decoded (``&quot;`` shows as is),
so ``chart`` escapes exactly ``& < >``, and ``%`` as ``&#37;`` so that a name placed in a
hovertemplate cannot pull in ``%{...}`` values.
"""

from __future__ import annotations

import re

_MD_SPECIAL = re.compile(r"([!-/:-@\[-`{-~])")  # every ASCII punctuation character
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def _printable(text) -> str:
    """``str(text)`` with control characters and lone surrogates shown as escapes."""
    s = str(text)
    s = s.encode("utf-8", "backslashreplace").decode("utf-8")
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", s)


def md(text) -> str:
    """Untrusted text as literal text inside Streamlit markdown; line breaks are kept."""
    lines = _MD_SPECIAL.sub(r"\\\1", _printable(text).replace("\r\n", "\n")).split("\n")
    # a leading space run would make an indented code block; a non-breaking space keeps it as text
    return "  \n".join(re.sub(r"^ +", lambda m: "\u00a0" * len(m.group()), line) for line in lines)


def chart(text) -> str:
    """Untrusted text for a plotly label: shown literally, escaped once."""
    return (_printable(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            .replace("%", "&#37;"))
