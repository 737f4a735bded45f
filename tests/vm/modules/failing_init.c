// SPDX-License-Identifier: GPL-2.0
/* An init that fails on its own (after printing a line), without any kprobe. */
#include <linux/kernel.h>
#include <linux/module.h>

static int __init failing_init(void)
{
	pr_err("failing_init: giving up: no device\n");
	return -EINVAL;
}

module_init(failing_init)
MODULE_LICENSE("GPL");
