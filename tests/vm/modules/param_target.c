// SPDX-License-Identifier: GPL-2.0
/* samples/kprobes/kprobe_example.c's shape: the target is a module parameter,
 * the handlers are set in init. */
#include <linux/kernel.h>
#include <linux/kprobes.h>
#include <linux/module.h>

static char symbol[KSYM_NAME_LEN] = "kernel_clone";
module_param_string(symbol, symbol, KSYM_NAME_LEN, 0644);

static struct kprobe kp = {
	.symbol_name = symbol,
};

static int __kprobes handler_pre(struct kprobe *p, struct pt_regs *regs)
{
	pr_info_ratelimited("<%s> p->addr = 0x%px\n", p->symbol_name, p->addr);
	return 0;
}

static void __kprobes handler_post(struct kprobe *p, struct pt_regs *regs, unsigned long flags)
{
	pr_info_ratelimited("<%s> p->addr = 0x%px, post\n", p->symbol_name, p->addr);
}

static int __init kprobe_init(void)
{
	int ret;

	kp.pre_handler = handler_pre;
	kp.post_handler = handler_post;
	ret = register_kprobe(&kp);
	if (ret < 0) {
		pr_err("register_kprobe failed, returned %d\n", ret);
		return ret;
	}
	pr_info("Planted kprobe at %px\n", kp.addr);
	return 0;
}

static void __exit kprobe_exit(void)
{
	unregister_kprobe(&kp);
	pr_info("kprobe at %px unregistered\n", kp.addr);
}

module_init(kprobe_init)
module_exit(kprobe_exit)
MODULE_LICENSE("GPL");
