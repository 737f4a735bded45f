"""Old kbuild pieces without a 2.6 tree: the flags chosen by probing a tree (with the host's
gcc-12 for the option tests), the vermagic compiler override and the PLT32 → PC32 rewrite,
both on objects built here with gcc-12."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from vmprobe.errors import ModuleBuildError
from vmprobe.formats.elf import modinfo, section_names
from vmprobe.formats.relocs import count_type, rewrite_plt32
from vmprobe.modules import old_kbuild
from vmprobe.modules.old_kbuild import (
    BASE_FLAGS,
    TESTED_FLAGS,
    cc_accepts,
    extra_cflags,
    make_args,
    override_vermagic_compiler,
    probe_tree,
)

GCC = shutil.which("gcc-12") or shutil.which("gcc")
needs_gcc = pytest.mark.skipif(GCC is None, reason="no gcc on the host")
R_X86_64_PC32, R_X86_64_PLT32 = 2, 4


def _tree(tmp_path: Path, version=(2, 6, 11), arch_makefile: str = "", vermagic_gcc: bool = True) -> Path:
    tree = tmp_path / "linux"
    (tree / "arch/x86_64").mkdir(parents=True)
    (tree / "include/linux").mkdir(parents=True)
    (tree / "Makefile").write_text(f"VERSION = {version[0]}\nPATCHLEVEL = {version[1]}\n"
                                   f"SUBLEVEL = {version[2]}\nEXTRAVERSION =\n")
    (tree / "arch/x86_64/Makefile").write_text(arch_makefile)
    (tree / ".config").write_text("CONFIG_X86_64=y\nCONFIG_X86=y\n")
    (tree / "include/linux/vermagic.h").write_text(
        '#define VERMAGIC_STRING UTS_RELEASE " " MODULE_VERMAGIC_SMP MODULE_ARCH_VERMAGIC '
        + ('"gcc-" __stringify(__GNUC__) "." __stringify(__GNUC_MINOR__)' if vermagic_gcc else "") + "\n")
    return tree


def test_probe_tree_reads_version_arch_and_vermagic(tmp_path):
    facts = probe_tree(_tree(tmp_path, arch_makefile="CFLAGS += -mcmodel=kernel -fno-asynchronous-unwind-tables\n"))
    assert (facts.version, facts.arch, facts.is_old, facts.vermagic_has_compiler) == ((2, 6, 11), "x86_64", True, True)
    assert facts.gives("-fno-asynchronous-unwind-tables") and not facts.gives("-fno-pie")
    assert facts.code_model() == ("-mcmodel=kernel",)


@needs_gcc
def test_option_tests_need_fno_pie_in_front():
    """The measured trap: gcc-12 with the kernel code model refuses every option without -fno-pie."""
    assert not cc_accepts(GCC, "-mno-avx", ("-mcmodel=kernel",))
    assert cc_accepts(GCC, "-mno-avx", ("-mcmodel=kernel", "-fno-pie"))


@needs_gcc
def test_extra_cflags_for_an_old_tree_with_gcc12(tmp_path):
    tree = _tree(tmp_path, arch_makefile="CFLAGS += -mcmodel=kernel -fno-asynchronous-unwind-tables\n")
    flags = extra_cflags(probe_tree(tree), GCC)
    assert flags == [f for f in BASE_FLAGS if f != "-fno-asynchronous-unwind-tables"] + list(TESTED_FLAGS)
    assert flags.index("-fno-pie") < min(flags.index(f) for f in TESTED_FLAGS)   # the ordering rule
    assert make_args(tree, GCC) == [f"EXTRA_CFLAGS={' '.join(flags)}"]


def test_flags_the_compiler_refuses_are_dropped_and_every_test_has_fno_pie_first(tmp_path):
    seen = []

    def fake_run(cmd, **_kw):
        seen.append(cmd)
        ok = "-fcf-protection=none" not in cmd      # an old compiler without CET
        return subprocess.CompletedProcess(cmd, 0 if ok else 1)

    flags = extra_cflags(probe_tree(_tree(tmp_path)), "gcc-old", run=fake_run)
    assert "-fcf-protection=none" not in flags and "-mno-avx" in flags
    assert [c[-7] for c in seen] == list(TESTED_FLAGS)                  # only the tested ones are tested
    assert all(c.index("-fno-pie") < c.index(c[-7]) and "-mcmodel=kernel" in c for c in seen)


def test_modern_trees_get_nothing(tmp_path):
    tree = _tree(tmp_path, version=(6, 1, 0), vermagic_gcc=False)
    assert extra_cflags(probe_tree(tree), "gcc") == [] and make_args(tree, "gcc") == []


def _compile(tmp_path: Path, name: str, source: str, *flags: str) -> Path:
    src, obj = tmp_path / f"{name}.c", tmp_path / f"{name}.o"
    src.write_text(source)
    subprocess.run([GCC, "-O2", "-fno-pie", *flags, "-c", str(src), "-o", str(obj)], check=True,
                   capture_output=True, timeout=60)
    return obj


MODINFO = ('static const char v[] __attribute__((section(".modinfo"), used, aligned(1))) = '
           '"vermagic=2.6.11 SMP preempt gcc-12.2";\n'
           'static const char l[] __attribute__((section(".modinfo"), used, aligned(1))) = "license=GPL";\n')


@needs_gcc
def test_vermagic_compiler_follows_the_kernel(tmp_path):
    ko = _compile(tmp_path, "mod", MODINFO).read_bytes()
    assert modinfo(ko)["vermagic"] == ["2.6.11 SMP preempt gcc-12.2"]
    patched = override_vermagic_compiler(ko, "2.6.11 SMP preempt gcc-3.3")
    assert len(patched) == len(ko) and section_names(patched) == section_names(ko)
    info = modinfo(patched)
    assert info["vermagic"] == ["2.6.11 SMP preempt gcc-3.3"] and info["license"] == ["GPL"]
    assert override_vermagic_compiler(ko, "6.1.0-57-amd64 SMP mod_unload ") == ko   # modern: no compiler part
    with pytest.raises(ModuleBuildError, match="in more than the compiler"):
        override_vermagic_compiler(ko, "2.6.11 preempt gcc-3.3")               # not SMP: a real mismatch


def _readelf_types(obj: Path) -> list[str]:
    out = subprocess.run(["readelf", "-rW", str(obj)], capture_output=True, text=True, check=True).stdout
    return [line.split()[2] for line in out.splitlines() if " R_" in line]


@needs_gcc
def test_plt32_rewritten_to_pc32_and_the_object_still_links_the_same(tmp_path):
    caller = _compile(tmp_path, "caller", "extern void f(void);\nint g(void){ f(); f(); return 1; }\n")
    callee = _compile(tmp_path, "callee", "void f(void){}\n")
    before = _readelf_types(caller)
    assert before.count("R_X86_64_PLT32") == 2
    data, edits = rewrite_plt32(caller.read_bytes())
    assert [(e.section, e.count) for e in edits] == [(".rela.text", 2)]
    fixed = tmp_path / "fixed.o"
    fixed.write_bytes(data)
    after = _readelf_types(fixed)   # (.rela.eh_frame has PC32 entries of its own)
    assert "R_X86_64_PLT32" not in after and after.count("R_X86_64_PC32") == before.count("R_X86_64_PC32") + 2
    assert (count_type(data, R_X86_64_PLT32), count_type(data, R_X86_64_PC32)) == (0, after.count("R_X86_64_PC32"))
    assert len(data) == len(caller.read_bytes())
    linked = []
    for obj in (caller, fixed):   # no PLT in a static link: PLT32 and PC32 resolve the same
        out = tmp_path / f"{obj.stem}.elf"
        subprocess.run(["ld", "-e", "g", "-o", str(out), str(obj), str(callee)], check=True,
                       capture_output=True, timeout=60)
        linked.append(out.read_bytes())
    assert linked[0] == linked[1]
    assert rewrite_plt32(data) == (data, [])       # idempotent


def test_other_machines_are_left_alone(tmp_path):
    arm = shutil.which("aarch64-linux-gnu-gcc-12")
    if not arm:
        pytest.skip("no aarch64 cross compiler")
    src = tmp_path / "a.c"
    src.write_text("extern void f(void);\nvoid g(void){ f(); }\n")
    subprocess.run([arm, "-c", str(src), "-o", str(tmp_path / "a.o")], check=True, timeout=60)
    data = (tmp_path / "a.o").read_bytes()
    assert rewrite_plt32(data) == (data, [])


@needs_gcc
def test_finish_applies_both_to_a_module_for_an_old_tree(tmp_path):
    ko = tmp_path / "m.ko"
    ko.write_bytes(_compile(tmp_path, "m", MODINFO + "extern void f(void);\nvoid g(void){ f(); }\n").read_bytes())
    done = old_kbuild.finish(ko, _tree(tmp_path), "2.6.11 SMP preempt gcc-3.3", "x86_64")
    assert done == ["vermagic compiler", "1 PLT32 relocations → PC32"]
    assert modinfo(ko.read_bytes())["vermagic"] == ["2.6.11 SMP preempt gcc-3.3"]
    assert "R_X86_64_PLT32" not in _readelf_types(ko)
