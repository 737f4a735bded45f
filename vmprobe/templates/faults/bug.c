// SPDX-License-Identifier: GPL-2.0
/*
 * vmprobe fault module: a pre handler that calls BUG()
 *
 * A kprobe (same parameters as vmprobe_fork.c: symbol, offset, nonce) whose
 * pre handler calls BUG() on its first hit once armed, and does nothing
 * otherwise. Arm it at load time (armed=1) or later, then fork (the last
 * command of `sh -c` is exec'd, not forked: add one):
 *
 *   insmod vmprobe_fault_bug.ko symbol=kernel_clone nonce=N
 *   echo 1 > /sys/module/vmprobe_fault_bug/parameters/armed; /bin/true; true
 *
 * (vmprobe_fault_bug is the name this directory's Makefile gives it; built alone,
 * the module takes the file's name: bug.)
 *
 * Before misbehaving it prints "vmprobe-fault nonce=N fault=bug ..." so the
 * host knows the fault was reached. For vmprobe's own tests: never load it on
 * a machine you care about.
 */
#include <linux/atomic.h>
#include <linux/kernel.h>
#include <linux/kprobes.h>
#include <linux/module.h>
#include <linux/ptrace.h>
#include <linux/bug.h>

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

static atomic_t fired = ATOMIC_INIT(0);
static struct kprobe kp;

static int handler_pre(struct kprobe *p, struct pt_regs *regs)
{
	if (!READ_ONCE(armed) || atomic_xchg(&fired, 1))
		return 0;
	pr_emerg("vmprobe-fault nonce=%s fault=bug addr=%px comm=%s pid=%d\n",
		 nonce, p->addr, current->comm, task_pid_nr(current));
	BUG();
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
	pr_info("vmprobe-armed nonce=%s symbol=%s offset=%u addr=%px fault=bug armed=%d\n",
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
MODULE_DESCRIPTION("vmprobe fault module: a pre handler that calls BUG()");
