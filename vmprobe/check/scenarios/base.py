"""The scenario engine: what every scenario check does around its own steps.

A scenario builds its module from ``modules/templates/scenarios/``, arms it
(the site's bytes read through the gdbstub before and after), proves its claim
from the guest's user space and from gdb, disarms it and checks the site is
restored. Its evidence goes into ``report.scenario["evidence"]`` (one entry
per side) and its figures into ``report.scenario``.
"""
from __future__ import annotations

import contextlib
import re
import secrets
import time

from vmprobe.arch import SITE_WINDOW
from vmprobe.check.lifecycle import CheckLifecycle
from vmprobe.check.loading import load_once
from vmprobe.check.probe import FORK_SYMBOLS, fork_symbol, resolve_symbols
from vmprobe.check.report import ProbeReport
from vmprobe.check.scenarios import eras
from vmprobe.config import TEMPLATES_DIR
from vmprobe.errors import GdbError, ModuleLoadError, VmprobeError
from vmprobe.modules import Module, build
from vmprobe.vm.gdb import Gdb
from vmprobe.vm.machine import Machine

SCENARIO_MODULES = TEMPLATES_DIR / "scenarios"
SLACK = 16   # the kernel may move a probe (IBT: sym+0 → sym+4)


def build_scenario_module(kernel, name: str, log=None) -> Module:
    """The scenario's module, built (with its siblings, cached) for ``kernel``."""
    built = {m.name: m for m in build(SCENARIO_MODULES, kernel, log=log)}
    return built[name]


class ScenarioCheck(CheckLifecycle):
    """Subclasses set nothing but ``_run`` (and use the helpers)."""

    def __init__(self, machine: Machine, scenario, log=None):
        self.m, self.spec = machine, scenario
        self.log = log or (lambda msg: None)
        self.nonce = secrets.token_hex(6)
        self.report = ProbeReport()
        self.evidence: dict[str, str] = {}
        self.report.scenario = {"name": scenario.name, "claim": scenario.claim, "evidence": self.evidence}
        self.module: Module | None = None
        self.gdb: Gdb | None = None
        self._loaded = False
        self._site: tuple[int, bytes] | None = None   # (address, bytes before arming)

    def run(self) -> ProbeReport:
        k, r = self.m.kernel, self.report
        self.describe()
        why = eras.missing(k.release, self.spec.needs)
        if why:
            r.skipped = f"{self.spec.name} does not apply: {why}"
            r.check(f"{self.spec.name} applies to this kernel", None, why)
            return r
        self.m.gdbs.ahead()   # gdb starts while the module builds
        with self.observed():
            with self.phase("build"):
                self.module = build_scenario_module(k, self.spec.module, self.log)
            with self.phase("gdb-attach"):
                self.gdb = self.m.gdbs.take()
                self.gdb.attach(self.m.gdb_socket)
                self.gdb.cont()
            self._run()
        return r

    def _run(self) -> None:
        raise NotImplementedError

    # -- helpers -------------------------------------------------------------
    def sh(self, command: str, timeout: float = 60) -> str:
        """Run a guest command that must succeed; its stdout, stripped."""
        res = self.m.run(command, timeout)
        if res.status != 0:
            raise VmprobeError(f"guest command {command!r} exited {res.status}: {res.output.strip()[-300:]}")
        return res.stdout.strip()

    def fork_symbol(self) -> str:
        return fork_symbol(self.m.kernel.release, resolve_symbols(self.m, list(FORK_SYMBOLS)))

    def symbol_among(self, names: list[str]) -> str:
        found = resolve_symbols(self.m, [n for n in names if n])
        for name in names:
            if name in found:
                return name
        raise VmprobeError(f"none of {', '.join(names)} is in /proc/kallsyms of {self.m.kernel.release}")

    def arm(self, symbol: str, params: str = "") -> re.Match:
        """Read the site, insmod the scenario's module on ``symbol``; the 'armed' line's match."""
        r = self.report
        base = resolve_symbols(self.m, [symbol])[symbol]
        with self.phase("baseline"):
            before = self.gdb.read_memory(base, SITE_WINDOW + SLACK)
        with self.phase("insmod"):
            mark = self.m.console.mark()
            load = load_once(self.m, self.module.path, f"symbol={symbol} nonce={self.nonce} {params}")
            if not load.ok:
                raise ModuleLoadError(f"loading {self.module.name} on {symbol} failed: {load.said()}",
                                      detail=self.m.console.tail(15))
            self._loaded = True
            armed = self.m.console.expect(rf"vmprobe-armed nonce={self.nonce} .*?addr=([0-9a-f]+)[^\n]*", 15,
                                          since=mark, what=f"{self.module.name}'s 'armed' line",
                                          error=ModuleLoadError)
        address = int(armed[1], 16)
        moved = address - base
        if not 0 <= moved <= SLACK:
            raise VmprobeError(f"the kernel armed {symbol} at {address:#x}, {moved:+d} bytes from {base:#x}")
        self._site = (address, before[moved:moved + SITE_WINDOW])
        now = self.gdb.read_memory(address, SITE_WINDOW)
        site = self.m.profile.sites.classify(address, self._site[1], now)
        r.probe = {"symbol": symbol, "offset": moved, "address": f"{address:#x}", "module": self.module.name,
                   "mechanism": site.mechanism}
        r.bytes = {"before": self._site[1].hex(), "armed": now.hex()}
        r.check("site armed", site.mechanism.armed, f"{symbol} bytes {now[:8].hex(' ')} → {site.mechanism}")
        return armed

    def disarm(self) -> re.Match | None:
        """rmmod; the 'disarmed' line's match; then the site's bytes must come back."""
        r = self.report
        with self.phase("rmmod"):
            mark = self.m.console.mark()
            res = self.m.run(f"rmmod {self.module.name}", 60)
            r.check("rmmod", res.status == 0, res.output.strip())
            if res.status != 0:
                return None
            self._loaded = False
            line = self.m.console.expect(rf"vmprobe-disarmed nonce={self.nonce} [^\n]*", 15, since=mark,
                                         what=f"{self.module.name}'s 'disarmed' line")
        with self.phase("restored"):
            address, before = self._site
            deadline = time.monotonic() + 10
            while True:
                after = self.gdb.read_memory(address, SITE_WINDOW)
                if after == before or time.monotonic() >= deadline:
                    break
                time.sleep(0.1)
        r.bytes["after"] = after.hex()
        r.check("probe site restored after rmmod", after == before,
                f"bytes {after[:8].hex(' ')}" + ("" if after == before else f" (before {before[:8].hex(' ')})"))
        return line

    def read_word(self, address: int, size: int | None = None) -> int:
        """A little-endian word of guest memory read through gdb (all supported arches are LE)."""
        size = size or self.m.profile.bits // 8
        return int.from_bytes(self.gdb.read_memory(address, size), "little")

    def break_until(self, address: int, condition: str | None, command: str, registers: list[str],
                    timeout: float = 40) -> tuple[dict, str]:
        """Stop the guest at a hardware breakpoint at ``address`` (when ``condition`` holds) while
        ``command`` runs in the guest; the registers read there, and the command's stdout."""
        # the command waits for the breakpoint: starting it forks, which may itself hit the site
        channel = self.m.ssh.start(f"read -r _go; {command}")
        cond = f'-c "{condition}" ' if condition else ""
        with self.gdb.stopped():
            number = self.gdb.command(f"-break-insert -h {cond}*{address:#x}")["payload"]["bkpt"]["number"]
        channel.sendall(b"go\n")
        try:
            self.gdb.wait_stopped(timeout, f"the hardware breakpoint at {address:#x}"
                                           + (f" with {condition}" if condition else "") + " to hit")
            regs = self.gdb.registers(registers)
        finally:
            with contextlib.suppress(GdbError):
                self.gdb.delete(number)
            self.gdb.cont()
        out = self.m.ssh.wait(channel, command, 60)
        return regs, out.stdout.strip()

    def _cleanup(self) -> None:
        if self._loaded and self.module and not self.kernel_damaged():
            with contextlib.suppress(Exception):
                self.m.run(f"rmmod {self.module.name}", 15)
        self.cleanup()
        if self.gdb:
            self.gdb.close()
            self.gdb = None
        else:
            self.m.gdbs.close()   # started ahead, never taken (the check ended before)

    def cleanup(self) -> None:
        """A scenario's own leftovers in the guest (e.g. a target process)."""
