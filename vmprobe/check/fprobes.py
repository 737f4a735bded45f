"""fprobes: function-entry (and exit) probes that ride ftrace and are not in ``kprobes/list``.

A registered fprobe shows in tracefs ``enabled_functions`` as the probed
function with an fprobe callback on its ftrace site (6.12)::

    kernel_clone (1) R   tramp: 0xffffffffc0407000 (fprobe_handler+0x0/0x240) ->fprobe_handler+0x0/0x240

so the fprobes a module registered are the new such lines after it loaded.
The site is the function's ftrace call (``available_filter_functions_addrs``,
6.5+), so its record carries the ``FTRACE`` flag: the bytes there must be an
ftrace call. Its handlers are read from the module's ``struct fprobe``, found
in the module's data by the ``ops.func`` pointer (the fprobe callback, its
first word) and read at the ``entry_handler``/``exit_handler`` offsets the
kernel's BTF gives.
"""
from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass

from vmprobe.check import tracefs
from vmprobe.check.discovery import Handlers
from vmprobe.check.symbols import resolve_symbols
from vmprobe.config import cache_dir
from vmprobe.formats import btf as btf_format
from vmprobe.formats.kprobes_list import ProbeRecord
from vmprobe.vm.tasks import NoTaskInfo, vmlinux_btf

#: ftrace callbacks that mean "an fprobe is on this function" (fprobe_kprobe_handler: shared with kprobes)
CALLBACKS = ("fprobe_handler", "fprobe_kprobe_handler")
_LINE = re.compile(r"^(?P<func>\S+)(?:\s+\[(?P<mod>[^\]]+)\])?\s+\((?P<refs>\d+)\)\s*(?P<flags>[A-Z ]*?)\s+"
                   r"(?:tramp: .*?)?->(?P<cb>\w+)\+")


@dataclass(frozen=True)
class Listed:
    function: str
    callback: str
    flags: str
    line: str


def parse_enabled_functions(text: str) -> list[Listed]:
    """The ``enabled_functions`` lines whose callback is an fprobe's."""
    found = []
    for line in text.splitlines():
        m = _LINE.match(line.strip())
        if m and m["cb"] in CALLBACKS:
            found.append(Listed(m["func"], m["cb"], m["flags"].strip(), line.strip()))
    return found


def supported(kernel) -> bool:
    return kernel.kconfig.get("CONFIG_FPROBE") == "y"


def listed(machine) -> list[Listed]:
    """The fprobes on ftrace sites now (empty on a kernel without them)."""
    if not supported(machine.kernel):
        return []
    return parse_enabled_functions(machine.run(tracefs.script("cat $T/enabled_functions"), 30).stdout)


def new_records(machine, before: list[Listed], after: list[Listed]) -> list[ProbeRecord]:
    """The fprobes ``after`` has and ``before`` had not, as probe records (type ``f``) at the
    function's ftrace site."""
    old = {(x.function, x.callback) for x in before}
    fresh = [x for x in after if (x.function, x.callback) not in old]
    if not fresh:
        return []
    names = "|".join(re.escape(x.function) for x in fresh)
    out = machine.run(tracefs.script(f"grep -E ' ({names})( |$)' $T/available_filter_functions_addrs"), 30).stdout
    sites = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[1] not in sites:
            sites[parts[1]] = int(parts[0], 16)
    bases = resolve_symbols(machine, [x.function for x in fresh])
    records = []
    for x in fresh:
        base = bases.get(x.function, 0)
        address = sites.get(x.function, base)   # before 6.5 no addresses are listed: the function's own
        records.append(ProbeRecord(address, x.function, address - base if base else 0, "f", None, ["FTRACE"],
                                   handler=x.callback))
    return records


def handler_offsets(kernel) -> dict[str, int] | None:
    """Offsets of ``entry_handler`` and ``exit_handler`` in ``struct fprobe`` (from the kernel's
    BTF, cached per image), or None when the BTF cannot tell."""
    key = kernel.image_sha256 or f"{kernel.release}-{kernel.image_path.stat().st_size}"
    path = cache_dir("tasklayout") / f"{key}-fprobe.json"
    try:
        return json.loads(path.read_text()) or None
    except (OSError, ValueError):
        pass
    try:
        info = btf_format.parse(vmlinux_btf(kernel), ("fprobe",))
    except (NoTaskInfo, btf_format.BtfError, OSError, ValueError):
        return None
    offsets = {}
    for name in ("entry_handler", "exit_handler"):
        member = info.member("fprobe", name)
        if member is not None:
            offsets[name] = member.offset
    path.write_text(json.dumps(offsets))
    return offsets or None


def find_handlers(callback: int, offsets: dict[str, int] | None, image, bases: dict[str, int],
                  memory: dict[int, bytes], ptr: int) -> Handlers:
    """The module's ``struct fprobe``: the word holding ``callback`` (its ``ops.func``), then the
    handler pointers at ``offsets``."""
    if not offsets or not callback:
        return Handlers()
    fmt = "<Q" if ptr == 8 else "<I"
    needle = struct.pack(fmt, callback)
    for base, blob in memory.items():
        at = blob.find(needle)
        while at >= 0:
            if at % ptr == 0:
                h = Handlers(struct_address=base + at)
                for field_name, attr in (("entry_handler", "entry"), ("exit_handler", "ret")):
                    off = at + offsets.get(field_name, -len(blob))
                    if 0 <= off <= len(blob) - ptr:
                        value = struct.unpack_from(fmt, blob, off)[0]
                        f = image.function_at(value, bases) if value else None
                        if f:
                            setattr(h, attr, f.name)
                            h.addresses[f.name] = value
                if h.entry or h.ret:
                    return h
            at = blob.find(needle, at + 1)
    return Handlers()


def handlers(machine, record: ProbeRecord, image, bases: dict[str, int], memory: dict[int, bytes],
             ptr: int) -> Handlers:
    """The handlers of the fprobe ``record`` (its callback named in the record), from the module."""
    callback = resolve_symbols(machine, [record.handler]).get(record.handler, 0) if record.handler else 0
    return find_handlers(callback, handler_offsets(machine.kernel), image, bases, memory, ptr)
