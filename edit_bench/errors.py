"""The one exception type that means "bad input": the CLI reports it as ``edit_bench: error: ...`` (exit 2).

Anything else that escapes a command is a bug and keeps its traceback.
"""

from __future__ import annotations


class UsageError(ValueError):
    """Bad input (a flag, a file, a config, a model that is not available): the message names the problem
    and the fix."""
