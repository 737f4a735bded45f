"""Kernel symbols as the probe check needs them: text addresses from /proc/kallsyms, and
which of the fork functions this kernel has (``do_fork`` until 4.2, ``_do_fork``, then
``kernel_clone`` from 5.10: arch/eras.py's PROBE_ERAS)."""
from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

from vmprobe.arch.eras import era_fork_symbol
from vmprobe.errors import ProbeSiteError
from vmprobe.vm.machine import Machine

FORK_SYMBOLS = ("kernel_clone", "_do_fork", "do_fork")


def resolve_symbols(machine: Machine, names: list[str]) -> dict[str, int]:
    """Text addresses of ``names`` from /proc/kallsyms, first match each (as
    kallsyms_lookup_name returns). Reading kallsyms is slow under TCG (≈1 s): a
    warm machine answers from its snapshot's copy (restores share the layout);
    the guest is asked only when none of the names is there (e.g. a symbol of a
    module loaded since)."""
    names = [n for n in names if re.fullmatch(r"[\w.$]+", n)]
    if not names:
        return {}
    found: dict[str, int] = {}
    saved = machine.saved_kallsyms()
    if saved is not None:
        found = _text_symbols(_read(saved, saved.stat().st_mtime_ns), names)
        if found:
            return found
    alternation = "|".join(re.escape(n) for n in names)
    out = machine.run(f"grep -E ' [tTwW] ({alternation})( |$)' /proc/kallsyms", 30).stdout
    return _text_symbols(out, names)


def _text_symbols(kallsyms: str, names: list[str]) -> dict[str, int]:
    """The first text symbol line of each name (``ADDR t NAME`` or ``ADDR t NAME\t[module]``),
    found with str.find: a warm copy of kallsyms is 4 MB, too much to split into lines per check."""
    found = {}
    for name in dict.fromkeys(names):
        needle = f" {name}"
        at = kallsyms.find(needle)
        while at >= 0:
            end = at + len(needle)
            if (end == len(kallsyms) or kallsyms[end] in "\n\t ") and kallsyms[at - 1:at] in ("t", "T", "w", "W") \
                    and kallsyms[at - 2:at - 1] == " ":
                line = kallsyms.rfind("\n", 0, at) + 1
                try:
                    found[name] = int(kallsyms[line:at - 2], 16)
                    break
                except ValueError:
                    pass
            at = kallsyms.find(needle, at + 1)
    return found


@lru_cache(maxsize=2)
def _read(path: Path, mtime_ns: int) -> str:
    """A saved kallsyms copy, read once per process (a live VM's supervisor checks many times)."""
    return path.read_text(errors="replace")


def fork_symbol(kernel_release: str, present: dict[str, int]) -> str:
    """The kernel's central fork function: its era's (by version), if kallsyms has it; else the
    newest name kallsyms has (a kernel whose version cannot be read, or a backport)."""
    chosen = era_fork_symbol(kernel_release)
    if chosen in present:
        return chosen
    for name in FORK_SYMBOLS:
        if name in present:
            return name
    raise ProbeSiteError(f"none of {', '.join(FORK_SYMBOLS)} is in /proc/kallsyms of {kernel_release}")
