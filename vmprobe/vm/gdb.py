"""gdb (MI, through pygdbmi) attached to QEMU's gdbstub: memory, registers, hw breakpoints.

Whether the guest runs is derived from gdb's MI records alone, applied in the
order gdb wrote them (:class:`MiLog`): ``*running`` / ``^running`` mean it
runs, ``*stopped`` means it stopped, ``^connected`` (attach) means stopped,
the result of a detach or ``=thread-group-exited`` mean it is gone. gdb's
replies arrive in batches (a ``*stopped`` can come in the same read as the
``^running`` of the continue that caused it, when a breakpoint is hit at
once), so every record read is fed to the log before anyone looks at the
state, results are matched to commands by token, and every stop is kept with
its sequence number: a waiter asks for the first stop *after* a point in the
stream (e.g. its resume), so no stop is lost between a command's result and
the next read, and an old stop is never taken for a new one.

Interrupting a stopped guest is a no-op, resuming a running one too. Every
wait is bounded and says what it waited for. The guest is never left
stopped: reads resume it if it was running, and ``close()`` detaches (which
resumes) before gdb exits.
"""
from __future__ import annotations

import contextlib
import itertools
import shutil
import time
from collections import deque
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from pygdbmi.gdbcontroller import GdbController

from vmprobe.errors import ConfigError, GdbError

#: how many records the log keeps for error messages and late waiters
KEEP_RECORDS = 2000
#: seconds between interrupts sent to a guest that has not stopped yet
INTERRUPT_RETRY = 1.0


class State(StrEnum):
    UNATTACHED = "unattached"   # no target yet
    STOPPED = "stopped"
    RUNNING = "running"
    GONE = "gone"               # detached, or the target went away


@dataclass(frozen=True)
class Stop:
    """One ``*stopped`` record and where it was in the stream."""
    seq: int
    payload: dict

    @property
    def reason(self) -> str | None:
        return self.payload.get("reason")

    @property
    def bkptno(self) -> str | None:
        return self.payload.get("bkptno")

    @property
    def thread(self) -> str | None:
        return self.payload.get("thread-id")

    @property
    def address(self) -> int | None:
        addr = (self.payload.get("frame") or {}).get("addr")
        try:
            return int(addr, 16) if addr else None
        except ValueError:
            return None


def describe(record: dict) -> str:
    """A record as gdb wrote it, roughly: ``^running``, ``*stopped,reason=…``, ``=thread-…``."""
    kind, message = record.get("type"), record.get("message")
    token = record.get("token") if record.get("token") is not None else ""
    if kind == "result":
        return f"{token}^{message}"
    if kind == "notify":
        prefix = "*" if message in ("running", "stopped") else "="
        reason = (record.get("payload") or {}).get("reason")
        return f"{prefix}{message}" + (f",reason={reason}" if reason else "")
    if kind in ("console", "log", "target"):
        text = str(record.get("payload") or "").strip()
        sigil = {"console": "~", "log": "&", "target": "@"}[kind]
        return f"{sigil}{text[:60]!r}"
    return str(kind)


class MiLog:
    """gdb's MI records in the order they arrived, and the run/stop state they imply.

    Pure: fed lists of records (as pygdbmi parses them, one list per read), it
    keeps results by token, stops by sequence number and the target's state.
    """
    #: results that leave the target gone (by the command that was sent with the token)
    DETACHING = ("-target-detach", "-target-disconnect")

    def __init__(self) -> None:
        self.seq = 0                       # sequence number of the last record fed
        self.state = State.UNATTACHED
        self.records: deque[tuple[int, dict]] = deque(maxlen=KEEP_RECORDS)
        self.stops: deque[Stop] = deque(maxlen=KEEP_RECORDS)
        self._results: dict[int, tuple[int, dict]] = {}
        self._commands: dict[int, str] = {}

    def sent(self, token: int, command: str) -> None:
        """Note a command sent with ``token`` (its result may change the state)."""
        self._commands[token] = command

    def feed(self, records: list[dict]) -> None:
        for record in records:
            self.seq += 1
            self.records.append((self.seq, record))
            kind, message = record.get("type"), record.get("message")
            if kind == "notify":
                if message == "running":
                    if self.state is not State.GONE:
                        self.state = State.RUNNING
                elif message == "stopped":
                    self.stops.append(Stop(self.seq, record.get("payload") or {}))
                    if self.state is not State.GONE:
                        self.state = State.STOPPED
                elif message == "thread-group-exited":
                    self.state = State.GONE
            elif kind == "result":
                token = record.get("token")
                command = self._commands.pop(token, "") if token is not None else ""
                if message == "running":
                    if self.state is not State.GONE:
                        self.state = State.RUNNING
                elif message == "connected":
                    self.state = State.STOPPED
                elif message == "exit" or (message == "done" and command.startswith(self.DETACHING)):
                    self.state = State.GONE
                if token is not None:
                    self._results[token] = (self.seq, record)

    def take_result(self, token: int) -> dict | None:
        found = self._results.pop(token, None)
        return found[1] if found else None

    def stop_after(self, seq: int) -> Stop | None:
        """The first stop that arrived after record ``seq``."""
        return next((s for s in self.stops if s.seq > seq), None)

    def last_stop(self) -> Stop | None:
        return self.stops[-1] if self.stops else None

    def tail(self, n: int = 6) -> str:
        return ", ".join(describe(r) for _, r in list(self.records)[-n:]) or "none"


class Gdb:
    def __init__(self, gdb_binary: str = "gdb", arch: str | None = None, *, controller=None):
        """``controller``: something with pygdbmi's ``write``/``get_gdb_response``/``exit``
        (tests feed recorded MI output through it); by default gdb itself."""
        if controller is None:
            if not shutil.which(gdb_binary):
                raise ConfigError(f"{gdb_binary} not found: install gdb (gdb-multiarch for foreign guests)")
            # setsid: gdb gets a process group of its own, so a terminal's Ctrl-C (sent to vmprobe's
            # group) cannot reach it and stop the guest; close() detaches it on every path
            setsid = ["setsid"] if shutil.which("setsid") else []
            # barely any lingering for more output once a read returned records: command() reads until its
            # result arrives anyway, and pygdbmi's default linger set the floor of every MI round
            # trip (≈11 ms each, ≈25 of them in a probe check)
            controller = GdbController(command=[*setsid, gdb_binary, "--nx", "--quiet", "--interpreter=mi3"],
                                       time_to_check_for_additional_output_sec=0.001)
        self._gdb = controller
        self._tokens = itertools.count(100)
        self.log = MiLog()
        self.resumed_at = 0   # the log's seq just before our last resume
        self._reg_index: dict[str, int] = {}
        # async MI: gdb keeps reading commands (-exec-interrupt) while the guest runs
        self.command("-gdb-set mi-async on")
        self.command("-gdb-set pagination off")
        if arch:
            self.command(f"-gdb-set architecture {arch}")

    @property
    def state(self) -> State:
        return self.log.state

    @property
    def running(self) -> bool:
        return self.log.state is State.RUNNING

    # -- MI plumbing ---------------------------------------------------------
    def command(self, cmd: str, timeout: float = 10) -> dict:
        """Send one MI command and return its result record (raises on ^error)."""
        token = next(self._tokens)
        self.log.sent(token, cmd)
        try:
            self._gdb.write(f"{token}{cmd}", read_response=False)
        except Exception as exc:  # gdb died
            raise GdbError(f"gdb is gone (sending {cmd!r}): {exc}") from None
        deadline = time.monotonic() + timeout
        while True:
            record = self.log.take_result(token)
            if record is not None:
                if record.get("message") == "error":
                    raise GdbError(f"gdb refused {cmd!r}: {(record.get('payload') or {}).get('msg')}")
                return record
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise GdbError(f"gdb did not answer {cmd!r} within {timeout:g}s "
                               f"(last MI records: {self.log.tail()})")
            self._pump(min(0.05, remaining))

    def _pump(self, timeout: float) -> None:
        """Read what gdb has written (waiting up to ``timeout`` for something) into the log."""
        try:
            records = self._gdb.get_gdb_response(timeout_sec=timeout, raise_error_on_timeout=False)
        except Exception as exc:
            raise GdbError(f"gdb is gone: {exc}") from None
        self.log.feed(records)

    def sync(self) -> State:
        """Take in whatever gdb has written so far; returns the state."""
        self._pump(0)
        return self.state

    def wait_stopped(self, timeout: float, what: str = "the guest to stop", since: int | None = None) -> Stop:
        """The first stop after record ``since`` (default: our last resume), waiting up to ``timeout``."""
        since = self.resumed_at if since is None else since
        deadline = time.monotonic() + timeout
        while True:
            stop = self.log.stop_after(since)
            if stop is not None:
                return stop
            if self.state is State.GONE:
                raise GdbError(f"the target went away while waiting for {what} "
                               f"(last MI records: {self.log.tail()})")
            if self.state is State.STOPPED:
                # stopped, and not by a stop after `since`: nothing will come without a resume
                raise GdbError(f"waiting for {what}, but the guest is stopped since before it "
                               f"was resumed (last MI records: {self.log.tail()})")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise GdbError(f"timed out after {timeout:g}s waiting for {what} "
                               f"(the guest is {self.state}; last MI records: {self.log.tail()})")
            self._pump(min(0.05, remaining))

    # -- session -------------------------------------------------------------
    def attach(self, target: Path | str, timeout: float = 20) -> None:
        """Connect to a gdbstub (a unix socket path or host:port); leaves the guest stopped."""
        self.command(f"-target-select remote {target}", timeout)
        self.resumed_at = self.log.seq

    def interrupt(self, timeout: float = 10) -> Stop | None:
        """Stop the guest; a no-op (None) when it is stopped already. Returns the stop."""
        if self.sync() is State.STOPPED:
            return None
        if self.state is not State.RUNNING:
            raise GdbError(f"cannot stop the guest: the target is {self.state}")
        mark = self.log.seq
        deadline = time.monotonic() + timeout
        sent = 0
        while True:
            # An interrupt that reaches QEMU while gdb has the guest stopped for a moment
            # of its own (a breakpoint condition, a step over a breakpoint) is dropped by
            # the stub, and gdb then resumes the guest: send it again until a stop comes.
            try:
                self.command("-exec-interrupt", max(0.1, deadline - time.monotonic()))
                sent += 1
            except GdbError:
                # a stop may have overtaken the interrupt (gdb then refuses it): fine if stopped
                if self.sync() is not State.STOPPED:
                    raise
            remaining = deadline - time.monotonic()
            try:
                return self.wait_stopped(min(INTERRUPT_RETRY, max(0.0, remaining)),
                                         "the guest to stop after an interrupt", since=mark)
            except GdbError:
                if self.state is not State.RUNNING or time.monotonic() >= deadline:
                    if self.state is State.RUNNING:
                        raise GdbError(f"timed out after {timeout:g}s waiting for the guest to stop "
                                       f"after an interrupt (sent {sent} times; last MI records: "
                                       f"{self.log.tail()})") from None
                    raise

    def cont(self, timeout: float = 10) -> int:
        """Resume the guest (a no-op when it runs). Returns the point in the record stream
        to wait for a stop from (``wait_stopped(since=…)``): a stop that arrives together
        with the continue's own result is after it, not lost."""
        if self.sync() is State.RUNNING:
            return self.resumed_at
        if self.state is not State.STOPPED:
            raise GdbError(f"cannot resume the guest: the target is {self.state}")
        mark = self.log.seq
        self.command("-exec-continue", timeout)
        self.resumed_at = mark
        return mark

    @contextlib.contextmanager
    def stopped(self):
        """Stop the guest for the block, resume it after if it was running."""
        was_running = self.sync() is State.RUNNING
        self.interrupt()
        try:
            yield
        finally:
            if was_running and self.sync() is State.STOPPED:
                self.cont()

    # -- reads ---------------------------------------------------------------
    def read_memory(self, address: int, length: int, timeout: float = 10) -> bytes:
        """Read guest memory, stopping the guest for it if it runs.

        An arm64 vCPU stopped at EL0 cannot read kernel memory (QEMU's debug
        walk applies EL0's permissions, kpti=0 or not): the guest then runs on
        for a moment and is stopped again until it stops in the kernel.
        """
        deadline = time.monotonic() + timeout
        while True:
            was_running = self.running
            try:
                with self.stopped():
                    rec = self.command(f"-data-read-memory-bytes {address:#x} {length}")
                break
            except GdbError as exc:
                if not was_running or "memory" not in str(exc) or time.monotonic() >= deadline:
                    raise
                time.sleep(0.02)
        blocks = rec["payload"]["memory"]
        data = bytes.fromhex("".join(b["contents"] for b in blocks))
        if len(data) != length:
            raise GdbError(f"read {len(data)} of {length} bytes at {address:#x}")
        return data

    def register_names(self) -> list[str]:
        if not self._reg_index:
            rec = self.command("-data-list-register-names")
            self._reg_index = {n: i for i, n in enumerate(rec["payload"]["register-names"]) if n}
        return list(self._reg_index)

    def registers(self, names: list[str]) -> dict[str, int]:
        with self.stopped():
            self.register_names()
            missing = [n for n in names if n not in self._reg_index]
            if missing:
                raise GdbError(f"the target has no register(s) {', '.join(missing)}")
            idx = " ".join(str(self._reg_index[n]) for n in names)
            rec = self.command(f"-data-list-register-values x {idx}")
        by_index = {int(v["number"]): int(v["value"], 16) for v in rec["payload"]["register-values"]}
        return {n: by_index[self._reg_index[n]] for n in names}

    # -- breakpoints ---------------------------------------------------------
    def hbreak(self, address: int) -> str:
        """A hardware breakpoint (leaves guest memory alone); returns its number.

        The guest is resumed after if it was running: on a hot site it may stop
        at the breakpoint at once; ``wait_stopped()`` finds that stop."""
        with self.stopped():
            rec = self.command(f"-break-insert -h *{address:#x}")
        return rec["payload"]["bkpt"]["number"]

    def delete(self, number: str) -> None:
        with self.stopped():
            self.command(f"-break-delete {number}")

    def breakpoints(self) -> list[dict]:
        """gdb's breakpoint table (each row's fields as MI gives them)."""
        rec = self.command("-break-list")
        return list((rec["payload"].get("BreakpointTable") or {}).get("body") or [])

    def close(self) -> None:
        """Detach (the guest runs on) and end gdb; never raises."""
        with contextlib.suppress(Exception):
            if self.state in (State.RUNNING, State.STOPPED):
                self.interrupt(3)
                self.command("-target-detach", 5)
        with contextlib.suppress(Exception):
            self._gdb.exit()

    def __enter__(self) -> "Gdb":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

