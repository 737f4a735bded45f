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
 *
 * vmprobe-insmod --each FILE...: the guest's init loading its modules in one
 * exec (each insmod is an exec: ≈10 ms under TCG). Each file gets one
 * finit_module(2) call with no parameters; a failure is said
 * ("vmprobe-insmod: FILE: finit_module=<errno>") and the next file loaded.
 * Exits 0 when all loaded, 1 when any failed, and 38 (ENOSYS) at once,
 * nothing loaded, on a kernel without finit_module (before 3.8): the caller
 * then loads them its own way.
 *
 * Called as vmprobe-restored EPOCH SEED (the guest's init, first thing after
 * a restore): sets the wall clock to EPOCH, adds SEED (hex) to the kernel's
 * input pool, credited (RNDADDENTROPY), then reseeds the CRNG from it
 * (RNDRESEEDCRNG, 4.17+). A plain write to /dev/urandom is mixed in but not
 * used until the next scheduled reseed, so two VMs restored from one saved
 * state would read the same random bytes until then. One exec instead of
 * BusyBox's date and a write: each exec costs tens of ms under TCG.
 *
 * Called as vmprobe-restored --wait (started by init before the snapshot
 * point, stdin and stdout on two fifos): reads one line "EPOCH SEED" from
 * stdin, does the same, prints "vmprobe-restored: ok" (or what failed) and
 * exits. A restore then pays a write and a read, not an exec (≈0.12 s of
 * guest time right after a restore, when no code is translated yet).
 */
#if defined(__x86_64__)
#define NR_OPENAT 257
#define NR_READ 0
#define NR_FINIT 313
#define NR_WRITE 1
#define NR_EXIT 60
#define NR_IOCTL 16
#define NR_CLOCK_SETTIME 227
#define NR_CLOSE 3
static long sys3(long n, long a, long b, long c)
{
	long ret;
	__asm__ volatile ("syscall" : "=a"(ret) : "a"(n), "D"(a), "S"(b), "d"(c) : "rcx", "r11", "memory");
	return ret;
}
#elif defined(__i386__)
#define NR_OPENAT 295
#define NR_READ 3
#define NR_FINIT 350
#define NR_WRITE 4
#define NR_EXIT 1
#define NR_IOCTL 54
#define NR_CLOCK_SETTIME 264
#define NR_CLOSE 6
static long sys3(long n, long a, long b, long c)
{
	long ret;
	__asm__ volatile ("push %%ebx; mov %2, %%ebx; int $0x80; pop %%ebx"
			  : "=a"(ret) : "a"(n), "r"(a), "c"(b), "d"(c) : "memory");
	return ret;
}
#elif defined(__aarch64__)
#define NR_OPENAT 56
#define NR_READ 63
#define NR_FINIT 273
#define NR_WRITE 64
#define NR_EXIT 93
#define NR_IOCTL 29
#define NR_CLOCK_SETTIME 112
#define NR_CLOSE 57
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
#define ENOSYS 38

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

static void report_on(const char *file, const char *what, long err)
{
	char num[24];
	int i = sizeof(num) - 1;

	num[i] = 0;
	do {
		num[--i] = (char)('0' + err % 10);
		err /= 10;
	} while (err && i > 0);
	say("vmprobe-insmod: ");
	if (file) {
		say(file);
		say(": ");
	}
	say(what);
	say("=");
	say(num + i);
	say("\n");
}

static void report(const char *what, long err)
{
	report_on(0, what, err);
}

#define RNDADDENTROPY 0x40085203	/* _IOW('R', 0x03, int[2]) */
#define RNDRESEEDCRNG 0x5207		/* _IO('R', 0x07) */
#define O_WRONLY 1

static int called(const char *argv0, const char *name)
{
	const char *base = argv0;
	unsigned long i;

	for (i = 0; argv0[i]; i++)
		if (argv0[i] == '/')
			base = argv0 + i + 1;
	for (i = 0; name[i] && base[i] == name[i]; i++)
		;
	return !name[i] && !base[i];
}

static long seed(const char *text)
{
	struct {
		int entropy_count;	/* bits credited */
		int buf_size;
		char buf[256];
	} info;
	long fd, ret;
	unsigned long n = len(text);

	if (n > sizeof(info.buf))
		n = sizeof(info.buf);
	for (info.buf_size = 0; info.buf_size < (int)n; info.buf_size++)
		info.buf[info.buf_size] = text[info.buf_size];
	info.entropy_count = (int)n * 4;	/* hex: 4 bits a character */
	fd = sys3(NR_OPENAT, AT_FDCWD, (long)"/dev/urandom", O_WRONLY);
	if (fd < 0)
		return -fd;
	ret = sys3(NR_IOCTL, fd, RNDADDENTROPY, (long)&info);
	if (ret < 0)
		return -ret;
	sys3(NR_IOCTL, fd, RNDRESEEDCRNG, 0);	/* older kernels: the credit alone reseeds, in time */
	return 0;
}

static void load_each(long argc, char **argv)
{
	long i, fd, ret, failed = 0;

	for (i = 2; i < argc; i++) {
		fd = sys3(NR_OPENAT, AT_FDCWD, (long)argv[i], 0 /* O_RDONLY */);
		if (fd < 0) {
			report_on(argv[i], "open", -fd);
			failed = 1;
			continue;
		}
		ret = sys3(NR_FINIT, fd, (long)"", 0);
		sys3(NR_CLOSE, fd, 0, 0);
		if (ret == -ENOSYS && i == 2)
			exit_with(ENOSYS);
		if (ret < 0) {
			report_on(argv[i], "finit_module", -ret);
			failed = 1;
		}
	}
	exit_with(failed);
}

__attribute__((used)) void start_c(long *sp);
__attribute__((used)) void start_c(long *sp)
{
	long argc = sp[0];
	char **argv = (char **)(sp + 1);
	const char *params = argc > 2 ? argv[2] : "";
	long fd, ret;

	if (argc >= 1 && called(argv[0], "vmprobe-restored")) {
		struct { long sec; long nsec; } now = { 0, 0 };
		const char *c, *hex;
		char line[400];
		unsigned long got = 0;
		int waited = argc == 2 && argv[1][0] == '-' && argv[1][1] == '-' && argv[1][2] == 'w';

		if (waited) {	/* one line from stdin: EPOCH SEED */
			while (got < sizeof(line) - 1 && (got == 0 || line[got - 1] != '\n')) {
				ret = sys3(NR_READ, 0, (long)(line + got), 1);
				if (ret <= 0) {
					report("read", ret < 0 ? -ret : 0);
					exit_with(74);
				}
				got++;
			}
			line[got] = 0;
			for (hex = line; *hex && *hex != ' '; hex++)
				;
			while (*hex == ' ')
				hex++;
			for (c = hex; *c && *c != '\n' && *c != ' '; c++)
				;
			line[c - line] = 0;
			c = line;
		} else if (argc < 3) {
			say("usage: vmprobe-restored EPOCH SEED | --wait (EPOCH SEED on stdin)\n");
			exit_with(64);
		} else {
			c = argv[1];
			hex = argv[2];
		}
		for (; *c >= '0' && *c <= '9'; c++)
			now.sec = now.sec * 10 + (*c - '0');
		ret = sys3(NR_CLOCK_SETTIME, 0 /* CLOCK_REALTIME */, (long)&now, 0);
		if (ret < 0) {
			report("clock_settime", -ret);
			exit_with(-ret);
		}
		ret = seed(hex);
		if (ret)
			report("seed", ret);
		else if (waited)
			say("vmprobe-restored: ok\n");
		exit_with(ret);
	}
	if (argc >= 2 && argv[1][0] == '-' && argv[1][1] == '-' && argv[1][2] == 'e')
		load_each(argc, argv);
	if (argc < 2) {
		say("usage: vmprobe-insmod FILE [PARAMS] | --each FILE...\n");
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
