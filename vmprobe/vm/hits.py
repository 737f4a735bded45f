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
    follow: "FollowUp | None" = None    # the next stop at a ``follow`` address in the same task

    def to_dict(self) -> dict:
        return {"reason": self.stop.reason, "thread": self.stop.thread,
                "task": self.task.to_dict() if self.task else None,
                **({"task_error": self.task_error} if self.task_error else {}),
                **({"other_stops": self.other_stops} if self.other_stops else {}),
                "seconds": round(self.seconds, 3)}


@dataclass
class FollowUp:
    """Where the task that hit went next among the ``follow`` addresses (e.g. the probe's
    handler: the handler call that this very stop caused), read while stopped there."""
    address: int | None             # None: no stop there within the timeout (the probe did not fire)
    thread: str | None
    task: Task | None
    same_task: bool | None          # None: no task info, matched by vCPU (gdb thread) only
    argument: int | None            # the first argument register there
    other_stops: list[str] = field(default_factory=list)   # other tasks' stops there, skipped
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {"address": f"{self.address:#x}" if self.address is not None else None, "thread": self.thread,
                "task": self.task.to_dict() if self.task else None, "same_task": self.same_task,
                "argument": f"{self.argument:#x}" if self.argument is not None else None,
                **({"other_stops": self.other_stops} if self.other_stops else {}),
                "seconds": round(self.seconds, 3)}


@dataclass
class HitCount:
    """Executions of each address counted by hardware breakpoints while some work ran."""
    counts: dict[int, int]
    capped: bool                    # counting stopped at the cap: the counts are lower bounds
    seconds: float
    other_stops: list[str] = field(default_factory=list)


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
              no_layout: str | None = None, follow: list[int] = (), argument_register: str = "",
              follow_timeout: float = 5) -> Hit:
    """Break at ``address`` (hardware breakpoint), return the first hit by any task.

    ``registers`` are read at the hit; the current task too when ``layout`` is
    given (else the report says ``no_layout``). With ``follow`` (e.g. the probe's
    handler), the site's breakpoint is then swapped for breakpoints there and the
    guest resumed until the same task stops at one of them (``Hit.follow``; its address is
    None if none came within ``follow_timeout``).
    After it, whatever happened, the breakpoints are deleted and the guest runs.
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
            others.append(_describe(stop))
            since = gdb.cont()
        seconds = time.monotonic() - t0
        regs, task, task_error = _registers_and_task(gdb, registers, layout, no_layout)
        hit = Hit(stop, {n: regs[n] for n in registers}, task, task_error, others, seconds)
        if follow:
            hit.follow = _follow(gdb, hit, numbers, list(follow), layout, argument_register, follow_timeout)
        return hit
    finally:
        _remove_and_resume(gdb, numbers)


def _describe(stop: Stop) -> str:
    return f"{stop.reason or 'stop'} at {stop.address:#x}" if stop.address else f"{stop.reason or 'stop'}"


def _registers_and_task(gdb: Gdb, registers: list[str], layout: TaskLayout | None, no_layout: str | None):
    extra = [layout.base_register] if layout and layout.base_register not in registers else []
    regs = gdb.registers([*registers, *extra])
    task, task_error = None, no_layout
    if layout is not None:
        try:
            task = current_task(gdb, layout, regs[layout.base_register])
        except (NoTaskInfo, GdbError) as exc:
            task_error = f"cannot read the current task: {exc}"
    return regs, task, task_error


def _follow(gdb: Gdb, hit: Hit, numbers: list[str], follow: list[int], layout: TaskLayout | None,
            argument_register: str, timeout: float) -> FollowUp:
    """With the guest stopped at ``hit``: break at ``follow`` instead, resume, and return the
    first stop there by the same task (by the same vCPU when tasks cannot be read)."""
    gdb.command(f"-break-delete {numbers.pop()}")
    ours = {}
    for a in follow:
        n = gdb.command(f"-break-insert -h *{a:#x}")["payload"]["bkpt"]["number"]
        numbers.append(n)
        ours[n] = a
    t0 = time.monotonic()
    deadline = t0 + timeout
    others: list[str] = []
    where = ", ".join(f"{a:#x}" for a in follow)
    what = f"the task that hit to reach {where}"
    while True:
        since = gdb.cont()
        try:
            stop = gdb.wait_stopped(max(0.0, deadline - time.monotonic()), what, since=since)
        except GdbError:
            if gdb.state is not State.RUNNING:
                raise
            return FollowUp(None, None, None, None, None, others, time.monotonic() - t0)
        address = ours.get(stop.bkptno) or (stop.address if stop.address in follow else None)
        if address is None:
            others.append(_describe(stop))
            continue
        names = [argument_register] if argument_register else []
        regs, task, _ = _registers_and_task(gdb, names, layout, None)
        if task is not None and hit.task is not None:
            same = task.address == hit.task.address
        else:
            same = None if stop.thread == hit.stop.thread else False
        if same is False:
            by = f"{task.comm} pid {task.pid}" if task else f"thread {stop.thread}"
            others.append(f"{address:#x} by {by}")
            continue
        return FollowUp(address, stop.thread, task, same, regs.get(argument_register) if names else None,
                        others, time.monotonic() - t0)


def count_hits(gdb: Gdb, addresses: list[int], *, start: Callable[[], None],
               finished: Callable[[], bool] | None, cap: int = 100, timeout: float = 60,
               quiet: float = 3.0) -> HitCount:
    """Count executions of ``addresses`` (hardware breakpoints: the guest stops at each one and
    is resumed) while the work ``start()`` begins runs, until ``finished()`` (without it: until
    no stop came for ``quiet`` seconds), or ``cap`` hits in all (each stop costs tens of ms of
    guest time under TCG). Then the breakpoints go."""
    gdb.interrupt()
    ours = {gdb.command(f"-break-insert -h *{a:#x}")["payload"]["bkpt"]["number"]: a for a in addresses}
    counts = {a: 0 for a in addresses}
    others: list[str] = []
    t0 = time.monotonic()
    capped = False
    try:
        since = gdb.cont()
        start()
        last = time.monotonic()
        while True:
            try:
                stop = gdb.wait_stopped(0.2, "a breakpoint to count", since=since)
            except GdbError:
                if gdb.state is not State.RUNNING:
                    raise
                if finished() if finished else time.monotonic() - last >= quiet:
                    break
                if time.monotonic() - t0 > timeout:
                    raise GdbError(f"the work being counted did not finish within {timeout:g}s") from None
                continue
            address = ours.get(stop.bkptno) or (stop.address if stop.address in counts else None)
            if address is None:
                others.append(_describe(stop))
            else:
                counts[address] += 1
                if sum(counts.values()) >= cap:
                    capped = True
                    break
            last = time.monotonic()
            since = gdb.cont()
        return HitCount(counts, capped, time.monotonic() - t0, others)
    finally:
        _remove_and_resume(gdb, list(ours))


def _remove_and_resume(gdb: Gdb, numbers: list[str]) -> None:
    """Delete the breakpoints ``numbers`` and leave the guest running (raises if either failed)."""
    problem = None
    try:
        gdb.interrupt()
        for number in numbers:
            gdb.command(f"-break-delete {number}")
    except GdbError as exc:
        problem = exc
    if gdb.sync() is State.STOPPED:
        gdb.cont()
    if problem:
        raise problem


__all__ = ["FollowUp", "Hit", "HitCount", "count_hits", "first_hit", "task_layout_or_reason"]
