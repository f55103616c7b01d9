"""Every error the project raises for bad input or an unusable resource, in one place.

Each derives from ``ThinkscopeError``, which the command line prints as one line and every
dashboard page shows as its message; the modules that raise them re-export their names.
Errors about a value a caller gave (a bad file, rule, setting) are also ``ValueError``s.
"""


class ThinkscopeError(Exception):
    """Bad input or an unusable resource, with a message that names where (file, line, field)."""


class SettingError(ThinkscopeError, ValueError):
    """An environment variable whose value cannot be used; the message names the variable."""


class TraceError(ThinkscopeError, ValueError):
    """Bad input: a message that names the file, line and field where it can."""


class IngestError(TraceError):
    """All the problems found in one file (the first ``MAX_PROBLEMS`` in full)."""

    def __init__(self, file: str, problems: list[str], total: int):
        self.file, self.problems, self.total = file, problems, total
        more = f" (showing the first {len(problems)})" if total > len(problems) else ""
        head = f"{file}: {total} problem{'s' if total != 1 else ''}{more}; nothing was imported"
        super().__init__(head + "\n  " + "\n  ".join(problems) if total > 1 else problems[0])


class DuplicateFileError(TraceError):
    """The very same file (by content hash) is already in the store."""

    def __init__(self, message: str, run_id: int):
        super().__init__(message)
        self.run_id = run_id

    @classmethod
    def of(cls, name: str, digest: str, run) -> "DuplicateFileError":
        """The error for file ``name`` whose hash is that of ``run`` (a row of runs)."""
        return cls(f"{name}: the very same file (sha256 {digest[:12]}…) was already imported as run "
                   f"#{int(run['run_id'])} '{run['name']}' on {str(run['created_at'])[:16]}; nothing was imported",
                   int(run["run_id"]))


class StoreError(ThinkscopeError):
    """A store problem with a message fit to show a user: one line that names the file.

    Pages and commands show ``str(error)`` as it is."""


class DuplicateContentError(StoreError):
    """A run with this content hash (of an imported file) is already in the store: ``run`` is
    its row."""

    def __init__(self, content_hash: str, run):
        super().__init__(f"a run with content hash {content_hash[:12]}… is already stored: "
                         f"#{int(run['run_id'])}")
        self.content_hash, self.run = content_hash, run


class ModelLoadError(ThinkscopeError):
    """A model that cannot be found or loaded; the message names the path and the reason."""


class LayerRecordingError(ThinkscopeError):
    """The model's layers cannot be read as asked (the message says which part and why)."""


class GradingError(ThinkscopeError, ValueError):
    """A grading rule that cannot be used (unknown rule, bad regular expression)."""


class DifficultyError(ThinkscopeError, ValueError):
    """A difficulty axis the data cannot give (no levels, no grades, bad bins)."""


class EarlyStopError(ThinkscopeError, ValueError):
    """Bad early-stop input: a threshold file that does not fit, settings out of range."""


class RunError(ThinkscopeError, ValueError):
    """A run that is not in the store."""


class ForkError(ThinkscopeError, ValueError):
    """A forking-point request the trace cannot answer (no such trace, estimator or method)."""


class SignalError(ThinkscopeError, ValueError):
    """A signal evaluation the data cannot support (no graded traces, one class only)."""


class CompareError(ThinkscopeError, ValueError):
    """A comparison the runs cannot give (no shared text, no checkpoint steps, ...)."""


class BranchError(ThinkscopeError, ValueError):
    """A branching request that cannot be served (no such trace or position, no token ids)."""


class ServerError(ThinkscopeError):
    """A request that failed for good; the message names the request and the reason."""

    def __init__(self, message: str, status: int | None = None, body: str = "", request: str = "",
                 timeout: bool = False):
        super().__init__(message)
        self.status, self.body, self.request, self.timeout = status, body, request, timeout
