"""The trace text as HTML: each token's background coloured by its entropy, its text colour
chosen from the background's luminance, and a hover card with its top-k alternatives; no
streamlit.

Token text is untrusted: it is HTML-escaped wherever it becomes markup, the hover card
included (CSS shows the escaped ``title`` attribute as plain text). Colours and cards are
built over whole arrays with numpy, since a trace can hold thousands of tokens.
"""

from __future__ import annotations

import html
import itertools
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd

#: entropy colour scale for token backgrounds: low = white-ish, high = deep violet
COLORSCALE = [(0.0, "#f8fafc"), (0.25, "#fde68a"), (0.5, "#fb923c"), (0.75, "#e11d48"), (1.0, "#7e22ce")]
NA_BACKGROUND = "#e5e7eb"  # tokens without an entropy value
#: text colours: pure black and white, so that one of them reaches 4.5:1 on any background
#: (WCAG: the worse of the two is at luminance 0.179, where both give 4.58:1)
DARK, LIGHT = "#000000", "#ffffff"
MIN_CONTRAST = 4.5  # WCAG 2 AA for normal text
MAX_ALTERNATIVES = 10  # alternatives listed in a token's hover card

#: the text block's style: the hover card is the token's title, drawn by CSS so that it shows
#: at once and stays readable (the browser's native title tooltip comes late and small)
#: The block is laid out and painted only when scrolled near (``content-visibility``: it sits
#: below the curve, and a rerun then does not pay for 1,500 spans it cannot show); that clips
#: what it paints to its padding box, so a padding as tall as a hover card, taken back by a
#: negative margin and let through to the content under it, keeps the last lines' cards whole
#: (and, being its own stacking context, the block is lifted above what follows it).
TEXT_CSS = """<style>
.ts-text { font-family: ui-monospace, monospace; font-size: 0.9rem; line-height: 1.9;
  white-space: pre-wrap; word-break: break-word; content-visibility: auto;
  contain-intrinsic-size: auto 1500px; padding-bottom: 17rem; margin-bottom: -17rem; pointer-events: none;
  position: relative; z-index: 2; }
.ts-text .tok, .ts-text .ts-boundary { pointer-events: auto; }
.ts-text .tok { border-radius: 2px; position: relative; }
.ts-text .tok:hover { outline: 2px solid #1d4ed8; outline-offset: 0; }
.ts-text .tok:hover::after { content: attr(title); position: absolute; left: 0; top: calc(100% + 4px);
  z-index: 1000; white-space: pre; min-width: 16rem; padding: 6px 9px; border-radius: 6px;
  background: #111827; color: #f9fafb; font: 0.78rem/1.45 ui-monospace, monospace;
  box-shadow: 0 4px 14px rgba(0, 0, 0, 0.3); pointer-events: none; }
.ts-text .ts-ws { opacity: 0.55; }
.ts-text .ts-boundary { border-left: 3px solid #15803d; margin: 0 2px; padding-left: 2px; color: #15803d;
  font-size: 0.7rem; }
</style>"""


class Markup(str):
    """HTML that is already safe: ``st.html`` takes it as is (``_repr_html_``) instead of
    re-indenting a string that can be megabytes long."""

    def _repr_html_(self) -> str:
        return str(self)


# ---------------------------------------------------------------- colours


def _rgb(hex_color: str) -> np.ndarray:
    return np.array([int(hex_color[i:i + 2], 16) for i in (1, 3, 5)], dtype=np.float64)


_STOPS = np.array([x for x, _ in COLORSCALE])
_STOP_RGB = np.stack([_rgb(c) for _, c in COLORSCALE])
_HEX = np.array([f"{i:02x}" for i in range(256)], dtype=object)


def scale_rgb(x: np.ndarray) -> np.ndarray:
    """Colours [n, 3] (0-255) of positions ``x`` in [0, 1] on COLORSCALE (clipped)."""
    x = np.clip(np.asarray(x, dtype=np.float64), 0.0, 1.0)
    return np.stack([np.interp(x, _STOPS, _STOP_RGB[:, c]) for c in range(3)], axis=-1)


def hex_colors(rgb: np.ndarray) -> np.ndarray:
    """'#rrggbb' strings of colours [n, 3]."""
    q = np.clip(np.rint(rgb), 0, 255).astype(np.int64)
    return "#" + _HEX[q[:, 0]] + _HEX[q[:, 1]] + _HEX[q[:, 2]]


def relative_luminance(rgb: np.ndarray) -> np.ndarray:
    """WCAG 2 relative luminance of sRGB colours [..., 3] (0-255)."""
    c = np.asarray(rgb, dtype=np.float64) / 255.0
    lin = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    return lin @ np.array([0.2126, 0.7152, 0.0722])


def contrast_ratio(l1: np.ndarray, l2: np.ndarray) -> np.ndarray:
    """WCAG contrast ratio of two relative luminances (1 to 21)."""
    hi, lo = np.maximum(l1, l2), np.minimum(l1, l2)
    return (hi + 0.05) / (lo + 0.05)


def text_colors(rgb: np.ndarray) -> np.ndarray:
    """DARK or LIGHT for each background [n, 3]: whichever contrasts more with it."""
    lum = relative_luminance(rgb)
    dark = contrast_ratio(lum, relative_luminance(_rgb(DARK))) >= contrast_ratio(lum, relative_luminance(_rgb(LIGHT)))
    return np.where(dark, DARK, LIGHT).astype(object)


def token_colors(values: np.ndarray, vmax: float) -> tuple[np.ndarray, np.ndarray]:
    """(background, text) colour strings of entropies ``values`` on the scale 0 .. ``vmax``."""
    v = np.asarray(values, dtype=np.float64)
    scale = vmax if vmax and np.isfinite(vmax) and vmax > 0 else 1.0
    rgb = scale_rgb(np.nan_to_num(v / scale, nan=0.0))
    rgb[~np.isfinite(v)] = _rgb(NA_BACKGROUND)
    return hex_colors(rgb), text_colors(rgb)


# ---------------------------------------------------------------- token text

_WS_GLYPHS = {" ": "␣", "\n": "↵", "\t": "⇥", "\r": "␍"}


def label_token(text: str) -> str:
    """A token as a short label (ticks, hovers): line breaks and tabs shown as ↵ ⇥, spaces at
    either end as ␣ (the tokenizer's word marker), so that no label is blank."""
    s = str(text)
    if s == "":
        return "∅"
    if not s.strip():
        return "".join(_WS_GLYPHS.get(ch, "·") for ch in s)
    body = s.strip(" ")
    lead, trail = len(s) - len(s.lstrip(" ")), len(s) - len(s.rstrip(" "))
    body = body.replace("\n", "↵").replace("\t", "⇥").replace("\r", "␍")
    return "␣" * lead + body + "␣" * trail


def _flowing(escaped: np.ndarray) -> np.ndarray:
    """Escaped token texts for the flowing text: a line break gets a faint ↵ so that newline
    tokens can be seen and hovered; an empty token a zero-width space."""
    out = escaped.astype(object).copy()
    nl = np.array(["\n" in t for t in out], dtype=bool)
    if nl.any():
        out[nl] = [t.replace("\n", '<span class="ts-ws">↵</span>\n') for t in out[nl]]
    out[out == ""] = "\u200b"
    return out


#: "12.34 %  " for every probability in basis points: a lookup instead of formatting each one
_PERCENT = np.array([f"{i / 100:6.2f} %  " for i in range(10001)], dtype=object)


def per_unique(fn, values) -> np.ndarray:
    """``fn`` of each value, computed once per distinct value (token texts repeat a lot)."""
    values = np.asarray(values, dtype=object)
    if not values.size:
        return np.empty(values.shape, dtype=object)
    codes, uniq = pd.factorize(values.ravel())  # hashing: no sort of Python strings
    return np.array([fn(u) for u in uniq], dtype=object)[codes].reshape(values.shape)


def alternatives_text(topk_tokens: Sequence[Sequence[str]] | None, topk_logprobs: Sequence[np.ndarray] | None,
                      n: int, limit: int = MAX_ALTERNATIVES) -> np.ndarray:
    """Per token, the hover card's lines for its top-``limit`` alternatives: probability in %
    and the alternative's text (its repr, so whitespace shows). Plain text, not yet escaped."""
    out = np.full(n, "", dtype=object)
    if topk_tokens is None or topk_logprobs is None or n == 0:
        return out
    rows = [r if r is not None else () for r in topk_tokens]
    lp_rows = [r if r is not None else () for r in topk_logprobs]
    k = np.minimum(np.fromiter((len(r) for r in rows), np.int64, n),
                   np.fromiter((len(r) for r in lp_rows), np.int64, n)).clip(max=limit)
    slot = np.arange(limit)[None, :] < k[:, None]  # [n, limit] slots that hold an alternative
    texts = np.full((n, limit), "", dtype=object)
    lps = np.full((n, limit), -np.inf)
    texts[slot] = list(itertools.chain.from_iterable(r[:m] for r, m in zip(rows, k.tolist())))
    lps[slot] = np.fromiter(itertools.chain.from_iterable(r[:m] for r, m in zip(lp_rows, k.tolist())),
                            np.float64, int(k.sum()))
    texts = texts.astype(str).astype(object)
    shown = slot & np.isfinite(lps)
    pct = _PERCENT[np.rint(np.exp(np.where(shown, lps, -np.inf)) * 10000).astype(np.int64).clip(0, 10000)]
    line = "\n" + pct + per_unique(repr, texts)
    for j in range(limit):
        out = np.where(shown[:, j], out + line[:, j], out)
    has = shown.any(axis=1)
    out[has] = f"\ntop-{limit} alternatives (probability, token):" + out[has]
    return out


def _attr_escape(text: str) -> str:
    """Escaped for a double-quoted attribute (or element text): & < > and the double quote."""
    return html.escape(text, quote=False).replace('"', "&quot;")


def token_spans(tokens: Sequence[str], values: np.ndarray, vmax: float, unit: str, estimator: str,
                alternatives: np.ndarray | None = None, boundary: int | None = None, offset: int = 0,
                marks: Sequence[int] = (), also: Sequence[tuple[str, np.ndarray]] = ()) -> Markup:
    """The trace text as one HTML block, each token a ``span.tok`` (``data-pos`` = position)
    whose background is its entropy on 0 .. ``vmax`` (in ``unit``) and whose text is black or
    white by the background's luminance. Its hover card (the title) gives the position, the
    token, its entropy with unit and estimator (and in each further ``(unit, values)`` of
    ``also``), and ``alternatives`` (from :func:`alternatives_text`). Positions in ``marks``
    are outlined (forking points)."""
    n = len(tokens)
    v = np.asarray(values, dtype=np.float64)[:n]
    bg, fg = token_colors(v, vmax)
    pos = np.arange(offset, offset + n)
    raw = np.array(list(tokens), dtype=object) if n else np.empty(0, dtype=object)
    label = per_unique(repr, raw.astype(str).astype(object))
    def shown(x: np.ndarray) -> np.ndarray:
        return np.where(np.isfinite(x), np.char.mod("%.3f", np.nan_to_num(x)).astype(object), "n/a")

    tip = ("#" + pos.astype(str).astype(object) + "  " + label
           + f"\nentropy ({unit}, {estimator}): " + shown(v))
    for other_unit, other in also:
        tip = tip + f"\nentropy ({other_unit}, {estimator}): " + shown(np.asarray(other, dtype=np.float64)[:n])
    if alternatives is not None:
        tip = tip + np.asarray(alternatives, dtype=object)[:n]
    esc = np.vectorize(_attr_escape, otypes=[object])
    style = "background:" + bg + ";color:" + fg
    marked = np.isin(pos, np.asarray(list(marks), dtype=np.int64))
    style = np.where(marked, style + ";outline:2px solid #111827;outline-offset:-1px", style)
    text = _flowing(esc(raw.astype(str).astype(object))) if n else raw
    spans = ('<span class="tok" data-pos="' + pos.astype(str).astype(object) + '" title="'
             + (esc(tip) if n else tip) + '" style="' + style + '">' + text + "</span>")
    parts = spans.tolist()
    if boundary is not None and offset <= boundary < offset + n:
        parts.insert(boundary - offset, '<span class="ts-boundary">answer ▸</span>')
    return Markup(TEXT_CSS + '<div class="ts-text">' + "".join(parts) + "</div>")


def fork_marks_css(positions: Sequence[int]) -> str:
    """A style rule outlining the tokens at ``positions`` in the text (forking points)."""
    sel = ",".join(f'.ts-text .tok[data-pos="{int(p)}"]' for p in positions)
    return f"<style>{sel}{{outline:2px solid #111827;outline-offset:-1px}}</style>" if sel else ""


def colorbar_html(vmax: float, unit: str, estimator: str) -> str:
    """A small legend for the token colours."""
    stops = ", ".join(f"{c} {int(x * 100)}%" for x, c in COLORSCALE)
    return (f'<div style="display:flex; align-items:center; gap:8px; font-size:0.8rem; flex-wrap:wrap;">'
            f'<span>0</span><span style="display:inline-block; width:220px; height:12px; '
            f'background: linear-gradient(to right, {stops}); border-radius: 3px;"></span>'
            f'<span>{vmax:.2f}+ {html.escape(unit)}</span>'
            f'<span style="color:#4b5563;">token entropy H ({html.escape(unit)}, {html.escape(estimator)}); '
            f'outlined tokens are forking points; hover a token for its alternatives</span></div>')


# ---------------------------------------------------------------- one trace's text, once


@dataclass(frozen=True)
class TraceText:
    """What the explorer draws of one trace, computed once per trace: token texts, every
    estimator's entropy (nats), plotly-safe token labels and the top-k alternatives, whose hover
    card lines are made for the tokens shown (:meth:`alternatives_in`), not for all of them."""

    tokens: list[str]
    entropy: dict[str, np.ndarray]
    labels: np.ndarray  # label_token, escaped for plotly
    text: str  # the completion: the tokens joined
    offsets: np.ndarray  # [n + 1] where each token starts in ``text`` (and the end)
    topk_tokens: np.ndarray | None = None  # per token, its alternatives' texts (object array)
    topk_logprobs: np.ndarray | None = None  # per token, their logprobs

    @property
    def n(self) -> int:
        return len(self.tokens)

    def alternatives_in(self, start: int, stop: int) -> np.ndarray:
        """The hover card lines of tokens start..stop (:func:`alternatives_text`)."""
        start, stop = max(0, int(start)), min(self.n, int(stop))
        if self.topk_tokens is None or self.topk_logprobs is None or stop <= start:
            out = np.full(max(0, stop - start), "", dtype=object)
        else:
            out = alternatives_text(self.topk_tokens[start:stop], self.topk_logprobs[start:stop], stop - start)
        out.flags.writeable = False
        return out

    @property
    def alternatives(self) -> np.ndarray:
        """The hover card lines of every token."""
        return self.alternatives_in(0, self.n)


def trace_text(tok: pd.DataFrame, entropy_columns: dict[str, str]) -> TraceText:
    """A :class:`TraceText` from ``Store.tokens`` (with alternatives); arrays are read-only."""
    from dashboard.text import chart

    tokens = tok["token"].fillna("").astype(str).tolist()
    entropy = {}
    for est, col in entropy_columns.items():
        if col in tok and tok[col].notna().any():
            a = tok[col].to_numpy(dtype=np.float64, na_value=np.nan)
            a.flags.writeable = False
            entropy[est] = a
    topk = [tok[c].to_numpy(dtype=object) if c in tok else None for c in ("topk_tokens", "topk_logprobs")]
    labels = per_unique(lambda t: chart(label_token(t)[:40]), tokens)
    offsets = np.concatenate([[0], np.cumsum([len(t) for t in tokens], dtype=np.int64)]).astype(np.int64)
    for a in (labels, offsets, *[t for t in topk if t is not None]):
        a.flags.writeable = False
    return TraceText(tokens, entropy, labels, "".join(tokens), offsets, *topk)
