// SPDX-License-Identifier: GPL-2.0
/*
 * vmprobe's fork probe: a kprobe with pre and post handlers (and, on kernels
 * that still have it, a fault handler) on the fork path, in the spirit of
 * samples/kprobes/kprobe_example.c and of the 2.6-era kprobes article.
 *
 * Every line it prints carries the run's nonce, so the host counts only this
 * run's hits on a console shared with everything else. Hit lines are printed
 * for the first `max_prints` hits; the exact count is printed at unload.
 * The post handler dumps every task once per load.
 *
 * One source for 2.6.11 through today: what changed on the way is the block of
 * LINUX_VERSION_CODE conditionals below (the same boundaries are in
 * vmprobe/arch/eras.py's PROBE_ERAS, which the tool uses to choose what it
 * passes in; a unit test checks that they agree).
 */
#include <linux/version.h>
#include <linux/kernel.h>
#include <linux/kprobes.h>
#include <linux/module.h>
#include <linux/ptrace.h>
#include <linux/rcupdate.h>
#include <linux/sched.h>
#if LINUX_VERSION_CODE >= KERNEL_VERSION(3, 1, 0)
#include <linux/atomic.h>
#else
#include <asm/atomic.h>
#endif
#if LINUX_VERSION_CODE >= KERNEL_VERSION(4, 11, 0)
#include <linux/sched/signal.h>
#endif

/* ---- what changed since 2.6 ------------------------------------------------ */

/* the central fork function: do_fork, renamed _do_fork in 4.2, kernel_clone in 5.10 */
#if LINUX_VERSION_CODE >= KERNEL_VERSION(5, 10, 0)
#define FORK_FUNCTION "kernel_clone"
#elif LINUX_VERSION_CODE >= KERNEL_VERSION(4, 2, 0)
#define FORK_FUNCTION "_do_fork"
#else
#define FORK_FUNCTION "do_fork"
#endif

/* struct kprobe has symbol_name/offset since 2.6.19; before, the caller gives addr */
#define HAVE_SYMBOL_NAME (LINUX_VERSION_CODE >= KERNEL_VERSION(2, 6, 19))
/* kprobe::fault_handler was removed in 5.14 (ec6aba3d2be1) */
#define HAVE_FAULT_HANDLER (LINUX_VERSION_CODE < KERNEL_VERSION(5, 14, 0))
/* kprobe::nmissed arrived with the re-entrancy handling of 2.6.13 */
#define HAVE_NMISSED (LINUX_VERSION_CODE >= KERNEL_VERSION(2, 6, 13))

/* pt_regs: x86 fields had the registers' names (rip/eip, eflags) until 2.6.25 */
#if defined(__aarch64__)
#define FLAGS_NAME "pstate"
#define FLAGS_VALUE(regs) ((unsigned long)(regs)->pstate)
#define IP_VALUE(regs) ((unsigned long)instruction_pointer(regs))
#elif (defined(__x86_64__) || defined(__i386__)) && LINUX_VERSION_CODE >= KERNEL_VERSION(2, 6, 25)
#define FLAGS_NAME "eflags"
#define FLAGS_VALUE(regs) ((unsigned long)(regs)->flags)
#define IP_VALUE(regs) ((unsigned long)(regs)->ip)
#elif defined(__x86_64__)
#define FLAGS_NAME "eflags"
#define FLAGS_VALUE(regs) ((unsigned long)(regs)->eflags)
#define IP_VALUE(regs) ((unsigned long)(regs)->rip)
#elif defined(__i386__)
#define FLAGS_NAME "eflags"
#define FLAGS_VALUE(regs) ((unsigned long)(regs)->eflags)
#define IP_VALUE(regs) ((unsigned long)(regs)->eip)
#else
#define FLAGS_NAME "flags"
#define FLAGS_VALUE(regs) 0UL
#define IP_VALUE(regs) ((unsigned long)instruction_pointer(regs))
#endif

/* bool module parameters were ints until 3.3 (and there was no bool type before 2.6.19) */
#if LINUX_VERSION_CODE >= KERNEL_VERSION(3, 3, 0)
typedef bool param_bool;
#else
typedef int param_bool;
#endif

/* task fields */
#if LINUX_VERSION_CODE >= KERNEL_VERSION(5, 14, 0)
#define TASK_STATE(p) READ_ONCE((p)->__state)
#else
#define TASK_STATE(p) ((p)->state)
#endif
#if LINUX_VERSION_CODE >= KERNEL_VERSION(2, 6, 24)
#define TASK_PID(p) task_pid_nr(p)
#else
#define TASK_PID(p) ((p)->pid)
#endif
#if LINUX_VERSION_CODE >= KERNEL_VERSION(2, 6, 16)
#define TASK_TFLAGS(p) (task_thread_info(p)->flags)
#else
#define TASK_TFLAGS(p) ((p)->thread_info->flags)
#endif

/* walking every thread: for_each_process_thread since 3.14, under RCU since 2.6.18 */
#if LINUX_VERSION_CODE >= KERNEL_VERSION(3, 14, 0)
#define FOR_EACH_THREAD(g, t) for_each_process_thread(g, t)
#define END_EACH_THREAD(g, t)
#else
#define FOR_EACH_THREAD(g, t) do_each_thread(g, t)
#define END_EACH_THREAD(g, t) while_each_thread(g, t)
#endif
#if LINUX_VERSION_CODE >= KERNEL_VERSION(2, 6, 18)
#define LOCK_TASKS() rcu_read_lock()
#define UNLOCK_TASKS() rcu_read_unlock()
#else
#define LOCK_TASKS() read_lock(&tasklist_lock)
#define UNLOCK_TASKS() read_unlock(&tasklist_lock)
#endif

/* ---- parameters -------------------------------------------------------------- */

static char *symbol = FORK_FUNCTION;
module_param(symbol, charp, 0444);
MODULE_PARM_DESC(symbol, "function to probe (its name in the messages; the site itself when addr is 0)");

static unsigned long addr;
module_param(addr, ulong, 0444);
MODULE_PARM_DESC(addr, "the function's address from /proc/kallsyms or System.map (0: find symbol; "
		 "needed before 2.6.19, whose struct kprobe has no symbol_name)");

static unsigned int offset;
module_param(offset, uint, 0444);
MODULE_PARM_DESC(offset, "offset into the function");

static char *nonce = "none";
module_param(nonce, charp, 0444);
MODULE_PARM_DESC(nonce, "tag printed on every line (per run)");

static param_bool post = 1;
module_param(post, bool, 0444);
MODULE_PARM_DESC(post, "install a post handler (no post handler lets x86 optimize the probe)");

static param_bool dump_tasks = 1;
module_param(dump_tasks, bool, 0444);
MODULE_PARM_DESC(dump_tasks, "dump all tasks once, from the post handler");

static long max_prints = 64;
module_param(max_prints, long, 0444);
MODULE_PARM_DESC(max_prints, "print at most this many hit lines");

/* ---- the probe ----------------------------------------------------------------- */

/* atomic_t and atomic_inc/atomic_read exist on every kernel; the print limit may race by a line */
static atomic_t pre_hits = ATOMIC_INIT(0);
static atomic_t post_hits = ATOMIC_INIT(0);
static unsigned long dumped;

static struct kprobe kp;

static long count_hit(atomic_t *hits)
{
	atomic_inc(hits);
	return atomic_read(hits);
}

static int handler_pre(struct kprobe *p, struct pt_regs *regs)
{
	if (count_hit(&pre_hits) <= max_prints)
		printk(KERN_INFO "vmprobe-hit nonce=%s handler=pre addr=%lx ip=%lx %s=%lx\n",
		       nonce, (unsigned long)p->addr, IP_VALUE(regs), FLAGS_NAME, FLAGS_VALUE(regs));
	return 0;
}

static void dump_all_tasks(void)
{
	struct task_struct *g, *t;

	printk(KERN_INFO "vmprobe-tasks nonce=%s begin\n", nonce);
	LOCK_TASKS();
	FOR_EACH_THREAD(g, t) {
		printk(KERN_INFO "vmprobe-task nonce=%s pid=%d comm=%s state=%#x cpu=%u tflags=%#lx\n",
		       nonce, (int)TASK_PID(t), t->comm, (unsigned int)TASK_STATE(t),
		       (unsigned int)task_cpu(t), (unsigned long)TASK_TFLAGS(t));
	} END_EACH_THREAD(g, t);
	UNLOCK_TASKS();
	printk(KERN_INFO "vmprobe-tasks nonce=%s end\n", nonce);
}

static void handler_post(struct kprobe *p, struct pt_regs *regs, unsigned long flags)
{
	if (count_hit(&post_hits) <= max_prints)
		printk(KERN_INFO "vmprobe-hit nonce=%s handler=post addr=%lx ip=%lx %s=%lx\n",
		       nonce, (unsigned long)p->addr, IP_VALUE(regs), FLAGS_NAME, FLAGS_VALUE(regs));
	if (dump_tasks && !test_and_set_bit(0, &dumped))
		dump_all_tasks();
}

#if HAVE_FAULT_HANDLER
static int handler_fault(struct kprobe *p, struct pt_regs *regs, int trapnr)
{
	printk(KERN_INFO "vmprobe-fault nonce=%s addr=%lx trapnr=%d\n", nonce, (unsigned long)p->addr, trapnr);
	return 0;
}
#endif

static int __init vmprobe_init(void)
{
	int ret;

	if (addr) {
		kp.addr = (kprobe_opcode_t *)(addr + offset);
	} else {
#if HAVE_SYMBOL_NAME
		kp.symbol_name = symbol;
		kp.offset = offset;
#else
		printk(KERN_ERR "vmprobe-error nonce=%s symbol=%s offset=%u register_kprobe=%d "
		       "(this kernel's struct kprobe has no symbol_name: pass addr=)\n",
		       nonce, symbol, offset, -EINVAL);
		return -EINVAL;
#endif
	}
	kp.pre_handler = handler_pre;
	if (post)
		kp.post_handler = handler_post;
#if HAVE_FAULT_HANDLER
	kp.fault_handler = handler_fault;
#endif
	ret = register_kprobe(&kp);
	if (ret < 0) {
		printk(KERN_ERR "vmprobe-error nonce=%s symbol=%s offset=%u register_kprobe=%d\n",
		       nonce, symbol, offset, ret);
		return ret;
	}
	printk(KERN_INFO "vmprobe-armed nonce=%s symbol=%s offset=%u addr=%lx post=%d\n",
	       nonce, symbol, offset, (unsigned long)kp.addr, (int)post);
	return 0;
}

static void __exit vmprobe_exit(void)
{
	unsigned long nmissed = 0;

	unregister_kprobe(&kp);
#if HAVE_NMISSED
	nmissed = kp.nmissed;
#endif
	printk(KERN_INFO "vmprobe-disarmed nonce=%s addr=%lx pre_hits=%d post_hits=%d nmissed=%lu\n",
	       nonce, (unsigned long)kp.addr, atomic_read(&pre_hits), atomic_read(&post_hits), nmissed);
}

module_init(vmprobe_init);
module_exit(vmprobe_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("vmprobe fork probe: pre/post handlers with per-run tagged output");
