// SPDX-License-Identifier: GPL-2.0
/*
 * modify-data: the pre-handler (on the fork path) writes a field of a kernel
 * object, the `comm` of the task with pid `pid`, once; rmmod puts the old
 * name back. The line it prints gives the field's address, for gdb.
 */
#include <linux/atomic.h>
#include <linux/kernel.h>
#include <linux/module.h>
#include <linux/pid.h>
#include <linux/rcupdate.h>
#include <linux/sched.h>
#include <linux/sched/task.h>
#include <linux/string.h>
#include "scenario.h"

static char *symbol = "kernel_clone";
module_param(symbol, charp, 0444);
static char *nonce = "none";
module_param(nonce, charp, 0444);
static int pid;
module_param(pid, int, 0444);
MODULE_PARM_DESC(pid, "the task whose comm the handler writes");
static char *value = "vmprobe";
module_param(value, charp, 0444);
MODULE_PARM_DESC(value, "the name written (at most 15 characters)");

static struct task_struct *target;
static char saved[TASK_COMM_LEN];
static atomic_t claimed = ATOMIC_INIT(0);
static atomic_long_t hits = ATOMIC_LONG_INIT(0);
static struct kprobe kp;

static int handler_pre(struct kprobe *p, struct pt_regs *regs)
{
	struct task_struct *t;

	atomic_long_inc(&hits);
	if (atomic_read(&claimed) || atomic_xchg(&claimed, 1))
		return 0;
	rcu_read_lock();
	t = pid_task(find_vpid(pid), PIDTYPE_PID);
	if (t)
		get_task_struct(t);
	rcu_read_unlock();
	if (!t) {
		pr_info("vmprobe-data nonce=%s pid=%d missing\n", nonce, pid);
		return 0;
	}
	memcpy(saved, t->comm, TASK_COMM_LEN);
	memset(t->comm, 0, TASK_COMM_LEN);
	strscpy(t->comm, value, TASK_COMM_LEN);
	WRITE_ONCE(target, t);
	pr_info("vmprobe-data nonce=%s pid=%d field=comm addr=%px size=%d old=%s new=%s by=%d\n",
		nonce, pid, t->comm, TASK_COMM_LEN, saved, t->comm, task_pid_nr(current));
	return 0;
}

static int __init moddata_init(void)
{
	int ret;

	kp.symbol_name = symbol;
	kp.pre_handler = handler_pre;
	ret = register_kprobe(&kp);
	if (ret < 0) {
		pr_err("vmprobe-error nonce=%s symbol=%s offset=0 register_kprobe=%d\n", nonce, symbol, ret);
		return ret;
	}
	pr_info("vmprobe-armed nonce=%s symbol=%s offset=0 addr=%px\n", nonce, symbol, kp.addr);
	return 0;
}

static void __exit moddata_exit(void)
{
	unregister_kprobe(&kp);
	if (target) {
		memcpy(target->comm, saved, TASK_COMM_LEN);
		pr_info("vmprobe-data-restored nonce=%s pid=%d addr=%px comm=%s\n",
			nonce, pid, target->comm, target->comm);
		put_task_struct(target);
	}
	pr_info("vmprobe-disarmed nonce=%s addr=%px hits=%ld nmissed=%lu\n",
		nonce, kp.addr, atomic_long_read(&hits), kp.nmissed);
}

module_init(moddata_init);
module_exit(moddata_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("vmprobe scenario modify-data: a handler writes a task's comm");
