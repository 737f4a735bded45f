// SPDX-License-Identifier: GPL-2.0
/*
 * vmprobe fault module: a pre handler that writes through a NULL pointer
 *
 * A kprobe (same parameters as vmprobe_fork.c: symbol, offset, nonce) whose
 * pre handler writes through a NULL pointer on its first hit once armed, and
 * does nothing otherwise. Arm it at load time (armed=1) or later, then fork
 * (the last command of `sh -c` is exec'd, not forked: add one):
 *
 *   insmod vmprobe_fault_nullderef.ko symbol=kernel_clone nonce=N
 *   echo 1 > /sys/module/vmprobe_fault_nullderef/parameters/armed; /bin/true; true
 *
 * (vmprobe_fault_nullderef is the name this directory's Makefile gives it; built alone,
 * the module takes the file's name: nullderef.)
 *
 * Before misbehaving it prints "vmprobe-fault nonce=N fault=nullderef ..." so the
 * host knows the fault was reached. For vmprobe's own tests: never load it on
 * a machine you care about.
 */
#define FAULT_NAME "nullderef"
#include "fault_probe.h"

/* volatile: the compiler must load it, so it cannot turn the store into a trap */
static int *volatile null_pointer;

static void misbehave(struct kprobe *p)
{
	*null_pointer = 0x766d70; /* "vmp" */
}

MODULE_DESCRIPTION("vmprobe fault module: a pre handler that writes through a NULL pointer");
