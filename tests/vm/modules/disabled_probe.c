// SPDX-License-Identifier: GPL-2.0
/* A kprobe registered and then disabled: listed, never fired. */
#include <linux/kernel.h>
#include <linux/kprobes.h>
#include <linux/module.h>

static int idle_pre(struct kprobe *p, struct pt_regs *regs)
{
	return 0;
}

static struct kprobe kp = { .symbol_name = "kernel_clone", .pre_handler = idle_pre };

static int __init disabled_init(void)
{
	int ret = register_kprobe(&kp);

	if (ret)
		return ret;
	return disable_kprobe(&kp);
}

static void __exit disabled_exit(void)
{
	unregister_kprobe(&kp);
}

module_init(disabled_init)
module_exit(disabled_exit)
MODULE_LICENSE("GPL");
