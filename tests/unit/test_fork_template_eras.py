"""The fork probe across kernel eras: the era table's choices (arch/eras.py PROBE_ERAS), and the
template's LINUX_VERSION_CODE branches, preprocessed with a fake version at each boundary.

There is no 2.6 tree here to compile against (the registries serve none): the 2.6 branch is
checked by the preprocessor — which field names, which function and which kprobe members it
uses — and type-checked (gcc -fsyntax-only -Werror) against a transcription of the 2.6.11 API
it uses (data/linux-2.6.11-api.h), which is not a build. The modern branches are compiled for
real against Debian's headers in tests/vm/test_fork_template_build.py.
"""
from __future__ import annotations

import functools
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from vmprobe.arch.eras import PROBE_ERAS, era_fork_symbol, kernel_version, passes_address, probe_eras
from vmprobe.check.symbols import fork_symbol
from vmprobe.modules import FORK_PROBE

API_2_6_11 = Path(__file__).parent / "data" / "linux-2.6.11-api.h"

CPP_ARCH = {"x86_64": "__x86_64__", "i386": "__i386__", "arm64": "__aarch64__"}


@functools.lru_cache(maxsize=None)
def preprocess(version: tuple[int, int, int], arch: str = "x86_64") -> str:
    """The template as a kernel of ``version`` on ``arch`` compiles it (its #includes left out)."""
    cpp = shutil.which("cpp") or pytest.skip("no cpp on this host")
    body = "\n".join(line for line in FORK_PROBE.read_text().splitlines() if not line.startswith("#include"))
    head = "#define KERNEL_VERSION(a, b, c) (((a) << 16) + ((b) << 8) + (c))\n"
    code = (version[0] << 16) + (version[1] << 8) + version[2]
    out = subprocess.run([cpp, "-P", "-undef", f"-D{CPP_ARCH[arch]}", f"-DLINUX_VERSION_CODE={code}", "-"],
                         input=head + body, capture_output=True, text=True, check=True, timeout=60)
    return out.stdout


def pad(v: tuple[int, ...]) -> tuple[int, int, int]:
    return (*v, 0, 0)[:3]


def before(v: tuple[int, ...]) -> tuple[int, int, int]:
    """The last version below ``v`` (2.6.25 → 2.6.24, 4.2 → 4.1.255)."""
    a, b, c = pad(v)
    return (a, b, c - 1) if c else (a, b - 1, 255) if b else (a - 1, 255, 255)


# -- the table ---------------------------------------------------------------------------

def test_every_row_says_why_and_has_a_range():
    assert len({e.name for e in PROBE_ERAS}) == len(PROBE_ERAS)
    for e in PROBE_ERAS:
        assert e.why and (e.until or e.since), e


def test_fork_symbol_rows_cover_every_version_once():
    rows = sorted((e for e in PROBE_ERAS if e.fork_symbol), key=lambda e: e.since or ())
    assert rows[0].since is None and rows[-1].until is None
    for a, b in zip(rows, rows[1:]):
        assert a.until == b.since, (a.name, b.name)


@pytest.mark.parametrize("release, symbol, address", [
    ("2.6.8.1", "do_fork", True), ("2.6.11-smp", "do_fork", True), ("2.6.32-5-amd64", "do_fork", True),
    ("2.6.33", "do_fork", False), ("3.16.0-6-amd64", "do_fork", False), ("4.2.0", "_do_fork", False),
    ("4.19.0-27-amd64", "_do_fork", False), ("5.9.16", "_do_fork", False),
    ("5.10.0-46-cloud-amd64", "kernel_clone", False), ("6.12.118+deb13-cloud-amd64", "kernel_clone", False),
])
def test_era_choice(release, symbol, address):
    assert era_fork_symbol(release) == symbol
    assert passes_address(release) is address


def test_unreadable_version_chooses_nothing():
    assert probe_eras("local") == () and era_fork_symbol("") is None and not passes_address("x")


def test_fork_symbol_prefers_the_era_then_what_kallsyms_has():
    # a kernel with both names (a do_fork wrapper): the era's
    assert fork_symbol("4.19.0", {"do_fork": 1, "_do_fork": 2}) == "_do_fork"
    assert fork_symbol("2.6.11", {"do_fork": 1}) == "do_fork"
    # a backport or a version that cannot be read: the newest name kallsyms has
    assert fork_symbol("5.4.0", {"kernel_clone": 1}) == "kernel_clone"
    assert fork_symbol("local", {"_do_fork": 1, "do_fork": 2}) == "_do_fork"


# -- the template at each boundary ------------------------------------------------------

@pytest.mark.parametrize("row", [e for e in PROBE_ERAS if e.fork_symbol], ids=lambda e: e.name)
def test_template_default_symbol_follows_the_table(row):
    for v in filter(None, (row.since, row.until and before(row.until))):
        text = preprocess(pad(v))
        assert f'*symbol = "{row.fork_symbol}"' in text, (v, row.name)


def test_the_2_6_11_branch():
    """What the measured 2.6.11 x86_64 tree has: rip, eflags, a fault handler, no symbol_name,
    no nmissed (2.6.13), int bool params, the tasklist lock, thread_info pointer."""
    text = preprocess((2, 6, 11))
    assert "(regs)->rip" in text and "(regs)->eflags" in text and "(regs)->flags" not in text
    assert "kp.fault_handler = handler_fault" in text
    assert "kp.symbol_name" not in text and "kp.addr = (kprobe_opcode_t *)(addr + offset)" in text
    assert "nmissed = kp.nmissed" not in text
    assert re.search(r"typedef int param_bool;", text)
    assert "read_lock(&tasklist_lock)" in text and "->thread_info->flags" in text
    assert "do_each_thread" in text and "task_pid_nr" not in text
    for modern in ("pr_info", "%px", "atomic_long", "READ_ONCE", "for_each_process_thread", "task_thread_info"):
        assert modern not in text, modern


def test_i386_before_2_6_25_reads_eip():
    text = preprocess((2, 6, 24), "i386")
    assert "->eip" in text and "->eflags" in text
    new = preprocess((2, 6, 25), "i386")
    assert "(regs)->ip" in new and "(regs)->flags" in new and "->eip" not in new


@pytest.mark.parametrize("name, marker", [
    ("pt_regs-register-names", "->eflags"),
    ("fault-handler", "kp.fault_handler = handler_fault"),
])
def test_template_member_boundaries_follow_the_table(name, marker):
    row = next(e for e in PROBE_ERAS if e.name == name)
    assert marker in preprocess(before(row.until))
    assert marker not in preprocess(pad(row.until))


def test_symbol_name_only_where_the_struct_has_it():
    assert "kp.symbol_name = symbol" not in preprocess((2, 6, 18))
    assert "kp.symbol_name = symbol" in preprocess((2, 6, 19))
    # every kernel the tool passes no address to can find the site by name
    row = next(e for e in PROBE_ERAS if e.pass_address)
    assert kernel_version("2.6.19") < row.until


def test_the_2_6_11_branch_type_checks_against_2_6_11_declarations(tmp_path):
    """Every name and field the 2.6 branch uses exists in 2.6.11's API, with its types
    (e.g. a bool parameter that is not an int, or kp.symbol_name, would fail here)."""
    gcc = shutil.which("gcc") or pytest.skip("no gcc on this host")
    body = "\n".join(line for line in FORK_PROBE.read_text().splitlines() if not line.startswith("#include"))
    src = tmp_path / "vmprobe_fork_2_6_11.c"
    src.write_text("#define KERNEL_VERSION(a, b, c) (((a) << 16) + ((b) << 8) + (c))\n"
                   "#define LINUX_VERSION_CODE KERNEL_VERSION(2, 6, 11)\n"
                   f'#include "{API_2_6_11}"\n' + body)
    res = subprocess.run([gcc, "-fsyntax-only", "-std=gnu89", "-Wall", "-Werror", "-Wno-unused-function",
                          "-Wno-unused-variable", "-ffreestanding", str(src)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    # and the same declarations refuse what only later kernels have
    later = src.read_text().replace("KERNEL_VERSION(2, 6, 11)\n", "KERNEL_VERSION(5, 10, 0)\n", 1)
    src.write_text(later)
    res = subprocess.run([gcc, "-fsyntax-only", "-std=gnu89", "-ffreestanding", str(src)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode != 0 and "symbol_name" in res.stderr, res.stderr
