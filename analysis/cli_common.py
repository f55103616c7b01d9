"""What every command module shares: printing text from files safely, a command's store,
progress bars and the message of an interrupted generation. The command modules import these
from here, not from ``analysis.cli``, which imports them: so no module imports one that
imports it back."""

from __future__ import annotations

import re
import sys

#: characters a terminal would act on: C0 controls but the newline, DEL, C1 controls, the
#: bidirectional overrides and isolates, and lone surrogates (which cannot even be encoded)
_CONTROL = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def printable(text) -> str:
    """``text`` with every control character shown as an escape (``\\x1b``, ``\\u202e``)."""
    return _CONTROL.sub(lambda m: ascii(m.group())[1:-1], str(text))


def echo(*parts, file=None) -> None:
    """print() for text that may come from files or stores (see ``printable``)."""
    print(*(printable(p) for p in parts), file=file or sys.stdout)


def open_store(args):
    """The store of a command (--store); main() reports its warnings once the command ends."""
    from .store import Store
    store = Store(args.store)
    args.__dict__.setdefault("_stores", []).append(store)
    return store


def progress_bar(desc: str):
    """A tqdm bar driven by (done, total) callbacks, on stderr."""
    from tqdm import tqdm
    state = {"bar": None}

    def update(done: int, total: int) -> None:
        if state["bar"] is None:
            state["bar"] = tqdm(total=total, desc=desc, unit="trace", file=sys.stderr)
        bar = state["bar"]
        bar.update(done - bar.n)
        if done >= total:
            bar.close()
    return update


def interrupted(e: KeyboardInterrupt) -> int:
    """What a generation stopped by Ctrl-C or SIGTERM says; its exit code (130, 143)."""
    from .record import Terminated
    print("\ninterrupted: the finished batches are kept (run marked 'interrupted')", file=sys.stderr)
    return 143 if isinstance(e, Terminated) else 130
