"""Python values as the store keeps them, and back."""

from __future__ import annotations

import json
import re
from typing import Any

import numpy as np


def _filled(values, fill) -> np.ndarray:
    """A fetchnumpy() column as a plain array, NULLs (a masked array's mask) as ``fill``."""
    if isinstance(values, np.ma.MaskedArray):
        out = np.asarray(values.data).astype(object if fill is None else values.dtype, copy=True)
        out[np.ma.getmaskarray(values)] = fill
        return out
    return np.asarray(values)


def _py(params: list | None) -> list:
    """Query parameters as plain Python values (DuckDB does not bind numpy scalars)."""
    return [p.item() if isinstance(p, np.generic) else p for p in (params or [])]


_SURROGATE = re.compile("[\ud800-\udfff]")


def valid_text(text: str | None) -> str | None:
    """Text DuckDB can store: lone surrogates (from undecodable file names, for instance)
    become U+FFFD."""
    return text if text is None else _SURROGATE.sub("\ufffd", str(text))


def json_text(value: Any) -> str:
    """JSON for a settings cell (``valid_text``: DuckDB's JSON refuses escaped lone surrogates)."""
    return valid_text(json.dumps(value, default=str, ensure_ascii=False))


def json_settings(value: Any) -> dict:
    """Parse a settings/metadata JSON cell (None -> {})."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return {}
    return value if isinstance(value, dict) else json.loads(value)
