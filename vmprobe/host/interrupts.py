"""Interruptions: cleanup that Ctrl-C cannot cut short, and phase checkpoints to test it.

``deferred_signals()`` holds SIGINT/SIGTERM/SIGHUP back while it is active:
a machine's shutdown — QMP quit, reaping
QEMU's process group, removing its private dir — runs to its end, and the
signal is acted on right after (KeyboardInterrupt, exit 130).

``checkpoint(phase)`` marks where a run is. Tests set ``VMPROBE_TEST_HOLD_AT``
to a phase name to interrupt a real run at a known point: the process prints
``vmprobe: test hold at <phase>`` on stderr and waits there (up to
``HOLD_SECONDS``) for a signal, once per phase and process. A signal that is deferred at that point (the
shutdown phase) ends the hold and the phase goes on, as a real Ctrl-C there
would. Without the variable a checkpoint costs a dict lookup.
"""
from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from typing import Iterator

from vmprobe.errors import VmprobeError

HOLD_ENV = "VMPROBE_TEST_HOLD_AT"
HOLD_SECONDS = 120
DEFERRED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


_deferred: list[int] | None = None   # signals that arrived while deferred (None: not deferring)
_held: set[str] = set()              # phases already held in this process (each is held once)


@contextlib.contextmanager
def deferred_signals() -> Iterator[None]:
    """Hold SIGINT/SIGTERM/SIGHUP back for the duration (usable as a decorator).

    Python handlers, not a signal mask: a signal sent to the process may be taken by any
    thread that does not block it (paramiko's, asyncio's), and Python would still raise in
    the main thread. The signals are remembered and raised again, with the previous
    handlers back, when the block ends.
    """
    global _deferred
    if threading.current_thread() is not threading.main_thread() or _deferred is not None:
        yield
        return
    _deferred = []
    previous = {sig: signal.signal(sig, lambda signum, frame: _deferred.append(signum)) for sig in DEFERRED}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        arrived, _deferred = _deferred, None
        if arrived:
            signal.raise_signal(arrived[0])


def checkpoint(phase: str) -> None:
    """Hold here if a test asked to (see the module's docstring)."""
    if os.environ.get(HOLD_ENV) != phase or phase in _held:
        return
    _held.add(phase)
    print(f"vmprobe: test hold at {phase} (pid {os.getpid()})", file=sys.stderr, flush=True)
    deadline = time.monotonic() + HOLD_SECONDS
    while time.monotonic() < deadline:
        if _deferred:
            return  # signals are held back here: let the phase finish, then they act
        time.sleep(0.02)
    raise VmprobeError(f"nothing interrupted the test hold at {phase} within {HOLD_SECONDS}s "
                       f"(unset {HOLD_ENV})")
