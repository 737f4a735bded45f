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
#include <linux/atomic.h>
#include <linux/kernel.h>
#include <linux/kprobes.h>
#include <linux/module.h>
#include <linux/ptrace.h>
#include <linux/delay.h>
#include <linux/irqflags.h>

static char *symbol = "kernel_clone";
module_param(symbol, charp, 0444);
MODULE_PARM_DESC(symbol, "function to probe");

static unsigned int offset;
module_param(offset, uint, 0444);
MODULE_PARM_DESC(offset, "offset into the function");

static char *nonce = "none";
module_param(nonce, charp, 0444);
MODULE_PARM_DESC(nonce, "tag printed on every line (per run)");

static bool armed;
module_param(armed, bool, 0644);
MODULE_PARM_DESC(armed, "misbehave on the next hit (writable in /sys/module/<name>/parameters)");

static unsigned int seconds = 30;
module_param(seconds, uint, 0444);
MODULE_PARM_DESC(seconds, "how long to spin (0: forever)");

static bool irqs_off = true;
module_param(irqs_off, bool, 0444);
MODULE_PARM_DESC(irqs_off, "spin with local interrupts disabled (else only preemption is off)");

static atomic_t fired = ATOMIC_INIT(0);
static struct kprobe kp;

static int handler_pre(struct kprobe *p, struct pt_regs *regs)
{
	if (!READ_ONCE(armed) || atomic_xchg(&fired, 1))
		return 0;
	pr_emerg("vmprobe-fault nonce=%s fault=spin addr=%px comm=%s pid=%d seconds=%u irqs_off=%d\n",
		 nonce, p->addr, current->comm, task_pid_nr(current), seconds, irqs_off);
	{
		unsigned long flags = 0;
		unsigned int ms;

		if (irqs_off)
			local_irq_save(flags);
		/* no cond_resched(), no touch_*_watchdog(): the detectors must see it */
		for (ms = 0; !seconds || ms < seconds * 1000U; ms++)
			mdelay(1);
		if (irqs_off)
			local_irq_restore(flags);
	}
	return 0;
}

static int __init fault_init(void)
{
	int ret;

	kp.symbol_name = symbol;
	kp.offset = offset;
	kp.pre_handler = handler_pre;
	ret = register_kprobe(&kp);
	if (ret < 0) {
		pr_err("vmprobe-error nonce=%s symbol=%s offset=%u register_kprobe=%d\n",
		       nonce, symbol, offset, ret);
		return ret;
	}
	pr_info("vmprobe-armed nonce=%s symbol=%s offset=%u addr=%px fault=spin armed=%d\n",
		nonce, symbol, offset, kp.addr, armed);
	return 0;
}

static void __exit fault_exit(void)
{
	unregister_kprobe(&kp);
	pr_info("vmprobe-disarmed nonce=%s addr=%px fired=%d nmissed=%lu\n",
		nonce, kp.addr, atomic_read(&fired), kp.nmissed);
}

module_init(fault_init);
module_exit(fault_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("vmprobe fault module: a pre handler that spins with interrupts disabled");
