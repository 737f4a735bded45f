"""Interruptions: cleanup that Ctrl-C cannot cut short, and phase checkpoints to test it.

``deferred_signals()`` holds SIGINT/SIGTERM/SIGHUP back while it is active
(the kernel keeps them pending): a machine's shutdown — QMP quit, reaping
QEMU's process group, removing its private dir — runs to its end, and the
signal is acted on right after (KeyboardInterrupt, exit 130).

``checkpoint(phase)`` marks where a run is. Tests set ``VMPROBE_TEST_HOLD_AT``
to a phase name to interrupt a real run at a known point: the process prints
``vmprobe: test hold at <phase>`` on stderr and waits there (up to
``HOLD_SECONDS``) for a signal. A signal that is deferred at that point (the
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

from .errors import VmprobeError

HOLD_ENV = "VMPROBE_TEST_HOLD_AT"
HOLD_SECONDS = 120
#: Where runs can be held (the probe check's own phases are held too, by their names).
PHASES = ("fetch", "build", "rootfs", "boot", "ssh", "shutdown")
DEFERRED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@contextlib.contextmanager
def deferred_signals() -> Iterator[None]:
    """Block SIGINT/SIGTERM/SIGHUP in the main thread for the duration (usable as a decorator)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, DEFERRED)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def checkpoint(phase: str) -> None:
    """Hold here if a test asked to (see the module's docstring)."""
    if os.environ.get(HOLD_ENV) != phase:
        return
    print(f"vmprobe: test hold at {phase} (pid {os.getpid()})", file=sys.stderr, flush=True)
    deadline = time.monotonic() + HOLD_SECONDS
    while time.monotonic() < deadline:
        if set(DEFERRED) & signal.sigpending():
            return  # signals are held back here: let the phase finish, then they act
        time.sleep(0.02)
    raise VmprobeError(f"nothing interrupted the test hold at {phase} within {HOLD_SECONDS}s "
                       f"(unset {HOLD_ENV})")
