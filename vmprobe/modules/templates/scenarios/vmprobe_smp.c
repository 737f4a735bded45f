// SPDX-License-Identifier: GPL-2.0
/*
 * smp: one pre-handler (on the fork path) on every CPU at once. It counts its
 * hits per CPU, in an atomic counter, and in a plain counter updated with a
 * read-modify-write that races on purpose (`spin` pauses widen the window):
 * atomic - plain is the number of lost updates.
 */
#include <linux/atomic.h>
#include <linux/cpumask.h>
#include <linux/kernel.h>
#include <linux/module.h>
#include <linux/percpu.h>
#include <linux/smp.h>
#include "scenario.h"

static char *symbol = "kernel_clone";
module_param(symbol, charp, 0444);
static char *nonce = "none";
module_param(nonce, charp, 0444);
static int spin = 200;
module_param(spin, int, 0444);
MODULE_PARM_DESC(spin, "cpu_relax() pauses between the plain counter's read and write");

static DEFINE_PER_CPU(unsigned long, cpu_hits);
static atomic_long_t counters_atomic = ATOMIC_LONG_INIT(0);
static unsigned long counters_plain;
static struct kprobe kp;

static int handler_pre(struct kprobe *p, struct pt_regs *regs)
{
	unsigned long v;
	int i;

	this_cpu_inc(cpu_hits);
	atomic_long_inc(&counters_atomic);
	v = READ_ONCE(counters_plain);
	for (i = 0; i < spin; i++)
		cpu_relax();
	WRITE_ONCE(counters_plain, v + 1);
	return 0;
}

static int __init smp_init_probe(void)
{
	int ret;

	kp.symbol_name = symbol;
	kp.pre_handler = handler_pre;
	ret = register_kprobe(&kp);
	if (ret < 0) {
		pr_err("vmprobe-error nonce=%s symbol=%s offset=0 register_kprobe=%d\n", nonce, symbol, ret);
		return ret;
	}
	pr_info("vmprobe-armed nonce=%s symbol=%s offset=0 addr=%px atomic=%px plain=%px cpus=%u\n",
		nonce, symbol, kp.addr, &counters_atomic, &counters_plain, num_online_cpus());
	return 0;
}

static void __exit smp_exit_probe(void)
{
	int cpu;

	unregister_kprobe(&kp);
	for_each_online_cpu(cpu)
		pr_info("vmprobe-cpu nonce=%s cpu=%d hits=%lu\n", nonce, cpu, per_cpu(cpu_hits, cpu));
	pr_info("vmprobe-disarmed nonce=%s addr=%px atomic=%ld plain=%lu nmissed=%lu\n",
		nonce, kp.addr, atomic_long_read(&counters_atomic), READ_ONCE(counters_plain), kp.nmissed);
}

module_init(smp_init_probe);
module_exit(smp_exit_probe);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("vmprobe scenario smp: per-CPU, atomic and racy plain hit counters");
