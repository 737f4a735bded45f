"""Kernel crash reports found in console text, from one table of formats.

The design follows syzkaller's ``pkg/report``: ``FORMATS`` is the one table;
each row says how a report starts (a regex matched at the start of a console
message), what kind it is, how its title is written, and where the guilty
function comes from. Everything else is generic:

* Console lines are split on ``\\n``, ``\\r\\n`` and ``\\r``; a printk header
  (``[    1.234567]``, optionally ``[  T123]``/``[    C0]`` caller ids with
  ``CONFIG_PRINTK_CALLER``, a ``<4>`` level, "printk messages dropped") is
  stripped, and a record glued to the end of another one (two CPUs writing at
  once) is split off at its own timestamp.
* A report runs from its first line to ``---[ end trace …`` / ``---[ end
  Kernel panic …``, to the next report in the same context, or for
  ``MAX_LINES`` lines. With caller ids it keeps only its own context (plus
  other CPUs' lines after "Sending NMI from CPU", as NMI backtraces are), so
  interleaved CPUs do not mix; without them, every line counts.
* The guilty function is the first frame — the ``RIP:``/``pc :`` line, then
  the call trace, skipping ``? `` (unreliable) frames — that is not
  kprobe/int3/exception/panic/printk/stack-dump machinery (``SKIP``). Names
  lose compiler suffixes (``handler_pre.cold`` → ``handler_pre``).
* Fatal means the kernel is dead: a panic. A ``Kernel panic - not syncing``
  inside a report, or within ``PANIC_AFTER_LINES`` lines after it (the
  ``oops=panic`` and ``panic_on_warn`` cases), makes that report fatal, so
  ``first_fatal`` names the cause (``kernel BUG in handler_pre``) rather than
  ``kernel panic: Fatal exception``. The panic is still a report of its own
  when it is not inside another one.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class Format:
    """One row of the table.

    ``header`` is matched at the start of a console message (after an optional
    subsystem prefix such as ``rcu: `` or ``watchdog: ``). ``title`` may use the
    header's groups (``{0}``, ``{name}``) and ``{func}``, the guilty function;
    when no function is found the title is ``bare`` (default: ``title`` without
    its `` in {func}``). ``stack`` says where the function comes from: ``rip``
    (the faulting RIP, then the call trace), ``trace`` (call trace only),
    ``stall`` (the code an interrupt or NMI found running), ``header`` (the
    header's ``func`` group), ``none``. A header group named ``func`` is also
    the fallback when the stack gives nothing. ``joins``: inside another
    report, this header continues it instead of starting a new one (``Oops:``
    after ``BUG: …``, ``invalid opcode:`` after ``kernel BUG at``, panics).
    ``absorbs``: headers that continue *this* report (``kernel BUG at`` after
    ``Unrecoverable kprobe detected``). ``detail``: a regex searched in the
    report's lines whose named groups the title may use too.
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


_F = Format
_SRC = r"[\w./+-]+\.[a-zA-Z]+:\d+"   # kernel/fork.c:1234
_FN = r"[A-Za-z_$][\w$]*"           # a function name without its suffixes
# A stall report also dumps the RCU grace-period kthread (asleep in schedule()): not the culprit.
_STALL_SKIP = (r"_*schedule\w*", r"schedule\w*", r"kthread", r"ret_from_fork\w*", r"worker_thread",
               r"smpboot_thread_fn")
_KPROBE_FOLLOWERS = r"kernel BUG at |invalid opcode: |Oops: |WARNING: |BUG: |general protection fault"

#: The table. First matching row wins, so specific rows come before generic ones.
FORMATS: list[Format] = [
    # -- kprobes (kprobes-facts §8) --------------------------------------------------------
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
    _F("kasan", rf"BUG: KASAN: ([a-z-]+) in (?P<func>{_FN})", "KASAN: {0} in {func}", stack="header"),
    _F("bug", r"BUG: (?:unable to handle kernel paging request|unable to handle page fault for address"
              r"|Unable to handle kernel data access)", "BUG: unable to handle page fault in {func}"),
    _F("bug", r"BUG: (?:unable to handle kernel NULL pointer dereference|kernel NULL pointer dereference"
              r"|Kernel NULL pointer dereference)", "BUG: kernel NULL pointer dereference in {func}"),
    _F("bug", r"BUG: (?:unable to handle kernel|Unable to handle kernel)", "BUG: unable to handle kernel in {func}"),
    _F("lockup", r"BUG: soft lockup", "BUG: soft lockup in {func}", stack="stall", skip=_STALL_SKIP),
    _F("lockup", r"BUG: workqueue lockup", "BUG: workqueue lockup", stack="none"),
    _F("bug", r"BUG: spinlock (lockup suspected|already unlocked|recursion|bad magic|wrong owner|wrong CPU)",
       "BUG: spinlock {0} in {func}", stack="trace", skip=(r"\w*spin_\w+", r"do_raw_spin\w*")),
    _F("bug", r"BUG: scheduling while atomic", "BUG: scheduling while atomic in {func}", stack="trace",
       skip=(r"_*schedule\w*", r"schedule\w*", r"preempt_schedule\w*")),
    _F("bug", r"BUG: sleeping function called from invalid context", "BUG: sleeping function called "
       "from invalid context in {func}", stack="trace", skip=(r"_*might_\w+", r"might_\w+")),
    _F("bug", r"BUG: using (\w+)\(\) in preemptible", "BUG: using {0}() in preemptible code in {func}",
       stack="trace", skip=(r"\w*preempt\w*", r"\w*processor_id\w*", r"\w*this_cpu\w*", r"debug_\w+")),
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
       bare="WARNING at {0}"),
    _F("warning", rf"WARNING: .* at ({_SRC})", "WARNING in {func}", bare="WARNING at {0}"),
    _F("lockdep", r"WARNING: (possible circular locking dependency|possible recursive locking|"
                  r"possible irq lock inversion dependency|inconsistent lock state)",
       "WARNING: {0}", stack="none"),
    _F("warning", r"WARNING: ([^:,!\[\]]*[^:,!\[\]\s])", "WARNING: {0} in {func}", stack="trace"),
    # -- stalls, lockups, hangs ----------------------------------------------------------------
    _F("stall", r"INFO: rcu_(?:preempt|sched|bh|tasks\w*) (?:self-)?detected(?: expedited)? stalls?",
       "INFO: rcu detected stall in {func}", stack="stall", skip=_STALL_SKIP),
    _F("lockup", r"Watchdog detected hard LOCKUP", "Watchdog detected hard LOCKUP in {func}", stack="stall",
       skip=_STALL_SKIP),
    _F("hung", r"INFO: task (\S+?)(?::\d+)? blocked for more than \d+ seconds", "INFO: task hung in {func}",
       stack="trace", skip=(r"\w*sched\w*", r"\w*_lock\w*", r"\w*slowlock\w*", r"_*down\w*", r"\w*rwsem\w*",
                            r"\w*completion\w*", r"\w*wait\w*", r"\w*synchronize\w*", r"\w*switch_to\w*",
                            r"context_switch", r"kthread")),
    _F("hung", r"INFO: task .* can't die for more than", "INFO: task can't die in {func}", stack="trace",
       skip=(r"\w*schedule\w*",)),
    # -- sanitizers ---------------------------------------------------------------------------
    _F("ubsan", r"UBSAN: ([\w-]+(?: [\w-]+)*) in ", "UBSAN: {0} in {func}", stack="trace",
       skip=(r"\w*ubsan\w*", r"\w*overflow\w*")),
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

MAX_LINES = 150          # lines of one report (an RCU stall dumps three stacks)
MAX_SCAN = 20 * MAX_LINES  # console lines looked at for one report (other contexts included)
PANIC_AFTER_LINES = 60   # a panic this close after a report is that report's
_PANIC_TEXT = "Kernel panic - not syncing"  # every fatal report has it (fast path of first_fatal)

_PREFIX = re.compile(r"(?:\*\* \d+ printk messages dropped \*\* )?(?:<\d+>)?"
                     r"\[\s*\d+\.\d+\](?:\[\s*([CT]\d+)\])? ?")
_EMBEDDED = re.compile(r"(?:<\d+>)?\[\s*\d+\.\d+\](?:\[\s*[CT]\d+\])? ")
_LINE = re.compile(r"[^\r\n]*(?:\r\n|\r|\n|$)")
_END = re.compile(r"---\[ end (?:trace|Kernel panic)")
_RIP = re.compile(r"^\s*(?:RIP|EIP|NIP|IP|pc) ?: (?:[0-9a-f]{4}:)?(?:\[<?[0-9a-f]+>?\]\s*){0,2}"
                  r"([A-Za-z_$][\w.$]*)\+0x[0-9a-f]+")
_FRAME = re.compile(r"^\s*(?:\[<?[0-9a-f]+>?\]\s*){0,2}(\? )?([A-Za-z_$][\w.$]*)\+0x[0-9a-f]+/0x[0-9a-f]+"
                    r"(?:\s+\[[^\]]*\])?\s*$")
_STALL_ANCHOR = re.compile(r"(?:asm_)?(?:sysvec_)?apic_timer_interrupt|asm_sysvec_\w+|asm_common_interrupt")
_NMI_FROM_CPU = re.compile(r"Sending NMI from CPU")


@dataclass
class Crash:
    kind: str
    title: str
    fatal: bool
    function: str | None = None
    excerpt: str = ""
    offset: int = 0
    frames: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


# -- compiled table -------------------------------------------------------------------------
@dataclass(frozen=True)
class _Row:
    fmt: Format
    header: re.Pattern
    absorbs: re.Pattern | None
    detail: re.Pattern | None
    skip: re.Pattern


_SKIP_ALL = "|".join(SKIP)
_ANY = re.compile(HEADER_PREFIX + "(?:" + "|".join(re.sub(r"\(\?P<\w+>", "(?:", f.header) for f in FORMATS) + ")")
_ROWS = [
    _Row(f, re.compile(HEADER_PREFIX + "(?:" + f.header + ")"),
         re.compile(HEADER_PREFIX + "(?:" + f.absorbs + ")") if f.absorbs else None,
         re.compile(f.detail, re.M) if f.detail else None,
         re.compile("(?:" + "|".join((*f.skip, _SKIP_ALL)) + r")\Z"))
    for f in FORMATS
]


@dataclass
class _Seg:
    """One console record: where it starts in the text, its context, its message."""
    start: int
    raw: str
    context: str          # "T123"/"C0" (caller id), "console" (timestamp only), "" (none)
    message: str


def _segments(text: str) -> list[_Seg]:
    segs: list[_Seg] = []
    for m in _LINE.finditer(text):
        line = m.group().rstrip("\r\n")
        if not line and m.end() == m.start():
            break
        pos = m.start()
        # A record glued to the end of another one (no newline in between) is split off.
        cuts = [e.start() for e in _EMBEDDED.finditer(line) if e.start() > 0]
        bounds = [0, *cuts, len(line)]
        for a, b in zip(bounds, bounds[1:]):
            raw = line[a:b]
            p = _PREFIX.match(raw)
            if p:
                context, message = (p.group(1) or "console"), raw[p.end():]
            else:
                context, message = "", raw
            segs.append(_Seg(pos + a, raw, context, message))
    return segs


def _match(seg: _Seg) -> tuple[_Row, re.Match] | None:
    msg = seg.message
    if not msg or not _ANY.match(msg) or SUPPRESS.match(msg):
        return None
    for row in _ROWS:
        m = row.header.match(msg)
        if m:
            return row, m
    return None


def _same_context(report: str, seg: str, nmi: bool) -> bool:
    if report in ("console", "") or seg in ("console", ""):
        return True
    return seg == report or (nmi and seg.startswith("C"))


def _base(name: str) -> str:
    """``handler_pre.cold`` → ``handler_pre`` (compiler suffixes: .cold, .isra.N, .constprop.N, .part.N)."""
    return name.split(".", 1)[0] or name


def _stack(lines: list[str]) -> tuple[list[tuple[str, str, bool]], list[str]]:
    """((type, name, questionable) in text order, reliable call-trace frames)."""
    items: list[tuple[str, str, bool]] = []
    frames: list[str] = []
    for msg in lines:
        r = _RIP.match(msg)
        if r:
            items.append(("rip", r.group(1), False))
            continue
        f = _FRAME.match(msg)
        if f:
            questionable = bool(f.group(1))
            items.append(("frame", f.group(2), questionable))
            if not questionable:
                frames.append(f.group(2))
    return items, frames


def _guilty(row: _Row, lines: list[str], header: re.Match) -> str | None:
    mode = row.fmt.stack
    named = header.groupdict().get("func")
    if mode == "header":
        return _base(named) if named else None
    if mode == "none":
        return None
    items, _ = _stack(lines)
    ok = [(t, name) for t, name, q in items if not q]
    if mode == "stall":
        anchors = [i for i, (t, name) in enumerate(ok) if _STALL_ANCHOR.fullmatch(_base(name))]
        if anchors:
            after = ok[anchors[-1] + 1:]
            ok = after + ok[:anchors[-1]] if after else ok
        candidates = [name for t, name in ok]
    elif mode == "trace":
        candidates = [name for t, name in ok if t == "frame"] + [name for t, name in ok if t == "rip"]
    else:  # rip: the faulting RIP first, then the call trace
        candidates = [name for t, name in ok if t == "rip"][:1] + [name for t, name in ok if t == "frame"]
    for name in candidates:
        base = _base(name)
        if not row.skip.match(base):
            return base
    return _base(named) if named else None


def _title(row: _Row, header: re.Match, func: str | None, lines: list[str]) -> str:
    groups = [(g or "").strip() for g in header.groups()]
    named = {k: (v or "").strip() for k, v in header.groupdict().items()}
    if row.detail:
        d = row.detail.search("\n".join(lines))
        if d:
            named.update({k: v for k, v in d.groupdict().items() if v})
    named["func"] = func or ""
    template = row.fmt.title
    missing = [k for k in re.findall(r"\{(\w+)\}", template) if not k.isdigit() and not named.get(k)]
    if missing:
        template = row.fmt.bare if row.fmt.bare is not None else re.sub(r" (?:in|at) \{\w+\}", "", template)
    try:
        title = template.format(*groups, **named)
    except (IndexError, KeyError):
        title = template
    return " ".join(title.split())


def find_crashes(text: str) -> list[Crash]:
    """All crash reports in ``text``, in order of where they start."""
    segs = _segments(text)
    headers = {i: hit for i, seg in enumerate(segs) if (hit := _match(seg))}
    consumed: set[int] = set()
    reports: list[tuple[Crash, int, int, int]] = []   # (crash, first seg, last seg, end offset)
    panics: list[int] = []
    for i in sorted(headers):
        row, m = headers[i]
        if row.fmt.kind == "panic":
            panics.append(i)
        if i in consumed:
            continue
        seg = segs[i]
        members = [i]
        nmi = False
        for j in range(i + 1, min(len(segs), i + MAX_SCAN)):
            if len(members) >= MAX_LINES:
                break
            other = segs[j]
            if not _same_context(seg.context, other.context, nmi):
                continue
            hit = headers.get(j)
            if hit and j not in consumed:
                orow, om = hit
                continues = orow.fmt.joins or (row.absorbs is not None and row.absorbs.match(other.message))
                if not continues:
                    break
            members.append(j)
            if _NMI_FROM_CPU.search(other.message):
                nmi = True
            if _END.search(other.message):
                break
        consumed.update(members)
        lines = [segs[k].message for k in members]
        # A panic that joined the report dumps the panic's own stack: not the report's.
        own = next((n for n, k in enumerate(members) if n and k in headers
                    and headers[k][0].fmt.kind == "panic" and row.fmt.kind != "panic"), len(members))
        func = _guilty(row, lines[:own], m)
        _, frames = _stack(lines[:own])
        crash = Crash(row.fmt.kind, _title(row, m, func, lines), row.fmt.fatal, func,
                      "\n".join(segs[k].raw for k in members), seg.start, frames)
        if any(k in headers and headers[k][0].fmt.fatal for k in members):
            crash.fatal = True
        last = members[-1]
        reports.append((crash, i, last, segs[last].start + len(segs[last].raw)))
    # A panic inside a report's span (any context) or just after it makes the report fatal.
    for p in panics:
        at = segs[p].start
        before = [r for r in reports if r[1] < p]
        for crash, first, last, end in before:
            if at < end:
                crash.fatal = True
        previous = [r for r in before if r[2] < p and headers[r[1]][0].fmt.kind != "panic"]
        if previous:
            crash, first, last, end = max(previous, key=lambda r: r[2])
            later = [r for r in reports if last < r[1] < p]
            ctx = segs[first].context
            gap = sum(1 for k in range(last + 1, p) if _same_context(ctx, segs[k].context, False))
            if gap <= PANIC_AFTER_LINES and not later:
                crash.fatal = True
    return [r[0] for r in reports]


def first_fatal(text: str) -> Crash | None:
    """The first report that the kernel did not survive (the cause, not the panic line)."""
    if _PANIC_TEXT not in text:
        return None
    return next((c for c in find_crashes(text) if c.fatal), None)
