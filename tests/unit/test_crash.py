"""vmprobe.formats.crash: crash reports found in console text.

The REAL_* logs were captured from bookworm's 6.1 cloud kernel under QEMU/TCG
with vmprobe's fault modules (vmprobe/templates/faults/), "Code:" lines dropped
and, except in the first one, the register dumps too.
"""
from __future__ import annotations

import pytest

from vmprobe.formats.crash import FORMATS, find_crashes, first_fatal

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

REAL_BUG_OOPS_PANIC = """\
[    2.966678] vmprobe-fault nonce=abc fault=bug addr=ffffffff87e941a0 comm=sh pid=111
[    2.967251] ------------[ cut here ]------------
[    2.967408] kernel BUG at /root/.cache/vmprobe/modules/.8706468964254832b9c7.tmp-9fghnxoi/src/bug.c:51!
[    2.968248] invalid opcode: 0000 [#1] PREEMPT SMP NOPTI
[    2.968566] CPU: 0 PID: 111 Comm: sh Tainted: G           OE      6.1.0-56-cloud-amd64 #1  Debian 6.1.192-2
[    2.968939] Hardware name: QEMU Standard PC (i440FX + PIIX, 1996), BIOS 1.16.2-debian-1.16.2-1 04/01/2014
[    2.969401] RIP: 0010:handler_pre.cold+0x2e/0xfa3 [vmprobe_fault_bug]
[    2.970382] RSP: 0018:ff8c771ac05bbac8 EFLAGS: 00000246
[    2.970580] RAX: 0000000000000047 RBX: ffffffffc04f63c0 RCX: c0000000ffffefff
[    2.970781] RDX: 0000000000000000 RSI: 00000000ffffefff RDI: 0000000000000001
[    2.970979] RBP: ffffffff87e941a1 R08: 0000000000000000 R09: ff8c771ac05bb960
[    2.971171] R10: 0000000000000003 R11: ffffffff898d2328 R12: fffffffffffffff7
[    2.971363] R13: ff8c771ac05bbb08 R14: ff462ffd3e81fd60 R15: ffffffff87e941a5
[    2.971620] FS:  00000000201683c0(0000) GS:ff462ffd3e800000(0000) knlGS:0000000000000000
[    2.971843] CS:  0010 DS: 0000 ES: 0000 CR0: 0000000080050033
[    2.972005] CR2: 00000000005e9820 CR3: 0000000002734000 CR4: 0000000000751eb0
[    2.972349] PKRU: 55555554
[    2.972502] Call Trace:
[    2.979619]  <TASK>
[    2.979845]  kprobe_ftrace_handler+0x10b/0x1b0
[    2.980214]  0xffffffffc04ec0c8
[    2.980538]  ? kernel_clone+0x1/0x430
[    2.980662]  kernel_clone+0x5/0x430
[    2.980764]  __do_sys_clone+0x7b/0xb0
[    2.980879]  do_syscall_64+0x5d/0x90
[    2.981011]  ? syscall_exit_to_user_mode+0x1e/0x40
[    2.981146]  ? do_syscall_64+0x69/0x90
[    2.981251]  ? _copy_from_iter+0xb4/0x570
[    2.981372]  ? page_add_file_rmap+0xba/0x2f0
[    2.981495]  ? do_set_pte+0x18e/0x1e0
[    2.981606]  ? filemap_map_pages+0x150/0x710
[    2.981790]  ? pmd_page_vaddr+0x9/0x50
[    2.981898]  ? set_pte+0x5/0x10
[    2.981990]  ? __handle_mm_fault+0xeef/0xfa0
[    2.982134]  ? handle_mm_fault+0xdb/0x2d0
[    2.982250]  ? do_user_addr_fault+0x1b0/0x560
[    2.982380]  ? exit_to_user_mode_prepare+0x44/0x240
[    2.982516]  entry_SYSCALL_64_after_hwframe+0x6e/0xd8
[    2.982814] RIP: 0033:0x4610d3
[    2.983467] RSP: 002b:00007fff1abe27f8 EFLAGS: 00000246 ORIG_RAX: 0000000000000038
[    2.983693] RAX: ffffffffffffffda RBX: 0000000000000000 RCX: 00000000004610d3
[    2.983877] RDX: 0000000000000000 RSI: 0000000000000000 RDI: 0000000001200011
[    2.984056] RBP: 0000000000000000 R08: 0000000000000000 R09: 0000000000000000
[    2.984235] R10: 0000000020168690 R11: 0000000000000246 R12: 0000000000000001
[    2.984415] R13: 000000002016ac10 R14: 0000000000000000 R15: 0000000000000000
[    2.984666]  </TASK>
[    2.984796] Modules linked in: vmprobe_fault_bug(OE) pvpanic_mmio pvpanic virtio_rng virtio_net net_failover failover virtio_pci virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_ring
[    2.986233] ---[ end trace 0000000000000000 ]---
[    2.986415] RIP: 0010:handler_pre.cold+0x2e/0xfa3 [vmprobe_fault_bug]
[    2.987071] RSP: 0018:ff8c771ac05bbac8 EFLAGS: 00000246
[    2.987223] RAX: 0000000000000047 RBX: ffffffffc04f63c0 RCX: c0000000ffffefff
[    2.987402] RDX: 0000000000000000 RSI: 00000000ffffefff RDI: 0000000000000001
[    2.987584] RBP: ffffffff87e941a1 R08: 0000000000000000 R09: ff8c771ac05bb960
[    2.987763] R10: 0000000000000003 R11: ffffffff898d2328 R12: fffffffffffffff7
[    2.987944] R13: ff8c771ac05bbb08 R14: ff462ffd3e81fd60 R15: ffffffff87e941a5
[    2.988125] FS:  00000000201683c0(0000) GS:ff462ffd3e800000(0000) knlGS:0000000000000000
[    2.988330] CS:  0010 DS: 0000 ES: 0000 CR0: 0000000080050033
[    2.988480] CR2: 00000000005e9820 CR3: 0000000002734000 CR4: 0000000000751eb0
[    2.988663] PKRU: 55555554
[    2.988965] Kernel panic - not syncing: Fatal exception
"""


REAL_NULLDEREF_OPTPROBE = """\
[    3.233944] vmprobe-fault nonce=abc fault=nullderef addr=ffffffffb84941a5 comm=sh pid=111
[    3.234424] BUG: kernel NULL pointer dereference, address: 0000000000000000
[    3.234581] #PF: supervisor write access in kernel mode
[    3.234677] #PF: error_code(0x0002) - not-present page
[    3.234801] PGD 2a6fd067 P4D 2a6fc067 PUD 2a6fb067 PMD 0 
[    3.235084] Oops: 0002 [#1] PREEMPT SMP NOPTI
[    3.235252] CPU: 0 PID: 111 Comm: sh Tainted: G           OE      6.1.0-56-cloud-amd64 #1  Debian 6.1.192-2
[    3.235488] Hardware name: QEMU Standard PC (i440FX + PIIX, 1996), BIOS 1.16.2-debian-1.16.2-1 04/01/2014
[    3.235713] RIP: 0010:handler_pre.cold+0x35/0xfa3 [vmprobe_fault_nullderef]
[    3.237878] Call Trace:
[    3.238349]  <TASK>
[    3.238465]  opt_pre_handler+0x40/0x70
[    3.238663]  optimized_callback+0x6c/0xa0
[    3.238762]  0xffffffffc04c6034
[    3.238947]  ? kernel_clone+0x6/0x430
[    3.239020]  ? __do_sys_clone+0x7b/0xb0
[    3.239096]  ? do_syscall_64+0x5d/0x90
[    3.239169]  ? exit_to_user_mode_prepare+0x44/0x240
[    3.239258]  entry_SYSCALL_64_after_hwframe+0x6e/0xd8
[    3.239448] RIP: 0033:0x4610d3
[    3.240689]  </TASK>
[    3.240771] Modules linked in: vmprobe_fault_nullderef(OE) pvpanic_mmio pvpanic virtio_rng virtio_net net_failover failover virtio_pci virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_ring
[    3.241509] ---[ end trace 0000000000000000 ]---
[    3.241609] RIP: 0010:handler_pre.cold+0x35/0xfa3 [vmprobe_fault_nullderef]
[    3.243138] note: sh[111] exited with irqs disabled
[    3.243499] note: sh[111] exited with preempt_count 1
"""


REAL_PANIC = """\
[    3.526633] vmprobe-fault nonce=abc fault=panic addr=ffffffffa72941a0 comm=sh pid=111
[    3.526999] Kernel panic - not syncing: vmprobe test panic
[    3.527259] CPU: 0 PID: 111 Comm: sh Tainted: G           OE      6.1.0-56-cloud-amd64 #1  Debian 6.1.192-2
[    3.527541] Hardware name: QEMU Standard PC (i440FX + PIIX, 1996), BIOS 1.16.2-debian-1.16.2-1 04/01/2014
[    3.527983] Call Trace:
[    3.528596]  <TASK>
[    3.528783]  dump_stack_lvl+0x44/0x5c
[    3.528991]  panic+0x118/0x2f4
[    3.529074]  ? kernel_clone+0x1/0x430
[    3.529173]  handler_pre.cold+0x3a/0xfa3 [vmprobe_fault_panic]
[    3.529379]  kprobe_ftrace_handler+0x10b/0x1b0
[    3.529511]  0xffffffffc043f0c8
[    3.529740]  ? kernel_clone+0x1/0x430
[    3.530041]  kernel_clone+0x5/0x430
[    3.530114]  __do_sys_clone+0x7b/0xb0
[    3.530208]  do_syscall_64+0x5d/0x90
[    3.530502]  ? handle_mm_fault+0xdb/0x2d0
[    3.530592]  ? do_user_addr_fault+0x1b0/0x560
[    3.530696]  ? exit_to_user_mode_prepare+0x44/0x240
[    3.530803]  entry_SYSCALL_64_after_hwframe+0x6e/0xd8
[    3.531059] RIP: 0033:0x4610d3
[    3.532156] RSP: 002b:00007ffed5f75f28 EFLAGS: 00000246 ORIG_RAX: 0000000000000038
[    3.532622] RAX: ffffffffffffffda RBX: 0000000000000000 RCX: 00000000004610d3
[    3.532811] RDX: 0000000000000000 RSI: 0000000000000000 RDI: 0000000001200011
[    3.533039] RBP: 0000000000000000 R08: 0000000000000000 R09: 0000000000000000
[    3.533366] R10: 00000000355a2690 R11: 0000000000000246 R12: 0000000000000001
[    3.533550] R13: 00000000355a4c10 R14: 0000000000000000 R15: 0000000000000000
[    3.533995]  </TASK>
"""


REAL_SOFT_LOCKUP_PANIC = """\
[    2.782454] vmprobe-fault nonce=abc fault=spin addr=ffffffffa40941a0 comm=sh pid=111 seconds=0 irqs_off=0
[    7.947676] watchdog: BUG: soft lockup - CPU#0 stuck for 5s! [sh:111]
[    7.948032] Modules linked in: vmprobe_fault_spin(OE) pvpanic_mmio pvpanic virtio_rng virtio_net net_failover failover virtio_pci virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_ring
[    7.948607] CPU: 0 PID: 111 Comm: sh Tainted: G           OE      6.1.0-56-cloud-amd64 #1  Debian 6.1.192-2
[    7.948896] Hardware name: QEMU Standard PC (i440FX + PIIX, 1996), BIOS 1.16.2-debian-1.16.2-1 04/01/2014
[    7.949135] RIP: 0010:delay_tsc+0x33/0xa0
[    7.951165] Call Trace:
[    7.951624]  <TASK>
[    7.951768]  handler_pre.cold+0x71/0xfa3 [vmprobe_fault_spin]
[    7.952031]  ? kernel_clone+0x1/0x430
[    7.952109]  kprobe_ftrace_handler+0x10b/0x1b0
[    7.952217]  0xffffffffc03890c8
[    7.952481]  ? kernel_clone+0x1/0x430
[    7.952552]  kernel_clone+0x5/0x430
[    7.952617]  __do_sys_clone+0x7b/0xb0
[    7.952690]  do_syscall_64+0x5d/0x90
[    7.952777]  ? exit_to_user_mode_prepare+0x44/0x240
[    7.952865]  ? syscall_exit_to_user_mode+0x1e/0x40
[    7.952950]  ? do_syscall_64+0x69/0x90
[    7.953022]  ? page_add_file_rmap+0xba/0x2f0
[    7.953103]  ? do_set_pte+0x18e/0x1e0
[    7.953171]  ? exit_to_user_mode_prepare+0x44/0x240
[    7.953259]  ? filemap_map_pages+0x150/0x710
[    7.953345]  ? do_fault+0x1a7/0x410
[    7.953410]  ? pmd_page_vaddr+0x9/0x50
[    7.953479]  ? set_pte+0x5/0x10
[    7.953537]  ? __handle_mm_fault+0xeef/0xfa0
[    7.953625]  ? handle_mm_fault+0xdb/0x2d0
[    7.953700]  ? do_user_addr_fault+0x1b0/0x560
[    7.953782]  ? exit_to_user_mode_prepare+0x44/0x240
[    7.953868]  entry_SYSCALL_64_after_hwframe+0x6e/0xd8
[    7.954051] RIP: 0033:0x4610d3
[    7.955302]  </TASK>
[    7.955530] Kernel panic - not syncing: softlockup: hung tasks
[    7.955740] CPU: 0 PID: 111 Comm: sh Tainted: G           OEL     6.1.0-56-cloud-amd64 #1  Debian 6.1.192-2
[    7.955903] Hardware name: QEMU Standard PC (i440FX + PIIX, 1996), BIOS 1.16.2-debian-1.16.2-1 04/01/2014
[    7.956076] Call Trace:
[    7.956230]  <IRQ>
[    7.956272]  dump_stack_lvl+0x44/0x5c
[    7.956347]  panic+0x118/0x2f4
[    7.956418]  watchdog_timer_fn.cold+0xc/0x16
[    7.956498]  ? lockup_detector_update_enable+0x50/0x50
[    7.956590]  __hrtimer_run_queues+0x10d/0x250
[    7.956676]  hrtimer_interrupt+0xf4/0x210
[    7.956754]  __sysvec_apic_timer_interrupt+0x5d/0x110
[    7.956847]  sysvec_apic_timer_interrupt+0x69/0x90
[    7.956987]  </IRQ>
[    7.957027]  <TASK>
[    7.957068]  asm_sysvec_apic_timer_interrupt+0x16/0x20
[    7.957158] RIP: 0010:delay_tsc+0x33/0xa0
[    7.958253]  ? kernel_clone+0x5/0x430
[    7.958334]  ? __ndelay+0x10/0x10
[    7.958398]  handler_pre.cold+0x71/0xfa3 [vmprobe_fault_spin]
[    7.958507]  ? kernel_clone+0x1/0x430
[    7.958572]  kprobe_ftrace_handler+0x10b/0x1b0
[    7.958656]  0xffffffffc03890c8
[    7.958725]  ? kernel_clone+0x1/0x430
[    7.958792]  kernel_clone+0x5/0x430
[    7.958855]  __do_sys_clone+0x7b/0xb0
[    7.958929]  do_syscall_64+0x5d/0x90
[    7.959000]  ? exit_to_user_mode_prepare+0x44/0x240
[    7.959088]  ? syscall_exit_to_user_mode+0x1e/0x40
[    7.959172]  ? do_syscall_64+0x69/0x90
[    7.959243]  ? page_add_file_rmap+0xba/0x2f0
[    7.959323]  ? do_set_pte+0x18e/0x1e0
[    7.959390]  ? exit_to_user_mode_prepare+0x44/0x240
[    7.959478]  ? filemap_map_pages+0x150/0x710
[    7.959563]  ? do_fault+0x1a7/0x410
[    7.959628]  ? pmd_page_vaddr+0x9/0x50
[    7.959696]  ? set_pte+0x5/0x10
[    7.959754]  ? __handle_mm_fault+0xeef/0xfa0
[    7.959841]  ? handle_mm_fault+0xdb/0x2d0
[    7.959916]  ? do_user_addr_fault+0x1b0/0x560
[    7.959998]  ? exit_to_user_mode_prepare+0x44/0x240
[    7.960085]  entry_SYSCALL_64_after_hwframe+0x6e/0xd8
[    7.960177] RIP: 0033:0x4610d3
[    7.961245]  </TASK>
"""


REAL_RCU_STALL_OTHER_CPU_PANIC = """\
[    3.630730] vmprobe-fault nonce=abc fault=spin addr=ffffffffa80941a0 comm=kthreadd pid=2 seconds=0 irqs_off=1
[    3.901039] IPv6: ADDRCONF(NETDEV_CHANGE): eth0: link becomes ready
[    6.660733] rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:
[    6.661239] rcu: 	1-...0: (1 GPs behind) idle=25a4/1/0x4000000000000000 softirq=317/318 fqs=352
[    6.661520] 	(detected by 0, t=752 jiffies, g=-615, q=68 ncpus=2)
[    6.661808] Sending NMI from CPU 0 to CPUs 1:
[    5.917903] NMI backtrace for cpu 1
[    5.917903] CPU: 1 PID: 2 Comm: kthreadd Tainted: G           OE      6.1.0-56-cloud-amd64 #1  Debian 6.1.192-2
[    5.917903] Hardware name: QEMU Standard PC (i440FX + PIIX, 1996), BIOS 1.16.2-debian-1.16.2-1 04/01/2014
[    5.917903] RIP: 0010:delay_tsc+0x33/0xa0
[    5.917903] Call Trace:
[    5.917903]  <TASK>
[    5.917903]  handler_pre.cold+0x71/0xfa3 [vmprobe_fault_spin]
[    5.917903]  ? kernel_clone+0x1/0x430
[    5.917903]  kprobe_ftrace_handler+0x10b/0x1b0
[    5.917903]  0xffffffffc053e0c8
[    5.917903]  ? kthread_complete_and_exit+0x20/0x20
[    5.917903]  ? kernel_clone+0x1/0x430
[    5.917903]  kernel_clone+0x5/0x430
[    5.917903]  kernel_thread+0x63/0x90
[    5.917903]  ? kthread_complete_and_exit+0x20/0x20
[    5.917903]  kthreadd+0x287/0x2d0
[    5.917903]  ? kthread_is_per_cpu+0x30/0x30
[    5.917903]  ret_from_fork+0x22/0x30
[    5.917903]  </TASK>
[    5.917903] INFO: NMI handler (nmi_cpu_backtrace_handler) took too long to run: 16.401 msecs
[    6.664653] Kernel panic - not syncing: RCU Stall
[    6.664653] CPU: 0 PID: 0 Comm: swapper/0 Tainted: G           OE      6.1.0-56-cloud-amd64 #1  Debian 6.1.192-2
[    6.664653] Hardware name: QEMU Standard PC (i440FX + PIIX, 1996), BIOS 1.16.2-debian-1.16.2-1 04/01/2014
[    6.664653] Call Trace:
[    6.664653]  <IRQ>
[    6.664653]  dump_stack_lvl+0x44/0x5c
[    6.664653]  panic+0x118/0x2f4
[    6.664653]  ? __irq_work_queue_local+0x27/0x60
[    6.664653]  panic_on_rcu_stall+0x30/0x35
[    6.664653]  rcu_sched_clock_irq.cold+0x2d3/0x459
[    6.664653]  update_process_times+0x70/0xb0
[    6.664653]  tick_sched_handle+0x22/0x60
[    6.664653]  tick_sched_timer+0x63/0x80
[    6.664653]  ? tick_sched_do_timer+0xa0/0xa0
[    6.664653]  __hrtimer_run_queues+0x10d/0x250
[    6.664653]  hrtimer_interrupt+0xf4/0x210
[    6.664653]  __sysvec_apic_timer_interrupt+0x5d/0x110
[    6.664653]  sysvec_apic_timer_interrupt+0x69/0x90
[    6.664653]  </IRQ>
[    6.664653]  <TASK>
[    6.664653]  asm_sysvec_apic_timer_interrupt+0x16/0x20
[    6.664653] RIP: 0010:native_safe_halt+0xb/0x10
[    6.664653]  amd_e400_idle+0x3d/0x50
[    6.664653]  default_idle_call+0x38/0xf0
[    6.664653]  do_idle+0x206/0x2b0
[    6.664653]  cpu_startup_entry+0x26/0x30
[    6.664653]  rest_init+0xca/0xd0
[    6.664653]  arch_call_rest_init+0xa/0x14
[    6.664653]  start_kernel+0x6e8/0x6fc
[    6.664653]  secondary_startup_64_no_verify+0xe4/0xeb
[    6.664653]  </TASK>
[    6.664653] Shutting down cpus with NMI
"""


REAL_RCU_SELF_STALL = """\
[    3.972014] vmprobe-fault nonce=abc fault=spin addr=ffffffffa24941a0 comm=sh pid=111 seconds=8 irqs_off=1
[   12.054172] rcu: INFO: rcu_preempt self-detected stall on CPU
[   12.054593] rcu: 	0-...!: (1 ticks this GP) idle=0114/1/0x4000000000000000 softirq=379/379 fqs=0
[   12.054845] 	(t=2021 jiffies g=-391 q=12 ncpus=1)
[   12.055004] rcu: rcu_preempt kthread timer wakeup didn't happen for 2020 jiffies! g-391 f0x0 RCU_GP_WAIT_FQS(5) ->state=0x402
[   12.055202] rcu: 	Possible timer handling issue on cpu=0 timer-softirq=212
[   12.055362] rcu: rcu_preempt kthread starved for 2021 jiffies! g-391 f0x0 RCU_GP_WAIT_FQS(5) ->state=0x402 ->cpu=0
[   12.055543] rcu: 	Unless rcu_preempt kthread gets sufficient CPU time, OOM is now expected behavior.
[   12.055712] rcu: RCU grace-period kthread stack dump:
[   12.055859] task:rcu_preempt     state:I stack:0     pid:15    ppid:2      flags:0x00004000
[   12.056210] Call Trace:
[   12.056478]  <TASK>
[   12.056703]  __schedule+0x34d/0xa00
[   12.057108]  ? rcu_gp_cleanup+0x460/0x460
[   12.057194]  schedule+0x5a/0xd0
[   12.057269]  schedule_timeout+0x94/0x150
[   12.057345]  ? __bpf_trace_tick_stop+0x10/0x10
[   12.057429]  rcu_gp_fqs_loop+0x141/0x560
[   12.057506]  rcu_gp_kthread+0xd8/0x1b0
[   12.057578]  kthread+0xda/0x100
[   12.057642]  ? kthread_complete_and_exit+0x20/0x20
[   12.057729]  ret_from_fork+0x22/0x30
[   12.057837]  </TASK>
[   12.057926] rcu: Stack dump where RCU GP kthread last ran:
[   12.058129] CPU: 0 PID: 111 Comm: sh Tainted: G           OE      6.1.0-56-cloud-amd64 #1  Debian 6.1.192-2
[   12.058351] Hardware name: QEMU Standard PC (i440FX + PIIX, 1996), BIOS 1.16.2-debian-1.16.2-1 04/01/2014
[   12.058547] RIP: 0010:handler_pre.cold+0x97/0xfa3 [vmprobe_fault_spin]
[   12.060458] Call Trace:
[   12.060579]  <TASK>
[   12.060654]  ? kernel_clone+0x1/0x430
[   12.060773]  kprobe_ftrace_handler+0x10b/0x1b0
[   12.060884]  0xffffffffc05880c8
[   12.061122]  ? kernel_clone+0x1/0x430
[   12.061226]  kernel_clone+0x5/0x430
[   12.061295]  __do_sys_clone+0x7b/0xb0
[   12.061371]  do_syscall_64+0x5d/0x90
[   12.061442]  ? do_syscall_64+0x69/0x90
[   12.061517]  ? aa_file_perm+0x11f/0x4e0
[   12.061604]  ? exit_to_user_mode_prepare+0x44/0x240
[   12.061695]  ? syscall_exit_to_user_mode+0x1e/0x40
[   12.061781]  ? do_syscall_64+0x69/0x90
[   12.061849]  ? pmd_page_vaddr+0x9/0x50
[   12.061921]  ? set_pte+0x5/0x10
[   12.061981]  ? __handle_mm_fault+0xeef/0xfa0
[   12.062070]  ? handle_mm_fault+0xdb/0x2d0
[   12.062146]  ? do_user_addr_fault+0x1b0/0x560
[   12.062231]  ? exit_to_user_mode_prepare+0x44/0x240
[   12.062319]  entry_SYSCALL_64_after_hwframe+0x6e/0xd8
[   12.062516] RIP: 0033:0x4610d3
[   12.063713]  </TASK>
[   12.063904] CPU: 0 PID: 111 Comm: sh Tainted: G           OE      6.1.0-56-cloud-amd64 #1  Debian 6.1.192-2
[   12.064074] Hardware name: QEMU Standard PC (i440FX + PIIX, 1996), BIOS 1.16.2-debian-1.16.2-1 04/01/2014
[   12.064233] RIP: 0010:handler_pre.cold+0x97/0xfa3 [vmprobe_fault_spin]
[   12.065950] Call Trace:
[   12.066002]  <TASK>
[   12.066048]  ? kernel_clone+0x1/0x430
[   12.066120]  kprobe_ftrace_handler+0x10b/0x1b0
[   12.066238]  0xffffffffc05880c8
[   12.066314]  ? kernel_clone+0x1/0x430
[   12.066383]  kernel_clone+0x5/0x430
[   12.066447]  __do_sys_clone+0x7b/0xb0
[   12.066521]  do_syscall_64+0x5d/0x90
[   12.066591]  ? do_syscall_64+0x69/0x90
[   12.066704]  ? aa_file_perm+0x11f/0x4e0
[   12.066795]  ? exit_to_user_mode_prepare+0x44/0x240
[   12.066885]  ? syscall_exit_to_user_mode+0x1e/0x40
[   12.066972]  ? do_syscall_64+0x69/0x90
[   12.067039]  ? pmd_page_vaddr+0x9/0x50
[   12.067110]  ? set_pte+0x5/0x10
[   12.067169]  ? __handle_mm_fault+0xeef/0xfa0
[   12.067257]  ? handle_mm_fault+0xdb/0x2d0
[   12.067334]  ? do_user_addr_fault+0x1b0/0x560
[   12.067417]  ? exit_to_user_mode_prepare+0x44/0x240
[   12.067506]  entry_SYSCALL_64_after_hwframe+0x6e/0xd8
[   12.067600] RIP: 0033:0x4610d3
[   12.068719]  </TASK>
[   12.069463] clocksource: Long readout interval, skipping watchdog check: cs_nsec: 8256105237 wd_nsec: 8256041700
[   12.071269] IPv6: ADDRCONF(NETDEV_CHANGE): eth0: link becomes ready
"""


REAL_NMI_PANIC = """\
[    8.757848] Uhhuh. NMI received for unknown reason 21 on CPU 0.
[    8.759485] Kernel panic - not syncing: NMI: Not continuing
[    8.759650] CPU: 0 PID: 111 Comm: sh Tainted: G           OE      6.1.0-56-cloud-amd64 #1  Debian 6.1.192-2
[    8.759910] Hardware name: QEMU Standard PC (i440FX + PIIX, 1996), BIOS 1.16.2-debian-1.16.2-1 04/01/2014
[    8.760021] Call Trace:
[    8.760953]  <NMI>
[    8.761250]  dump_stack_lvl+0x44/0x5c
[    8.761905]  panic+0x118/0x2f4
[    8.761927]  ? _printk+0x68/0x83
[    8.761944]  nmi_panic.cold+0xc/0xc
[    8.761962]  unknown_nmi_error.cold+0x3b/0x49
[    8.761973]  exc_nmi+0x11e/0x150
[    8.761982]  end_repeat_nmi+0x16/0x67
[    8.762091] RIP: 0010:delay_tsc+0x33/0xa0
[    8.763024]  ? kernel_clone+0x5/0x430
[    8.763112]  ? delay_tsc+0x33/0xa0
[    8.763123]  ? delay_tsc+0x33/0xa0
[    8.763139]  </NMI>
[    8.763147]  <TASK>
[    8.763270]  handler_pre.cold+0x71/0xfa3 [vmprobe_fault_spin]
[    8.763513]  ? kernel_clone+0x1/0x430
[    8.763520]  kprobe_ftrace_handler+0x10b/0x1b0
[    8.763552]  0xffffffffc04a10c8
[    8.763876]  ? kernel_clone+0x1/0x430
[    8.763885]  kernel_clone+0x5/0x430
[    8.763891]  __do_sys_clone+0x7b/0xb0
[    8.763905]  do_syscall_64+0x5d/0x90
[    8.763917]  ? pmd_page_vaddr+0x9/0x50
[    8.763925]  ? set_pte+0x5/0x10
[    8.763931]  ? __handle_mm_fault+0xeef/0xfa0
[    8.763950]  ? handle_mm_fault+0xdb/0x2d0
[    8.763960]  ? do_user_addr_fault+0x1b0/0x560
[    8.763971]  ? exit_to_user_mode_prepare+0x44/0x240
[    8.763981]  entry_SYSCALL_64_after_hwframe+0x6e/0xd8
[    8.764236]  </TASK>
[    8.764749] Kernel Offset: 0x11600000 from 0xffffffff81000000 (relocation range: 0xffffffff80000000-0xffffffffbfffffff)
"""


# -- the basics -----------------------------------------------------------------------------
def test_null_deref_oops_is_one_report():
    crashes = find_crashes(OOPS)
    assert len(crashes) == 1  # the Oops: line belongs to the BUG report
    c = crashes[0]
    assert c.kind == "bug"
    assert c.title == "BUG: kernel NULL pointer dereference in handler_pre"
    assert c.fatal is False
    assert c.function == "handler_pre"
    assert c.excerpt.splitlines()[0].endswith("BUG: kernel NULL pointer dereference, address: 0000000000000000")
    assert c.excerpt.splitlines()[-1].endswith("---[ end trace 0000000000000000 ]---")
    assert OOPS[c.offset:].startswith("[    5.123456] BUG:")
    # reliable frames only: "? kernel_clone" is a guess of the unwinder
    assert c.frames == ["kprobe_ftrace_handler", "kernel_clone", "__x64_sys_clone",
                        "do_syscall_64", "entry_SYSCALL_64_after_hwframe"]
    assert first_fatal(OOPS) is None


def test_oops_then_panic_the_panic_makes_the_oops_fatal():
    """oops=panic: the panic comes right after the report's end marker."""
    crashes = find_crashes(OOPS + PANIC)
    assert [c.kind for c in crashes] == ["bug", "panic"]
    panic = crashes[1]
    assert panic.title == "kernel panic: Fatal exception"
    assert panic.fatal is True
    assert panic.offset == len(OOPS)
    assert panic.excerpt.splitlines()[-1].endswith("---[ end Kernel panic - not syncing: Fatal exception ]---")
    assert crashes[0].fatal is True
    fatal = first_fatal(OOPS + PANIC)  # the cause, not "Fatal exception"
    assert (fatal.kind, fatal.offset, fatal.title) == (
        "bug", OOPS.index("[    5.123456] BUG:"), "BUG: kernel NULL pointer dereference in handler_pre")


def test_a_panic_long_after_a_report_is_not_that_reports():
    filler = "".join(f"[    6.{n:06d}] vmprobe-hit nonce=abc handler=pre\n" for n in range(200))
    crashes = find_crashes(OOPS + filler + PANIC)
    assert [(c.kind, c.fatal) for c in crashes] == [("bug", False), ("panic", True)]
    assert first_fatal(OOPS + filler + PANIC).kind == "panic"


def test_panic_inside_a_report_makes_it_fatal():
    text = ("[    1.000000] BUG: unable to handle page fault for address: ffffffffc0a01000\n"
            "[    1.000001] RIP: 0010:handler_pre+0x15/0x30 [mymod]\n"
            "[    1.000002] Kernel panic - not syncing: Fatal exception in interrupt\n")
    crashes = find_crashes(text)
    assert len(crashes) == 1
    assert crashes[0].title == "BUG: unable to handle page fault in handler_pre"
    assert crashes[0].fatal is True
    assert first_fatal(text).function == "handler_pre"


def test_kernel_bug_at_an_in_tree_source_keeps_the_path():
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
    assert c.title == "WARNING in register_kprobe"
    assert c.fatal is False
    assert c.function == "register_kprobe"
    assert c.frames == ["init_module", "do_one_initcall"]
    assert "vmprobe-error" not in c.excerpt  # the excerpt stops at the end marker


def test_warning_with_panic_on_warn_is_fatal_and_named_after_the_warning():
    text = WARNING.replace("[    2.000009]  </TASK>\n",
                           "[    2.000009]  </TASK>\n[    2.000009] Kernel panic - not syncing: "
                           "kernel: panic_on_warn set ...\n")
    c = first_fatal(text)
    assert (c.kind, c.title) == ("warning", "WARNING in register_kprobe")


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


def test_mentions_mid_line_are_not_reports():
    text = ("[    1.0] vmprobe: checking that no BUG: line appears\n"
            "[    1.1] echo 'Kernel panic - not syncing: test' > /dev/null\n"
            "[    1.2] traps: sh[1] general protection fault ip:4010a3 sp:7ffc error:0 in sh[401000+9e000]\n"
            "[    1.3] INFO: NMI handler (perf_event_nmi_handler) took too long to run: 1.234 msecs\n")
    assert find_crashes(text) == []
    assert find_crashes("") == []
    assert first_fatal(text) is None


def test_i386_eip_line():
    text = ("[    1.0] BUG: kernel NULL pointer dereference, address: 00000000\n"
            "[    1.1] EIP: handler_pre+0x15/0x30 [mymod]\n")
    assert find_crashes(text)[0].function == "handler_pre"


def test_arm64_oops():
    text = """\
[    2.1] Unable to handle kernel NULL pointer dereference at virtual address 0000000000000000
[    2.2] Mem abort info:
[    2.3] Internal error: Oops: 0000000096000045 [#1] PREEMPT SMP
[    2.4] pc : handler_pre+0x1c/0x30 [mymod]
[    2.5] lr : kprobe_breakpoint_handler+0x8c/0x140
[    2.6] Call trace:
[    2.7]  handler_pre+0x1c/0x30 [mymod]
[    2.8]  kprobe_breakpoint_handler+0x8c/0x140
[    2.9]  call_break_hook+0x7c/0xa0
[    3.0]  brk_handler+0x20/0x74
[    3.1]  kernel_clone+0x0/0x3b0
[    3.2] ---[ end trace 0000000000000000 ]---
"""
    crashes = find_crashes(text)
    assert [(c.kind, c.title, c.function) for c in crashes] == [
        ("bug", "BUG: kernel NULL pointer dereference in handler_pre", "handler_pre")]


def test_to_dict():
    d = find_crashes(WARNING)[0].to_dict()
    assert d["kind"] == "warning" and d["function"] == "register_kprobe"
    assert set(d) == {"kind", "title", "fatal", "function", "excerpt", "offset", "frames"}


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
    crashes = find_crashes(REAL_BUG_OOPS_PANIC)
    assert [(c.kind, c.title, c.fatal) for c in crashes] == [
        ("bug", "kernel BUG in handler_pre", True), ("panic", "kernel panic: Fatal exception", True)]
    bug = crashes[0]
    assert bug.function == "handler_pre"  # RIP: handler_pre.cold+0x2e/0xfa3 [vmprobe_fault_bug]
    assert bug.frames[:3] == ["kprobe_ftrace_handler", "kernel_clone", "__do_sys_clone"]
    assert "kernel BUG at /root/.cache/vmprobe/modules/" in bug.excerpt
    assert first_fatal(REAL_BUG_OOPS_PANIC).title == "kernel BUG in handler_pre"


def test_real_null_deref_in_an_optimized_probe():
    crashes = find_crashes(REAL_NULLDEREF_OPTPROBE)
    assert [(c.kind, c.title, c.fatal) for c in crashes] == [
        ("bug", "BUG: kernel NULL pointer dereference in handler_pre", False)]
    assert crashes[0].frames[:2] == ["opt_pre_handler", "optimized_callback"]
    assert crashes[0].excerpt.splitlines()[-1].endswith("---[ end trace 0000000000000000 ]---")


def test_real_panic_from_a_handler_names_the_handler():
    c = first_fatal(REAL_PANIC)
    assert (c.kind, c.title, c.function) == ("panic", "kernel panic: vmprobe test panic", "handler_pre")
    assert c.frames[:3] == ["dump_stack_lvl", "panic", "handler_pre.cold"]
    assert len(find_crashes(REAL_PANIC)) == 1


def test_real_soft_lockup_with_softlockup_panic():
    crashes = find_crashes(REAL_SOFT_LOCKUP_PANIC)
    assert [(c.kind, c.title, c.fatal) for c in crashes] == [("lockup", "BUG: soft lockup in handler_pre", True)]
    assert "Kernel panic - not syncing: softlockup: hung tasks" in crashes[0].excerpt


def test_real_rcu_stall_seen_from_the_other_cpu_through_an_nmi_backtrace():
    """The NMI backtrace is printed with older timestamps; the panic's own stack (idle) is not the culprit."""
    crashes = find_crashes(REAL_RCU_STALL_OTHER_CPU_PANIC)
    assert [(c.kind, c.title, c.fatal) for c in crashes] == [("stall", "INFO: rcu detected stall in handler_pre", True)]
    assert "amd_e400_idle" not in crashes[0].frames


def test_real_nmi_panic_names_the_code_the_nmi_interrupted():
    """QMP inject-nmi on a guest stuck with interrupts off, booted with unknown_nmi_panic=1."""
    crashes = find_crashes(REAL_NMI_PANIC)
    assert [(c.kind, c.title, c.fatal, c.function) for c in crashes] == [
        ("panic", "kernel panic: NMI: Not continuing", True, "handler_pre")]


def test_real_self_detected_rcu_stall_skips_the_grace_period_kthread():
    crashes = find_crashes(REAL_RCU_SELF_STALL)
    assert [(c.kind, c.title, c.fatal, c.function) for c in crashes] == [
        ("stall", "INFO: rcu detected stall in handler_pre", False, "handler_pre")]


@pytest.mark.parametrize("sample", ["REAL_BUG_OOPS_PANIC", "REAL_NULLDEREF_OPTPROBE", "REAL_PANIC",
                                    "REAL_SOFT_LOCKUP_PANIC", "REAL_RCU_STALL_OTHER_CPU_PANIC"])
def test_real_reports_survive_crlf_and_lone_cr(sample):
    text = globals()[sample]
    want = [(c.kind, c.title, c.fatal) for c in find_crashes(text)]
    assert [(c.kind, c.title, c.fatal) for c in find_crashes(text.replace("\n", "\r\n"))] == want
    assert [(c.kind, c.title, c.fatal) for c in find_crashes(text.replace("\n", "\r"))] == want


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
    text = ("[    1.000000] vmprobe-hit nonce=abc handler=pre addr=ffff[    1.000001] BUG: kernel NULL pointer "
            "dereference, address: 0000000000000000\n[    1.000002] RIP: 0010:handler_pre+0x15/0x30 [mymod]\n")
    c = find_crashes(text)[0]
    assert c.title == "BUG: kernel NULL pointer dereference in handler_pre"
    assert text[c.offset:].startswith("[    1.000001] BUG:")


def test_syslog_levels_and_dropped_messages_prefixes():
    text = ("<4>[    1.0] ** 3 printk messages dropped ** [    1.1] general protection fault, probably for "
            "non-canonical address 0xdead: 0000 [#1] SMP\n<4>[    1.2] RIP: 0010:handler_pre+0x1/0x2 [m]\n")
    assert [c.title for c in find_crashes(text)] == ["general protection fault in handler_pre"]


def test_a_truncated_report_still_has_a_title():
    text = OOPS[:OOPS.index("Oops")]  # the console was cut off mid-report
    assert [c.title for c in find_crashes(text)] == ["BUG: kernel NULL pointer dereference"]
    assert [c.title for c in find_crashes("[    1.0] BUG: kernel NULL poi")] == ["BUG: kernel NULL poi"]
    assert find_crashes("[    1.0] Kernel panic - not syn") == []


# -- kprobe-specific reports (kprobes-facts §8) ----------------------------------------------------
def test_unrecoverable_kprobe_absorbs_the_bug_that_follows():
    text = """\
[    9.000000] Unrecoverable kprobe detected.
[    9.000001] Dump kprobe:
[    9.000002] .symbol_name = kernel_clone, .offset = 0, .addr = kernel_clone+0x0/0x430
[    9.000003] ------------[ cut here ]------------
[    9.000004] kernel BUG at arch/x86/kernel/kprobes/core.c:661!
[    9.000005] invalid opcode: 0000 [#1] PREEMPT SMP NOPTI
[    9.000006] RIP: 0010:reenter_kprobe.cold+0x16/0x18
[    9.000007] Call Trace:
[    9.000008]  <TASK>
[    9.000009]  kprobe_int3_handler+0x142/0x170
[    9.000010]  exc_int3+0x3c/0x110
[    9.000011]  asm_exc_int3+0x35/0x40
[    9.000012]  kernel_clone+0x1/0x430
[    9.000013]  </TASK>
[    9.000014] ---[ end trace 0000000000000000 ]---
"""
    crashes = find_crashes(text)
    assert [(c.kind, c.title, c.function) for c in crashes] == [
        ("kprobe", "Unrecoverable kprobe detected at kernel_clone", None)]
    assert crashes[0].frames == ["kprobe_int3_handler", "exc_int3", "asm_exc_int3", "kernel_clone"]


def test_failed_to_arm_kprobe_ftrace_absorbs_its_warning():
    text = """\
[    4.000000] ------------[ cut here ]------------
[    4.000001] Failed to arm kprobe-ftrace at kernel_clone+0x0/0x430 (error -22)
[    4.000002] WARNING: CPU: 0 PID: 99 at kernel/kprobes.c:1110 __arm_kprobe_ftrace+0xb5/0xc0
[    4.000003] RIP: 0010:__arm_kprobe_ftrace+0xb5/0xc0
[    4.000004] Call Trace:
[    4.000005]  register_kprobe+0x4c6/0x5f0
[    4.000006] ---[ end trace 0000000000000000 ]---
"""
    assert [(c.kind, c.title) for c in find_crashes(text)] == [("kprobe", "Failed to arm kprobe-ftrace at kernel_clone")]


def test_kretprobe_return_address_not_found():
    text = """\
[    4.0] kretprobe: Return address not found, not execute handler. Maybe there is a bug in the kernel.
[    4.1] ------------[ cut here ]------------
[    4.2] kernel BUG at kernel/kprobes.c:1964!
[    4.3] invalid opcode: 0000 [#1] PREEMPT SMP NOPTI
[    4.4] RIP: 0010:__kretprobe_trampoline_handler+0x1c4/0x1d0
[    4.5] Call Trace:
[    4.6]  <TASK>
[    4.7]  trampoline_handler+0x3f/0x60
[    4.8]  __kretprobe_trampoline+0x2a/0x50
[    4.9]  my_victim+0x10/0x20 [mymod]
[    5.0]  </TASK>
[    5.1] ---[ end trace 0000000000000000 ]---
"""
    assert [(c.kind, c.title, c.function) for c in find_crashes(text)] == [
        ("kprobe", "kretprobe: Return address not found in my_victim", "my_victim")]


def test_hung_task_skips_the_scheduler():
    text = """\
[  121.0] INFO: task insmod:99 blocked for more than 120 seconds.
[  121.1]       Tainted: G           OE      6.1.0-56-cloud-amd64 #1 Debian 6.1.192-2
[  121.2] "echo 0 > /proc/sys/kernel/hung_task_timeout_secs" disables this message.
[  121.3] task:insmod          state:D stack:0     pid:99    ppid:1      flags:0x00004000
[  121.4] Call Trace:
[  121.5]  <TASK>
[  121.6]  __schedule+0x34d/0xa00
[  121.7]  schedule+0x5a/0xd0
[  121.8]  schedule_timeout+0x94/0x150
[  121.9]  wait_for_completion+0x8a/0x160
[  122.0]  my_init+0x20/0x1000 [mymod]
[  122.1]  do_one_initcall+0x56/0x220
[  122.2]  </TASK>
"""
    assert [(c.kind, c.title) for c in find_crashes(text)] == [("hung", "INFO: task hung in my_init")]
