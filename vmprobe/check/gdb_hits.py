"""Counting calls into handlers the function tracer cannot see: a hardware breakpoint on
each, counted stop by stop while the trigger runs.

A handler built without an fentry site is not in ``available_filter_functions``: on
6.12 (trixie) ``__kprobes`` functions, such as the handlers of the kernel's own
``samples/kprobes/kprobe_example.c``, have none (.kprobes.text is built notrace). A kprobe
event cannot count them either (a module's .kprobes.text is on the kprobe blacklist). gdb
can: each call stops the whole guest for tens of milliseconds under TCG, so counting
stops at :data:`CAP` calls per function (the count is then a lower bound, and says so).
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from vmprobe.errors import GdbError
from vmprobe.vm.gdb import Gdb, State

COUNTER = "gdb-breakpoint"
#: calls counted per function before its breakpoint goes (a hot site would crawl otherwise)
CAP = 50


@dataclass
class BreakpointCounts:
    per_function: dict[str, int] = field(default_factory=dict)
    capped: list[str] = field(default_factory=list)   # reached CAP: a lower bound
    seconds: float = 0.0


def count_calls(gdb: Gdb, functions: dict[str, int], run: Callable[[], object],
                timeout: float = 120) -> tuple[object, BreakpointCounts]:
    """Run ``run()`` (in a thread) while counting stops at each function (name → address);
    returns what ``run`` returned (it re-raises what ``run`` raised) and the counts. The
    breakpoints are gone and the guest runs afterwards, whatever happened."""
    counts = BreakpointCounts({name: 0 for name in functions})
    numbers: dict[str, str] = {}
    outcome: dict[str, object] = {}
    t0 = time.monotonic()
    gdb.interrupt()
    try:
        for name, address in functions.items():
            numbers[gdb.command(f"-break-insert -h *{address:#x}")["payload"]["bkpt"]["number"]] = name

        def work() -> None:
            try:
                outcome["value"] = run()
            except BaseException as exc:   # handed to the caller below
                outcome["error"] = exc

        worker = threading.Thread(target=work, name="vmprobe-trigger", daemon=True)
        since = gdb.cont()
        worker.start()
        deadline = t0 + timeout
        what = f"a call into {', '.join(functions)}"
        while True:
            try:
                stop = gdb.wait_stopped(0.25, what, since=since)
            except GdbError:
                if gdb.state is not State.RUNNING:
                    raise
                if not worker.is_alive():
                    break
                if time.monotonic() >= deadline:
                    raise GdbError(f"the trigger did not end within {timeout:g}s while counting "
                                   f"calls into {', '.join(functions)} with breakpoints") from None
                continue
            name = numbers.get(stop.bkptno or "")
            if name is not None:
                counts.per_function[name] += 1
                if counts.per_function[name] >= CAP:
                    gdb.command(f"-break-delete {stop.bkptno}")
                    numbers.pop(stop.bkptno)
                    counts.capped.append(name)
            since = gdb.cont()
        worker.join(timeout)
    finally:
        _remove_all(gdb, list(numbers))
    counts.seconds = time.monotonic() - t0
    if "error" in outcome:
        raise outcome["error"]   # type: ignore[misc]
    return outcome.get("value"), counts


def _remove_all(gdb: Gdb, numbers: list[str]) -> None:
    problem = None
    try:
        if numbers:
            gdb.interrupt()
            gdb.command(f"-break-delete {' '.join(numbers)}")
    except GdbError as exc:
        problem = exc
    if gdb.sync() is State.STOPPED:
        gdb.cont()
    if problem:
        raise problem
