// SPDX-License-Identifier: GPL-2.0
/*
 * vmprobe's fork probe: a kprobe with pre and post handlers (and, on kernels
 * that still have it, a fault handler) on the fork path, in the spirit of
 * samples/kprobes/kprobe_example.c.
 *
 * Every line it prints carries the run's nonce, so the host counts only this
 * run's hits on a console shared with everything else. Hit lines are printed
 * for the first `max_prints` hits; the exact count is printed at unload.
 * The post handler dumps every task once per load.
 */
#include <linux/atomic.h>
#include <linux/kernel.h>
#include <linux/kprobes.h>
#include <linux/module.h>
#include <linux/ptrace.h>
#include <linux/rcupdate.h>
#include <linux/sched.h>
#include <linux/sched/signal.h>
#include <linux/version.h>

static char *symbol = "kernel_clone";
module_param(symbol, charp, 0444);
MODULE_PARM_DESC(symbol, "function to probe");

static unsigned int offset;
module_param(offset, uint, 0444);
MODULE_PARM_DESC(offset, "offset into the function");

static char *nonce = "none";
module_param(nonce, charp, 0444);
MODULE_PARM_DESC(nonce, "tag printed on every line (per run)");

static bool post = true;
module_param(post, bool, 0444);
MODULE_PARM_DESC(post, "install a post handler (no post handler lets x86 optimize the probe)");

static bool dump_tasks = true;
module_param(dump_tasks, bool, 0444);
MODULE_PARM_DESC(dump_tasks, "dump all tasks once, from the post handler");

static long max_prints = 64;
module_param(max_prints, long, 0444);
MODULE_PARM_DESC(max_prints, "print at most this many hit lines");

/* printed with %lx: unsigned long is the register width on i386, x86_64 and arm64 (u64) */
#if defined(CONFIG_ARM64)
#define FLAGS_NAME "pstate"
#define FLAGS_VALUE(regs) ((unsigned long)(regs)->pstate)
#elif defined(CONFIG_X86) && LINUX_VERSION_CODE < KERNEL_VERSION(2, 6, 25)
/* before the 2.6.25 pt_regs unification the field had the register's name */
#define FLAGS_NAME "eflags"
#define FLAGS_VALUE(regs) ((unsigned long)(regs)->eflags)
#elif defined(CONFIG_X86)
#define FLAGS_NAME "eflags"
#define FLAGS_VALUE(regs) ((unsigned long)(regs)->flags)
#else
#define FLAGS_NAME "flags"
#define FLAGS_VALUE(regs) 0UL
#endif

#if LINUX_VERSION_CODE >= KERNEL_VERSION(5, 14, 0)
#define TASK_STATE(p) READ_ONCE((p)->__state)
#else
#define TASK_STATE(p) READ_ONCE((p)->state)
#endif

static atomic_long_t pre_hits = ATOMIC_LONG_INIT(0);
static atomic_long_t post_hits = ATOMIC_LONG_INIT(0);
static atomic_t dumped = ATOMIC_INIT(0);

static struct kprobe kp;

static int handler_pre(struct kprobe *p, struct pt_regs *regs)
{
	if (atomic_long_inc_return(&pre_hits) <= max_prints)
		pr_info("vmprobe-hit nonce=%s handler=pre addr=%px ip=%lx %s=%lx\n",
			nonce, p->addr, (unsigned long)instruction_pointer(regs),
			FLAGS_NAME, FLAGS_VALUE(regs));
	return 0;
}

static void dump_all_tasks(void)
{
	struct task_struct *g, *t;

	pr_info("vmprobe-tasks nonce=%s begin\n", nonce);
	rcu_read_lock();
	for_each_process_thread(g, t) {
		pr_info("vmprobe-task nonce=%s pid=%d comm=%s state=%#x cpu=%u tflags=%#lx\n",
			nonce, task_pid_nr(t), t->comm, (unsigned int)TASK_STATE(t),
			task_cpu(t), (unsigned long)task_thread_info(t)->flags);
	}
	rcu_read_unlock();
	pr_info("vmprobe-tasks nonce=%s end\n", nonce);
}

static void handler_post(struct kprobe *p, struct pt_regs *regs, unsigned long flags)
{
	if (atomic_long_inc_return(&post_hits) <= max_prints)
		pr_info("vmprobe-hit nonce=%s handler=post addr=%px ip=%lx %s=%lx\n",
			nonce, p->addr, (unsigned long)instruction_pointer(regs),
			FLAGS_NAME, FLAGS_VALUE(regs));
	if (dump_tasks && atomic_xchg(&dumped, 1) == 0)
		dump_all_tasks();
}

#if LINUX_VERSION_CODE < KERNEL_VERSION(5, 14, 0)
/* kprobe::fault_handler was removed in 5.14 (ec6aba3d2be1). */
static int handler_fault(struct kprobe *p, struct pt_regs *regs, int trapnr)
{
	pr_info("vmprobe-fault nonce=%s addr=%px trapnr=%d\n", nonce, p->addr, trapnr);
	return 0;
}
#endif

static int __init vmprobe_init(void)
{
	int ret;

	kp.symbol_name = symbol;
	kp.offset = offset;
	kp.pre_handler = handler_pre;
	if (post)
		kp.post_handler = handler_post;
#if LINUX_VERSION_CODE < KERNEL_VERSION(5, 14, 0)
	kp.fault_handler = handler_fault;
#endif
	ret = register_kprobe(&kp);
	if (ret < 0) {
		pr_err("vmprobe-error nonce=%s symbol=%s offset=%u register_kprobe=%d\n",
		       nonce, symbol, offset, ret);
		return ret;
	}
	pr_info("vmprobe-armed nonce=%s symbol=%s offset=%u addr=%px post=%d\n",
		nonce, symbol, offset, kp.addr, post);
	return 0;
}

static void __exit vmprobe_exit(void)
{
	unregister_kprobe(&kp);
	pr_info("vmprobe-disarmed nonce=%s addr=%px pre_hits=%ld post_hits=%ld nmissed=%lu\n",
		nonce, kp.addr, atomic_long_read(&pre_hits), atomic_long_read(&post_hits),
		kp.nmissed);
}

module_init(vmprobe_init);
module_exit(vmprobe_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("vmprobe fork probe: pre/post handlers with per-run tagged output");
