"""The one error hierarchy: every message is a sentence naming the problem and the fix."""

from __future__ import annotations


class AttReportError(Exception):
    """A user-facing failure; the CLI prints its message as one line and exits non-zero."""

    exit_code = 2


class UsageError(AttReportError):
    """An argument or input the user gave cannot be used."""


class ModelError(AttReportError):
    """The model cannot be loaded, or cannot give its attention weights."""


class StoreError(AttReportError):
    """A capture store is missing, damaged, or of a format this version does not read."""


class OutputExistsError(AttReportError):
    """The output path exists and may not be replaced."""


class InternalError(AttReportError):
    """An invariant of att-report's own code failed: a bug to report, not something the user did wrong.

    Its own exit code (70, EX_SOFTWARE in sysexits.h) lets scripts tell a bug from a usage mistake (2)."""

    exit_code = 70
