/* SPDX-License-Identifier: GPL-2.0 */
/*
 * What every vmprobe splat module shares: a kprobe on `symbol` (default
 * kernel_clone) whose pre handler calls the module's `misbehave()` on every
 * hit, and load/unload lines. A splat module defines SPLAT_NAME and
 * `static void misbehave(struct kprobe *p)`, then includes this file.
 * Unlike the fault modules, these bugs do not crash a production kernel:
 * they are what vmprobe's findings (and a debug kernel) are for.
 */
#include <linux/kernel.h>
#include <linux/kprobes.h>
#include <linux/module.h>

static char *symbol = "kernel_clone";
module_param(symbol, charp, 0444);
MODULE_PARM_DESC(symbol, "function to probe");

static struct kprobe kp;
static unsigned long hits;

static void misbehave(struct kprobe *p);

static int handler_pre(struct kprobe *p, struct pt_regs *regs)
{
	hits++;
	misbehave(p);
	return 0;
}

static int __init splat_init(void)
{
	int ret;

	kp.symbol_name = symbol;
	kp.pre_handler = handler_pre;
	ret = register_kprobe(&kp);
	if (ret < 0) {
		pr_err("vmprobe-splat %s: register_kprobe(%s)=%d\n", SPLAT_NAME, symbol, ret);
		return ret;
	}
	pr_info("vmprobe-splat %s: armed at %px\n", SPLAT_NAME, kp.addr);
	return 0;
}

static void __exit splat_exit(void)
{
	unregister_kprobe(&kp);
	pr_info("vmprobe-splat %s: disarmed after %lu hits\n", SPLAT_NAME, hits);
}

module_init(splat_init);
module_exit(splat_exit);
MODULE_LICENSE("GPL");
