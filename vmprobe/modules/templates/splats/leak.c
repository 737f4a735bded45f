// SPDX-License-Identifier: GPL-2.0
/* vmprobe splat module: kmalloc on every hit, never freed (a leak per hit). */
#include <linux/slab.h>

#define SPLAT_NAME "leak"
#include "splat_probe.h"

static unsigned int bytes = 8192;   /* kmalloc-8k: the largest kmalloc slab cache */
module_param(bytes, uint, 0444);
MODULE_PARM_DESC(bytes, "bytes leaked per hit");

static void *last;

static void misbehave(struct kprobe *p)
{
	void *mem = kmalloc(bytes, GFP_ATOMIC);

	if (mem)
		memset(mem, 0x5a, bytes);   /* touched: really used memory */
	WRITE_ONCE(last, mem);              /* overwritten on the next hit: nothing frees it */
}

MODULE_DESCRIPTION("vmprobe splat module: a kmalloc per kprobe hit, never freed");
