// SPDX-License-Identifier: GPL-2.0
/* Never loaded: built against a kernel's headers (as its asm-offsets are) so vmprobe can
 * read task_struct's layout from the object where the kernel has no BTF (Debian's 686). */
#include <linux/module.h>
#include <linux/sched.h>
#include <linux/stddef.h>

const unsigned int vmprobe_task_offsets[] = {
	0x766d7074,	/* "vmpt": this table */
	offsetof(struct task_struct, pid),
	offsetof(struct task_struct, tgid),
	offsetof(struct task_struct, comm),
	offsetof(struct task_struct, flags),
	sizeof(void *),
};
EXPORT_SYMBOL(vmprobe_task_offsets);
MODULE_LICENSE("GPL");
