"""Signals held back during cleanup, and the test hold at a phase (vmprobe/interrupts.py)."""
from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from vmprobe.host import interrupts


def test_sigint_during_a_deferred_block_is_raised_after_it():
    done = []
    with pytest.raises(KeyboardInterrupt):
        with interrupts.deferred_signals():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)  # a signal would normally be acted on here
            done.append("cleanup finished")
    assert done == ["cleanup finished"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_signal_taken_by_another_thread_is_deferred_too():
    done = []
    with pytest.raises(KeyboardInterrupt):
        with interrupts.deferred_signals():
            t = threading.Thread(target=lambda: os.kill(os.getpid(), signal.SIGINT))
            t.start()
            t.join()
            time.sleep(0.05)
            done.append("cleanup finished")
    assert done == ["cleanup finished"]


def test_as_a_decorator_and_without_signals_nothing_changes():
    @interrupts.deferred_signals()
    def cleanup():
        return "ok"
    assert cleanup() == "ok" and cleanup() == "ok"


def test_checkpoint_is_a_no_op_unless_asked(monkeypatch):
    monkeypatch.delenv(interrupts.HOLD_ENV, raising=False)
    t0 = time.monotonic()
    interrupts.checkpoint("boot")
    assert time.monotonic() - t0 < 0.1


def test_checkpoint_hold_ends_with_a_deferred_signal(monkeypatch, capsys):
    monkeypatch.setenv(interrupts.HOLD_ENV, "unit-test-phase")
    monkeypatch.setattr(interrupts, "_held", set())
    timer = threading.Timer(0.2, lambda: os.kill(os.getpid(), signal.SIGINT))
    with pytest.raises(KeyboardInterrupt):
        with interrupts.deferred_signals():
            timer.start()
            interrupts.checkpoint("unit-test-phase")  # returns once the signal is pending
            interrupts.checkpoint("unit-test-phase")  # held once per process
    assert "vmprobe: test hold at unit-test-phase" in capsys.readouterr().err
