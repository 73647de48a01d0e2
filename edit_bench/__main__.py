"""``python -m edit_bench fit | eval | trace``: offline by default (the hub is never contacted unless HF_HUB_OFFLINE=0).

``fit``/``eval`` are LightningCLI subcommands (``edit_bench.cli``); ``trace`` trains nothing and has its own
parser (``edit_bench.localize.command``).
"""

import os
import sys

from .errors import UsageError


def _unwrap(msg: str) -> str:
    """jsonargparse reports an error raised while building ``--model``/``--data`` inside a listing of
    every Union member it tried; keep only the real error."""
    if "Does not validate against any of the Union subtypes" not in msg:
        return msg
    errors = [line.strip()[2:] for line in msg.splitlines()
              if line.strip().startswith("- ") and "Expected a <class 'NoneType'>" not in line]
    return "\n".join(errors) or msg


def run(args=None) -> int:
    # Before any hub library is imported: a missing model must fail at once, not after minutes of retries.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    argv = sys.argv[1:] if args is None else list(args)
    try:
        if argv[:1] == ["trace"]:
            from .localize.command import run as trace

            trace(argv[1:])
        else:
            from .cli import main

            main(args)
    except UsageError as e:  # bad input only: any other exception is a bug and keeps its traceback
        if os.environ.get("EDIT_BENCH_DEBUG"):
            raise
        print(f"edit_bench: error: {_unwrap(str(e))}\n(set EDIT_BENCH_DEBUG=1 for the traceback)", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(run())
