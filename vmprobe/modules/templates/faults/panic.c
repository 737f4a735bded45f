// SPDX-License-Identifier: GPL-2.0
/*
 * vmprobe fault module: a pre handler that calls panic()
 *
 * A kprobe (same parameters as vmprobe_fork.c: symbol, offset, nonce) whose
 * pre handler calls panic("vmprobe test panic") on its first hit once armed,
 * and does nothing otherwise. Arm it at load time (armed=1) or later, then
 * fork (the last command of `sh -c` is exec'd, not forked: add one):
 *
 *   insmod vmprobe_fault_panic.ko symbol=kernel_clone nonce=N
 *   echo 1 > /sys/module/vmprobe_fault_panic/parameters/armed; /bin/true; true
 *
 * (vmprobe_fault_panic is the name this directory's Makefile gives it; built alone,
 * the module takes the file's name: panic.)
 *
 * Before misbehaving it prints "vmprobe-fault nonce=N fault=panic ..." so the
 * host knows the fault was reached. For vmprobe's own tests: never load it on
 * a machine you care about.
 */
#define FAULT_NAME "panic"
#include "fault_probe.h"

static void misbehave(struct kprobe *p)
{
	panic("vmprobe test panic");
}

MODULE_DESCRIPTION("vmprobe fault module: a pre handler that calls panic()");
