"""vmprobe.formats.crash, property-based: any console text is safe, and a known report
keeps its title wherever it lands in noise (line endings, caller ids, glued
records, noise between its lines)."""
from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_crash import corpus_names, load

from vmprobe.formats.crash import MAX_LINES, PANIC_AFTER_LINES, find_crashes, first_fatal

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])


def _known() -> list[tuple[str, str, tuple[str, str, bool]]]:
    """(name, text, the first report's (kind, title, fatal)) for every corpus log with a report,
    and the oops followed by its panic (oops=panic)."""
    known = []
    for name in corpus_names():
        case = load(name)
        if case.reports:
            first = case.reports[0]
            known.append((name.removesuffix(".log"), case.text, (first.kind, first.title, first.fatal)))
    oops, panic = load("nullderef-oops.log"), load("panic-fatal-exception.log")
    first = oops.reports[0]
    known.append(("nullderef-oops+panic", oops.text + panic.text, (first.kind, first.title, True)))
    return known


KNOWN = _known()
IDS = [k[0] for k in KNOWN]

_STAMP = re.compile(r"\[\s*\d+\.\d+\](?:\[\s*[CT]\d+\])? ")


def _check_invariants(text: str) -> None:
    crashes = find_crashes(text)
    offsets = [c.offset for c in crashes]
    assert offsets == sorted(offsets)
    for c in crashes:
        assert 0 <= c.offset < max(len(text), 1)
        assert c.title and c.title == c.title.strip() and "\n" not in c.title and "\r" not in c.title
        assert not _STAMP.search(c.title), c.title
        assert isinstance(c.fatal, bool)
        assert c.function is None or re.fullmatch(r"[A-Za-z_$][\w$]*", c.function)
        assert c.excerpt and len(c.excerpt.splitlines()) <= MAX_LINES
        assert set(c.to_dict()) == {"kind", "title", "fatal", "function", "excerpt", "offset", "frames",
                                    "splat"}
        assert not (c.is_splat and c.fatal)
    fatal = first_fatal(text)
    first = next((c for c in crashes if c.fatal), None)
    assert (fatal is None) == (first is None)
    if fatal:
        assert (fatal.offset, fatal.title) == (first.offset, first.title)


# -- anything goes ----------------------------------------------------------------------------
@SETTINGS
@given(st.text())
def test_any_text_is_safe(text):
    _check_invariants(text)


_FRAGMENTS = [
    "BUG: ", "BUG: kernel NULL pointer dereference, address: 0", "kernel BUG at ", "kernel BUG at kernel/x.c:1!",
    "Kernel panic - not syncing: ", "Kernel panic - not syncing: Fatal exception", "Oops: 0002 [#1] SMP",
    "invalid opcode: 0000 [#1]", "general protection fault", "WARNING: CPU: 0 PID: 1 at a/b.c:3 f+0x1/0x2",
    "WARNING: ", "INFO: task x:1 blocked for more than 1 seconds.", "rcu: INFO: rcu_preempt detected stalls",
    "watchdog: BUG: soft lockup - CPU#0 stuck for 5s! [sh:1]", "Unrecoverable kprobe detected.",
    ".symbol_name = kernel_clone, .offset = 0", "Failed to arm kprobe-ftrace at f+0x0/0x1 (error -22)",
    "kretprobe: Return address not found", "RIP: 0010:", "RIP: 0010:handler_pre.cold+0x2e/0xfa3 [m]",
    "EIP: f+0x1/0x2", "pc : f+0x1/0x2", "Call Trace:", " <TASK>", " </TASK>", " <IRQ>", " ? kernel_clone+0x1/0x430",
    " kernel_clone+0x5/0x430", " asm_sysvec_apic_timer_interrupt+0x16/0x20", " delay_tsc+0x33/0xa0",
    "---[ end trace 0000000000000000 ]---", "---[ end Kernel panic - not syncing: x ]---",
    "Sending NMI from CPU 1 to CPUs 0:", "NMI backtrace for cpu 0", "INFO: NMI handler (x) took too long",
    "[    1.000000] ", "[    2.5] ", "[    3.000000][  T123] ", "[    3.000000][    C1] ", "<4>", "** 3 printk messages dropped ** ",
    "\n", "\r\n", "\r", " ", "\t", "\x00", "é", "]", "[", ":", "+0x", "/0x", ".cold",
]


@SETTINGS
@given(st.lists(st.one_of(st.sampled_from(_FRAGMENTS), st.text(max_size=12)), max_size=80))
def test_console_like_soup_is_safe(parts):
    _check_invariants("".join(parts))


# -- mutated real logs ------------------------------------------------------------------------
@st.composite
def mutated(draw):
    name, text, _ = draw(st.sampled_from(KNOWN))
    lines = text.splitlines(keepends=True)
    for _ in range(draw(st.integers(0, 6))):
        if not lines:
            break
        op = draw(st.sampled_from(["delete", "duplicate", "swap", "truncate", "insert", "corrupt", "crlf", "glue"]))
        i = draw(st.integers(0, len(lines) - 1))
        if op == "delete":
            del lines[i]
        elif op == "duplicate":
            lines.insert(i, lines[i])
        elif op == "swap":
            j = draw(st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
        elif op == "truncate":
            lines[i] = lines[i][:draw(st.integers(0, len(lines[i])))]
        elif op == "insert":
            lines.insert(i, draw(st.text(max_size=40)))
        elif op == "corrupt":
            k = draw(st.integers(0, max(len(lines[i]) - 1, 0)))
            lines[i] = lines[i][:k] + draw(st.characters()) + lines[i][k + 1:]
        elif op == "crlf":
            lines[i] = lines[i].replace("\n", draw(st.sampled_from(["\r\n", "\r", ""])))
        elif op == "glue":
            lines[i] = lines[i].rstrip("\n")
    return "".join(lines)


@SETTINGS
@given(mutated())
def test_mutated_real_logs_are_safe(text):
    _check_invariants(text)


# -- known reports in noise keep their titles ---------------------------------------------------
_WORDS = ["vmprobe-hit", "nonce=4f2a", "handler=pre", "addr=ffffffffb84941a5", "eth0:", "link", "becomes",
          "ready", "random:", "crng", "init", "done", "audit:", "type=2000", "virtio_net", "virtio0", "clocksource:",
          "tsc:", "Refined", "TSC", "clocksource", "sd", "0:0:0:0:", "Attached", "Freeing", "unused", "memory:",
          "2048K", "systemd[1]:", "Started", "session", "c1", "of", "user", "root.", "IPv6:", "ADDRCONF(NETDEV_CHANGE):",
          "x86/fpu:", "Supporting", "XSAVE", "feature", "0x001:", "'x87", "floating", "point", "registers'", "42", "-1",
          "", " ", "\t"]
# Noise comes from a hypothesis-controlled Random: cheap to draw in bulk (hundreds of lines per example).
NOISE = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])
RANDOMS = st.randoms(use_true_random=False)


def noise_line(rnd, context: str | None = None) -> str:
    words = " ".join(rnd.choice(_WORDS) for _ in range(rnd.randrange(9)))
    if context is None and rnd.random() < 0.3:
        return words  # a line without a printk header (user space writing to the console)
    stamp = f"[{rnd.randrange(100000):5d}.{rnd.randrange(1000000):06d}]"
    if context:
        stamp += f"[{context:>6}]"
    return f"{stamp} {words}"


def _with_caller_id(text: str, context: str) -> str:
    return re.sub(r"^(\[\s*\d+\.\d+\])", lambda m: f"{m[1]}[{context:>6}]", text, flags=re.M)


def _expect_title(text: str, want: tuple[str, str, bool]) -> None:
    crashes = find_crashes(text)
    kind, title, fatal = want
    assert (kind, title, fatal) in [(c.kind, c.title, c.fatal) for c in crashes], [c.title for c in crashes]
    if fatal:
        assert first_fatal(text).title == title


@pytest.mark.parametrize("name, sample, want", KNOWN, ids=IDS)
@NOISE
@given(rnd=RANDOMS)
def test_known_report_in_noise_keeps_its_title(name, sample, want, rnd):
    before = [noise_line(rnd) for _ in range(rnd.randrange(40))]
    after = [noise_line(rnd) for _ in range(rnd.randrange(40))]
    eol = rnd.choice(["\n", "\r\n"])
    # The last noise record is not terminated: the report is glued to it (and split off at its own
    # timestamp: a report printed without one cannot be).
    glue = rnd.random() < 0.5 and _STAMP.match(sample) is not None
    text = eol.join(before) + ("" if glue or not before else eol) + sample.replace("\n", eol) + eol.join(after)
    _expect_title(text, want)


@pytest.mark.parametrize("name, sample, want", KNOWN, ids=IDS)
@NOISE
@given(rnd=RANDOMS)
def test_known_report_interleaved_with_noise_keeps_its_title(name, sample, want, rnd):
    """Noise printed between the report's lines (other CPUs, without caller ids)."""
    out = []
    budget = rnd.randrange(21)
    for line in sample.splitlines():
        out.append(line)
        if budget and rnd.random() < 0.3:
            budget -= 1
            out.append(noise_line(rnd))
    _expect_title("\n".join(out) + "\n", want)


@pytest.mark.parametrize("name, sample, want", KNOWN, ids=IDS)
@NOISE
@given(rnd=RANDOMS)
def test_known_report_with_caller_ids_ignores_other_contexts(name, sample, want, rnd):
    """CONFIG_PRINTK_CALLER: lines of other contexts anywhere, as many as you like."""
    out = []
    for line in _with_caller_id(sample, "T4242").splitlines():
        out.extend(noise_line(rnd, rnd.choice(["C0", "C1", "T7"])) for _ in range(rnd.randrange(7)))
        out.append(line)
    _expect_title("\n".join(out) + "\n", want)


@NOISE
@given(st.lists(st.sampled_from(KNOWN), min_size=1, max_size=4), RANDOMS)
def test_several_reports_in_a_row_keep_their_titles(samples, rnd):
    """Reports far enough apart (a panic right after a report is that report's) stay themselves."""
    gap = MAX_LINES + PANIC_AFTER_LINES + 1
    parts = []
    for _, text, _ in samples:
        parts.append(text)
        parts.extend(noise_line(rnd) + "\n" for _ in range(gap + rnd.randrange(5)))
    got = [(c.kind, c.title, c.fatal) for c in find_crashes("".join(parts))]
    for _, _, want in samples:
        assert want in got
