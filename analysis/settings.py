"""Settings in one place: generation defaults, the end-of-thinking marker and every
environment variable the engine and the dashboard read, with its default and meaning.

Only the standard library is imported here, so that any module (the command line's help,
the dashboard's login gate) can read these names cheaply.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .errors import SettingError

# --------------------------------------------------------------------------- generation defaults

#: text that ends the thinking part of a completion (the phase split); the bundled problems
#: use their own answer cue instead (analysis.problems.ANSWER_CUE)
THINK_MARKER = "</think>"
#: sampling temperature of generated runs
TEMPERATURE = 0.7
#: nucleus (top-p) mass of generated runs
TOP_P = 0.95
#: tokens generated per completion at most: the same for the library, the command line and
#: the Generate page, so that runs made in either are comparable
MAX_NEW_TOKENS = 256
#: alternatives recorded per token (the top-k logprobs the top-k estimators use)
TOP_K = 20
#: random seed of generation
SEED = 0
#: completions generated (and stored) together
BATCH_SIZE = 8


# --------------------------------------------------------------------------- environment


@dataclass(frozen=True)
class EnvSetting:
    """One environment variable: its name, default (None: no default) and what it sets."""

    name: str
    default: object
    doc: str
    expects: str = "a number"      # what a value must be, for the error message

    def raw(self) -> str:
        """The variable's value, stripped ('' when unset)."""
        return os.environ.get(self.name, "").strip()

    def is_set(self) -> bool:
        return bool(self.raw())

    def text(self) -> str:
        """The value as text, or the default's text when unset."""
        return self.raw() or ("" if self.default is None else str(self.default))

    def number(self, *, minimum: float = 0.0, lenient: bool = False) -> float:
        """The value as a number above ``minimum`` (the default when unset). A value that is
        not one raises SettingError, or gives the default with ``lenient``."""
        raw = self.raw()
        if not raw:
            return float(self.default)
        try:
            x = float(raw)
        except ValueError:
            x = float("nan")
        if not x > minimum:
            if lenient:
                return float(self.default)
            raise SettingError(f"{self.name} is {raw!r}; expected {self.expects} above {minimum:g}")
        return x


STORE = EnvSetting("THINKSCOPE_STORE", None,
                   "the DuckDB store file (default: data/store/thinkscope.duckdb in the checkout)")
CACHE = EnvSetting("THINKSCOPE_CACHE", str(Path.home() / ".cache" / "thinkscope"),
                   "folder whose models/ subfolder holds downloaded and converted models")
MAX_UPLOAD_MB = EnvSetting("THINKSCOPE_MAX_UPLOAD_MB", 2048,
                           "largest file that is imported or uploaded, in MB", "a size in MB")
MAX_RECORD_MB = EnvSetting("THINKSCOPE_MAX_RECORD_MB", 256,
                           "largest single record (a JSON Lines line, an array element, a document), in MB",
                           "a size in MB")
ROW_GROUP_SIZE = EnvSetting("THINKSCOPE_ROW_GROUP_SIZE", 16_384,
                            "rows per row group of the store's tables (read when the store module is imported)")
TOKEN = EnvSetting("THINKSCOPE_TOKEN", None, "access token the dashboard asks for (set by `thinkscope dashboard --host`)")
NO_TOKEN = EnvSetting("THINKSCOPE_NO_TOKEN", None,
                      "'1': a dashboard listening beyond loopback opens without a token (`--no-token`)")
UPLOAD_GRACE_S = EnvSetting("THINKSCOPE_UPLOAD_GRACE_S", 120.0,
                            "seconds a disconnected dashboard session's staged uploads are kept "
                            "(Streamlit keeps such a session for reconnection this long)", "a number of seconds")

#: every environment variable read, in the order the README lists them
ENVIRONMENT: tuple[EnvSetting, ...] = (STORE, CACHE, MAX_UPLOAD_MB, MAX_RECORD_MB, ROW_GROUP_SIZE,
                                       TOKEN, NO_TOKEN, UPLOAD_GRACE_S)
