"""What a module asked the kernel for, and why the kernel (or the module) said no.

While the module loads, kprobe events on ``register_kprobe`` and
``register_kretprobe`` record each registration the module makes: the
``struct kprobe``'s ``symbol_name``, ``offset`` and ``addr`` (read from the
first argument) and the return value. So a refusal names the symbol the
module asked for, not the one given on the command line, and an init that
fails on its own is told from a registration the kernel refused.
"""
from __future__ import annotations

import contextlib
import errno
import os
import re
from dataclasses import dataclass

from vmprobe.check import tracefs
from vmprobe.errors import VmprobeError

GROUP = "vmprobe_reg"
_LINE = re.compile(r"\s(?P<event>kp|kpret|krp|krpret): \((?P<where>[^)]*)\)(?P<args>.*)$")


@dataclass
class Registration:
    kind: str                 # kprobe | kretprobe
    symbol: str | None        # symbol_name as the module set it
    offset: int
    addr: int                 # kp.addr as the module set it (0: by name)
    ret: int | None = None    # what register_* returned

    @property
    def site(self) -> str:
        if self.symbol:
            return f"{self.symbol}+{self.offset}"
        return f"{self.addr:#x}" if self.addr else "?"

    def to_dict(self) -> dict:
        return {"kind": self.kind, "symbol": self.symbol, "offset": self.offset,
                "addr": f"{self.addr:#x}", "ret": self.ret}


def _fetch(ptr: int) -> str:
    """Fetch args for a struct kprobe at $arg1 (its fields: 2 hlist + 2 list + nmissed, then
    addr, symbol_name, offset; ``ptr`` is the pointer size)."""
    kind = "x64" if ptr == 8 else "x32"
    return (f"addr=+{5 * ptr}($arg1):{kind} sym=+0(+{6 * ptr}($arg1)):string "
            f"off=+{7 * ptr}($arg1):u32")


class RegistrationTracer:
    """kprobe events on register_kprobe/register_kretprobe while a module loads (best effort)."""

    def __init__(self, machine, pointer_size: int):
        self.m = machine
        self.ptr = pointer_size
        self.active = False
        self.problem: str | None = None

    def start(self) -> None:
        f = _fetch(self.ptr)
        res = self.m.run(tracefs.script(
            "echo 0 > $T/tracing_on", "echo > $T/trace",
            f"echo 'p:{GROUP}/kp register_kprobe {f}' >> $T/kprobe_events",
            f"echo 'r:{GROUP}/kpret register_kprobe ret=$retval:s32' >> $T/kprobe_events",
            f"echo 'p:{GROUP}/krp register_kretprobe {f}' >> $T/kprobe_events",
            f"echo 'r:{GROUP}/krpret register_kretprobe ret=$retval:s32' >> $T/kprobe_events",
            f"echo 1 > $T/events/{GROUP}/enable", "echo 1 > $T/tracing_on"), 30)
        self.active = res.status == 0
        if not self.active:
            self.problem = res.output.strip()[-200:]
            self.stop()

    def read(self) -> list[Registration]:
        if not self.active:
            return []
        return parse_registrations(self.m.run(tracefs.script("cat $T/trace"), 30).stdout)

    def stop(self) -> None:
        with contextlib.suppress(VmprobeError):
            self.m.run(tracefs.script(
                f"echo 0 > $T/events/{GROUP}/enable 2>/dev/null",
                *[f"echo '-:{GROUP}/{e}' >> $T/kprobe_events 2>/dev/null" for e in ("kp", "kpret", "krp", "krpret")],
                "echo > $T/trace", "true"), 30)
        self.active = False


def parse_registrations(trace: str) -> list[Registration]:
    """Registrations in trace order; a register_kretprobe's inner register_kprobe folds into it."""
    done: list[Registration] = []
    stack: list[Registration] = []
    for line in trace.splitlines():
        m = _LINE.search(line)
        if not m:
            continue
        args = dict(re.findall(r'(\w+)=("[^"]*"|\S+)', m["args"]))
        if m["event"] in ("kp", "krp"):
            sym = args.get("sym", "").strip('"')
            reg = Registration("kretprobe" if m["event"] == "krp" else "kprobe",
                               sym if sym and sym != "(fault)" else None,
                               int(args.get("off", "0"), 0), int(args.get("addr", "0"), 16))
            if m["event"] == "kp" and stack and stack[-1].kind == "kretprobe":
                reg.kind = "kretprobe-inner"
            stack.append(reg)
        elif stack:
            reg = stack.pop()
            reg.ret = int(args.get("ret", "0"))
            if reg.kind != "kretprobe-inner":
                done.append(reg)
    return done


def errname(code: int) -> str:
    return f"-{errno.errorcode.get(code, code)}"


def explain(module: str, release: str, status: int, registrations: list[Registration],
            lines: list[str], blacklisted) -> str:
    """The message for a module that did not load. ``status`` is the loader's errno;
    ``blacklisted(symbol)`` says whether (and why) a symbol is on the kprobe blacklist."""
    failed = next((r for r in registrations if r.ret is not None and r.ret < 0), None)
    last = "; ".join(lines[-4:]) or "none"
    if failed:
        code = -failed.ret
        call = f"register_{failed.kind} returned {errname(code)}"
        asked = f"{module} asked for {failed.site}"
        sym = failed.symbol or failed.site
        if code == errno.ENOENT:
            return f"{asked}: symbol {sym} not found in kernel {release} ({call})"
        if code == errno.EILSEQ:
            return (f"{asked}: offset {failed.offset} into {sym} is not an instruction boundary "
                    f"in kernel {release} ({call})")
        if code == errno.EINVAL:
            why = blacklisted(sym) if failed.symbol else None
            if why:
                return f"{asked}: {failed.site} cannot be probed in kernel {release}: {why} ({call})"
            if failed.kind == "kretprobe" and failed.offset:
                return (f"{asked}: a kretprobe must be on a function's entry, not at +{failed.offset} "
                        f"({call})")
            return (f"{asked}: {failed.site} cannot be probed in kernel {release}: it is not probeable "
                    f"kernel text (notrace or reserved) ({call})")
        return f"{asked}: kernel {release} refused it: {os.strerror(code)} ({call})"
    if status:
        made = (f"; its {len(registrations)} registration(s) succeeded" if registrations else "")
        return (f"{module}'s init failed with {errname(status)} ({os.strerror(status)}){made}; "
                f"its last kernel lines: {last}")
    return f"{module} did not load; its last kernel lines: {last}"


def blacklisted(m, symbol: str) -> str | None:
    """Whether (and why) ``symbol`` is on the kernel's kprobe blacklist (None: not, or no debugfs)."""
    out = m.run("cat /sys/kernel/debug/kprobes/blacklist 2>/dev/null", 15).stdout
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[1] == symbol:
            return f"{symbol} is on the kprobe blacklist ({parts[0]})"
    return None


def explain_template(m, nonce: str, symbol: str, offset: int, load_said: str, load_errno: int | None,
                     mark: int) -> str:
    """Why the built-in fork probe did not load: its own error line (register_kprobe's code), else the
    load call's (``load_said``, ``load_errno``: check/loading.py)."""
    k = m.kernel
    code = None
    with contextlib.suppress(VmprobeError):
        found = m.console.expect(rf"vmprobe-error nonce={nonce} .*register_kprobe=(-?\d+)",
                                 3, since=mark, what="the module's error line")
        code = -int(found[1])
    where = f"{symbol}+{offset}"
    said = f"register_kprobe returned {errname(code)}" if code else load_said
    if code == errno.ENOENT or (code is None and load_errno == errno.ENOENT):
        return f"symbol {symbol} not found in kernel {k.release} ({said})"
    if code == errno.EILSEQ:
        return f"offset {offset} into {symbol} is not an instruction boundary in kernel {k.release} ({said})"
    if code == errno.EINVAL:
        why = blacklisted(m, symbol)
        return (f"{where} cannot be probed in kernel {k.release}: "
                f"{why or 'it is not probeable kernel text (blacklisted, notrace or reserved)'} ({said})")
    if code == errno.EOPNOTSUPP:
        return f"{where}: the instruction there cannot be probed in kernel {k.release} ({said})"
    detail = os.strerror(code) if code else ""
    return f"kernel {k.release} refused to arm {where}: {detail} ({said})".replace(":  (", ": (")
