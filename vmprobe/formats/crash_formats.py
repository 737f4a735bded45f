"""The table of kernel crash report formats (the engine is ``crash.py``).

One row per kind of report, as in syzkaller's ``pkg/report`` (``linux.go``'s
``linuxOopses``): how a report starts, how it is titled, whether the kernel is
dead after it, where its guilty function comes from, and how far it reaches
(which headers continue it rather than start a new report). Rows are tried in
order and the first match wins, so specific rows come before generic ones.
"""
from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Format:
    """One row of the table.

    *Start*: ``header``, a regex matched at the start of a console message, after
    an optional subsystem prefix (``HEADER_PREFIX``: ``rcu: ``, ``watchdog: ``).

    *Title*: ``title`` may use the header's groups (``{0}``, ``{name}``), the
    named groups of ``detail`` (a regex searched in the report's lines) and
    ``{func}``, the guilty function. When a field is missing the title is
    ``bare`` (default: ``title`` without its `` in {func}``).

    *Fatal*: ``fatal``, the kernel is dead after it (panics). A fatal header
    inside another report, or just after it, makes that report fatal too.

    *Guilty function*: ``stack`` says where it comes from: ``rip`` (the faulting
    RIP, then the call trace), ``trace`` (call trace only), ``stall`` (the code
    an interrupt or NMI found running), ``header`` (the header's ``func``
    group), ``none``. Frames matching ``skip`` or ``SKIP`` are passed over. A
    header group named ``func`` is the fallback when the stack gives nothing.

    *End*: a report ends at ``END`` (``---[ end trace …``), after ``MAX_LINES``
    lines, or at the next header in its context, unless that header ``joins``
    any report it lands in (``Oops:`` after ``BUG: …``, ``invalid opcode:``
    after ``kernel BUG at``, panics) or matches this row's ``absorbs`` (``kernel
    BUG at`` after ``Unrecoverable kprobe detected``).
    """

    kind: str
    header: str
    title: str
    bare: str | None = None
    fatal: bool = False
    stack: str = "rip"
    skip: tuple[str, ...] = ()
    joins: bool = False
    absorbs: str | None = None
    detail: str | None = None
    splat: str | None = None


_F = Format
_SRC = r"[\w./+-]+\.[a-zA-Z]+:\d+"   # kernel/fork.c:1234
_FN = r"[A-Za-z_$][\w$]*"           # a function name without its suffixes
# A stall report also dumps the RCU grace-period kthread (asleep in schedule()): not the culprit.
_STALL_SKIP = (r"_*schedule\w*", r"schedule\w*", r"kthread", r"ret_from_fork\w*", r"worker_thread",
               r"smpboot_thread_fn")
#: What a sleeping call goes through before might_sleep() complains: the caller is the culprit.
_SLEEPERS = (r"_*might_\w+", r"might_\w+", r"\w*mutex_lock\w*", r"_*down\w*", r"\w*rwsem\w*",
             r"_*cond_resched\w*", r"msleep\w*", r"_*schedule_timeout\w*", r"\w*slab_pre_alloc\w*",
             r"\w*kmem_cache_alloc\w*", r"_*kmalloc\w*", r"\w*alloc_pages\w*", r"slab_alloc\w*")
_KPROBE_FOLLOWERS = r"kernel BUG at |invalid opcode: |Oops: |WARNING: |BUG: |general protection fault"

#: The table. First matching row wins, so specific rows come before generic ones.
FORMATS: list[Format] = [
    # -- kprobes (kernel/kprobes.c, arch/x86/kernel/kprobes/) ---------------------------
    _F("kprobe", r"Unrecoverable kprobe detected", "Unrecoverable kprobe detected at {probe}",
       bare="Unrecoverable kprobe detected", stack="none", absorbs=_KPROBE_FOLLOWERS,
       detail=rf"(?:\.symbol_name = |^Name: )(?P<probe>{_FN})"),
    _F("kprobe", r"Failed to recover from reentered kprobes", "Unrecoverable kprobe detected at {probe}",
       bare="Unrecoverable kprobe detected", stack="none", absorbs=_KPROBE_FOLLOWERS,
       detail=rf"(?:\.symbol_name = |^Name: )(?P<probe>{_FN})"),
    _F("kprobe", rf"Failed to (arm|disarm) kprobe-ftrace at (?P<func>{_FN})", "Failed to {0} kprobe-ftrace at {func}",
       stack="header", absorbs=_KPROBE_FOLLOWERS),
    _F("kprobe", r"Failed to (init|register|unregister) kprobe-ftrace", "Failed to {0} kprobe-ftrace",
       stack="none", absorbs=_KPROBE_FOLLOWERS),
    _F("kprobe", r"kretprobe: Return address not found", "kretprobe: Return address not found in {func}",
       stack="trace", absorbs=_KPROBE_FOLLOWERS),
    _F("kprobe", r"kretprobe is stacked incorrectly", "kretprobe is stacked incorrectly in {func}",
       stack="trace", absorbs=_KPROBE_FOLLOWERS),
    _F("kprobe", r"Kprobes error: new displacement does not fit into s32", "Kprobes error: displacement does not fit",
       stack="none"),
    # -- panics: fatal; inside another report they make it fatal ---------------------------
    _F("panic", rf"Kernel panic - not syncing: stack-protector: Kernel stack is corrupted in: (?P<func>{_FN})",
       "kernel panic: stack is corrupted in {func}", fatal=True, stack="header", joins=True),
    _F("panic", r"Kernel panic - not syncing: (Attempted to kill init!)", "kernel panic: {0}",
       fatal=True, stack="none", joins=True),
    _F("panic", r"Kernel panic - not syncing:? ?(.*?)\s*$", "kernel panic: {0}", bare="kernel panic: {0}",
       fatal=True, joins=True),
    # -- BUG ----------------------------------------------------------------------------------
    _F("bug", r"kernel BUG at mm/usercopy\.c", "BUG: bad usercopy in {func}", stack="trace",
       skip=(r"_*usercopy\w*", r"_*check_\w+")),
    _F("bug", r"kernel BUG at lib/list_debug\.c", "BUG: corrupted list in {func}", stack="trace",
       skip=(r"_*list_\w+",)),
    # An in-tree source path is stable: keep it. A module built out of tree prints
    # its build directory (absolute, different on every build): name the function.
    _F("bug", rf"kernel BUG at ((?![/.]){_SRC})!?", "kernel BUG at {0}"),
    _F("bug", r"kernel BUG at (\S+?)!?\s*$", "kernel BUG in {func}", bare="kernel BUG at {0}"),
    _F("bug", r"Kernel BUG (.*)", "kernel BUG in {func}", bare="kernel BUG"),
    _F("kasan", rf"BUG: KASAN: ([a-z-]+) in (?P<func>{_FN})", "KASAN: {0} in {func}", stack="header",
       splat="kasan"),
    _F("bug", r"BUG: (?:unable to handle kernel paging request|unable to handle page fault for address"
              r"|Unable to handle kernel data access)", "BUG: unable to handle page fault in {func}"),
    _F("bug", r"BUG: (?:unable to handle kernel NULL pointer dereference|kernel NULL pointer dereference"
              r"|Kernel NULL pointer dereference)", "BUG: kernel NULL pointer dereference in {func}"),
    _F("bug", r"BUG: (?:unable to handle kernel|Unable to handle kernel)", "BUG: unable to handle kernel in {func}"),
    _F("lockup", r"BUG: soft lockup", "BUG: soft lockup in {func}", stack="stall", skip=_STALL_SKIP),
    _F("lockup", r"BUG: workqueue lockup", "BUG: workqueue lockup", stack="none"),
    _F("bug", r"BUG: spinlock (lockup suspected|already unlocked|recursion|bad magic|wrong owner|wrong CPU)",
       "BUG: spinlock {0} in {func}", stack="trace", skip=(r"\w*spin_\w+", r"do_raw_spin\w*"),
       splat="lockdep"),
    _F("bug", r"BUG: scheduling while atomic", "BUG: scheduling while atomic in {func}", stack="trace",
       skip=(r"_*schedule\w*", r"schedule\w*", r"preempt_schedule\w*"), splat="atomic-sleep"),
    _F("bug", r"BUG: sleeping function called from invalid context", "BUG: sleeping function called "
       "from invalid context in {func}", stack="trace", skip=_SLEEPERS, splat="atomic-sleep"),
    _F("bug", r"BUG: using (\w+)\(\) in preemptible", "BUG: using {0}() in preemptible code in {func}",
       stack="trace", skip=(r"\w*preempt\w*", r"\w*processor_id\w*", r"\w*this_cpu\w*", r"debug_\w+"),
       splat="atomic-sleep"),
    # lockdep's BUG reports (kernel/locking/lockdep.c): the kernel goes on, lockdep turns itself off
    _F("lockdep", r"(?:\[ )?BUG: (Invalid wait context|looking up invalid subclass|MAX_LOCKDEP_\w+ too low)",
       "BUG: {0} in {func}", stack="trace", skip=(r"\w*lock\w*",), splat="lockdep"),
    _F("bug", r"BUG: stack guard page was hit", "BUG: stack guard page was hit in {func}"),
    _F("bug", r"BUG: (Bad page state|Bad page map|Bad rss-counter state)", "BUG: {0}", stack="none"),
    _F("bug", r"BUG: ([^:,!\[\]]*[^:,!\[\]\s])", "BUG: {0} in {func}", stack="trace"),
    # -- x86 traps ---------------------------------------------------------------------------
    _F("gpf", r"general protection fault", "general protection fault in {func}"),
    _F("stack-segment", r"stack segment: ", "stack segment fault in {func}"),
    _F("divide-error", r"divide error: ", "divide error in {func}"),
    _F("double-fault", r"PANIC: double fault", "PANIC: double fault in {func}", joins=True),
    _F("invalid-opcode", r"invalid opcode: ", "invalid opcode in {func}", joins=True),
    _F("oops", r"Oops: ", "Oops in {func}", joins=True),
    # -- arm64 -------------------------------------------------------------------------------
    _F("bug", r"Unable to handle kernel NULL pointer dereference", "BUG: kernel NULL pointer dereference in {func}"),
    _F("bug", r"Unable to handle kernel (?:paging request|access to user memory|execute)",
       "BUG: unable to handle page fault in {func}"),
    _F("oops", r"Internal error: (?:Oops - )?([\w ]+?)(?:: [0-9a-f]+)? \[#\d+\]", "Internal error: {0} in {func}",
       joins=True),
    # -- WARNING -----------------------------------------------------------------------------
    _F("warning", rf"WARNING: CPU: \d+ PID: \d+ at ({_SRC}) (?P<func>{_FN})?", "WARNING in {func}",
       bare="WARNING at {0}", splat="warning"),
    _F("warning", rf"WARNING: .* at ({_SRC})", "WARNING in {func}", bare="WARNING at {0}", splat="warning"),
    _F("lockdep", r"WARNING: (possible circular locking dependency|possible recursive locking|"
                  r"possible irq lock inversion dependency|inconsistent lock state)",
       "WARNING: {0}", stack="none", splat="lockdep"),
    _F("lockdep", r"WARNING: (suspicious RCU usage|bad unlock balance detected|held lock freed"
                  r"|lock held when returning to user space|Nested lock was not taken)!?", "WARNING: {0}",
       stack="none", splat="lockdep"),
    _F("warning", r"WARNING: ([^:,!\[\]]*[^:,!\[\]\s])", "WARNING: {0} in {func}", stack="trace",
       splat="warning"),
    # -- stalls, lockups, hangs ----------------------------------------------------------------
    _F("stall", r"INFO: rcu_(?:preempt|sched|bh|tasks\w*) (?:self-)?detected(?: expedited)? stalls?",
       "INFO: rcu detected stall in {func}", stack="stall", skip=_STALL_SKIP, splat="rcu-stall"),
    _F("lockup", r"Watchdog detected hard LOCKUP", "Watchdog detected hard LOCKUP in {func}", stack="stall",
       skip=_STALL_SKIP),
    _F("hung", r"INFO: task (\S+?)(?::\d+)? blocked for more than \d+ seconds", "INFO: task hung in {func}",
       stack="trace", skip=(r"\w*sched\w*", r"\w*_lock\w*", r"\w*slowlock\w*", r"_*down\w*", r"\w*rwsem\w*",
                            r"\w*completion\w*", r"\w*wait\w*", r"\w*synchronize\w*", r"\w*switch_to\w*",
                            r"context_switch", r"kthread"), splat="hung-task"),
    _F("hung", r"INFO: task .* can't die for more than", "INFO: task can't die in {func}", stack="trace",
       skip=(r"\w*schedule\w*",)),
    # -- sanitizers ---------------------------------------------------------------------------
    _F("ubsan", r"UBSAN: ([\w-]+(?: [\w-]+)*) in ", "UBSAN: {0} in {func}", stack="trace",
       skip=(r"\w*ubsan\w*", r"\w*overflow\w*"), splat="ubsan"),
    # kmemleak's own line after a scan found something (the objects are in /sys/kernel/debug/kmemleak)
    _F("kmemleak", r"kmemleak: (\d+) new suspected memory leaks?", "kmemleak: {0} new suspected memory leaks",
       stack="none", splat="kmemleak"),
]

#: Subsystem prefixes a header may carry (pr_fmt): ``rcu: INFO: …``, ``watchdog: BUG: soft lockup``.
HEADER_PREFIX = r"(?:(?:rcu|watchdog|NMI watchdog|kernel|kprobes): )?"

#: Frames that are never the guilty function: kprobe, int3, exception entry,
#: panic/printk/stack-dump machinery, interrupt/NMI/timer paths a stall
#: report goes through, busy-wait helpers. Full matches on the name without suffixes.
SKIP: tuple[str, ...] = (
    # kprobes, kretprobes, optprobes, ftrace-based kprobes
    r"_*kprobe_\w+", r"_*kretprobe_\w+", r"_*rethook_\w+", r"arch_rethook_\w+", r"reenter_kprobe",
    r"setup_singlestep", r"opt_pre_handler", r"optimized_callback", r"aggr_\w+_handler",
    r"pre_handler_kretprobe", r"trampoline_handler", r"_*ftrace_\w*handler\w*",
    # int3, traps and exception entry
    r"\w*int3\w*", r"asm_exc_\w+", r"exc_\w+", r"asm_sysvec_\w+", r"_*sysvec_\w+", r"asm_common_interrupt",
    r"do_trap", r"do_error_trap", r"handle_bug", r"report_bug", r"handle_invalid_op", r"_*die", r"_*die_\w+",
    r"die", r"oops_\w+", r"_*notify_die", r"\w*notifier_call_chain", r"page_fault_oops",
    r"kernelmode_fixup_or_oops", r"_*bad_area\w*", r"do_user_addr_fault", r"do_kern_addr_fault",
    r"handle_page_fault", r"fixup_exception", r"no_context", r"do_page_fault", r"do_mem_abort",
    r"el1\w*", r"__do_kernel_fault", r"die_kernel_fault", r"bug_handler", r"call_break_hook", r"brk_handler",
    r"do_debug_exception",
    # panic, warnings, printing
    r"v?panic", r"nmi_panic", r"check_panic_on_warn", r"_*warn", r"__warn\w*", r"warn_slowpath\w*",
    r"_*dump_stack\w*", r"show_\w+", r"_*show_regs\w*", r"_*printk\w*", r"_*vprintk\w*", r"console_\w+",
    r"dump_backtrace", r"arch_stack_walk", r"show_trace_log_lvl", r"show_stack",
    # stall/lockup detection: timer interrupt, NMI backtraces, watchdogs
    r"_*nmi_cpu_backtrace\w*", r"nmi_trigger_cpumask_backtrace", r"arch_trigger_cpumask_backtrace",
    r"trigger_\w*backtrace", r"dump_cpu_task", r"rcu_\w+", r"print_cpu_stall\w*", r"print_other_cpu_stall",
    r"check_cpu_stall\w*", r"update_process_times", r"tick_\w+", r"_*hrtimer_\w+", r"hrtimer_interrupt",
    r"watchdog_\w+", r"_*do_softirq\w*", r"_*irq_exit\w*", r"irq_exit_rcu", r"nmi_handle", r"default_do_nmi",
    r"perf_event_nmi_handler", r"_*perf_event_overflow", r"\w*pmu_handle_irq", r"handle_pmi_common",
    r"is_softlockup", r"softlockup_\w+", r"_*apic_timer_interrupt", r"smp_apic_timer_interrupt",
    r"(?:\w+_)?nmi(?:_\w+)?",  # NMI entry and handlers: exc_nmi, end_repeat_nmi, unknown_nmi_error, nmi_panic
    # busy waiting
    r"delay_tsc", r"delay_loop", r"delay_halt\w*", r"_*const_udelay", r"_*udelay", r"_*ndelay", r"_*delay",
    r"mdelay", r"cpu_relax",
)

#: Lines that look like a header but are not reports (syzkaller's suppressions).
SUPPRESS = re.compile(r"INFO: (?:lockdep is turned off|Stall ended before state dump start|NMI handler"
                      r"|recovery required on readonly filesystem)|(?:handler|interrupt).*took too long")

#: The end marker of a report (any kind): ``---[ end trace <id> ]---``, ``---[ end Kernel panic …``.
END = r"---\[ end (?:trace|Kernel panic)"
