// SPDX-License-Identifier: GPL-2.0
/* vmprobe splat module: WARN_ONCE in the pre handler (a WARNING splat; the kernel goes on). */
#include <linux/bug.h>

#define SPLAT_NAME "warn"
#include "splat_probe.h"

static void misbehave(struct kprobe *p)
{
	WARN_ONCE(1, "vmprobe-splat warn: a warning from the pre handler at %px\n", p->addr);
}

MODULE_DESCRIPTION("vmprobe splat module: WARN_ONCE in a kprobe pre handler");
