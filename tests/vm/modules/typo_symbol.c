// SPDX-License-Identifier: GPL-2.0
/* A typo in the module's own symbol_name. */
#include <linux/kernel.h>
#include <linux/kprobes.h>
#include <linux/module.h>

static int pre(struct kprobe *p, struct pt_regs *regs) { return 0; }
static struct kprobe kp = { .symbol_name = "vfsread", .pre_handler = pre };

static int __init typo_init(void)
{
	int ret = register_kprobe(&kp);

	if (ret < 0)
		pr_err("typo_symbol: register_kprobe failed, returned %d\n", ret);
	return ret;
}

static void __exit typo_exit(void)
{
	unregister_kprobe(&kp);
}

module_init(typo_init)
module_exit(typo_exit)
MODULE_LICENSE("GPL");
