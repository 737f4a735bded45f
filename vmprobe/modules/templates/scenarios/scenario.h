/* SPDX-License-Identifier: GPL-2.0 */
/*
 * What vmprobe's scenario modules share: the era quirks of the kernel API they
 * use, decided once here by version and config (the host side keeps its own
 * table, vmprobe/check/scenarios/eras.py), and the arch's return register.
 */
#ifndef VMPROBE_SCENARIO_H
#define VMPROBE_SCENARIO_H
#include <linux/kprobes.h>
#include <linux/ptrace.h>
#include <linux/version.h>

/* the register a function returns its value in, as pt_regs names it */
#if defined(CONFIG_ARM64)
#define RETURN_REG(regs) ((regs)->regs[0])
#elif defined(CONFIG_X86)
#define RETURN_REG(regs) ((regs)->ax)
#endif

/* a kretprobe instance's real return address: rethook (6.0+ on x86) or the instance's field */
#if defined(CONFIG_KRETPROBE_ON_RETHOOK)
#define RET_ADDR(ri) ((unsigned long)get_kretprobe_retaddr(ri))
#else
#define RET_ADDR(ri) ((unsigned long)(ri)->ret_addr)
#endif

/* kprobe::fault_handler was removed in 5.14 (ec6aba3d2be1) */
#if LINUX_VERSION_CODE < KERNEL_VERSION(5, 14, 0)
#define HAVE_FAULT_HANDLER 1
#endif

#endif
