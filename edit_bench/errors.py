"""The exception types that mean "bad input": the CLI reports them as ``edit_bench: error: ...`` (exit 2).

Anything else that escapes a command is a bug and keeps its traceback.
"""

from __future__ import annotations


class UsageError(ValueError):
    """Bad input (a flag, a file, a config, a model that is not available): the message names the problem
    and the fix."""


class ModelNotAvailable(UsageError, FileNotFoundError):
    """The model spec names nothing that is available on this machine."""
