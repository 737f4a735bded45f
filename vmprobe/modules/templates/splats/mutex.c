// SPDX-License-Identifier: GPL-2.0
/*
 * vmprobe splat module: a mutex taken in the pre handler, which runs with
 * preemption off (a sleeping lock in atomic context). Never contended, so it
 * never really sleeps: a production kernel lets it pass; one with
 * CONFIG_DEBUG_ATOMIC_SLEEP says "BUG: sleeping function called from invalid
 * context" (and lockdep may say more).
 */
#include <linux/mutex.h>

#define SPLAT_NAME "mutex"
#include "splat_probe.h"

static DEFINE_MUTEX(splat_lock);
static unsigned long taken;

static void misbehave(struct kprobe *p)
{
	mutex_lock(&splat_lock);
	taken++;
	mutex_unlock(&splat_lock);
}

MODULE_DESCRIPTION("vmprobe splat module: a mutex in a kprobe pre handler");
