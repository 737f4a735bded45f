// SPDX-License-Identifier: GPL-2.0
/*
 * vmprobe splat module: a use-after-free in the pre handler, once. A read of
 * a just-freed kmalloc object: silent on a production kernel, a "KASAN:
 * slab-use-after-free" ("use-after-free" before 6.4) report with CONFIG_KASAN.
 */
#include <linux/atomic.h>
#include <linux/slab.h>

#define SPLAT_NAME "uaf"
#include "splat_probe.h"

static atomic_t done = ATOMIC_INIT(0);

static void misbehave(struct kprobe *p)
{
	char *mem;

	if (atomic_xchg(&done, 1))
		return;
	mem = kmalloc(64, GFP_ATOMIC);
	if (!mem)
		return;
	mem[0] = 1;
	kfree(mem);
	OPTIMIZER_HIDE_VAR(mem);
	pr_info("vmprobe-splat uaf: read %d from freed memory\n", READ_ONCE(mem[8]));
}

MODULE_DESCRIPTION("vmprobe splat module: a use-after-free in a kprobe pre handler");
