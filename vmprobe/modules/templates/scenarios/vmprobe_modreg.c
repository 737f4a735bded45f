// SPDX-License-Identifier: GPL-2.0
/*
 * modify-register: a kretprobe rewrites a system call's return value in the
 * return register, for tasks named `comm` only (so nothing else in the guest
 * is fooled). Every line carries the run's nonce.
 */
#include <linux/atomic.h>
#include <linux/kernel.h>
#include <linux/module.h>
#include <linux/sched.h>
#include <linux/string.h>
#include "scenario.h"

static char *symbol = "__x64_sys_geteuid";
module_param(symbol, charp, 0444);
static char *nonce = "none";
module_param(nonce, charp, 0444);
static char *comm = "id";
module_param(comm, charp, 0444);
MODULE_PARM_DESC(comm, "rewrite the return value only for tasks of this name");
static long value = 4242;
module_param(value, long, 0444);
MODULE_PARM_DESC(value, "the return value written into the return register");

static atomic_long_t rewrites = ATOMIC_LONG_INIT(0);
static atomic_long_t returns = ATOMIC_LONG_INIT(0);

static int ret_handler(struct kretprobe_instance *ri, struct pt_regs *regs)
{
	unsigned long was;

	atomic_long_inc(&returns);
	if (strcmp(current->comm, comm) != 0)
		return 0;
	was = RETURN_REG(regs);
	RETURN_REG(regs) = value;
	if (atomic_long_inc_return(&rewrites) <= 16)
		pr_info("vmprobe-ret nonce=%s pid=%d comm=%s was=%ld now=%ld retaddr=%lx\n",
			nonce, task_pid_nr(current), current->comm, (long)was,
			(long)RETURN_REG(regs), RET_ADDR(ri));
	return 0;
}

static struct kretprobe krp = {
	.handler = ret_handler,
	.maxactive = 32,
};

static int __init modreg_init(void)
{
	int ret;

	krp.kp.symbol_name = symbol;
	ret = register_kretprobe(&krp);
	if (ret < 0) {
		pr_err("vmprobe-error nonce=%s symbol=%s register_kretprobe=%d\n", nonce, symbol, ret);
		return ret;
	}
	pr_info("vmprobe-armed nonce=%s symbol=%s offset=0 addr=%px kind=kretprobe\n",
		nonce, symbol, krp.kp.addr);
	return 0;
}

static void __exit modreg_exit(void)
{
	unregister_kretprobe(&krp);
	pr_info("vmprobe-disarmed nonce=%s addr=%px returns=%ld rewrites=%ld nmissed=%d\n",
		nonce, krp.kp.addr, atomic_long_read(&returns), atomic_long_read(&rewrites),
		krp.nmissed);
}

module_init(modreg_init);
module_exit(modreg_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("vmprobe scenario modify-register: a kretprobe rewrites a return value");
