// SPDX-License-Identifier: GPL-2.0
/*
 * fault-handler: the pre-handler (on the fork path) reads user memory that is
 * not mapped, `faults` times; kprobe::fault_handler must see each fault
 * (trap 14 on x86) and count it. The kernel's extable fixup then turns the
 * fault into -EFAULT (pagefaults are disabled around the load). On kernels without the field (5.14+) the module loads
 * and says so: the host skips the scenario before loading it anyway.
 */
#include <linux/atomic.h>
#include <linux/kernel.h>
#include <linux/module.h>
#include <linux/uaccess.h>
#include "scenario.h"

static char *symbol = "kernel_clone";
module_param(symbol, charp, 0444);
static char *nonce = "none";
module_param(nonce, charp, 0444);
static int faults = 3;
module_param(faults, int, 0444);
MODULE_PARM_DESC(faults, "how many hits provoke a fault");
static unsigned long fault_addr = 0x10;
module_param(fault_addr, ulong, 0444);
MODULE_PARM_DESC(fault_addr, "an unmapped user address the pre-handler reads");

static atomic_t provoked = ATOMIC_INIT(0);
static atomic_t fault_calls = ATOMIC_INIT(0);
static atomic_t efaults = ATOMIC_INIT(0);
static int last_trap = -1;
static struct kprobe kp;

static int handler_pre(struct kprobe *p, struct pt_regs *regs)
{
	char byte;
	long ret;

	if (atomic_inc_return(&provoked) > faults)
		return 0;
	/* one user load with one extable entry: one fault (a copy routine may fault
	 * twice, in its fast path and again in its byte-wise tail) */
	pagefault_disable();
	ret = __get_user(byte, (const char __user *)fault_addr);
	pagefault_enable();
	if (ret == -EFAULT)
		atomic_inc(&efaults);
	pr_info("vmprobe-provoked nonce=%s n=%d read=%lx ret=%ld\n",
		nonce, atomic_read(&provoked), fault_addr, ret);
	return 0;
}

#ifdef HAVE_FAULT_HANDLER
static int handler_fault(struct kprobe *p, struct pt_regs *regs, int trapnr)
{
	WRITE_ONCE(last_trap, trapnr);
	pr_info("vmprobe-fault nonce=%s calls=%d addr=%px trapnr=%d\n",
		nonce, atomic_inc_return(&fault_calls), p->addr, trapnr);
	return 0;	/* not handled here: the extable fixup makes it -EFAULT */
}
#endif

static int __init fault_init(void)
{
	int ret;

	kp.symbol_name = symbol;
	kp.pre_handler = handler_pre;
#ifdef HAVE_FAULT_HANDLER
	kp.fault_handler = handler_fault;
#endif
	ret = register_kprobe(&kp);
	if (ret < 0) {
		pr_err("vmprobe-error nonce=%s symbol=%s offset=0 register_kprobe=%d\n", nonce, symbol, ret);
		return ret;
	}
	pr_info("vmprobe-armed nonce=%s symbol=%s offset=0 addr=%px counter=%px fault_handler=%d\n",
		nonce, symbol, kp.addr, &fault_calls,
#ifdef HAVE_FAULT_HANDLER
		1
#else
		0
#endif
		);
	return 0;
}

static void __exit fault_exit(void)
{
	unregister_kprobe(&kp);
	pr_info("vmprobe-disarmed nonce=%s addr=%px provoked=%d fault_calls=%d efaults=%d last_trap=%d nmissed=%lu\n",
		nonce, kp.addr, min(atomic_read(&provoked), faults), atomic_read(&fault_calls),
		atomic_read(&efaults), last_trap, kp.nmissed);
}

module_init(fault_init);
module_exit(fault_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("vmprobe scenario fault-handler: faults in a pre-handler, counted");
