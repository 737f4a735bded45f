"""Splats as findings: which reports are splats, allow rules, the verdict (no VM)."""
from __future__ import annotations

from pathlib import Path

import pytest

from vmprobe.check import findings
from vmprobe.check.report import Check, ProbeReport
from vmprobe.formats.crash import find_crashes

CORPUS = Path(__file__).resolve().parents[1] / "crash_corpus"


def log(name: str) -> str:
    return (CORPUS / name).read_text()


@pytest.mark.parametrize("line, kind, title", [
    ("[    1.0] WARNING: CPU: 0 PID: 9 at /tmp/m/warn.c:30 handler_pre+0x1a/0x30 [vmprobe_splat_warn]",
     "warning", "WARNING in handler_pre"),
    ("[    1.0] BUG: sleeping function called from invalid context at kernel/locking/mutex.c:580",
     "atomic-sleep", "BUG: sleeping function called from invalid context"),
    ("[    1.0] BUG: scheduling while atomic: sh/1/0x00000002", "atomic-sleep", "BUG: scheduling while atomic"),
    ("[    1.0] WARNING: possible circular locking dependency detected", "lockdep",
     "WARNING: possible circular locking dependency"),
    ("[    1.0] WARNING: suspicious RCU usage", "lockdep", "WARNING: suspicious RCU usage"),
    ("[    1.0] [ BUG: Invalid wait context ]", "lockdep", "BUG: Invalid wait context"),
    ("[    1.0] BUG: KASAN: slab-use-after-free in handler_pre+0x40/0x60 [m]", "kasan",
     "KASAN: slab-use-after-free in handler_pre"),
    ("[    1.0] kmemleak: 3 new suspected memory leaks (see /sys/kernel/debug/kmemleak)", "kmemleak",
     "kmemleak: 3 new suspected memory leaks"),
    ("[    1.0] rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:", "rcu-stall", "INFO: rcu detected stall"),
    ("[  120.0] INFO: task insmod:99 blocked for more than 120 seconds.", "hung-task", "INFO: task hung"),
])
def test_splats_the_kernel_lives_on_after(line, kind, title):
    (c,) = find_crashes("[    0.9] ok\n" + line + "\n[    1.1] after\n")
    assert c.is_splat and c.splat == kind and c.title == title


@pytest.mark.parametrize("name", ["nullderef-oops.log", "bug-in-module-panic-6.1.log", "panic-in-handler-6.1.log"])
def test_oopses_and_panics_stay_crashes(name):
    crashes, found = findings.split(find_crashes(log(name)))
    assert crashes and not found


def test_a_warning_that_panics_is_fatal_not_a_finding():
    text = log("warning-register-kprobe.log") + "[    2.1] Kernel panic - not syncing: kernel: panic_on_warn set ...\n"
    crashes, found = findings.split(find_crashes(text))
    assert found == [] and crashes[0]["title"] == "WARNING in register_kprobe" and crashes[0]["fatal"]


def test_allow_rules_mark_findings_and_decide_the_verdict():
    _, found = findings.split(find_crashes(log("warning-register-kprobe.log")))
    report = ProbeReport(checks=[Check("rmmod", True)], findings=found)
    assert [f["title"] for f in found] == ["WARNING in register_kprobe"] and report.verdict == "fail"
    assert "SPLAT WARNING in register_kprobe [warning]: not allowed" in report.summary()
    findings.allow(found, findings.rules(["lockdep"], "--allow-splat")
                   + findings.rules([r"WARNING in register_\w+"], "[tool.vmprobe] allow_splats"))
    assert found[0]["allowed_by"] == r"[tool.vmprobe] allow_splats 'WARNING in register_\\w+'"
    assert report.verdict == "pass"
    d = report.to_dict()
    assert d["findings"][0]["kind"] == "warning" and d["verdict"] == "pass"
    assert "cycles" not in d


def test_a_bad_regex_names_its_source():
    with pytest.raises(ValueError, match=r"@pytest.mark.allow_splat: '\(' is not a regular expression"):
        findings.rules(["("], "@pytest.mark.allow_splat")


def test_merge_counts_repeats():
    a = {"title": "WARNING in x", "kind": "warning", "allowed_by": None}
    b = {"title": "INFO: task hung", "kind": "hung-task", "allowed_by": None}
    merged = findings.merge([a], [dict(a), b])
    assert [(f["title"], f.get("count", 1)) for f in merged] == [("WARNING in x", 2), ("INFO: task hung", 1)]


MUTEX_IN_HANDLER = """[   10.1] BUG: sleeping function called from invalid context at kernel/locking/mutex.c:580
[   10.1] in_atomic(): 1, irqs_disabled(): 0, non_block: 0, pid: 99, name: sh
[   10.1] preempt_count: 1, expected: 0
[   10.1] Call Trace:
[   10.1]  <TASK>
[   10.1]  dump_stack_lvl+0x45/0x5d
[   10.1]  __might_resched.cold+0x13f/0x175
[   10.1]  __mutex_lock+0x8b/0xc50
[   10.1]  ? kernel_clone+0x1/0x3c0
[   10.1]  mutex_lock_nested+0x1b/0x20
[   10.1]  handler_pre+0x1e/0x40 [vmprobe_splat_mutex]
[   10.1]  kprobe_ftrace_handler+0x10b/0x1a0
[   10.1]  kernel_clone+0x5/0x3c0
[   10.1]  </TASK>
"""


def test_a_sleeping_lock_is_blamed_on_its_caller():
    """A sample written for the tests (the shape of 6.1's report with lockdep): the mutex
    functions are not the culprit, the handler that took the mutex is."""
    (c,) = find_crashes(MUTEX_IN_HANDLER)
    assert (c.title, c.splat, c.is_splat) == (
        "BUG: sleeping function called from invalid context in handler_pre", "atomic-sleep", True)


def test_a_real_warning_in_a_handler_is_a_splat():
    (c,) = find_crashes(log("warning-in-handler-6.1.log"))
    assert (c.title, c.splat, c.is_splat, c.function) == ("WARNING in handler_pre", "warning", True, "handler_pre")


def test_the_same_splat_twice_is_one_finding_with_a_count():
    _, found = findings.split(find_crashes(MUTEX_IN_HANDLER + MUTEX_IN_HANDLER.replace("10.1]", "11.1]")))
    assert [(f["title"], f["count"]) for f in found] == [
        ("BUG: sleeping function called from invalid context in handler_pre", 2)]
