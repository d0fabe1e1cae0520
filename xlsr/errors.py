"""Errors a user can cause. The CLI prints them on one line and exits non-zero.

Programming errors (a wrong argument type in library code, a broken invariant) stay ordinary
exceptions with tracebacks: they are bugs to report, not input to fix.
"""

from __future__ import annotations


class XlsrError(Exception):
    """Base class: the message says what went wrong, where, and what to do about it."""


class AudioError(XlsrError):
    """An audio file cannot be read, is empty, or is not audio."""

    def __init__(self, path: object, cause: str):
        self.path = str(path)
        self.cause = cause
        super().__init__(f"{self.path}: {cause}")


class CheckpointError(XlsrError):
    """A model file or directory cannot be loaded or written."""


class ConfigError(XlsrError):
    """A configuration value or file is invalid."""


class DataError(XlsrError):
    """A manifest, transcript or label set is invalid."""


class OldSpelling(FutureWarning):
    """An option or argument under its old name: it still works, and the warning names the new one. The CLI
    prints it as one line (`xlsr: warning: ...`)."""
