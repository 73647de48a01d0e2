"""``python -m edit_bench fit | eval | trace | report | export | table``: offline by default (the hub is never contacted unless HF_HUB_OFFLINE=0).

``fit``/``eval`` are LightningCLI subcommands (``edit_bench.cli``); ``trace`` trains nothing and has its own
parser (``edit_bench.localize.command``), as have ``report`` (``edit_bench.report``), ``export`` (``edit_bench.export``) and ``table``
(``edit_bench.table_command``). Bad input (a :class:`~edit_bench.errors.UsageError`, also when
jsonargparse raised it while building ``--model``/``--data``) is one line on stderr and exit code 2; a run stopped
by SIGTERM/SIGINT is one line and exit code 143/130 (:mod:`edit_bench.signals`); any other exception is a bug and
keeps its traceback.
"""

import os
import sys

from .errors import UsageError


def usage_error(e: BaseException) -> UsageError | None:
    """The UsageError behind ``e``: itself, or the cause jsonargparse chained it to."""
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, UsageError):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


def from_rank(e: BaseException) -> BaseException | None:
    """The stop or the bad input a forked or spawned rank raised (``ddp_fork``, ``ddp_spawn``): torch hands the main
    process only the rank's traceback as text, whose last line names the exception; ``None`` for anything else."""
    if type(e).__name__ != "ProcessRaisedException":
        return None
    import re
    import signal

    from .signals import Interrupted

    last = [line for line in str(e).splitlines() if line.strip()][-1:]
    m = re.match(r"edit_bench\.(signals\.Interrupted|errors\.UsageError): (.*)", last[0] if last else "")
    if m is None:
        return None
    if m.group(1) == "errors.UsageError":
        return UsageError(m.group(2))
    stop = re.match(r"stopped by (SIG[A-Z]+)(?:: (.*))?", m.group(2))
    return Interrupted(signal.Signals[stop.group(1)], stop.group(2) or "") if stop else None


def run(args=None) -> int:
    # Before any hub library is imported: a missing model must fail at once, not after minutes of retries.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    argv = sys.argv[1:] if args is None else list(args)
    try:
        if argv[:1] == ["trace"]:
            from .localize.command import run as trace

            trace(argv[1:])
        elif argv[:1] == ["report"]:
            from .report import main as report

            report(argv[1:])
        elif argv[:1] == ["export"]:
            from .export import main as export

            export(argv[1:])
        elif argv[:1] == ["table"]:
            from .table_command import main as table

            table(argv[1:])
        else:
            from .cli import main

            main(args)
    except Exception as e:
        from .signals import Interrupted

        e = from_rank(e) or e
        if isinstance(e, Interrupted):  # SIGTERM/SIGINT: what was done is kept; the rerun resumes
            print(f"edit_bench: {e}", file=sys.stderr)
            return e.exit_code
        usage = usage_error(e)
        if usage is None or os.environ.get("EDIT_BENCH_DEBUG"):
            raise
        print(f"edit_bench: error: {usage}\n(set EDIT_BENCH_DEBUG=1 for the traceback)", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(run())
