"""vmprobe.crash: crash reports found in console text."""
from __future__ import annotations

import pytest

from vmprobe.crash import find_crashes, first_fatal

OOPS = """\
[    5.101010] vmprobe-armed nonce=abc addr=ffffffff8ca941a0
[    5.123456] BUG: kernel NULL pointer dereference, address: 0000000000000000
[    5.123789] #PF: supervisor read access in kernel mode
[    5.124000] #PF: error_code(0x0000) - not-present page
[    5.124100] PGD 0 P4D 0
[    5.124200] Oops: 0000 [#1] PREEMPT SMP NOPTI
[    5.124300] CPU: 0 PID: 123 Comm: sh Tainted: G           OE      6.1.0-13-cloud-amd64 #1  Debian 6.1.55-1
[    5.124400] Hardware name: QEMU Standard PC (i440FX + PIIX, 1996), BIOS 1.16.2-debian-1.16.2-1 04/01/2014
[    5.124500] RIP: 0010:handler_pre+0x15/0x30 [mymod]
[    5.124550] Code: 00 00 00 00 0f 1f 44 00 00 48 8b 04 25 00 00 00 00 <8b> 00 31 c0 c3 cc cc cc
[    5.124600] RSP: 0018:ffffb1c0c01d7e30 EFLAGS: 00010246
[    5.124700] RAX: 0000000000000000 RBX: ffff9d4a81234000 RCX: 0000000000000000
[    5.125000] Call Trace:
[    5.125100]  <TASK>
[    5.125200]  kprobe_ftrace_handler+0x10b/0x1b0
[    5.125300]  ? kernel_clone+0x5/0x3f0
[    5.125500]  kernel_clone+0x5/0x3f0
[    5.125600]  __x64_sys_clone+0x94/0xc0
[    5.125700]  do_syscall_64+0x58/0xc0
[    5.125800]  entry_SYSCALL_64_after_hwframe+0x64/0xce
[    5.125900]  </TASK>
[    5.126000] Modules linked in: mymod(OE) virtio_net net_failover failover
[    5.126100] CR2: 0000000000000000
[    5.126200] ---[ end trace 0000000000000000 ]---
[    5.126300] RIP: 0010:handler_pre+0x15/0x30 [mymod]
"""

PANIC = """\
[    5.130000] Kernel panic - not syncing: Fatal exception
[    5.130100] Kernel Offset: 0xb000000 from 0xffffffff81000000 (relocation range: 0xffffffff80000000-0xffffffffbfffffff)
[    5.130200] ---[ end Kernel panic - not syncing: Fatal exception ]---
"""

BUG_AT = """\
[    3.000000] ------------[ cut here ]------------
[    3.000001] kernel BUG at kernel/fork.c:1234!
[    3.000002] invalid opcode: 0000 [#1] PREEMPT SMP NOPTI
[    3.000003] CPU: 1 PID: 77 Comm: insmod Not tainted 6.1.0-13-cloud-amd64 #1
[    3.000004] RIP: 0010:__put_task_struct+0x1a2b/0x1c40
[    3.000005] Call Trace:
[    3.000006]  <TASK>
[    3.000007]  kernel_clone+0x9d/0x3f0
[    3.000008]  __do_sys_clone+0x60/0x80
[    3.000009]  </TASK>
[    3.000010] ---[ end trace 1234567890abcdef ]---
"""

WARNING = """\
[    2.000000] ------------[ cut here ]------------
[    2.000001] WARNING: CPU: 0 PID: 1 at kernel/kprobes.c:1234 register_kprobe+0x1a/0x2b0
[    2.000002] Modules linked in: mymod(OE+)
[    2.000003] RIP: 0010:register_kprobe+0x1a/0x2b0
[    2.000004] Call Trace:
[    2.000005]  <TASK>
[    2.000006]  ? __warn+0x81/0x130
[    2.000007]  init_module+0x20/0x1000 [mymod]
[    2.000008]  do_one_initcall+0x56/0x220
[    2.000009]  </TASK>
[    2.000010] ---[ end trace 0000000000000000 ]---
[    2.000011] vmprobe-error nonce=abc register_kprobe=-22
"""


def test_null_deref_oops_is_one_report():
    crashes = find_crashes(OOPS)
    assert len(crashes) == 1
    c = crashes[0]
    assert c.kind == "bug"
    assert c.title == "BUG: kernel NULL pointer dereference"
    assert c.fatal is False
    assert c.function == "handler_pre"
    assert c.excerpt.splitlines()[0].endswith("BUG: kernel NULL pointer dereference, address: 0000000000000000")
    assert c.excerpt.splitlines()[-1].endswith("---[ end trace 0000000000000000 ]---")
    assert OOPS[c.offset:].startswith("[    5.123456] BUG:")
    assert c.frames == ["kprobe_ftrace_handler", "kernel_clone", "kernel_clone", "__x64_sys_clone",
                        "do_syscall_64", "entry_SYSCALL_64_after_hwframe"]
    assert first_fatal(OOPS) is None


def test_oops_then_panic_is_two_reports_and_the_panic_is_fatal():
    crashes = find_crashes(OOPS + PANIC)
    assert [c.kind for c in crashes] == ["bug", "panic"]
    panic = crashes[1]
    assert panic.title == "kernel panic: Fatal exception"
    assert panic.fatal is True
    assert panic.excerpt.splitlines()[-1].endswith("---[ end Kernel panic - not syncing: Fatal exception ]---")
    fatal = first_fatal(OOPS + PANIC)
    assert (fatal.kind, fatal.offset) == ("panic", len(OOPS))


def test_panic_inside_a_report_makes_it_fatal():
    text = ("[    1.000000] BUG: unable to handle page fault for address: ffffffffc0a01000\n"
            "[    1.000001] RIP: 0010:handler_pre+0x15/0x30 [mymod]\n"
            "[    1.000002] Kernel panic - not syncing: Fatal exception in interrupt\n")
    crashes = find_crashes(text)
    assert len(crashes) == 1
    assert crashes[0].title == "BUG: unable to handle page fault"
    assert crashes[0].fatal is True
    assert first_fatal(text).function == "handler_pre"


def test_kernel_bug_at():
    crashes = find_crashes(BUG_AT)
    assert len(crashes) == 1  # the invalid opcode line belongs to the same report
    c = crashes[0]
    assert (c.kind, c.title, c.fatal) == ("bug", "kernel BUG at kernel/fork.c:1234", False)
    assert c.function == "__put_task_struct"
    assert c.frames == ["kernel_clone", "__do_sys_clone"]


def test_warning():
    crashes = find_crashes(WARNING)
    assert len(crashes) == 1
    c = crashes[0]
    assert c.kind == "warning"
    assert c.title == "WARNING at kernel/kprobes.c:1234"
    assert c.fatal is False
    assert c.function == "register_kprobe"
    assert c.frames == ["__warn", "init_module", "do_one_initcall"]
    assert "vmprobe-error" not in c.excerpt  # the excerpt stops at the end marker


def test_bare_panic_without_timestamps():
    text = "Kernel panic - not syncing: VFS: Unable to mount root fs on unknown-block(0,0)\n"
    c = first_fatal(text)
    assert c is not None
    assert c.kind == "panic"
    assert c.title == "kernel panic: VFS: Unable to mount root fs on unknown-block(0,0)"
    assert c.offset == 0


@pytest.mark.parametrize("line, kind, title", [
    ("[    1.0] general protection fault, probably for non-canonical address 0xdead000000000100: 0000 [#1] SMP",
     "gpf", "general protection fault"),
    ("[    1.0] BUG: soft lockup - CPU#0 stuck for 22s! [sh:1]", "bug", "BUG: soft lockup"),
    ("[    1.0] BUG: scheduling while atomic: sh/1/0x00000002", "bug", "BUG: scheduling while atomic: sh/1/0x00000002"),
    ("[    1.0] Oops: 0002 [#1] SMP", "oops", "Oops: 0002 [#1] SMP"),
    ("[    1.0] INFO: rcu_sched self-detected stall on CPU", "stall", "INFO: rcu_sched self-detected stall"),
    ("[  120.0] INFO: task insmod:99 blocked for more than 120 seconds.", "hung", "INFO: task hung: insmod:99"),
    ("[    1.0] Unrecoverable kprobe detected.", "kprobe", "Unrecoverable kprobe detected"),
])
def test_other_formats(line, kind, title):
    crashes = find_crashes("[    0.9] ok\n" + line + "\n[    1.1] after\n")
    assert [(c.kind, c.title, c.fatal) for c in crashes] == [(kind, title, False)]


def test_mentions_mid_line_are_not_reports():
    text = ("[    1.0] vmprobe: checking that no BUG: line appears\n"
            "[    1.1] echo 'Kernel panic - not syncing: test' > /dev/null\n")
    assert find_crashes(text) == []
    assert find_crashes("") == []


def test_i386_eip_line():
    text = ("[    1.0] BUG: kernel NULL pointer dereference, address: 00000000\n"
            "[    1.1] EIP: handler_pre+0x15/0x30 [mymod]\n")
    assert find_crashes(text)[0].function == "handler_pre"


def test_to_dict():
    d = find_crashes(WARNING)[0].to_dict()
    assert d["kind"] == "warning" and d["function"] == "register_kprobe"
    assert set(d) == {"kind", "title", "fatal", "function", "excerpt", "offset", "frames"}


@pytest.mark.parametrize("func", ["do_fork", "copy_process", "bad_handler", "default_idle"])
def test_rip_function_starting_with_hex_letters(func):
    text = (f"[    1.0] BUG: kernel NULL pointer dereference, address: 0000000000000000\n"
            f"[    1.1] RIP: 0010:{func}+0x15/0x30 [mymod]\n")
    assert find_crashes(text)[0].function == func
