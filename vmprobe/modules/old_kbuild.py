"""Out-of-tree modules for 2.6-era trees, built with today's gcc and binutils.

Measured on a real 2.6.11 x86_64 tree (gcc 3.3.5) built against with gcc 12 /
binutils 2.40 (README, "Old kernels"):

* **flags** — the tree predates PIE-by-default compilers, C99 inline semantics,
  stack protectors, CET and vectorising loops: :data:`BASE_FLAGS` always, then
  :data:`TESTED_FLAGS` if the compiler takes them. The test must have
  ``-fno-pie`` (and the tree's code model) in front of the tested flag: the tree's
  own ``cc-option`` runs ``$(CC) $(CFLAGS) flag``, and with ``-mcmodel=kernel``
  alone gcc 12 says "code model kernel does not support PIC mode", every test
  fails and the flags are silently dropped. Flags the tree's Makefiles already
  give are left out.
* **vermagic** — 2.6 puts the compiler in vermagic (``gcc-3.3``): the module's
  must be the kernel's, not ``gcc-12.2``. :func:`override_vermagic_compiler`
  edits ``.modinfo`` in place.
* **relocations** — PLT32 → PC32 (:mod:`vmprobe.formats.relocs`), for loaders
  before 4.16 (x86_64) / 5.12 (i386).
"""
from __future__ import annotations

import io
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from elftools.elf.elffile import ELFFile

from vmprobe.arch import PROFILES, profile_by_name
from vmprobe.errors import ModuleBuildError
from vmprobe.formats.relocs import rewrite_plt32

BASE_FLAGS = ("-fno-pie", "-fgnu89-inline", "-fno-stack-protector", "-fno-asynchronous-unwind-tables",
              "-mno-sse", "-mno-mmx", "-mno-sse2", "-mno-3dnow")
TESTED_FLAGS = ("-mno-avx", "-fcf-protection=none", "-fno-tree-loop-distribute-patterns",
                "-fno-delete-null-pointer-checks")
OLD_BEFORE = (3, 0)                 # 2.6 trees get the old-kbuild treatment
_GCC = re.compile(r"\bgcc-\d+\.\d+\b")


@dataclass(frozen=True)
class TreeFacts:
    """What a kernel build tree says about itself, read from its files."""

    version: tuple[int, ...] | None
    arch: str                      # x86_64 / i386 / … (the tree's arch dir or .config)
    makefiles: str                 # the top and arch Makefiles' text
    vermagic_has_compiler: bool    # include/linux/vermagic.h puts gcc-X.Y in

    @property
    def is_old(self) -> bool:
        return self.version is not None and self.version < OLD_BEFORE

    def gives(self, flag: str) -> bool:
        """The tree's Makefiles add this flag themselves (literally or through cc-option)."""
        return flag.lower() in self.makefiles.lower()

    def code_model(self) -> tuple[str, ...]:
        profile = profile_by_name(self.arch) if self.arch else None
        return profile.code_model_cflags if profile else ()


def probe_tree(tree: Path) -> TreeFacts:
    def read(rel: str) -> str:
        try:
            return (tree / rel).read_text(errors="replace")
        except OSError:
            return ""

    top = read("Makefile")
    nums = [re.search(rf"^{k}\s*=\s*(\d+)", top, re.M) for k in ("VERSION", "PATCHLEVEL", "SUBLEVEL")]
    version = tuple(int(m[1]) for m in nums if m) if nums[0] and nums[1] else None
    config = read(".config")
    profiles = [p for p in PROFILES.values() if p.config_symbol]
    arch = next((p.name for p in profiles if f"{p.config_symbol}=y" in config), "")
    if not arch and "CONFIG_X86=y" in config:  # 32-bit x86 configs had no CONFIG_X86_32 before 2.6.24
        arch = next(p.name for p in profiles if p.old_arch_dir and p.bits == 32)
    if not arch:
        arch = next((p.name for p in profiles if p.old_arch_dir and (tree / "arch" / p.old_arch_dir).is_dir()), "")
    arch_mk = "".join(read(f"arch/{d}/Makefile") for d in ("x86", *(p.old_arch_dir for p in profiles if p.old_arch_dir)))
    vermagic = read("include/linux/vermagic.h")
    return TreeFacts(version, arch, top + arch_mk, "__GNUC__" in vermagic and "gcc-" in vermagic)


def cc_accepts(cc: str, flag: str, before: tuple[str, ...] = (), run=subprocess.run) -> bool:
    """cc-option done right: does ``cc`` compile with ``flag`` after ``before``?"""
    cmd = [cc, "-Werror", *before, flag, "-S", "-o", "/dev/null", "-x", "c", "/dev/null"]
    try:
        return run(cmd, capture_output=True, timeout=60, stdin=subprocess.DEVNULL).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def extra_cflags(facts: TreeFacts, cc: str, run=subprocess.run) -> list[str]:
    """The flags an old tree needs from this compiler, in order: the base ones, then the
    tested ones (each tested with ``-fno-pie`` and the tree's code model in front)."""
    if not facts.is_old:
        return []
    flags = [f for f in BASE_FLAGS if not facts.gives(f)]
    before = (*facts.code_model(), "-fno-pie")
    flags += [f for f in TESTED_FLAGS if not facts.gives(f) and cc_accepts(cc, f, before, run)]
    return flags


def make_args(tree: Path, cc: str, run=subprocess.run) -> list[str]:
    """Extra ``make`` arguments for an out-of-tree build against ``tree`` ([] for a modern tree).
    ``EXTRA_CFLAGS`` is what 2.6 kbuild adds to every object of the external module."""
    flags = extra_cflags(probe_tree(tree), cc, run)
    return [f"EXTRA_CFLAGS={' '.join(flags)}"] if flags else []


def override_vermagic_compiler(ko: bytes, kernel_vermagic: str) -> bytes:
    """The module with its vermagic's compiler part (``gcc-12.2``) made the kernel's (``gcc-3.3``).

    Everything else in vermagic must already match (SMP, preempt, …: a real mismatch is
    refused, not papered over). Edited in place in ``.modinfo``: the string may only shrink
    (the kernel skips the NUL padding between modinfo entries).
    """
    want = _GCC.search(kernel_vermagic)
    sec = ELFFile(io.BytesIO(ko)).get_section_by_name(".modinfo")
    if want is None or sec is None:
        return ko
    start, size = sec["sh_offset"], sec["sh_size"]
    raw = ko[start:start + size]
    at = raw.find(b"vermagic=")
    if at < 0:
        return ko
    end = raw.index(b"\0", at)
    current = raw[at + len(b"vermagic="):end].decode()
    have = _GCC.search(current)
    if have is None or have[0] == want[0]:
        return ko
    new = current[:have.start()] + want[0] + current[have.end():]
    if new.split() != kernel_vermagic.split():
        raise ModuleBuildError(f"the module's vermagic {current!r} differs from the kernel's "
                               f"{kernel_vermagic!r} in more than the compiler")
    if len(new) > len(current):
        raise ModuleBuildError(f"cannot make vermagic {current!r} into the longer {new!r} in place")
    patched = new.encode().ljust(len(current), b"\0")
    out = bytearray(ko)
    out[start + at + len(b"vermagic="):start + end] = patched
    return bytes(out)


def finish(ko_path: Path, tree: Path, kernel_vermagic: str, kernel_arch: str) -> list[str]:
    """Make a freshly built module loadable by an old kernel; returns what was changed."""
    facts = probe_tree(tree)
    if not facts.is_old:
        return []
    data = ko_path.read_bytes()
    done = []
    patched = override_vermagic_compiler(data, kernel_vermagic) if facts.vermagic_has_compiler else data
    if patched != data:
        done.append("vermagic compiler")
    profile = profile_by_name(kernel_arch)
    if profile and profile.plt32_since and facts.version < profile.plt32_since:
        patched, edits = rewrite_plt32(patched)
        if edits:
            done.append(f"{sum(e.count for e in edits)} PLT32 relocations → PC32")
    if patched != data:
        ko_path.write_bytes(patched)
    return done
