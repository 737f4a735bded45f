"""gdb (MI, through pygdbmi) attached to QEMU's gdbstub: memory, registers, hw breakpoints.

gdb's MI replies arrive in batches and out of band; every command carries a
token and its result is matched by it, while async records (``*stopped``,
``*running``) are queued so a stop is never lost. The guest is never left
stopped: reads resume it if it was running, and ``close()`` detaches (which
resumes) before gdb exits.
"""
from __future__ import annotations

import contextlib
import itertools
import shutil
import time
from pathlib import Path

from pygdbmi.gdbcontroller import GdbController

from vmprobe.errors import ConfigError, GdbError


class Gdb:
    def __init__(self, gdb_binary: str = "gdb", arch: str | None = None):
        if not shutil.which(gdb_binary):
            raise ConfigError(f"{gdb_binary} not found: install gdb (gdb-multiarch for foreign guests)")
        # setsid: gdb gets a process group of its own, so a terminal's Ctrl-C (sent to vmprobe's
        # group) cannot reach it and stop the guest; close() detaches it on every path
        setsid = ["setsid"] if shutil.which("setsid") else []
        self._gdb = GdbController(command=[*setsid, gdb_binary, "--nx", "--quiet", "--interpreter=mi3"],
                                  time_to_check_for_additional_output_sec=0.01)
        self._tokens = itertools.count(100)
        self._async: list[dict] = []
        self.running = False
        self._reg_index: dict[str, int] = {}
        # async MI: gdb keeps reading commands (-exec-interrupt) while the guest runs
        self.command("-gdb-set mi-async on")
        self.command("-gdb-set pagination off")
        if arch:
            self.command(f"-gdb-set architecture {arch}")

    # -- MI plumbing ---------------------------------------------------------
    def command(self, cmd: str, timeout: float = 10) -> dict:
        """Send one MI command and return its result record (raises on ^error)."""
        token = next(self._tokens)
        try:
            self._gdb.write(f"{token}{cmd}", read_response=False)
        except Exception as exc:  # gdb died
            raise GdbError(f"gdb is gone (sending {cmd!r}): {exc}") from None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for record in self._read(min(0.05, max(0.01, deadline - time.monotonic()))):
                if record.get("type") == "result" and record.get("token") == token:
                    if record.get("message") == "error":
                        raise GdbError(f"gdb refused {cmd!r}: {record['payload'].get('msg')}")
                    return record
        raise GdbError(f"gdb did not answer {cmd!r} within {timeout:.0f}s")

    def _read(self, timeout: float) -> list[dict]:
        try:
            records = self._gdb.get_gdb_response(timeout_sec=timeout, raise_error_on_timeout=False)
        except Exception as exc:
            raise GdbError(f"gdb is gone: {exc}") from None
        for record in records:
            if record.get("type") == "notify":
                if record.get("message") == "running":
                    self.running = True
                elif record.get("message") == "stopped":
                    self.running = False
                    self._async.append(record)
        return records

    def wait_stopped(self, timeout: float, what: str = "the guest to stop") -> dict:
        """Wait for a ``*stopped`` record; returns its payload."""
        deadline = time.monotonic() + timeout
        while True:
            if self._async:
                return self._async.pop(0)["payload"]
            if time.monotonic() >= deadline:
                raise GdbError(f"timed out after {timeout:.0f}s waiting for {what}")
            self._read(0.05)

    # -- session -------------------------------------------------------------
    def attach(self, target: Path | str, timeout: float = 20) -> None:
        """Connect to a gdbstub (a unix socket path or host:port); leaves the guest stopped."""
        self.command(f"-target-select remote {target}", timeout)
        self.running = False
        self._async.clear()

    def interrupt(self, timeout: float = 10) -> None:
        if not self.running:
            return
        self._async.clear()
        self.command("-exec-interrupt", timeout)
        self.wait_stopped(timeout, "the guest to stop after an interrupt")

    def cont(self) -> None:
        if self.running:
            return
        self._async.clear()
        self.command("-exec-continue")
        self.running = True

    @contextlib.contextmanager
    def stopped(self):
        """Stop the guest for the block, resume it after if it was running."""
        was_running = self.running
        self.interrupt()
        try:
            yield
        finally:
            if was_running:
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

    def registers(self, names: list[str]) -> dict[str, int]:
        with self.stopped():
            if not self._reg_index:
                rec = self.command("-data-list-register-names")
                self._reg_index = {n: i for i, n in enumerate(rec["payload"]["register-names"]) if n}
            missing = [n for n in names if n not in self._reg_index]
            if missing:
                raise GdbError(f"the target has no register(s) {', '.join(missing)}")
            idx = " ".join(str(self._reg_index[n]) for n in names)
            rec = self.command(f"-data-list-register-values x {idx}")
        by_index = {int(v["number"]): int(v["value"], 16) for v in rec["payload"]["register-values"]}
        return {n: by_index[self._reg_index[n]] for n in names}

    # -- breakpoints ---------------------------------------------------------
    def hbreak(self, address: int) -> str:
        """A hardware breakpoint (leaves guest memory alone); returns its number."""
        with self.stopped():
            rec = self.command(f"-break-insert -h *{address:#x}")
        return rec["payload"]["bkpt"]["number"]

    def delete(self, number: str) -> None:
        with self.stopped():
            self.command(f"-break-delete {number}")

    def close(self) -> None:
        """Detach (the guest runs on) and end gdb; never raises."""
        with contextlib.suppress(Exception):
            self.interrupt(3)
            self.command("-target-detach", 5)
        with contextlib.suppress(Exception):
            self._gdb.exit()

    def __enter__(self) -> "Gdb":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
