"""SIGTERM and SIGINT during ``fit`` and ``eval``: stop at the next safe point, keep what is done, exit non-zero.

A cluster scheduler sends SIGTERM before it preempts a job; a user presses Ctrl-C. Either way the work done so far
must survive and the job script must see a failure, so that the same command, rerun, resumes to the numbers of
an uninterrupted run:

- ``eval`` stops after the batch in flight has written its records (each batch's records are the last thing it
  writes), so every sample is either done or not started;
- ``fit`` stops after the optimiser step in flight and saves ``checkpoints/last.ckpt`` (the trained tensors and
  the optimiser), from which the rerun continues with the samples the uninterrupted run would have drawn.

The process then exits with 128 + the signal's number (143 for SIGTERM, 130 for SIGINT), as a shell reports a
process killed by it. A second signal while stopping is the default action (immediate termination).
"""

from __future__ import annotations

import contextlib
import signal
import threading

SIGNALS = (signal.SIGTERM, signal.SIGINT)
_received: list[int] = []
_active: list[bool] = []  # inside stop_at_safe_points (a stop is only ever requested there)


class Interrupted(Exception):
    """Raised at a safe point after a stop was requested by a signal."""

    def __init__(self, signum: int, what: str = ""):
        self.signum = signum
        self.exit_code = 128 + int(signum)
        super().__init__(f"stopped by {signal.Signals(signum).name}" + (f": {what}" if what else ""))


def requested() -> int | None:
    """The signal that asked this process to stop, if one did."""
    return _received[0] if _received else None


def check(what: str = "") -> None:
    """Raise :class:`Interrupted` if a stop was requested (call it only where stopping loses nothing); outside
    :func:`stop_at_safe_points` (an edit made from Python) it never raises."""
    if _received and _active:
        raise Interrupted(_received[0], what)


def _handler(signum, frame):
    if _received:  # a second signal: stop now
        signal.signal(signum, signal.SIG_DFL)
        signal.raise_signal(signum)
        return
    _received.append(signum)


@contextlib.contextmanager
def stop_at_safe_points():
    """Within the block, SIGTERM/SIGINT request a stop (:func:`check` raises) instead of killing the process.
    Lightning adds its own SIGTERM handler inside its loops and calls this one too."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {s: signal.getsignal(s) for s in SIGNALS}
    _received.clear()
    for s in SIGNALS:
        signal.signal(s, _handler)
    _active.append(True)
    try:
        yield
    finally:
        _active.pop()
        for s, h in old.items():
            signal.signal(s, h)
        if not _active:
            _received.clear()  # handled: a later command in this process starts afresh


def take_over_in_rank() -> None:
    """In a rank that Lightning's multiprocessing launcher forked (``ddp_fork``) inside :func:`stop_at_safe_points`:
    SIGTERM and SIGINT go to this module's handler alone. Lightning's handler, which the rank's trainer installs, kills
    the rank's siblings (the main process's launcher already stops them once a rank fails) and broadcasts over gloo
    from inside the handler, which raises a traceback once a sibling has stopped; here each rank stops at its next safe
    point, and the launcher's own SIGTERM to a rank that already has one ends it at once (a second signal)."""
    if _active and threading.current_thread() is threading.main_thread():
        for s in SIGNALS:
            signal.signal(s, _handler)
