// SPDX-License-Identifier: GPL-2.0
/*
 * vmprobe fault module: a pre handler that spins with interrupts disabled
 *
 * A kprobe (same parameters as vmprobe_fork.c: symbol, offset, nonce) whose
 * pre handler spins for `seconds` (interrupts off unless irqs_off=0) on its
 * first hit once armed, and does nothing otherwise. Arm it at load time (armed=1) or later,
 * then fork (the last command of `sh -c` is exec'd, not forked: add one):
 *
 *   insmod vmprobe_fault_spin.ko symbol=kernel_clone nonce=N
 *   echo 1 > /sys/module/vmprobe_fault_spin/parameters/armed; /bin/true; true
 *
 * (vmprobe_fault_spin is the name this directory's Makefile gives it; built alone,
 * the module takes the file's name: spin.)
 *
 * Before misbehaving it prints "vmprobe-fault nonce=N fault=spin ..." so the
 * host knows the fault was reached. For vmprobe's own tests: never load it on
 * a machine you care about.
 *
 * What notices it (bookworm 6.1 under QEMU/TCG, where the NMI watchdog is
 * "permanently disabled": no PMU):
 *   irqs_off=0 on an ftrace-based probe (offset 0: the handler runs with
 *     preemption off, interrupts on): the soft lockup detector, after
 *     2 * watchdog_thresh seconds (fatal with softlockup_panic=1);
 *   irqs_off=1 with 2+ CPUs: another CPU's RCU stall detector, after
 *     rcupdate.rcu_cpu_stall_timeout seconds, with an NMI backtrace of this
 *     one (fatal with sysctl.kernel.panic_on_rcu_stall=1);
 *   irqs_off=1 on the only CPU: nothing while it spins (seconds=N: an RCU
 *     "self-detected stall" once interrupts are back on; seconds=0: the guest
 *     is silent for good, only a host-side timeout or an injected NMI tells).
 */
#include <linux/delay.h>
#include <linux/irqflags.h>

#define FAULT_NAME "spin"
#include "fault_probe.h"

static unsigned int seconds = 30;
module_param(seconds, uint, 0444);
MODULE_PARM_DESC(seconds, "how long to spin (0: forever)");

static bool irqs_off = true;
module_param(irqs_off, bool, 0444);
MODULE_PARM_DESC(irqs_off, "spin with local interrupts disabled (else only preemption is off)");

static void misbehave(struct kprobe *p)
{
	unsigned long flags = 0;
	unsigned int ms;

	pr_emerg("vmprobe-fault nonce=%s fault=spin seconds=%u irqs_off=%d\n", nonce, seconds, irqs_off);
	if (irqs_off)
		local_irq_save(flags);
	/* no cond_resched(), no touch_*_watchdog(): the detectors must see it */
	for (ms = 0; !seconds || ms < seconds * 1000U; ms++)
		mdelay(1);
	if (irqs_off)
		local_irq_restore(flags);
}

MODULE_DESCRIPTION("vmprobe fault module: a pre handler that spins with interrupts disabled");
