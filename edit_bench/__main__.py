"""``python -m edit_bench``: offline by default (the hub is never contacted unless HF_HUB_OFFLINE=0)."""

import os
import sys


def run(args=None) -> int:
    # Before any hub library is imported: a missing model must fail at once, not after minutes of retries.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from .cli import main

    try:
        main(args)
    except (ValueError, FileNotFoundError, KeyError) as e:
        if os.environ.get("EDIT_BENCH_DEBUG"):
            raise
        print(f"edit_bench: error: {e}\n(set EDIT_BENCH_DEBUG=1 for the traceback)", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(run())
