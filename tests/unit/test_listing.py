"""Which kprobe listing a guest has (check/listing.py), from what its shell and SysRq help say,
and how the report shows the evidence a check rested on."""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import pytest

from vmprobe.check.listing import DEBUGFS, SYSRQ, Listing, sysrq_kprobes_key
from vmprobe.check.report import ProbeReport

HELP_6_1 = ("[   10.1] sysrq: HELP : loglevel(0-9) reboot(b) crash(c) terminate-all-tasks(e) "
            "memory-full-oom-kill(f) kill-all-tasks(i) thaw-filesystems(j) sak(k) show-backtrace-all-active-cpus(l) "
            "show-memory-usage(m) nice-all-RT-tasks(n) poweroff(o) show-registers(p) show-all-timers(q) "
            "unraw(r) sync(s) show-task-states(t) unmount(u) force-fb(v) show-blocked-tasks(w) "
            "dump-ftrace-buffer(z) replay-kernel-logs(R)")


@pytest.mark.parametrize("text, key", [
    (HELP_6_1, None),                                           # mainline: 'k' is SAK, never pressed
    (HELP_6_1 + " show-kprobes(K)", "K"),                       # vmprobe's patch
    (HELP_6_1 + "\n[   10.2] show-kprobes(K)\n", "K"),            # the help broken over two lines
    ("SysRq : HELP : loglevel0-8 reBoot tErm kIll saK showMem showPc unRaw Sync showTasks "
     "Unmount shoW-kprobes", "w"),                              # 2.6 style: the key is the capital
    ("some line mentioning kprobes(K) but not the help", None),
    ("", None),
])
def test_sysrq_kprobes_key(text, key):
    assert sysrq_kprobes_key(text) == key


@dataclass
class FakeConsole:
    text: str = ""

    def mark(self) -> int:
        return len(self.text)

    def since(self, mark: int) -> str:
        return self.text[mark:]

    def expect(self, pattern, timeout, *, since=0, what="", error=None):
        m = re.search(pattern, self.text[since:])
        if not m:
            raise error(f"no {what}")
        return m


@dataclass
class Res:
    stdout: str
    status: int = 0


@dataclass
class FakeGuest:
    """A guest whose shell answers the listing probe with ``said`` and whose SysRq help is ``help``."""
    said: str
    help: str = HELP_6_1
    console: FakeConsole = field(default_factory=FakeConsole)
    ran: list[str] = field(default_factory=list)

    def run(self, cmd: str, timeout: float = 30) -> Res:
        self.ran.append(cmd)
        if cmd.startswith("if test -r"):
            return Res(self.said)
        if cmd == "echo h > /proc/sysrq-trigger":
            self.console.text += self.help + "\n"
        return Res("")


@pytest.mark.parametrize("said, source, why", [
    ("list fs mounted", DEBUGFS, ""),
    ("fs mounted", None, "debugfs is mounted but has no kprobes/list (a kernel before it, or kprobes without it)"),
    ("fs", None, "debugfs is not mounted"),
    ("", None, "the kernel has no debugfs (CONFIG_DEBUG_FS)"),
])
def test_find_names_the_listing_and_why(monkeypatch, said, source, why):
    monkeypatch.setattr("time.sleep", lambda s: None)
    guest = FakeGuest(said)
    listing = Listing.find(guest)
    assert (listing.source, listing.why) == (source, why)
    # SysRq help is asked for only when there is no list; no key is pressed on a mainline help
    assert ("echo h > /proc/sysrq-trigger" in guest.ran) == (source is None)
    assert listing.to_dict() == {"source": source, **({"why_no_list": why} if why else {})}


def test_find_takes_a_patched_sysrq_key(monkeypatch):
    monkeypatch.setattr("time.sleep", lambda s: None)
    listing = Listing.find(FakeGuest("fs", HELP_6_1 + " show-kprobes(K)"))
    assert (listing.source, listing.key, listing.name) == (SYSRQ, "K", "the SysRq-K listing")


def test_report_shows_the_evidence():
    r = ProbeReport(probe={"symbol": "do_fork", "listing": {"source": None, "why_no_list": "debugfs is not mounted"}},
                    evidence=["bytes", "hits"])
    assert r.to_dict()["evidence"] == ["bytes", "hits"]
    assert "  evidence  bytes, hits  (no kprobes/list: debugfs is not mounted)" in r.summary().splitlines()
    assert "evidence" not in ProbeReport(probe={"symbol": "x"}).summary()


@pytest.mark.parametrize("shell", ["/bin/busybox", "/bin/sh"])
def test_print_file_prints_the_file_with_builtins(shell, tmp_path):
    """The guest's read of kprobes/list without cat: same text (a last line without newline
    included), nothing for a missing file, and the shell goes on either way."""
    import shutil
    import subprocess

    from vmprobe.check.listing import print_file
    if not shutil.which(shell):
        pytest.skip(f"{shell} not installed")
    listed = tmp_path / "list"
    listed.write_text("ffffffff8108a350  k  kernel_clone+0x0    [FTRACE]\n  lead\tand tab\nno newline at the end")
    argv = [shell, "sh", "-c"] if shell.endswith("busybox") else [shell, "-c"]
    out = subprocess.run([*argv, f"{print_file(str(listed))}; echo @; {print_file(str(tmp_path / 'none'))}; echo end"],
                         capture_output=True, text=True, timeout=10)
    assert out.stdout == listed.read_text() + "\n@\nend\n" and out.stderr == ""
