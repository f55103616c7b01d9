"""The one error type the project raises for bad input; the CLI prints it as one line."""


class ThinkscopeError(Exception):
    """Bad input or an unusable resource, with a message that names where (file, line, field)."""
