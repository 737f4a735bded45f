"""Kernel crash reports found in console text: a table of formats and a few small passes.

The design follows syzkaller's ``pkg/report``: ``FORMATS`` (``crash_formats.py``)
is the one table, one row per kind of report; everything here is generic, a
pipeline of passes over the console text:

1. ``_records``: console lines are split on ``\\n``, ``\\r\\n`` and ``\\r``; a
   printk header (``[    1.234567]``, optionally ``[  T123]``/``[    C0]``
   caller ids with ``CONFIG_PRINTK_CALLER``, a ``<4>`` level, "printk messages
   dropped") is stripped, and a record glued to the end of another one (two
   CPUs writing at once) is split off at its own timestamp.
2. ``_starts``: the records where a report starts, and the table row they match.
3. ``_cut``: each report runs from its first line to the end marker
   (``---[ end trace …``), to the next report in the same context, or for
   ``MAX_LINES`` lines. With caller ids it keeps only its own context (plus
   other CPUs' lines after "Sending NMI from CPU", as NMI backtraces are), so
   interleaved CPUs do not mix; without them, every line counts.
4. ``_describe``: the guilty function is the first frame (the ``RIP:``/``pc :``
   line, then the call trace, skipping ``? `` unreliable frames) that is not
   kprobe/int3/exception/panic/printk/stack-dump machinery (``SKIP``); names
   lose compiler suffixes (``handler_pre.cold`` → ``handler_pre``). The title
   comes from the row's template.
5. ``_mark_fatal``: fatal means the kernel is dead, a panic. A ``Kernel panic -
   not syncing`` inside a report, or within ``PANIC_AFTER_LINES`` lines after
   it (the ``oops=panic`` and ``panic_on_warn`` cases), makes that report fatal,
   so ``first_fatal`` names the cause (``kernel BUG in handler_pre``) rather
   than ``kernel panic: Fatal exception``. The panic is still a report of its
   own when it is not inside another one.
"""
from __future__ import annotations

import functools
import re
from dataclasses import asdict, dataclass, field

from vmprobe.formats.crash_formats import END, FORMATS, HEADER_PREFIX, SKIP, SUPPRESS, Format

__all__ = ["FORMATS", "MAX_LINES", "PANIC_AFTER_LINES", "Crash", "Format", "find_crashes", "first_fatal"]

MAX_LINES = 150          # lines of one report (an RCU stall dumps three stacks)
MAX_SCAN = 20 * MAX_LINES  # console lines looked at for one report (other contexts included)
PANIC_AFTER_LINES = 60   # a panic this close after a report is that report's
_PANIC_TEXT = "Kernel panic - not syncing"  # every fatal report has it (fast path of first_fatal)

_PREFIX = re.compile(r"(?:\*\* \d+ printk messages dropped \*\* )?(?:<\d+>)?"
                     r"\[\s*\d+\.\d+\](?:\[\s*([CT]\d+)\])? ?")
_EMBEDDED = re.compile(r"(?:<\d+>)?\[\s*\d+\.\d+\](?:\[\s*[CT]\d+\])? ")
_LINE = re.compile(r"[^\r\n]*(?:\r\n|\r|\n|$)")
_END = re.compile(END)
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
    splat: str | None = None     # a non-fatal report the kernel carries on after (its row's ``splat``)

    @property
    def is_splat(self) -> bool:
        """A report the check records and goes on after: a splat the kernel survived."""
        return self.splat is not None and not self.fatal

    def to_dict(self) -> dict:
        return asdict(self)


# -- the table, compiled -------------------------------------------------------------------
@dataclass(frozen=True)
class _Row:
    fmt: Format
    header: re.Pattern
    absorbs: re.Pattern | None
    detail: re.Pattern | None
    skip: re.Pattern
    bare: str             # the title when a field is missing


def _compile(f: Format) -> _Row:
    return _Row(f, re.compile(HEADER_PREFIX + "(?:" + f.header + ")"),
                re.compile(HEADER_PREFIX + "(?:" + f.absorbs + ")") if f.absorbs else None,
                re.compile(f.detail, re.M) if f.detail else None,
                re.compile("(?:" + "|".join((*f.skip, *SKIP)) + r")\Z"),
                f.bare if f.bare is not None else re.sub(r" (?:in|at) \{\w+\}", "", f.title))


@functools.cache
def _table() -> tuple[re.Pattern, list[_Row]]:
    """Any header, and each format's row: compiled on first use (≈60 ms, which a command that
    never meets a report, e.g. a warm ``vmprobe exec``, does not pay)."""
    any_header = re.compile(HEADER_PREFIX + "(?:" + "|".join(re.sub(r"\(\?P<\w+>", "(?:", f.header)
                                                             for f in FORMATS) + ")")
    return any_header, [_compile(f) for f in FORMATS]


# -- pass 1: console records ---------------------------------------------------------------
@dataclass
class _Rec:
    """One console record: where it starts in the text, its context, its message."""
    start: int
    raw: str
    context: str          # "T123"/"C0" (caller id), "console" (timestamp only), "" (none)
    message: str

    @property
    def end(self) -> int:
        return self.start + len(self.raw)


def _records(text: str) -> list[_Rec]:
    recs: list[_Rec] = []
    for m in _LINE.finditer(text):
        if m.end() == m.start():
            break
        recs.extend(_split_glued(m.start(), m.group().rstrip("\r\n")))
    return recs


def _split_glued(pos: int, line: str) -> list[_Rec]:
    """A line's records: one, or more when records are glued together (no newline in between)."""
    cuts = [e.start() for e in _EMBEDDED.finditer(line) if e.start() > 0]
    bounds = [0, *cuts, len(line)]
    return [_record(pos + a, line[a:b]) for a, b in zip(bounds, bounds[1:])]


def _record(start: int, raw: str) -> _Rec:
    p = _PREFIX.match(raw)
    if not p:
        return _Rec(start, raw, "", raw)
    return _Rec(start, raw, p.group(1) or "console", raw[p.end():])


def _same_context(report: str, rec: str, nmi: bool) -> bool:
    if report in ("console", "") or rec in ("console", ""):
        return True
    return rec == report or (nmi and rec.startswith("C"))


# -- pass 2: where reports start -------------------------------------------------------------
_Hit = tuple[_Row, re.Match]


def _match(message: str) -> _Hit | None:
    any_header, rows = _table()
    if not message or not any_header.match(message) or SUPPRESS.match(message):
        return None
    return next(((row, m) for row in rows if (m := row.header.match(message))), None)


def _starts(recs: list[_Rec]) -> dict[int, _Hit]:
    """Record index → (row, header match) for every record that is a report's header."""
    return {i: hit for i, rec in enumerate(recs) if (hit := _match(rec.message))}


# -- pass 3: each report's extent --------------------------------------------------------------
@dataclass
class _Report:
    row: _Row
    header: re.Match
    members: list[int]    # record indices, the header first
    crash: Crash | None = None

    @property
    def first(self) -> int:
        return self.members[0]

    @property
    def last(self) -> int:
        return self.members[-1]


def _reports(recs: list[_Rec], starts: dict[int, _Hit]) -> list[_Report]:
    """The reports in order; a header inside an earlier report does not start one."""
    consumed: set[int] = set()
    reports = []
    for i in sorted(starts):
        if i in consumed:
            continue
        members = _cut(recs, starts, i, consumed)
        consumed.update(members)
        reports.append(_Report(*starts[i], members))
    return reports


def _cut(recs: list[_Rec], starts: dict[int, _Hit], i: int, consumed: set[int]) -> list[int]:
    row, context = starts[i][0], recs[i].context
    members, nmi = [i], False
    for j in range(i + 1, min(len(recs), i + MAX_SCAN)):
        if len(members) >= MAX_LINES:
            break
        rec = recs[j]
        if not _same_context(context, rec.context, nmi):
            continue
        if j not in consumed and _breaks(row, starts.get(j), rec.message):
            break
        members.append(j)
        nmi = nmi or bool(_NMI_FROM_CPU.search(rec.message))
        if _END.search(rec.message):
            break
    return members


def _breaks(row: _Row, hit: _Hit | None, message: str) -> bool:
    """Another header ends the report, unless it joins any report or this row absorbs it."""
    if hit is None or hit[0].fmt.joins:
        return False
    return row.absorbs is None or not row.absorbs.match(message)


# -- pass 4: function, frames, title ---------------------------------------------------------
def _base(name: str) -> str:
    """``handler_pre.cold`` → ``handler_pre`` (compiler suffixes: .cold, .isra.N, .constprop.N, .part.N)."""
    return name.split(".", 1)[0] or name


def _stack(lines: list[str]) -> list[tuple[str, str, bool]]:
    """(``rip``/``frame``, name, questionable) in text order."""
    items: list[tuple[str, str, bool]] = []
    for msg in lines:
        if r := _RIP.match(msg):
            items.append(("rip", r.group(1), False))
        elif f := _FRAME.match(msg):
            items.append(("frame", f.group(2), bool(f.group(1))))
    return items


def _stall_order(ok: list[tuple[str, str]]) -> list[str]:
    """The code the last timer interrupt or NMI found running comes first."""
    anchors = [i for i, (_, name) in enumerate(ok) if _STALL_ANCHOR.fullmatch(_base(name))]
    if anchors and ok[anchors[-1] + 1:]:
        ok = ok[anchors[-1] + 1:] + ok[:anchors[-1]]
    return [name for _, name in ok]


def _trace_order(ok: list[tuple[str, str]]) -> list[str]:
    return [name for t, name in ok if t == "frame"] + [name for t, name in ok if t == "rip"]


def _rip_order(ok: list[tuple[str, str]]) -> list[str]:
    return [name for t, name in ok if t == "rip"][:1] + [name for t, name in ok if t == "frame"]


_ORDERS = {"stall": _stall_order, "trace": _trace_order, "rip": _rip_order}


def _guilty(row: _Row, items: list[tuple[str, str, bool]], header: re.Match) -> str | None:
    named = header.groupdict().get("func")
    fallback = _base(named) if named else None
    if row.fmt.stack in ("header", "none"):
        return fallback if row.fmt.stack == "header" else None
    candidates = _ORDERS[row.fmt.stack]([(t, name) for t, name, q in items if not q])
    return next((b for b in map(_base, candidates) if not row.skip.match(b)), fallback)


def _fields(row: _Row, header: re.Match, func: str | None, lines: list[str]) -> dict[str, str]:
    named = {k: (v or "").strip() for k, v in header.groupdict().items()}
    if row.detail and (d := row.detail.search("\n".join(lines))):
        named.update({k: v for k, v in d.groupdict().items() if v})
    named["func"] = func or ""
    return named


def _title(row: _Row, header: re.Match, func: str | None, lines: list[str]) -> str:
    named = _fields(row, header, func, lines)
    wanted = [k for k in re.findall(r"\{(\w+)\}", row.fmt.title) if not k.isdigit()]
    template = row.fmt.title if all(named.get(k) for k in wanted) else row.bare
    try:
        title = template.format(*[(g or "").strip() for g in header.groups()], **named)
    except (IndexError, KeyError):
        title = template
    return " ".join(title.split())


def _kind(starts: dict[int, _Hit], k: int) -> str | None:
    return starts[k][0].fmt.kind if k in starts else None


def _own(rep: _Report, starts: dict[int, _Hit]) -> list[int]:
    """The report's own lines: a panic that joined it dumps the panic's own stack."""
    if rep.row.fmt.kind == "panic":
        return rep.members
    cut = next((n for n, k in enumerate(rep.members) if n and _kind(starts, k) == "panic"), len(rep.members))
    return rep.members[:cut]


def _describe(rep: _Report, recs: list[_Rec], starts: dict[int, _Hit]) -> Crash:
    items = _stack([recs[k].message for k in _own(rep, starts)])
    func = _guilty(rep.row, items, rep.header)
    fatal = rep.row.fmt.fatal or any(k in starts and starts[k][0].fmt.fatal for k in rep.members)
    return Crash(kind=rep.row.fmt.kind,
                 title=_title(rep.row, rep.header, func, [recs[k].message for k in rep.members]),
                 fatal=fatal, function=func,
                 excerpt="\n".join(recs[k].raw for k in rep.members),
                 offset=recs[rep.first].start,
                 frames=[name for t, name, q in items if t == "frame" and not q], splat=rep.row.fmt.splat)


# -- pass 5: panics make reports fatal ---------------------------------------------------------
def _mark_fatal(reports: list[_Report], recs: list[_Rec], starts: dict[int, _Hit]) -> None:
    """A panic inside a report's span (any context) or just after it makes the report fatal."""
    for p in (i for i in sorted(starts) if _kind(starts, i) == "panic"):
        before = [r for r in reports if r.first < p]
        for rep in before:
            if recs[p].start < recs[rep.last].end:
                rep.crash.fatal = True
        cause = _panic_cause(before, reports, recs, p)
        if cause:
            cause.crash.fatal = True


def _panic_cause(before: list[_Report], reports: list[_Report], recs: list[_Rec], p: int) -> _Report | None:
    """The last report that ended before panic ``p``, if nothing else came between and it is close."""
    previous = [r for r in before if r.last < p and r.row.fmt.kind != "panic"]
    if not previous:
        return None
    rep = max(previous, key=lambda r: r.last)
    if any(rep.last < r.first < p for r in reports):
        return None
    context = recs[rep.first].context
    gap = sum(1 for k in range(rep.last + 1, p) if _same_context(context, recs[k].context, False))
    return rep if gap <= PANIC_AFTER_LINES else None


# -- the pipeline ------------------------------------------------------------------------------
def find_crashes(text: str) -> list[Crash]:
    """All crash reports in ``text``, in order of where they start."""
    recs = _records(text)
    starts = _starts(recs)
    reports = _reports(recs, starts)
    for rep in reports:
        rep.crash = _describe(rep, recs, starts)
    _mark_fatal(reports, recs, starts)
    return [rep.crash for rep in reports]


def first_fatal(text: str) -> Crash | None:
    """The first report that the kernel did not survive (the cause, not the panic line)."""
    if _PANIC_TEXT not in text:
        return None
    return next((c for c in find_crashes(text) if c.fatal), None)
