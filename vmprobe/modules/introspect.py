"""What a built module holds, read from its ``.ko``: its functions, data sections and strings.

The probe check needs three things a module does not say out loud: the names
of its handler functions (to count calls into them and to describe them), the
sections its ``struct kprobe``/``kretprobe`` may live in (to read them in the
running guest) and the function names it may probe (its strings, to read a
site's bytes before the module is loaded).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from vmprobe.formats import elf
from vmprobe.modules.kbuild import Module

#: sections a statically defined struct kprobe/kretprobe can live in
DATA_PREFIXES = (".data", ".bss")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*")


@dataclass(frozen=True)
class Function:
    name: str
    section: str
    offset: int       # into its section
    size: int


@dataclass
class ModuleImage:
    name: str
    functions: list[Function] = field(default_factory=list)
    sections: dict[str, int] = field(default_factory=dict)   # name → size
    strings: list[str] = field(default_factory=list)

    @property
    def data_sections(self) -> dict[str, int]:
        return {n: s for n, s in self.sections.items()
                if n.startswith(DATA_PREFIXES) and not n.startswith((".data.once",)) and s > 0}

    def symbol_candidates(self, params: str = "") -> list[str]:
        """Names the module may probe: identifiers among its strings and parameter values."""
        values = [v for item in params.split() for v in [item.partition("=")[2]] if v]
        seen: list[str] = []
        for s in values + self.strings:
            if _IDENT.fullmatch(s) and s not in seen:
                seen.append(s)
        return seen

    def function_at(self, address: int, bases: dict[str, int]) -> Function | None:
        """The module function at a runtime ``address``, given its sections' runtime bases."""
        for f in self.functions:
            base = bases.get(f.section)
            if base is not None and base + f.offset <= address < base + f.offset + max(f.size, 1):
                return f
        return None


def read_image(module: Module) -> ModuleImage:
    data = elf.read_module(module.path)
    functions = [Function(n, sec, value, size) for n, sec, value, size, kind in elf.symbols(data)
                 if kind == "func"]
    texts = elf.strings(data, ".rodata") + elf.strings(data, ".data")   # char arrays live in .data
    return ModuleImage(module.name, functions, elf.section_sizes(data), texts)
