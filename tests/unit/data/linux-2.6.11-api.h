/*
 * The part of Linux 2.6.11's x86_64 kernel API that vmprobe_fork.c uses, declared the way
 * 2.6.11 declares it (include/linux/kprobes.h, include/asm-x86_64/ptrace.h,
 * include/linux/sched.h, include/linux/moduleparam.h, include/asm-x86_64/atomic.h).
 * Transcribed, not the real headers: it lets a test type-check the template's 2.6 branch
 * (names, fields, parameter types) where no 2.6 tree is at hand. It is not a build.
 */
#define NULL ((void *)0)
#define EINVAL 22
#define __init
#define __exit
#define KERN_INFO "<6>"
#define KERN_ERR "<3>"
int printk(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* asm-x86_64/ptrace.h */
struct pt_regs {
	unsigned long r15, r14, r13, r12, rbp, rbx, r11, r10, r9, r8, rax, rcx, rdx, rsi, rdi, orig_rax;
	unsigned long rip, cs, eflags, rsp, ss;
};

/* linux/kprobes.h: no symbol_name/offset (2.6.19), no nmissed (2.6.12-13), no flags */
typedef unsigned char kprobe_opcode_t;
struct kprobe;
typedef int (*kprobe_pre_handler_t)(struct kprobe *, struct pt_regs *);
typedef int (*kprobe_break_handler_t)(struct kprobe *, struct pt_regs *);
typedef void (*kprobe_post_handler_t)(struct kprobe *, struct pt_regs *, unsigned long flags);
typedef int (*kprobe_fault_handler_t)(struct kprobe *, struct pt_regs *, int trapnr);
struct hlist_node { struct hlist_node *next, **pprev; };
struct kprobe {
	struct hlist_node hlist;
	kprobe_opcode_t *addr;
	kprobe_pre_handler_t pre_handler;
	kprobe_post_handler_t post_handler;
	kprobe_fault_handler_t fault_handler;
	kprobe_break_handler_t break_handler;
	kprobe_opcode_t opcode;
};
int register_kprobe(struct kprobe *p);
void unregister_kprobe(struct kprobe *p);

/* asm-x86_64/atomic.h, bitops.h: no atomic_long_t, no atomic_xchg */
typedef struct { volatile int counter; } atomic_t;
#define ATOMIC_INIT(i) { (i) }
#define atomic_read(v) ((v)->counter)
void atomic_inc(atomic_t *v);
int test_and_set_bit(int nr, volatile unsigned long *addr);

/* linux/sched.h: pid and a thread_info pointer in the task; tasklist_lock; do_each_thread */
typedef struct { volatile unsigned int lock; } rwlock_t;
void read_lock(rwlock_t *lock);
void read_unlock(rwlock_t *lock);
#define rcu_read_lock() do { } while (0)
#define rcu_read_unlock() do { } while (0)
struct thread_info { unsigned long flags; unsigned int cpu; };
struct task_struct {
	volatile long state;
	struct thread_info *thread_info;
	int pid;
	char comm[16];
};
extern rwlock_t tasklist_lock;
extern struct task_struct init_task;
struct task_struct *next_task(struct task_struct *p);
struct task_struct *next_thread(const struct task_struct *p);
#define do_each_thread(g, t) \
	for (g = t = &init_task ; (g = t = next_task(g)) != &init_task ; ) do
#define while_each_thread(g, t) while ((t = next_thread(t)) != g)
static inline unsigned int task_cpu(const struct task_struct *p) { return p->thread_info->cpu; }

/* linux/moduleparam.h: bool parameters are ints */
#define __param_check(name, p, type) \
	static inline type *__check_##name(void) { return (p); }
#define param_check_charp(name, p) __param_check(name, p, char *)
#define param_check_uint(name, p) __param_check(name, p, unsigned int)
#define param_check_ulong(name, p) __param_check(name, p, unsigned long)
#define param_check_long(name, p) __param_check(name, p, long)
#define param_check_bool(name, p) __param_check(name, p, int)
#define module_param(name, type, perm) param_check_##type(name, &(name))
#define MODULE_PARM_DESC(var, desc)
#define MODULE_LICENSE(l)
#define MODULE_DESCRIPTION(d)
#define module_init(fn) int init_module(void) { return fn(); }
#define module_exit(fn) void cleanup_module(void) { fn(); }
