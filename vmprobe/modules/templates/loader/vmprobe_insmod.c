// SPDX-License-Identifier: GPL-2.0
/*
 * vmprobe-insmod FILE [PARAMS]: load a kernel module with exactly one
 * finit_module(2) call and report its result.
 *
 * BusyBox insmod retries init_module(2) when finit_module(2) fails, so a
 * module whose init fails runs its init twice. This loader never retries:
 * it prints "vmprobe-insmod: finit_module=<errno>" (0 on success) and exits
 * with the errno. Freestanding (no libc): built for any guest arch with
 * -nostdlib -static.
 */
#if defined(__x86_64__)
#define NR_OPENAT 257
#define NR_FINIT 313
#define NR_WRITE 1
#define NR_EXIT 60
static long sys3(long n, long a, long b, long c)
{
	long ret;
	__asm__ volatile ("syscall" : "=a"(ret) : "a"(n), "D"(a), "S"(b), "d"(c) : "rcx", "r11", "memory");
	return ret;
}
#elif defined(__i386__)
#define NR_OPENAT 295
#define NR_FINIT 350
#define NR_WRITE 4
#define NR_EXIT 1
static long sys3(long n, long a, long b, long c)
{
	long ret;
	__asm__ volatile ("push %%ebx; mov %2, %%ebx; int $0x80; pop %%ebx"
			  : "=a"(ret) : "a"(n), "r"(a), "c"(b), "d"(c) : "memory");
	return ret;
}
#elif defined(__aarch64__)
#define NR_OPENAT 56
#define NR_FINIT 273
#define NR_WRITE 64
#define NR_EXIT 93
static long sys3(long n, long a, long b, long c)
{
	register long x8 __asm__("x8") = n;
	register long x0 __asm__("x0") = a;
	register long x1 __asm__("x1") = b;
	register long x2 __asm__("x2") = c;
	__asm__ volatile ("svc #0" : "+r"(x0) : "r"(x8), "r"(x1), "r"(x2) : "memory");
	return x0;
}
#else
#error "unsupported architecture"
#endif

#define AT_FDCWD -100

static unsigned long len(const char *s)
{
	unsigned long n = 0;

	while (s[n])
		n++;
	return n;
}

static void say(const char *s)
{
	sys3(NR_WRITE, 1, (long)s, (long)len(s));
}

static void exit_with(long code)
{
	for (;;)
		sys3(NR_EXIT, code, 0, 0);
}

static void report(const char *what, long err)
{
	char num[24];
	int i = sizeof(num) - 1;

	num[i] = 0;
	do {
		num[--i] = (char)('0' + err % 10);
		err /= 10;
	} while (err && i > 0);
	say("vmprobe-insmod: ");
	say(what);
	say("=");
	say(num + i);
	say("\n");
}

__attribute__((used)) void start_c(long *sp);
__attribute__((used)) void start_c(long *sp)
{
	long argc = sp[0];
	char **argv = (char **)(sp + 1);
	const char *params = argc > 2 ? argv[2] : "";
	long fd, ret;

	if (argc < 2) {
		say("usage: vmprobe-insmod FILE [PARAMS]\n");
		exit_with(64);
	}
	fd = sys3(NR_OPENAT, AT_FDCWD, (long)argv[1], 0 /* O_RDONLY */);
	if (fd < 0) {
		report("open", -fd);
		exit_with(-fd);
	}
	ret = sys3(NR_FINIT, fd, (long)params, 0);
	report("finit_module", ret < 0 ? -ret : 0);
	exit_with(ret < 0 ? -ret : 0);
}

#if defined(__x86_64__)
__asm__(".global _start\n_start:\n\tmov %rsp, %rdi\n\tand $-16, %rsp\n\tcall start_c\n");
#elif defined(__i386__)
__asm__(".global _start\n_start:\n\tmov %esp, %eax\n\tand $-16, %esp\n\tsub $12, %esp\n\tpush %eax\n\tcall start_c\n");
#elif defined(__aarch64__)
__asm__(".global _start\n_start:\n\tmov x0, sp\n\tbl start_c\n");
#endif
