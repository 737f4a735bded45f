"""vmprobe.vm.console: tailing QEMU's console log with an expect API."""
from __future__ import annotations

import re
import threading
import time

import pytest

from vmprobe.errors import BootTimeout, CommandTimeout, GuestCrash, QemuError
from vmprobe.vm import console as console_mod
from vmprobe.vm.console import Console

PANIC = "[    5.130000] Kernel panic - not syncing: Fatal exception\n"


@pytest.fixture(autouse=True)
def fast_poll(monkeypatch):
    monkeypatch.setattr(console_mod, "POLL", 0.01)


@pytest.fixture
def log(tmp_path):
    path = tmp_path / "console.log"
    path.write_bytes(b"")
    return path


def _append(path, data: bytes | str) -> None:
    with path.open("ab") as f:
        f.write(data.encode() if isinstance(data, str) else data)


def test_missing_file_reads_as_empty(tmp_path):
    c = Console(tmp_path / "not-yet")
    assert c.text == ""
    assert c.mark() == 0


def test_reads_appended_text_incrementally(log):
    c = Console(log)
    _append(log, "[    0.000000] Linux version 6.1.0\r\n")
    assert c.text == "[    0.000000] Linux version 6.1.0\n"
    _append(log, "[    0.100000] second\r\n")
    assert c.text.splitlines() == ["[    0.000000] Linux version 6.1.0", "[    0.100000] second"]


def test_utf8_split_across_writes(log):
    c = Console(log)
    data = "caf\u00e9 \u2603 ok\n".encode()
    cut1, cut2 = data.index(b"\xc3") + 1, data.index(b"\xe2") + 2   # inside both sequences
    for part in (data[:cut1], data[cut1:cut2], data[cut2:]):
        _append(log, part)
        c.refresh()
    assert c.text == "caf\u00e9 \u2603 ok\n"
    assert "\ufffd" not in c.text


def test_crlf_split_across_writes(log):
    c = Console(log)
    _append(log, b"login: \r")
    c.refresh()
    _append(log, b"\nnext\r\n")
    assert c.text == "login: \nnext\n"


def test_mark_since_count_tail(log):
    c = Console(log)
    _append(log, "".join(f"vmprobe-hit nonce=1 n={i}\n" for i in range(3)))
    m = c.mark()
    assert m == len(c.text)
    _append(log, "vmprobe-hit nonce=1 n=3\nother\nvmprobe-hit nonce=1 n=4\n")
    assert c.since(m) == "vmprobe-hit nonce=1 n=3\nother\nvmprobe-hit nonce=1 n=4\n"
    assert c.count(r"^vmprobe-hit nonce=1 ") == 5
    assert c.count(r"^vmprobe-hit nonce=1 ", since=m) == 2
    assert c.count(r"nonce=2") == 0
    assert c.tail(2) == "other\nvmprobe-hit nonce=1 n=4"
    assert c.tail().count("\n") == 5  # all 6 lines, no trailing newline


def test_count_with_compiled_pattern(log):
    c = Console(log)
    _append(log, "hit\nhit\n")
    assert c.count(re.compile(r"^hit$", re.M)) == 2


def test_expect_finds_existing_text(log):
    c = Console(log)
    _append(log, "[    1.0] booting\nvmprobe-ready nonce=42\n")
    m = c.expect(r"^vmprobe-ready nonce=(\d+)$", 1, what="the guest to boot")
    assert m[1] == "42"


def test_expect_waits_for_later_text(log):
    c = Console(log)
    timer = threading.Timer(0.1, _append, (log, "vmprobe-ready nonce=7\n"))
    timer.start()
    try:
        t0 = time.monotonic()
        m = c.expect(re.compile(r"nonce=(\d+)"), 5, what="ready")
        assert m[1] == "7"
        assert time.monotonic() - t0 < 2
    finally:
        timer.cancel()


def test_expect_honours_since(log):
    c = Console(log)
    _append(log, "vmprobe-hit nonce=1\n")
    mark = c.mark()
    with pytest.raises(BootTimeout):
        c.expect("vmprobe-hit nonce=1", 0.1, what="a hit", since=mark)
    _append(log, "vmprobe-hit nonce=1\n")
    m = c.expect("vmprobe-hit nonce=1", 1, what="a hit", since=mark)
    assert m.start() == mark


def test_expect_times_out_with_what_and_tail(log):
    c = Console(log)
    _append(log, "".join(f"[    {i}.000000] line {i}\n" for i in range(40)))
    t0 = time.monotonic()
    with pytest.raises(BootTimeout) as info:
        c.expect("vmprobe-ready", 0.2, what="the READY marker")
    assert 0.15 < time.monotonic() - t0 < 2
    err = info.value
    assert "the READY marker" in str(err)
    assert "timed out" in str(err)
    tail = err.detail.splitlines()
    assert len(tail) == 30
    assert (tail[0], tail[-1]) == ("[    10.000000] line 10", "[    39.000000] line 39")
    assert err.exit_code == 68


def test_expect_custom_error_class(log):
    c = Console(log)
    with pytest.raises(CommandTimeout, match="waiting for the probe to fire"):
        c.expect("vmprobe-hit", 0.05, what="the probe to fire", error=CommandTimeout)


def test_expect_fails_fast_on_panic(log):
    c = Console(log)
    timer = threading.Timer(0.05, _append, (log, "[    5.0] BUG: kernel NULL pointer dereference\n" + PANIC))
    timer.start()
    try:
        t0 = time.monotonic()
        with pytest.raises(GuestCrash) as info:
            c.expect("vmprobe-ready", 30, what="the guest to boot")
        assert time.monotonic() - t0 < 5
    finally:
        timer.cancel()
    # the panic ends the BUG report it belongs to: the report names the cause
    assert str(info.value) == ("the guest kernel crashed (BUG: kernel NULL pointer dereference) "
                               "while waiting for the guest to boot")
    assert "Kernel panic - not syncing" in info.value.detail


def test_bare_panic_names_itself(log):
    c = Console(log)
    _append(log, PANIC)
    with pytest.raises(GuestCrash, match=r"crashed \(kernel panic: Fatal exception\) while waiting for boot"):
        c.expect("vmprobe-ready", 30, what="boot")


def test_non_fatal_oops_does_not_stop_the_wait(log):
    c = Console(log)
    _append(log, "[    1.0] WARNING: CPU: 0 PID: 1 at kernel/kprobes.c:1234 register_kprobe+0x1a/0x2b0\n")
    with pytest.raises(BootTimeout):
        c.expect("vmprobe-ready", 0.1, what="ready")


def test_panic_before_since_is_ignored(log):
    c = Console(log)
    _append(log, PANIC)
    mark = c.mark()
    with pytest.raises(BootTimeout):
        c.expect("never", 0.1, what="x", since=mark)


def test_fail_on_crash_false_keeps_waiting(log):
    c = Console(log)
    _append(log, PANIC)
    with pytest.raises(BootTimeout):
        c.expect("never", 0.1, what="x", fail_on_crash=False)


def test_qemu_exit_raises_qemu_error(log):
    c = Console(log, exited=lambda: "exited with status 1")
    _append(log, "qemu-system-x86_64: -device foo: not found\n")
    t0 = time.monotonic()
    with pytest.raises(QemuError) as info:
        c.expect("vmprobe-ready", 30, what="the guest to boot")
    assert time.monotonic() - t0 < 5
    assert str(info.value) == "QEMU exited with status 1 while waiting for the guest to boot"
    assert "-device foo" in info.value.detail


def test_qemu_exit_after_panic_is_a_crash(log):
    calls = []

    def exited():
        calls.append(1)
        return "exited with status 1"

    c = Console(log, exited=exited)
    _append(log, PANIC)
    with pytest.raises(GuestCrash):
        c.expect("vmprobe-ready", 1, what="boot", fail_on_crash=False)
    assert calls
