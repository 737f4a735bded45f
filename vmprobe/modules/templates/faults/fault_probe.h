/* SPDX-License-Identifier: GPL-2.0 */
/*
 * What every vmprobe fault module shares: the parameters (same as
 * vmprobe_fork.c: symbol, offset, nonce; plus writable `armed` and `pid`), the kprobe,
 * and load/unload with vmprobe's tagged lines. A fault module defines
 * FAULT_NAME and `static void misbehave(struct kprobe *p)`, then includes
 * this file; its pre handler calls misbehave() on the first hit once armed,
 * after printing "vmprobe-fault nonce=N fault=NAME ..." so the host knows the
 * fault was reached.
 */
#include <linux/atomic.h>
#include <linux/kernel.h>
#include <linux/kprobes.h>
#include <linux/module.h>
#include <linux/ptrace.h>
#include <linux/sched.h>

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

/* the flags register under each arch's name, printed with %lx (register width) */
#if defined(CONFIG_ARM64)
#define FLAGS_NAME "pstate"
#define FLAGS_VALUE(regs) ((unsigned long)(regs)->pstate)
#elif defined(CONFIG_X86)
#define FLAGS_NAME "eflags"
#define FLAGS_VALUE(regs) ((unsigned long)(regs)->flags)
#else
#define FLAGS_NAME "flags"
#define FLAGS_VALUE(regs) 0UL
#endif

/* Only this process's hits count: on an SMP guest another task's fork (a kernel thread's, the
 * SSH server's) could take the one-shot fault on another CPU while the test's shell forks on. */
static int pid;
module_param(pid, int, 0644);
MODULE_PARM_DESC(pid, "misbehave only in this process (tgid; 0: in any)");

static atomic_t fired = ATOMIC_INIT(0);
static struct kprobe kp;

static void misbehave(struct kprobe *p);

static int handler_pre(struct kprobe *p, struct pt_regs *regs)
{
	int only = READ_ONCE(pid);

	if (!READ_ONCE(armed) || (only && task_tgid_nr(current) != only) || atomic_xchg(&fired, 1))
		return 0;
	pr_emerg("vmprobe-fault nonce=%s fault=%s addr=%px comm=%s pid=%d ip=%lx %s=%lx\n",
		 nonce, FAULT_NAME, p->addr, current->comm, task_pid_nr(current),
		 (unsigned long)instruction_pointer(regs), FLAGS_NAME, FLAGS_VALUE(regs));
	misbehave(p);
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
	pr_info("vmprobe-armed nonce=%s symbol=%s offset=%u addr=%px fault=%s armed=%d\n",
		nonce, symbol, offset, kp.addr, FAULT_NAME, armed);
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
