// SPDX-License-Identifier: GPL-2.0
/* A kprobe with only a post handler. */
#include <linux/kernel.h>
#include <linux/kprobes.h>
#include <linux/module.h>

static unsigned long posts;

static void only_post(struct kprobe *p, struct pt_regs *regs, unsigned long flags)
{
	posts++;
}

static struct kprobe kp = { .symbol_name = "kernel_clone", .post_handler = only_post };

static int __init post_init(void)
{
	return register_kprobe(&kp);
}

static void __exit post_exit(void)
{
	unregister_kprobe(&kp);
	pr_info("post_only: %lu post handler calls\n", posts);
}

module_init(post_init)
module_exit(post_exit)
MODULE_LICENSE("GPL");
