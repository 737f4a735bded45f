"""The probe check: arm a kprobe module in a running guest and prove it at the machine level.

In one VM: resolve the site from /proc/kallsyms (KASLR on) → read its bytes
through the gdbstub → insmod → read the kprobes list and let the optimizer
settle → read the armed bytes and name the mechanism → trigger, stopping at the
site's first hit with a hardware breakpoint to read the registers, and count the
handler's lines → SysRq through /proc, the keyboard and a serial BREAK → rmmod →
the bytes are back. Every step is timed and every wait is bounded.

Without debugfs ``kprobes/list`` (2.6 before it, no debugfs, not mounted) the
listing is the SysRq "show kprobes" key if the kernel has one, else none: the
proof is then the bytes and the hits (``evidence`` in the report, check/listing.py).
"""
from __future__ import annotations

import contextlib
import re
import secrets
import time
from dataclasses import dataclass, field

from vmprobe.arch import SITE_WINDOW, Mechanism, agrees_with_flags
from vmprobe.arch.eras import passes_address
from vmprobe.check.any_module import run_any_module
from vmprobe.check.lifecycle import CheckLifecycle
from vmprobe.check.listing import DEBUGFS, KPROBES_LIST, Listing, print_file
from vmprobe.check.loading import Load, load_once
from vmprobe.check.refusals import blacklisted, explain_template
from vmprobe.check.report import ProbeReport
from vmprobe.check.symbols import FORK_SYMBOLS, fork_symbol, resolve_symbols
from vmprobe.check.sysrq import sysrq_three_ways
from vmprobe.errors import CommandTimeout, ModuleLoadError, ProbeSiteError
from vmprobe.formats.kprobes_list import ProbeRecord, parse_debugfs_list
from vmprobe.modules import Module
from vmprobe.vm.gdb import Gdb
from vmprobe.vm.hits import Hit, first_hit, task_layout_or_reason
from vmprobe.vm.machine import Machine

AFTER_ENTRY = "after-entry"
DEFAULT_TRIGGER = "for i in 1 2 3 4 5; do /bin/true; done"
#: Extra bytes read before arming, for a kernel that moves the probe (IBT: sym+0 → sym+4).
SLACK = 16


@dataclass
class ProbeOptions:
    symbol: str | None = None          # None: the kernel's fork function
    offset: int | str | None = 0       # or "after-entry": past ENDBR and the fentry site; None: any (user modules)
    post_handler: bool = True
    trigger: str | None = None         # None: forks
    module_params: str = ""            # extra insmod parameters (user modules)
    builtin_template: bool = True      # False: a user's module (its probes are discovered, see any_module)
    min_hits: int = 1                  # a probe whose handlers ran fewer times fails
    sysrq: bool = True
    registers: bool = True
    settle_timeout: float = 10.0
    hit_timeout: float = 20.0


@dataclass
class _Run:
    nonce: str = field(default_factory=lambda: secrets.token_hex(6))
    address: int = 0          # where the probe really is
    base: int = 0             # the function's address (kallsyms), passed as addr= on old kernels
    requested: int = 0        # sym + offset as asked
    baseline: bytes = b""     # read at `requested`, SITE_WINDOW + SLACK bytes


class ProbeCheck(CheckLifecycle):
    # shared with the check of any module (check/any_module.py)
    KPROBES_LIST, AFTER_ENTRY, SLACK, DEFAULT_TRIGGER = KPROBES_LIST, AFTER_ENTRY, SLACK, DEFAULT_TRIGGER

    def __init__(self, machine: Machine, module: Module, options: ProbeOptions, log=None):
        self.m = machine
        self.module = module
        self.opt = options
        self.log = log or (lambda msg: None)
        self.report = ProbeReport()
        self.run_state = _Run()
        self.gdb: Gdb | None = None
        self._loaded = False
        self._triggered = None    # the trigger's result when it ran for the registers
        self.listing: Listing | None = None
        self._listed_at_load: str | None = None   # the debugfs list read with the load
        # the offset in bytes ("after-entry" is decided from the function's first bytes)
        self.offset = options.offset if isinstance(options.offset, int) else 0

    # -- helpers -------------------------------------------------------------
    def resolve(self, names: list[str]) -> dict[str, int]:
        return resolve_symbols(self.m, names)

    def _list(self) -> list[ProbeRecord]:
        return parse_debugfs_list(self.m.run(print_file(KPROBES_LIST), 15).stdout)

    def _record(self, text: str | None = None) -> ProbeRecord | None:
        """Our probe's line in the listing (``text``: a debugfs list read already)."""
        if text is not None:
            return next((r for r in parse_debugfs_list(text) if r.address == self.run_state.address), None)
        return self.listing.record(self.run_state.address) if self.listing else None

    def _read_site(self) -> bytes:
        return self.gdb.read_memory(self.run_state.address, SITE_WINDOW)

    # -- the check -----------------------------------------------------------
    def run(self) -> ProbeReport:
        self.describe()
        self.m.gdbs.ahead()   # gdb starts while the first steps run
        with self.observed():
            self._run()
        return self.report

    def _run(self) -> None:
        r, st, opt = self.report, self.run_state, self.opt
        if not opt.builtin_template:
            run_any_module(self)   # a user's module: discover its probes, prove each one
            return
        with self.phase("resolve"):
            found = resolve_symbols(self.m, [opt.symbol] if opt.symbol else list(FORK_SYMBOLS))
            symbol = opt.symbol or fork_symbol(self.m.kernel.release, found)
            base = found.get(symbol)
            r.probe = {"symbol": symbol, "offset": opt.offset, "post_handler": opt.post_handler,
                       "module": self.module.name}
        if base is None:
            # Let the kernel say it too (register_kprobe → -ENOENT), then fail clearly.
            with self.phase("insmod"):
                self._insmod(symbol)
            raise ModuleLoadError(f"symbol {symbol} not found in kernel {self.m.kernel.release}")
        st.base = base
        with self.phase("listing"):
            self.listing = Listing.find(self.m)
        r.probe["listing"] = self.listing.to_dict()
        with self.phase("gdb-attach"):
            self.gdb = self.m.gdbs.take()
            self.gdb.attach(self.m.gdb_socket)
            self.gdb.cont()
        if opt.offset == AFTER_ENTRY:
            start = self.gdb.read_memory(base, 16)
            self.offset = self.m.profile.sites.entry_offset(start)
            r.probe["offset"] = self.offset
            r.probe["offset_chosen"] = f"after-entry: {start[:9].hex(' ')} → +{self.offset}"
        st.requested = base + self.offset
        with self.phase("baseline"):
            st.baseline = self.gdb.read_memory(st.requested, SITE_WINDOW + SLACK)
        with self.phase("insmod"):
            st.address = self._insmod(symbol)
        moved = st.address - st.requested
        if not 0 <= moved <= SLACK:
            raise ProbeSiteError(f"the kernel armed {symbol}+{self.offset} at {st.address:#x}, "
                               f"{moved:+d} bytes from {st.requested:#x}: outside what was read before")
        baseline = st.baseline[moved:moved + SITE_WINDOW]
        r.probe.update({"address": f"{st.address:#x}", "requested_address": f"{st.requested:#x}",
                        "moved_by": moved})
        if moved:
            r.check("probe placement", True, f"the kernel moved the probe {moved} bytes "
                    f"(to {symbol}+{self.offset + moved}; IBT ENDBR skipped)")
        with self.phase("settle"):
            record = self._settle()
        listed = self.listing.source is not None
        r.probe["list_flags"] = record.flags if record and self.listing.source == DEBUGFS else None
        r.probe["list_line"] = record.to_dict() if record else None
        r.check(f"listed in {self.listing.name}", record is not None if listed else None,
                ("" if record else f"no entry at {st.address:#x} in {self.listing.name}") if listed
                else f"{self.listing.absent()}: the proof is the bytes and the handler hits")
        with self.phase("armed-bytes"):
            armed, site = self._wait_armed(baseline, record)
        r.probe["mechanism"] = site.mechanism
        r.probe["site_target"] = site.to_dict()["target"]
        r.bytes = {"before": baseline.hex(), "armed": armed.hex()}
        r.check("site armed", site.mechanism.armed,
                f"bytes {armed[:8].hex(' ')} → {site.mechanism}")
        if record and self.listing.source == DEBUGFS:
            r.check("bytes agree with list flags", agrees_with_flags(site.mechanism, record.flags),
                    f"{site.mechanism} vs {record.flags or '[]'}")
        # The trigger runs once: with registers wanted, its first hit stops at gdb's breakpoint on
        # the site and the rest of its hits are counted as they come. (QEMU 7.2 flushes all its
        # translated code on each breakpoint change: the guest then runs ≈0.2 s of CPU-bound
        # translating again, paid by whatever runs next; a second run of the trigger paid more.)
        mark = self.m.console.mark()
        if opt.registers:
            with self.phase("registers"):
                self._registers_at_hit()
        with self.phase("trigger"):
            self._trigger_and_count(mark)
        if opt.sysrq:
            with self.phase("sysrq"):
                self._sysrq()
        with self.phase("rmmod"):
            self._rmmod()
        with self.phase("restored"):
            after = self._wait_restored(baseline)
        r.bytes["after"] = after.hex()
        r.check("bytes restored after rmmod", after == baseline,
                "" if after == baseline else f"before {baseline[:8].hex(' ')} after {after[:8].hex(' ')}")
        r.evidence = [e for e, ok in ((self.listing.source, record is not None), ("bytes", site.mechanism.armed),
                                      ("hits", bool(r.hits))) if e and ok]

    # -- steps ---------------------------------------------------------------
    def _insmod(self, symbol: str) -> int:
        st, opt = self.run_state, self.opt
        params = (f"symbol={symbol} offset={self.offset} nonce={st.nonce} "
                  f"post={1 if opt.post_handler else 0}")
        if st.base and passes_address(self.m.kernel.release):   # the module cannot find it by name
            params += f" addr={st.base:#x}"
            self.report.probe["addr_param"] = f"{st.base:#x}"
        params = f"{params} {opt.module_params}".strip()
        mark = self.m.console.mark()
        # a debugfs list is read in the same round trip: the settle's first look at it
        listed = self.listing is not None and self.listing.source == DEBUGFS
        load = load_once(self.m, self.module.path, params, then=print_file(KPROBES_LIST) if listed else "")
        self._listed_at_load = load.then
        if not load.ok:
            raise ModuleLoadError(self._explain_refusal(symbol, load, mark), detail=self.m.console.tail(15))
        self._loaded = True
        m = self.m.console.expect(rf"vmprobe-armed nonce={st.nonce} .*addr=([0-9a-f]+)", 15,
                                  since=mark, what="the module's 'armed' line on the console",
                                  error=ModuleLoadError)
        return int(m[1], 16)

    def _explain_refusal(self, symbol: str, load: Load, mark: int) -> str:
        return explain_template(self.m, self.run_state.nonce, symbol, self.offset, load.said(), load.errno, mark)

    def _blacklisted(self, symbol: str) -> str | None:
        return blacklisted(self.m, symbol)

    def _settle(self) -> ProbeRecord | None:
        """Read the list until our probe's flags are final.

        A probe with a post handler, or one on an ftrace site, is armed for good
        when register_kprobe returns. Otherwise x86 may replace the int3 with a
        jump a few jiffies later (the optimizer): wait for [OPTIMIZED], or for
        the flags to stay put long enough that it is not coming.
        """
        opt, may_optimize = self.opt, self._may_optimize()
        if self.listing.source != DEBUGFS:   # no flags to wait for: _wait_armed watches the bytes
            return self._record()
        deadline = time.monotonic() + opt.settle_timeout
        last, stable_since = None, time.monotonic()
        first, self._listed_at_load = self._listed_at_load, None   # read with the load, if it was
        while True:
            record, first = self._record(first), None
            flags = tuple(record.flags) if record else None
            now = time.monotonic()
            if flags != last:
                last, stable_since = flags, now
            final = record is not None and (not may_optimize or "OPTIMIZED" in flags or "FTRACE" in flags)
            if final or now - stable_since >= 3.0 or now >= deadline:
                return record
            time.sleep(0.05)

    def _may_optimize(self) -> bool:
        return not self.opt.post_handler and self.m.kernel.kconfig.get("CONFIG_OPTPROBES") == "y"

    def _wait_armed(self, baseline: bytes, record: ProbeRecord | None):
        """Read the armed site; when the list says OPTIMIZED, wait (bounded) for the jump.

        The kernel flags a probe OPTIMIZED when it queues it for the optimizer;
        the jump is written a few jiffies later (later still on busy TCG guests).
        Without flags to read, a probe that may be optimized is watched until the
        jump shows, or until settle_timeout (then it stayed what it is).
        """
        deadline = time.monotonic() + self.opt.settle_timeout
        flagless = self.listing.source != DEBUGFS and self._may_optimize()
        while True:
            armed = self._read_site()
            site = self.m.profile.sites.classify(self.run_state.address, baseline, armed)
            waiting = (((record is not None and record.has("OPTIMIZED")) or flagless)
                       and site.mechanism != Mechanism.OPTIMIZED)
            if not waiting or time.monotonic() >= deadline:
                return armed, site
            time.sleep(0.05)

    def _trigger_and_count(self, mark: int) -> None:
        """Count the hits since ``mark``: of the trigger's run at the registers, else of a run now."""
        r, opt, st = self.report, self.opt, self.run_state
        trigger = opt.trigger or DEFAULT_TRIGGER
        res = self._triggered if self._triggered is not None else self.m.run(trigger, 60)
        r.probe["trigger"] = {"command": trigger, "status": res.status}
        pattern = rf"vmprobe-hit nonce={st.nonce} handler=pre "
        try:
            self.m.console.expect(pattern, opt.hit_timeout, since=mark, error=CommandTimeout,
                                  what=f"a pre-handler line after {trigger!r}")
        except CommandTimeout:
            pass
        r.hits = self._settled_count(pattern, mark)
        r.hits_counter = "module-lines"   # the module's nonce lines: no tracefs or debugfs needed
        post = self.m.console.count(rf"vmprobe-hit nonce={st.nonce} handler=post ", since=mark)
        r.probe["post_hits"] = post
        detail = f"{r.hits} pre-handler lines"
        if opt.post_handler:
            detail += f", {post} post-handler lines"
        r.check("handler hits", r.hits > 0, detail)
        m = re.search(rf"vmprobe-hit nonce={st.nonce} handler=pre addr=([0-9a-f]+) ip=([0-9a-f]+)",
                      self.m.console.since(mark))
        if m:
            r.probe["handler_addr"] = f"{int(m[1], 16):#x}"
            r.check("handler sees the probe address", int(m[1], 16) == st.address,
                    f"p->addr {int(m[1], 16):#x}")
        if opt.post_handler:
            dump = self.m.console.count(rf"vmprobe-task nonce={st.nonce} ", since=self._start_mark)
            r.probe["task_dump_lines"] = dump
            r.check("task dump from the post handler", dump > 0, f"{dump} tasks listed")

    def _settled_count(self, pattern: str, mark: int, quiet: float = 0.05, limit: float = 2.0) -> int:
        """Count lines once the console has stopped adding them (a burst drains)."""
        deadline = time.monotonic() + limit
        count = self.m.console.count(pattern, since=mark)
        while time.monotonic() < deadline:
            time.sleep(quiet)
            now = self.m.console.count(pattern, since=mark)
            if now == count:
                break
            count = now
        return count

    def _registers_at_hit(self, follow: list[int] = ()) -> Hit:
        r, st, p = self.report, self.run_state, self.m.profile
        trigger = self.opt.trigger or DEFAULT_TRIGGER
        # The command is made ready first and started once the breakpoint is set (starting it
        # forks, and a fork would hit a breakpoint on the fork path before the guest could
        # answer a new SSH session). On a hot function any task may get there first: the first
        # hit is taken and its task reported.
        layout, no_layout = task_layout_or_reason(self.m)
        started = self.m.prepare(trigger)
        try:
            hit = first_hit(self.gdb, st.address, [p.pc_register, p.flags_register],
                            go=started.go, layout=layout, no_layout=no_layout,
                            follow=follow, argument_register=p.argument_register)
        except BaseException:
            started.abandon()
            raise
        self._triggered = started.wait(60)
        pc, flags = hit.registers[p.pc_register], hit.registers[p.flags_register]
        r.registers_at_hit = {"pc": f"{pc:#x}", "flags": f"{flags:#x}", "trigger": trigger,
                              "names": [p.pc_register, p.flags_register], **hit.to_dict()}
        r.check("pc at the hit is the probe address", pc == st.address, f"{p.pc_register}={pc:#x}"
                + (f" (hit by {hit.task.comm} pid {hit.task.pid})" if hit.task else ""))
        return hit

    def _sysrq(self) -> None:
        sysrq_three_ways(self.m, self.report)

    def _rmmod(self) -> None:
        r, st = self.report, self.run_state
        mark = self.m.console.mark()
        # with a debugfs list, it is read in the same command (one guest round trip less)
        listed, sep = self.listing.source == DEBUGFS, f"vmprobe-list-{st.nonce}"
        res = self.m.run(f"rmmod {self.module.name}"
                         + (f"; s=$?; echo {sep}; {print_file(KPROBES_LIST)}; exit $s" if listed else ""), 60)
        said, _, list_text = res.stdout.partition(f"{sep}\n")
        r.check("rmmod", res.status == 0, (said + res.stderr).strip())
        if res.status == 0:
            self._loaded = False
        if self.opt.builtin_template and res.status == 0:
            m = self.m.console.expect(rf"vmprobe-disarmed nonce={st.nonce} .*pre_hits=(\d+) "
                                      rf"post_hits=(\d+) nmissed=(\d+)", 15, since=mark,
                                      what="the module's 'disarmed' line", error=CommandTimeout)
            r.probe["total_hits"] = {"pre": int(m[1]), "post": int(m[2]), "nmissed": int(m[3])}
        if self.listing.source:
            gone = (all(rec.address != st.address for rec in parse_debugfs_list(list_text)) if listed
                    else self._record() is None)
            r.check(f"gone from {self.listing.name} after rmmod", gone)

    def _wait_restored(self, baseline: bytes, timeout: float = 10) -> bytes:
        deadline = time.monotonic() + timeout
        while True:
            now = self._read_site()
            if now == baseline or time.monotonic() >= deadline:
                return now
            time.sleep(0.1)

    def _cleanup(self) -> None:
        if self._loaded and not self.kernel_damaged():
            with contextlib.suppress(Exception):
                self.m.run(f"rmmod {self.module.name}", 15)
        if self.gdb:
            self.gdb.close()
            self.gdb = None
        else:
            self.m.gdbs.close()   # started ahead, never taken (the check ended before)


def run_probe_check(machine: Machine, module: Module, options: ProbeOptions | None = None,
                    log=None) -> ProbeReport:
    """Run the whole check on a booted machine; returns the report (raises on vmprobe errors)."""
    return ProbeCheck(machine, module, options or ProbeOptions(), log).run()


__all__ = ["FORK_SYMBOLS", "ProbeOptions", "ProbeCheck", "fork_symbol", "resolve_symbols", "run_probe_check"]
