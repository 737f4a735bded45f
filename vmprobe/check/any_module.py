"""The probe check for any module: find every probe it registered, prove each one, count its hits.

A user's module says nothing vmprobe can parse, so everything comes from the
kernel and from the module itself: the probes are the new lines of
``kprobes/list`` (and fprobes, of ``enabled_functions``: check/fprobes.py)
after a single ``finit_module`` (check/loading.py); each one's bytes are read
before (from the function names among the module's strings and parameters),
armed and after rmmod through the gdbstub, its mechanism checked against its
list flags; its handlers are named from its struct in the module's data;
calls into them are counted by the function tracer while the trigger runs
(by gdb breakpoints for handlers it cannot trace); registers are read at a
hardware breakpoint on the first probe, whose handler the same task must
enter next. ``--symbol``/``--offset`` only assert that a probe at that site
is among them.
"""
from __future__ import annotations

import time

from vmprobe.arch import SITE_WINDOW, Mechanism, agrees_with_flags
from vmprobe.check import discovery, fprobes, hits
from vmprobe.check.discovery import Handlers, module_lines
from vmprobe.check.listing import DEBUGFS, KPROBES_LIST, Listing
from vmprobe.check.loading import load_once
from vmprobe.check.refusals import RegistrationTracer, explain
from vmprobe.errors import ModuleLoadError
from vmprobe.formats.kprobes_list import ProbeRecord
from vmprobe.modules.introspect import ModuleImage, read_image
from vmprobe.vm.hits import count_hits

#: bytes read from each candidate function before the module loads
BEFORE_WINDOW = 160
MAX_CANDIDATES = 16
#: handlers ftrace cannot trace are counted by gdb hardware breakpoints: at most this many
#: functions, and this many stops (each costs tens of ms of guest time under TCG)
HBREAK_MAX, HBREAK_CAP = 4, 200
HBREAK_COUNTER = "gdb-hardware-breakpoint"


class AnyModule:
    def __init__(self, check):
        self.c = check
        self.m = check.m
        self.r = check.report
        self.opt = check.opt
        self.image: ModuleImage = read_image(check.module)
        self.before: dict[int, bytes] = {}       # function base address → bytes before insmod
        self.probes: list[dict] = []
        self.records: list[ProbeRecord] = []
        self.handlers: list[Handlers] = []

    # -- the flow --------------------------------------------------------------
    def run(self) -> None:
        c, opt = self.c, self.opt
        listing = Listing.find(self.m)
        if listing.source != DEBUGFS:   # the built-in fork check proves a probe without it
            raise ModuleLoadError(f"no {KPROBES_LIST} on {self.m.kernel.release} ({listing.why}): a user's "
                                  f"module's probes are discovered from it (the built-in fork check does without)")
        with c.phase("resolve"):
            wanted = [opt.symbol] if opt.symbol else []
            candidates = self.image.symbol_candidates(opt.module_params)[:MAX_CANDIDATES]
            found = c.resolve(wanted + [n for n in candidates if n not in wanted])
        with c.phase("gdb-attach"):
            c.gdb = self.m.gdbs.take()
            c.gdb.attach(self.m.gdb_socket)
            c.gdb.cont()
        with c.phase("baseline"):
            for name, base in found.items():
                self.before[base] = c.gdb.read_memory(base, BEFORE_WINDOW)
        with c.phase("insmod"):
            self._load()
        self._assert_site(found)
        with c.phase("handlers"):
            self._read_handlers()
        with c.phase("settle"):
            self._settle()
        with c.phase("armed-bytes"):
            for p, rec in zip(self.probes, self.records):
                self._armed(p, rec)
        counter = self._counter()
        try:
            with c.phase("trigger"):
                self._trigger_and_count(counter)
            if opt.registers:
                with c.phase("registers"):
                    self._registers()
        finally:
            if counter.traced:
                counter.stop()
        if opt.sysrq:
            with c.phase("sysrq"):
                c._sysrq()
        with c.phase("rmmod"):
            self._rmmod()
        with c.phase("restored"):
            for p, rec in zip(self.probes, self.records):
                self._restored(p, rec)
        self._summarize()

    # -- load and discover -----------------------------------------------------
    def _load(self) -> None:
        c, m = self.c, self.m
        before, fbefore = c._list(), fprobes.listed(m)
        tracer = RegistrationTracer(m, self.m.profile.bits // 8)
        tracer.start()
        mark = m.console.mark()
        try:
            status = load_once(m, c.module.path, self.opt.module_params).errno
            registrations = tracer.read()
        finally:
            tracer.stop()
        time.sleep(0.2)   # let the console catch the module's last lines
        lines = module_lines(m.console.since(mark))
        self.r.module = {"name": c.module.name, "handlers_read_from": "the module's data in the guest",
                         "registrations": [x.to_dict() for x in registrations],
                         "load": {"loader": "vmprobe-insmod (one finit_module call)", "errno": status},
                         "kernel_lines": lines}
        if tracer.problem:
            self.r.module["registrations_unavailable"] = tracer.problem
        if status != 0:
            raise ModuleLoadError(explain(c.module.name, m.kernel.release, status, registrations, lines,
                                          c._blacklisted), detail="\n".join(lines[-15:]))
        c._loaded = True
        after = c._list()
        self.records = discovery.in_registration_order(discovery.discover(before, after), registrations)
        self.records += fprobes.new_records(m, fbefore, fprobes.listed(m))
        if not self.records:
            asked = ", ".join(x.site for x in registrations) or "nothing (no register_kprobe call was seen)"
            where = c.KPROBES_LIST + (" nor enabled_functions (fprobes)" if fprobes.supported(m.kernel) else "")
            raise ModuleLoadError(f"{c.module.name} loaded but registered no kprobe: {where} "
                                  f"has no new line (it asked for: {asked})",
                                  detail="\n".join(lines[-15:]))
        self.probes = [self._entry(rec, discovery.registered_offset(rec, registrations)) for rec in self.records]

    def _entry(self, rec: ProbeRecord, asked: int | None) -> dict:
        """``offset`` is what the module asked for; where the kernel moved it (IBT: sym+0 is armed
        at sym+4) the list's offset is ``list_offset`` and the difference ``moved_by``."""
        entry = {"symbol": rec.symbol, "offset": rec.offset, "address": f"{rec.address:#x}",
                 "kind": discovery.kind_of(rec), "list_type": rec.type, "list_flags": rec.flags,
                 "mechanism": None, "bytes": {"before": "", "armed": "", "after": ""}, "hits": None}
        if asked is not None and asked != rec.offset:
            entry.update(offset=asked, list_offset=rec.offset, moved_by=rec.offset - asked)
        return entry

    def _assert_site(self, found: dict[str, int]) -> None:
        opt, c = self.opt, self.c
        if not opt.symbol:
            return
        registered = ", ".join(f"{p['symbol']}+{p['offset']} ({p['kind']})" for p in self.probes)
        hint = " ".join(f"--symbol {p['symbol']} --offset {p['offset']}" for p in self.probes[:1])
        base = found.get(opt.symbol)
        if base is None:
            raise ModuleLoadError(f"symbol {opt.symbol} (--symbol) not found in kernel "
                                  f"{self.m.kernel.release}; {c.module.name} registered {registered} "
                                  f"(try {hint}, or leave --symbol out)")
        offset = opt.offset
        if offset == c.AFTER_ENTRY:
            offset = self.m.profile.sites.entry_offset(c.gdb.read_memory(base, 16))
        for p, rec in zip(self.probes, self.records):
            if offset is None and rec.symbol == opt.symbol:
                return
            if offset is not None and 0 <= rec.address - (base + offset) <= c.SLACK:
                p["asserted"] = True
                return
        where = opt.symbol if offset is None else f"{opt.symbol}+{offset}"
        raise ModuleLoadError(f"{c.module.name} registered no probe at {where} (--symbol/--offset): it "
                              f"registered {registered}; run with {hint}, or leave --symbol out")

    # -- per probe -------------------------------------------------------------
    def _before_bytes(self, address: int) -> bytes | None:
        for base, blob in self.before.items():
            if base <= address and address + SITE_WINDOW <= base + len(blob):
                return blob[address - base:address - base + SITE_WINDOW]
        return None

    def _read_handlers(self) -> None:
        c, m = self.c, self.m
        listing = m.run(f"cd /sys/module/{c.module.name}/sections && for f in .* *; do "
                        f"[ -f \"$f\" ] && echo \"$f $(cat \"$f\")\"; done", 30).stdout
        bases = discovery.section_bases(listing)
        memory = {}
        for name, size in self.image.data_sections.items():
            if name in bases and size <= 1 << 20:
                memory[bases[name]] = c.gdb.read_memory(bases[name], size)
        ptr = self.m.profile.bits // 8
        self.handlers = [fprobes.handlers(self.m, rec, self.image, bases, memory, ptr) if rec.type == "f"
                         else discovery.find_handlers(rec, self.image, bases, memory, ptr) for rec in self.records]
        for p, h in zip(self.probes, self.handlers):
            p["handlers"] = h.names()
            p["handlers_found"] = h.struct_address is not None
            if h.data_size is not None:
                p["data_size"] = h.data_size
            if h.maxactive is not None:
                p["maxactive"] = h.maxactive
            what = p["kind"]
            if p["kind"] == "kprobe" and h.struct_address is not None and not h.pre:
                what = "kprobe with only a post handler" if h.post else "kprobe without handlers"
            p["description"] = f"{what}: {h.describe()}"

    def _settle(self, quiet: float = 3.0) -> None:
        """Read the list until every probe's flags stop changing (the optimizer may turn an int3
        into a jump a few jiffies after registration)."""
        may = self.m.kernel.kconfig.get("CONFIG_OPTPROBES") == "y" and any(
            not h.post and "FTRACE" not in rec.flags for h, rec in zip(self.handlers, self.records))
        deadline = time.monotonic() + self.opt.settle_timeout
        last, since = None, time.monotonic()
        while may:
            now_list = {rec.address: tuple(rec.flags) for rec in self.c._list()}
            state = [now_list.get(rec.address) for rec in self.records]
            now = time.monotonic()
            if state != last:
                last, since = state, now
            if now - since >= quiet or now >= deadline:
                break
            time.sleep(0.1)
        flags = {rec.address: rec for rec in self.c._list()}
        for p, rec in zip(self.probes, self.records):
            if rec.address in flags:
                rec.flags = flags[rec.address].flags
                p["list_flags"] = rec.flags

    def _armed(self, p: dict, rec: ProbeRecord) -> None:
        c, r = self.c, self.r
        before = self._before_bytes(rec.address)
        label = f"{p['symbol']}+{p['offset']:#x}"
        deadline = time.monotonic() + self.opt.settle_timeout
        while True:
            armed = c.gdb.read_memory(rec.address, SITE_WINDOW)
            # not read before: compare with an unarmed fentry NOP, the only case the baseline decides
            sites = self.m.profile.sites
            site = sites.classify(rec.address, before if before is not None else sites.unarmed_guess(SITE_WINDOW),
                                  armed)
            if not (rec.has("OPTIMIZED") and site.mechanism != Mechanism.OPTIMIZED) or time.monotonic() >= deadline:
                break
            time.sleep(0.05)
        p["mechanism"] = site.mechanism
        p["bytes"] = {"before": before.hex() if before is not None else "", "armed": armed.hex(), "after": ""}
        if before is None:
            r.check(f"{label}: bytes before insmod", None,
                    f"{rec.symbol} is not among the module's strings or parameters: not read before insmod")
        r.check(f"{label}: site armed", site.mechanism not in ("unarmed", "unknown"),
                f"bytes {armed[:8].hex(' ')} → {site.mechanism}")
        r.check(f"{label}: bytes agree with list flags", agrees_with_flags(site.mechanism, rec.flags),
                f"{site.mechanism} vs {rec.flags or '[]'}")

    # -- hits ------------------------------------------------------------------
    def _counted(self, h: Handlers) -> list[str]:
        """The functions whose calls are this probe's hits: the pre (else post) handler of a
        kprobe, the return handler of a kretprobe; the entry handler is counted on its own."""
        return [n for n in (h.ret or h.pre or h.post, h.entry) if n]

    def _counter(self) -> hits.FunctionCounter:
        names = [n for h in self.handlers for n in h.names().values()]
        if not names:   # no struct found: count every function of the module but init/exit
            names = [f.name for f in self.image.functions
                     if not f.section.startswith((".init", ".exit")) and not f.name.endswith(".cold")]
        counter = hits.FunctionCounter(self.m, self.c.module.name, names)
        counter.start()
        self.r.hits_counter = hits.COUNTER if counter.traced else None
        return counter

    def _trigger_and_count(self, counter: hits.FunctionCounter) -> None:
        r, opt, m = self.r, self.opt, self.m
        trigger = opt.trigger or self.c.DEFAULT_TRIGGER
        # handlers ftrace cannot trace (e.g. __kprobes ones on 6.12) are counted by gdb instead
        untraced = {}
        for h in self.handlers:
            for n in self._counted(h):
                if n not in counter.traced and n in h.addresses and len(untraced) < HBREAK_MAX:
                    untraced[n] = h.addresses[n]
        by_gdb: dict[str, int] = {}
        capped = False
        if untraced:
            channel = m.ssh.start(f"read -r _go; {trigger}")
            got = count_hits(self.c.gdb, list(untraced.values()), start=lambda: channel.sendall(b"go\n"),
                             finished=getattr(channel, "exit_status_ready", None),   # SSH; serial: quiet
                             cap=max(opt.min_hits, HBREAK_CAP))
            res = m.ssh.wait(channel, trigger, 60)
            by_gdb = {n: got.counts[a] for n, a in untraced.items()}
            capped = got.capped
            r.module["hit_counts_by_gdb"] = {"per_function": by_gdb, "capped_at": HBREAK_CAP if capped else None,
                                             "seconds": round(got.seconds, 3)}
        else:
            res = m.run(trigger, 60)
        r.probe["trigger"] = {"command": trigger, "status": res.status}
        counts = counter.read()
        r.module["hit_counts"] = {"per_function": counts.per_function, "traced": counts.traced,
                                  "untraceable": counts.refused, "overruns": counts.overruns}

        def count(name: str | None) -> tuple[int | None, str | None]:
            if counts.of(name) is not None:
                return counts.of(name), hits.COUNTER
            if name in by_gdb:
                return by_gdb[name], HBREAK_COUNTER
            return None, None

        uses: dict[str, int] = {}
        for h in self.handlers:
            for n in set(h.names().values()):
                uses[n] = uses.get(n, 0) + 1
        for p, h in zip(self.probes, self.handlers):
            label = f"{p['symbol']}+{p['offset']:#x}"
            main = (h.ret or h.pre or h.post)
            p["hits"], p["hits_counter"] = count(main)
            if h.entry:
                p["entry_hits"] = count(h.entry)[0]
            if h.pre and h.post:
                p["post_hits"] = count(h.post)[0]
            shared = main is not None and uses.get(main, 0) > 1
            if shared:
                p["hits_shared_with_other_probes"] = True
            if p["hits"] is None:
                why = (f"{main} cannot be traced by ftrace" if main else "its handlers were not found")
                r.check(f"{label}: handler hits", None, why)
                continue
            more = " (at least: the trace buffer overran)" if counts.overruns else ""
            if p["hits_counter"] == HBREAK_COUNTER:
                more = f" (counted by gdb: ftrace cannot trace it{'; at least: capped' if capped else ''})"
            detail = f"{p['hits']} calls into {main}{more}"
            if h.entry:
                detail += f", {p['entry_hits']} into the entry handler {h.entry}"
                r.check(f"{label}: entry handler ran", (p["entry_hits"] or 0) >= opt.min_hits,
                        f"{p['entry_hits']} calls into {h.entry}")
            if shared:
                detail += " (handler shared with another probe)"
            r.check(f"{label}: handler hits ≥ {opt.min_hits}", p["hits"] >= opt.min_hits, detail)
        r.hits_counter = self.probes[0].get("hits_counter")

    def _registers(self) -> None:
        """Registers at a hardware breakpoint on the first probe's site; then, before anything
        else runs in that task, its handler must be entered: the probe fired at that stop."""
        c, r = self.c, self.r
        first, h = self.records[0], self.handlers[0]
        c.run_state.address = first.address
        # the handler this stop runs: pre (or post) of a kprobe, the entry handler of a kretprobe
        # (else its return handler, which runs later in the same task)
        main = h.pre or h.post or h.entry or h.ret
        address = h.addresses.get(main)
        hit = c._registers_at_hit(follow=[address] if address else [])
        if address is None:
            r.check("the probe fired at that stop", None, "its handler's address is unknown (no struct found)")
            return
        f = hit.follow
        if f.address is None:
            r.registers_at_hit["handler_at_stop"] = {"handler": main, **f.to_dict()}
            r.check("the probe fired at that stop (its handler ran next in that task)", False,
                    f"{main} was not entered by the task that hit within {f.seconds:.0f}s of the stop")
            return
        arg = f.argument if first.type in ("k", "f") and h.struct_address is not None else None   # struct kprobe/fprobe *
        record = {"handler": main, **f.to_dict()}
        if arg is not None:
            record["argument_is_the_probe"] = arg == h.struct_address
        r.registers_at_hit["handler_at_stop"] = record
        who = f"{f.task.comm} pid {f.task.pid}" if f.task else f"vCPU thread {f.thread}"
        detail = (f"{main} entered by {who}, the task that hit, {f.seconds:.3f}s after the stop"
                  if f.same_task else f"{main} entered on the same vCPU (no task information)")
        if arg is not None:
            detail += f"; its probe argument {arg:#x}" + ("" if arg == h.struct_address else
                                                          f" is not the probe's struct {h.struct_address:#x}")
        r.check("the probe fired at that stop (its handler ran next in that task)",
                f.same_task is not False and (arg is None or arg == h.struct_address), detail)

    # -- unload ----------------------------------------------------------------
    def _rmmod(self) -> None:
        c, r, m = self.c, self.r, self.m
        mark = m.console.mark()
        res = m.run(f"rmmod {c.module.name}", 60)
        r.check("rmmod", res.status == 0, res.output.strip())
        if res.status == 0:
            c._loaded = False
        time.sleep(0.2)
        r.module["kernel_lines"] = r.module.get("kernel_lines", []) + module_lines(m.console.since(mark))
        left = {rec.address for rec in c._list() if rec.type != "f"}
        left |= {rec.address for rec in fprobes.new_records(m, [], fprobes.listed(m))}
        stay = [f"{rec.symbol}+{rec.offset:#x}" for rec in self.records if rec.address in left]
        r.check("gone from kprobes/list after rmmod", not stay, ", ".join(stay))

    def _restored(self, p: dict, rec: ProbeRecord) -> None:
        before = bytes.fromhex(p["bytes"]["before"]) if p["bytes"]["before"] else None
        deadline = time.monotonic() + 10
        while True:
            after = self.c.gdb.read_memory(rec.address, SITE_WINDOW)
            if before is None or after == before or time.monotonic() >= deadline:
                break
            time.sleep(0.1)
        p["bytes"]["after"] = after.hex()
        label = f"{p['symbol']}+{p['offset']:#x}"
        if before is None:
            armed = bytes.fromhex(p["bytes"]["armed"])
            ok = self.m.profile.sites.classify(rec.address, armed, after).mechanism != self.m.profile.breakpoint_mechanism
            self.r.check(f"{label}: bytes changed back after rmmod", after.hex() != p["bytes"]["armed"] and ok)
        else:
            self.r.check(f"{label}: bytes restored after rmmod", after == before,
                         "" if after == before else f"before {before[:8].hex(' ')} after {after[:8].hex(' ')}")

    def _summarize(self) -> None:
        r, first = self.r, self.probes[0]
        r.probes = self.probes
        r.probe.update({k: first[k] for k in ("symbol", "offset", "address", "kind", "mechanism", "list_flags")})
        r.probe["moved_by"] = first.get("moved_by", 0)
        r.probe["handlers"] = first.get("handlers", {})
        r.probe["module"] = self.c.module.name
        r.bytes = dict(first["bytes"])
        r.hits = first["hits"]


def run_any_module(check) -> None:
    """Run the check of a user's module (``check`` is the ProbeCheck with its machine and report)."""
    AnyModule(check).run()
