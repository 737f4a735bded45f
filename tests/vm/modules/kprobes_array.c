// SPDX-License-Identifier: GPL-2.0
/* Two kprobes registered at once with register_kprobes(): the fork function
 * at its entry and a second function at an offset given as a parameter. */
#include <linux/kernel.h>
#include <linux/kprobes.h>
#include <linux/module.h>

static char *second = "do_sys_openat2";
module_param(second, charp, 0444);
static unsigned int second_offset = 5;
module_param(second_offset, uint, 0444);

static int pre_fork(struct kprobe *p, struct pt_regs *regs) { return 0; }
static int pre_second(struct kprobe *p, struct pt_regs *regs) { return 0; }
static void post_second(struct kprobe *p, struct pt_regs *regs, unsigned long flags) { }

static struct kprobe kp_fork = { .symbol_name = "kernel_clone", .pre_handler = pre_fork };
static struct kprobe kp_second = { .pre_handler = pre_second, .post_handler = post_second };
static struct kprobe *kps[] = { &kp_fork, &kp_second };

static int __init array_init(void)
{
	int ret;

	kp_second.symbol_name = second;
	kp_second.offset = second_offset;
	ret = register_kprobes(kps, ARRAY_SIZE(kps));
	if (ret < 0) {
		pr_err("register_kprobes failed, returned %d\n", ret);
		return ret;
	}
	pr_info("planted %zu kprobes\n", ARRAY_SIZE(kps));
	return 0;
}

static void __exit array_exit(void)
{
	unregister_kprobes(kps, ARRAY_SIZE(kps));
}

module_init(array_init)
module_exit(array_exit)
MODULE_LICENSE("GPL");
