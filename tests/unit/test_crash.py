"""vmprobe.formats.crash: crash reports found in console text.

The console logs live in ``tests/crash_corpus/``, one per file, the way
syzkaller keeps ``pkg/report/testdata``: a header, a blank line, then the raw
log, byte for byte. The header has ``#`` comments (where the log comes from)
and, for each report the log holds, in order::

    TITLE: kernel BUG in handler_pre
    KIND: bug
    FATAL: yes
    FUNCTION: handler_pre        (or "none")

A file without ``TITLE:`` lines holds no report. ``test_corpus`` checks every
file against its header; the tests below it check what a header cannot say
(frames, excerpts, offsets, logs derived from a corpus file).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from vmprobe.formats.crash import FORMATS, find_crashes, first_fatal

CORPUS = Path(__file__).resolve().parent.parent / "crash_corpus"
_FIELDS = ("TITLE", "KIND", "FATAL", "FUNCTION")


@dataclass(frozen=True)
class Expected:
    title: str
    kind: str
    fatal: bool
    function: str | None


@dataclass(frozen=True)
class Case:
    name: str
    text: str
    reports: list[Expected]


def corpus_names() -> list[str]:
    return sorted(p.name for p in CORPUS.glob("*.log"))


def log(name: str) -> str:
    """The raw console log of a corpus file (header dropped)."""
    return load(name).text


def load(name: str) -> Case:
    data = (CORPUS / name).read_bytes().decode()
    header, sep, text = data.partition("\n\n")
    assert sep, f"{name}: no blank line after the header"
    fields: list[tuple[str, str]] = []
    for line in header.split("\n"):
        if line.startswith("#"):
            continue
        key, colon, value = line.partition(": ")
        assert colon and key in _FIELDS, f"{name}: not a header line: {line!r}"
        fields.append((key, value))
    assert len(fields) % len(_FIELDS) == 0, f"{name}: each report needs {', '.join(_FIELDS)}"
    reports = []
    for n in range(0, len(fields), len(_FIELDS)):
        group = fields[n:n + len(_FIELDS)]
        assert tuple(k for k, _ in group) == _FIELDS, f"{name}: report fields out of order: {group}"
        title, kind, fatal, function = (v for _, v in group)
        assert fatal in ("yes", "no"), f"{name}: FATAL: {fatal}"
        reports.append(Expected(title, kind, fatal == "yes", None if function == "none" else function))
    return Case(name, text, reports)


# -- the corpus ---------------------------------------------------------------------------------
def test_the_corpus_is_there():
    names = corpus_names()
    assert len(names) >= 20
    assert all(n.endswith(".log") for n in names)


@pytest.mark.parametrize("name", corpus_names())
def test_corpus(name):
    case = load(name)
    got = [Expected(c.title, c.kind, c.fatal, c.function) for c in find_crashes(case.text)]
    assert got == case.reports
    want = next((r for r in case.reports if r.fatal), None)
    fatal = first_fatal(case.text)
    assert (fatal and Expected(fatal.title, fatal.kind, fatal.fatal, fatal.function)) == want


@pytest.mark.parametrize("name", corpus_names())
def test_corpus_survives_crlf_and_lone_cr(name):
    text = log(name)
    want = [(c.kind, c.title, c.fatal) for c in find_crashes(text)]
    assert [(c.kind, c.title, c.fatal) for c in find_crashes(text.replace("\n", "\r\n"))] == want
    assert [(c.kind, c.title, c.fatal) for c in find_crashes(text.replace("\n", "\r"))] == want


# -- the basics -----------------------------------------------------------------------------
def test_null_deref_oops_is_one_report():
    text = log("nullderef-oops.log")
    crashes = find_crashes(text)
    assert len(crashes) == 1  # the Oops: line belongs to the BUG report
    c = crashes[0]
    assert c.excerpt.splitlines()[0].endswith("BUG: kernel NULL pointer dereference, address: 0000000000000000")
    assert c.excerpt.splitlines()[-1].endswith("---[ end trace 0000000000000000 ]---")
    assert text[c.offset:].startswith("[    5.123456] BUG:")
    # reliable frames only: "? kernel_clone" is a guess of the unwinder
    assert c.frames == ["kprobe_ftrace_handler", "kernel_clone", "__x64_sys_clone",
                        "do_syscall_64", "entry_SYSCALL_64_after_hwframe"]


def test_oops_then_panic_the_panic_makes_the_oops_fatal():
    """oops=panic: the panic comes right after the report's end marker."""
    oops, panic = log("nullderef-oops.log"), log("panic-fatal-exception.log")
    crashes = find_crashes(oops + panic)
    assert [c.kind for c in crashes] == ["bug", "panic"]
    p = crashes[1]
    assert p.title == "kernel panic: Fatal exception"
    assert p.fatal is True
    assert p.offset == len(oops)
    assert p.excerpt.splitlines()[-1].endswith("---[ end Kernel panic - not syncing: Fatal exception ]---")
    assert crashes[0].fatal is True
    fatal = first_fatal(oops + panic)  # the cause, not "Fatal exception"
    assert (fatal.kind, fatal.offset, fatal.title) == (
        "bug", oops.index("[    5.123456] BUG:"), "BUG: kernel NULL pointer dereference in handler_pre")


def test_a_panic_long_after_a_report_is_not_that_reports():
    oops, panic = log("nullderef-oops.log"), log("panic-fatal-exception.log")
    filler = "".join(f"[    6.{n:06d}] vmprobe-hit nonce=abc handler=pre\n" for n in range(200))
    crashes = find_crashes(oops + filler + panic)
    assert [(c.kind, c.fatal) for c in crashes] == [("bug", False), ("panic", True)]
    assert first_fatal(oops + filler + panic).kind == "panic"


def test_kernel_bug_at_an_in_tree_source_keeps_the_path():
    crashes = find_crashes(log("bug-at-in-tree-source.log"))
    assert len(crashes) == 1  # the invalid opcode line belongs to the same report
    assert crashes[0].frames == ["kernel_clone", "__do_sys_clone"]


def test_warning():
    c = find_crashes(log("warning-register-kprobe.log"))[0]
    assert c.frames == ["init_module", "do_one_initcall"]
    assert "vmprobe-error" not in c.excerpt  # the excerpt stops at the end marker


def test_warning_with_panic_on_warn_is_fatal_and_named_after_the_warning():
    text = log("warning-register-kprobe.log").replace(
        "[    2.000009]  </TASK>\n",
        "[    2.000009]  </TASK>\n[    2.000009] Kernel panic - not syncing: kernel: panic_on_warn set ...\n")
    c = first_fatal(text)
    assert (c.kind, c.title) == ("warning", "WARNING in register_kprobe")


def test_bare_panic_without_timestamps():
    assert first_fatal(log("panic-no-timestamps.log")).offset == 0


@pytest.mark.parametrize("line, kind, title", [
    ("[    1.0] general protection fault, probably for non-canonical address 0xdead000000000100: 0000 [#1] SMP",
     "gpf", "general protection fault"),
    ("[    1.0] watchdog: BUG: soft lockup - CPU#0 stuck for 22s! [sh:1]", "lockup", "BUG: soft lockup"),
    ("[    1.0] BUG: scheduling while atomic: sh/1/0x00000002", "bug", "BUG: scheduling while atomic"),
    ("[    1.0] Oops: 0002 [#1] SMP", "oops", "Oops"),
    ("[    1.0] rcu: INFO: rcu_sched self-detected stall on CPU", "stall", "INFO: rcu detected stall"),
    ("[    1.0] INFO: rcu_preempt detected stalls on CPUs/tasks:", "stall", "INFO: rcu detected stall"),
    ("[  120.0] INFO: task insmod:99 blocked for more than 120 seconds.", "hung", "INFO: task hung"),
    ("[    1.0] Unrecoverable kprobe detected.", "kprobe", "Unrecoverable kprobe detected"),
    ("[    1.0] BUG: workqueue lockup - pool cpus=0 node=0 flags=0x0 nice=0 stuck for 31s!", "lockup",
     "BUG: workqueue lockup"),
    ("[    1.0] NMI watchdog: Watchdog detected hard LOCKUP on cpu 0", "lockup", "Watchdog detected hard LOCKUP"),
    ("[    1.0] divide error: 0000 [#1] PREEMPT SMP NOPTI", "divide-error", "divide error"),
    ("[    1.0] BUG: Bad page state in process sh  pfn:0a001", "bug", "BUG: Bad page state"),
    ("[    1.0] kernel BUG at /tmp/build/src/mymod.c:51!", "bug", "kernel BUG at /tmp/build/src/mymod.c:51"),
])
def test_other_formats_without_a_stack(line, kind, title):
    crashes = find_crashes("[    0.9] ok\n" + line + "\n[    1.1] after\n")
    assert [(c.kind, c.title, c.fatal, c.function) for c in crashes] == [(kind, title, False, None)]


def test_no_text_no_report():
    assert find_crashes("") == []
    assert first_fatal("") is None


def test_to_dict():
    d = find_crashes(log("warning-register-kprobe.log"))[0].to_dict()
    assert d["kind"] == "warning" and d["function"] == "register_kprobe"
    assert set(d) == {"kind", "title", "fatal", "function", "excerpt", "offset", "frames", "splat"}


@pytest.mark.parametrize("func", ["do_fork", "copy_process", "bad_handler", "default_idle"])
def test_rip_function_starting_with_hex_letters(func):
    text = (f"[    1.0] BUG: kernel NULL pointer dereference, address: 0000000000000000\n"
            f"[    1.1] RIP: 0010:{func}+0x15/0x30 [mymod]\n")
    assert find_crashes(text)[0].function == func


def test_the_table_is_one_list_of_formats():
    assert len(FORMATS) > 30
    assert {f.kind for f in FORMATS} >= {"panic", "bug", "gpf", "invalid-opcode", "oops", "warning", "stall",
                                          "lockup", "hung", "kprobe"}
    assert all(f.fatal == (f.kind == "panic") for f in FORMATS)


# -- real reports from the fault modules ------------------------------------------------------
def test_real_bug_in_a_module_is_named_after_the_function_not_the_build_dir():
    bug = find_crashes(log("bug-in-module-panic-6.1.log"))[0]
    assert bug.function == "handler_pre"  # RIP: handler_pre.cold+0x2e/0xfa3 [vmprobe_fault_bug]
    assert bug.frames[:3] == ["kprobe_ftrace_handler", "kernel_clone", "__do_sys_clone"]
    assert "kernel BUG at /root/.cache/vmprobe/modules/" in bug.excerpt


def test_real_null_deref_in_an_optimized_probe():
    c = find_crashes(log("nullderef-optprobe-6.1.log"))[0]
    assert c.frames[:2] == ["opt_pre_handler", "optimized_callback"]
    assert c.excerpt.splitlines()[-1].endswith("---[ end trace 0000000000000000 ]---")


def test_real_panic_from_a_handler_names_the_handler():
    c = first_fatal(log("panic-in-handler-6.1.log"))
    assert c.frames[:3] == ["dump_stack_lvl", "panic", "handler_pre.cold"]


def test_real_soft_lockup_with_softlockup_panic():
    c = find_crashes(log("soft-lockup-panic-6.1.log"))[0]
    assert "Kernel panic - not syncing: softlockup: hung tasks" in c.excerpt


def test_real_rcu_stall_seen_from_the_other_cpu_through_an_nmi_backtrace():
    """The NMI backtrace is printed with older timestamps; the panic's own stack (idle) is not the culprit."""
    c = find_crashes(log("rcu-stall-nmi-backtrace-panic-6.1.log"))[0]
    assert "amd_e400_idle" not in c.frames


# -- console quirks -------------------------------------------------------------------------
def test_caller_ids_keep_interleaved_cpus_apart():
    """CONFIG_PRINTK_CALLER: two reports printed at once stay two reports with their own stacks."""
    a = ["BUG: kernel NULL pointer dereference, address: 0000000000000000", "Oops: 0002 [#1] SMP",
         "RIP: 0010:handler_pre+0x15/0x30 [mymod]", "Call Trace:", " <TASK>", " kprobe_ftrace_handler+0x10b/0x1b0",
         " kernel_clone+0x5/0x430", " </TASK>", "---[ end trace 0000000000000000 ]---"]
    b = ["------------[ cut here ]------------", "WARNING: CPU: 1 PID: 9 at mm/slub.c:42 kfree_thing+0x1/0x2",
         "RIP: 0010:kfree_thing+0x1/0x2", "Call Trace:", " <TASK>", " other_caller+0x5/0x40", " </TASK>",
         "---[ end trace 0000000000000001 ]---"]
    lines = []
    for n in range(max(len(a), len(b))):
        if n < len(a):
            lines.append(f"[    7.{n:06d}][  T111] {a[n]}")
        if n < len(b):
            lines.append(f"[    7.{n:06d}][    C1] {b[n]}")
    crashes = find_crashes("\n".join(lines) + "\n")
    assert [(c.title, c.function) for c in crashes] == [
        ("BUG: kernel NULL pointer dereference in handler_pre", "handler_pre"),
        ("WARNING in kfree_thing", "kfree_thing")]
    assert all("[    C1]" not in line for line in crashes[0].excerpt.splitlines())
    assert crashes[0].frames == ["kprobe_ftrace_handler", "kernel_clone"]
    assert crashes[1].frames == ["other_caller"]


def test_a_record_glued_to_another_one_is_split_at_its_timestamp():
    text = log("nullderef-glued-record.log")
    c = find_crashes(text)[0]
    assert text[c.offset:].startswith("[    1.000001] BUG:")


def test_a_truncated_report_still_has_a_title():
    oops = log("nullderef-oops.log")
    text = oops[:oops.index("Oops")]  # the console was cut off mid-report
    assert [c.title for c in find_crashes(text)] == ["BUG: kernel NULL pointer dereference"]
    assert [c.title for c in find_crashes("[    1.0] BUG: kernel NULL poi")] == ["BUG: kernel NULL poi"]
    assert find_crashes("[    1.0] Kernel panic - not syn") == []


# -- kprobe-specific reports ------------------------------------------------------------------
def test_unrecoverable_kprobe_absorbs_the_bug_that_follows():
    crashes = find_crashes(log("kprobe-unrecoverable-bug.log"))
    assert crashes[0].frames == ["kprobe_int3_handler", "exc_int3", "asm_exc_int3", "kernel_clone"]
