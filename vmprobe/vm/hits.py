"""Stop at the first execution of an address, by whichever task gets there, and report it.

A hardware breakpoint on a function hit all the time (``do_sys_openat2``,
``vfs_read``) is hit by whatever runs first: the SSH server, a kernel
thread, the shell, not necessarily the command meant to trigger it. A gdb
condition on the trigger's task would not help: gdb evaluates it on the host,
stopping the guest, reading memory and stepping it past the breakpoint on
every other hit, which cost 30-41 ms of guest time per hit here (bookworm,
TCG: 2000 one-byte dd reads took 61 s instead of 0.17 s). So the first hit by
*any* task is taken and the task is named (pid, tgid, comm, kernel thread or
not; :mod:`vmprobe.vm.tasks`).

:func:`first_hit` inserts the breakpoint with the guest stopped, resumes it,
runs ``go`` (e.g. tell the trigger to start), waits (bounded) for the stop at
the breakpoint — a stop that arrived in the same read as the continue's
``^running`` included — reads the registers and the task while stopped, then
deletes the breakpoint and resumes the guest, on every path.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Callable

from vmprobe.errors import GdbError, VmprobeError
from vmprobe.vm.gdb import Gdb, State, Stop
from vmprobe.vm.tasks import CURRENT_VARS, NoTaskInfo, Task, TaskLayout, current_task, task_layout


@dataclass
class Hit:
    stop: Stop
    registers: dict[str, int]
    task: Task | None = None
    task_error: str | None = None       # why there is no task
    other_stops: list[str] = field(default_factory=list)  # stops that were not the breakpoint
    seconds: float = 0.0                # breakpoint set → hit
    then: str | None = None             # the function (of ``first_hit(then=…)``) entered next
    then_error: str | None = None

    def to_dict(self) -> dict:
        return {"reason": self.stop.reason, "thread": self.stop.thread,
                "task": self.task.to_dict() if self.task else None,
                **({"task_error": self.task_error} if self.task_error else {}),
                **({"other_stops": self.other_stops} if self.other_stops else {}),
                **({"then": self.then} if self.then else {}),
                **({"then_error": self.then_error} if self.then_error else {}),
                "seconds": round(self.seconds, 3)}


def task_layout_or_reason(machine) -> tuple[TaskLayout | None, str | None]:
    """The task layout of ``machine``'s kernel, or why there is none (never raises: the task
    is a bonus). Per-CPU offsets missing from the BTF are read from the guest's kallsyms
    (the warm snapshot's copy when there is one)."""
    def kallsyms() -> str:
        saved = machine.saved_kallsyms()
        if saved is not None:
            return saved.read_text(errors="replace")
        names = "|".join(CURRENT_VARS)
        return machine.run(f"grep -E ' ({names})$' /proc/kallsyms", 30).stdout

    try:
        layout = task_layout(machine.kernel, machine.profile, kallsyms)
        reader = machine.profile.current_reader
        if reader:   # where current is, read from code at this boot's address of the reader
            layout = replace(layout, reader=_text_address(machine, reader))
        return layout, None
    except (NoTaskInfo, VmprobeError, OSError, ValueError) as exc:
        return None, f"no current-task layout: {exc}"


def _text_address(machine, name: str) -> int:
    """Where text symbol ``name`` is in this boot (the warm snapshot's kallsyms, else the guest's)."""
    saved = machine.saved_kallsyms()
    text = (saved.read_text(errors="replace") if saved is not None
            else machine.run(f"grep -E ' [tT] {name}$' /proc/kallsyms", 30).stdout)
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 3 and fields[2] == name and fields[1] in "tT":
            return int(fields[0], 16)
    raise NoTaskInfo(f"{name} is not in /proc/kallsyms")


def _is_ours(stop: Stop, number: str, address: int) -> bool:
    return (stop.reason == "breakpoint-hit" and stop.bkptno == number) or stop.address == address


def first_hit(gdb: Gdb, address: int, registers: list[str], *, go: Callable[[], None] | None = None,
              timeout: float = 20, layout: TaskLayout | None = None,
              no_layout: str | None = None, then: dict[int, str] | None = None) -> Hit:
    """Break at ``address`` (hardware breakpoint), return the first hit by any task.

    ``registers`` are read at the hit; the current task too when ``layout`` is
    given (else the report says ``no_layout``). ``then`` (address → name): after
    the hit, which of these functions the guest enters next (a probe's handler:
    proof that the probe fired at that stop). After it, whatever happened, the
    breakpoints are deleted and the guest runs.
    """
    gdb.interrupt()
    number = gdb.command(f"-break-insert -h *{address:#x}")["payload"]["bkpt"]["number"]
    numbers = [number]
    t0 = time.monotonic()
    others: list[str] = []
    try:
        since = gdb.cont()
        if go is not None:
            go()
        deadline = t0 + timeout
        what = f"the hardware breakpoint at {address:#x} to hit"
        while True:
            try:
                stop = gdb.wait_stopped(max(0.0, deadline - time.monotonic()), what, since=since)
            except GdbError:
                if gdb.state is not State.RUNNING:
                    raise
                seen = f" (other stops: {', '.join(others)})" if others else ""
                raise GdbError(f"timed out after {timeout:g}s waiting for {what}{seen}") from None
            if _is_ours(stop, number, address):
                break
            # not our breakpoint (e.g. a signal): note it and let the guest go on
            others.append(f"{stop.reason or 'stop'} at {stop.address:#x}" if stop.address
                          else f"{stop.reason or 'stop'}")
            since = gdb.cont()
        seconds = time.monotonic() - t0
        extra = [layout.base_register] if layout and layout.base_register not in registers else []
        regs = gdb.registers([*registers, *extra])
        task, task_error = None, no_layout
        if layout is not None:
            try:
                task = current_task(gdb, layout, regs[layout.base_register])
            except (NoTaskInfo, GdbError) as exc:
                task_error = f"cannot read the current task: {exc}"
        hit = Hit(stop, {n: regs[n] for n in registers}, task, task_error, others, seconds)
        if then:
            _next_of(gdb, hit, then, numbers, timeout)
        return hit
    finally:
        _remove_and_resume(gdb, " ".join(numbers))


def _next_of(gdb: Gdb, hit: Hit, then: dict[int, str], numbers: list[str], timeout: float) -> None:
    """From the stop of ``hit``: resume with breakpoints on ``then`` only, note which is entered."""
    gdb.command(f"-break-delete {numbers.pop()}")
    for address in then:
        numbers.append(gdb.command(f"-break-insert -h *{address:#x}")["payload"]["bkpt"]["number"])
    since = gdb.cont()
    try:
        stop = gdb.wait_stopped(timeout, f"a call into {', '.join(then.values())}", since=since)
    except GdbError as exc:
        if gdb.state is not State.RUNNING:
            raise
        hit.then_error = str(exc)
        return
    hit.then = then.get(stop.address) if stop.address is not None else None
    if hit.then is None:
        hit.then_error = f"stopped at {stop.address:#x} ({stop.reason})" if stop.address else str(stop.reason)


def _remove_and_resume(gdb: Gdb, number: str) -> None:
    """Delete breakpoint ``number`` and leave the guest running (raises if either failed)."""
    problem = None
    try:
        gdb.interrupt()
        gdb.command(f"-break-delete {number}")
    except GdbError as exc:
        problem = exc
    if gdb.sync() is State.STOPPED:
        gdb.cont()
    if problem:
        raise problem


__all__ = ["Hit", "first_hit", "task_layout_or_reason"]
