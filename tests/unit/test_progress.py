"""vmprobe/progress.py: when progress is drawn, what the bars and spinners show, and the
console stream behind ``--verbose`` (fed by a real process writing a real log)."""
from __future__ import annotations

import io
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from rich.console import Console

from vmprobe.host import progress


@pytest.fixture
def tty():
    """A real terminal (the slave side of a pty) as a file."""
    master, slave = os.openpty()
    f = os.fdopen(slave, "w")
    yield f
    f.close()
    os.close(master)


@pytest.fixture
def screen(monkeypatch):
    """Where progress draws: a terminal-like rich Console writing into a buffer."""
    buf = io.StringIO()
    monkeypatch.setattr(progress, "_console", lambda: Console(file=buf, force_terminal=True, width=120))
    monkeypatch.setenv("VMPROBE_PROGRESS", "1")
    return buf


def test_drawn_only_on_a_terminal_outside_ci_and_pytest(monkeypatch, tty):
    for key in ("VMPROBE_PROGRESS", "CI", "PYTEST_CURRENT_TEST"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setattr(sys, "stderr", tty)
    assert progress.enabled()
    monkeypatch.setenv("CI", "true")
    assert not progress.enabled()
    monkeypatch.delenv("CI")
    monkeypatch.setenv("PYTEST_CURRENT_TEST", "x.py::t (call)")
    assert not progress.enabled()
    monkeypatch.setenv("VMPROBE_PROGRESS", "1")          # forced on, even here
    assert progress.enabled()
    monkeypatch.delenv("PYTEST_CURRENT_TEST")
    monkeypatch.setenv("VMPROBE_PROGRESS", "0")          # forced off, even on a terminal
    assert not progress.enabled()
    monkeypatch.delenv("VMPROBE_PROGRESS")
    monkeypatch.setattr(progress, "_streaming", 1)       # --verbose owns stderr
    assert not progress.enabled()
    monkeypatch.setattr(progress, "_streaming", 0)
    monkeypatch.setattr(sys, "stderr", io.StringIO())   # a pipe or a file
    assert not progress.enabled()


def test_nothing_is_drawn_when_disabled(monkeypatch, tmp_path):
    monkeypatch.setenv("VMPROBE_PROGRESS", "0")

    def no_console():
        raise AssertionError("progress drew while disabled")
    monkeypatch.setattr(progress, "_console", no_console)
    with progress.status("building", lambda: "detail"):
        pass
    with progress.transfer("downloading", tmp_path, 10):
        (tmp_path / "f").write_bytes(b"x" * 10)


def test_transfer_counts_the_bytes_arriving(screen, tmp_path):
    (tmp_path / "old.deb").write_bytes(b"o" * 5000)          # there before: not counted
    total = 3_000_000

    def download():
        with (tmp_path / "partial").open("wb") as f:
            for _ in range(6):
                f.write(b"x" * (total // 6))
                f.flush()
                time.sleep(progress.REFRESH)
        (tmp_path / "partial").rename(tmp_path / "linux-image.deb")

    with progress.transfer("downloading linux-image", tmp_path, total):
        download()
    out = screen.getvalue()
    assert "downloading linux-image" in out
    assert "3.0/3.0 MB" in out                               # the finished count, old file excluded
    assert any(f"{x}/3.0 MB" in out for x in ("0.5", "1.0", "1.5", "2.0", "2.5")), out[-500:]


def test_status_shows_its_live_detail_and_survives_a_broken_one(screen):
    lines = iter(["tcg", "tcg · [    0.5] Linux version", "tcg · VMPROBE-READY"])
    current = {"text": ""}

    def detail():
        current["text"] = next(lines, current["text"])
        return current["text"]
    with progress.status("booting 6.1.0-56-cloud-amd64", detail):
        time.sleep(0.6)
    out = screen.getvalue()
    assert "booting 6.1.0-56-cloud-amd64" in out and "VMPROBE-READY" in out

    def broken():
        raise RuntimeError("no console yet")
    with progress.status("booting again", broken):
        time.sleep(0.3)
    assert "booting again" in screen.getvalue()


def test_the_detail_is_cut_to_the_line(screen):
    with progress.status("booting 6.1.0-56-cloud-amd64", lambda: "tcg · " + "x" * 300):
        time.sleep(0.3)
    drawn = [line for line in screen.getvalue().replace("\r", "\n").splitlines() if "booting" in line]
    assert drawn and all(len(_plain(line)) <= 120 for line in drawn)
    assert "…" in drawn[-1]


def _plain(text: str) -> str:
    import re
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)


def _writer(workdir: Path, lines: int, pause: float) -> subprocess.Popen:
    script = (f"for i in $(seq 1 {lines}); do echo \"[    $i] console line $i\" >> console.log; "
              f"sleep {pause}; done")
    return subprocess.Popen(["sh", "-c", script], cwd=workdir)


def test_console_stream_follows_the_log_until_qemu_exits(tmp_path):
    out = io.BytesIO()
    machine = SimpleNamespace(workdir=None, proc=None)   # as a Machine looks before launch()
    stream = progress.stream_console(machine, out)
    assert progress._streaming >= 1
    time.sleep(0.3)                                      # nothing to read yet: it waits
    machine.workdir = tmp_path
    machine.proc = _writer(tmp_path, 20, 0.02)
    machine.proc.wait(30)
    stream._thread.join(10)
    assert not stream._thread.is_alive(), "the stream did not end when its QEMU did"
    text = out.getvalue().decode()
    assert text.splitlines() == [f"[    {i}] console line {i}" for i in range(1, 21)]
    progress.stop_streams()


def test_console_stream_drains_what_is_left_when_stopped(tmp_path):
    out = io.BytesIO()
    sleeper = subprocess.Popen(["sleep", "30"])          # a QEMU that is still running
    try:
        machine = SimpleNamespace(workdir=tmp_path, proc=sleeper)
        stream = progress.stream_console(machine, out)
        (tmp_path / "console.log").write_text("first\n")
        time.sleep(0.3)
        with (tmp_path / "console.log").open("a") as f:
            f.write("last words\n")
        progress.stop_streams()                          # what the CLI does at its end
        assert not stream._thread.is_alive()
        assert out.getvalue().decode() == "first\nlast words\n"
        assert progress._streaming == 0
    finally:
        sleeper.kill()
        sleeper.wait()


def test_console_stream_ends_when_the_machine_dir_is_gone(tmp_path):
    workdir = tmp_path / "vmprobe-x"
    workdir.mkdir()
    machine = SimpleNamespace(workdir=workdir, proc=None)   # launch failed before QEMU started
    stream = progress.stream_console(machine, io.BytesIO())
    workdir.rmdir()
    stream._thread.join(5)
    assert not stream._thread.is_alive()
    progress.stop_streams()


def test_boot_detail_reads_the_log_tail(tmp_path):
    machine = SimpleNamespace(workdir=None, accel=None)
    detail = progress.boot_detail(machine)
    assert detail() == ""
    machine.workdir, machine.accel = tmp_path, "tcg"
    (tmp_path / "console.log").write_bytes(b"x" * 10000 + b"\r\n[    1.5] Run /init as init process\r\n\r\n")
    assert detail() == "tcg · [    1.5] Run /init as init process"


def test_a_thread_never_outlives_a_transfer(screen, tmp_path):
    before = {t.name for t in threading.enumerate()}
    with pytest.raises(RuntimeError):
        with progress.transfer("downloading", tmp_path, None):
            raise RuntimeError("apt failed")
    assert "vmprobe-transfer" not in {t.name for t in threading.enumerate()} - before
