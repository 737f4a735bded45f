"""The guest's serial console: captured to a file by QEMU, read live here.

QEMU writes the console to a log file (so it survives whatever happens to
us); this class tails it and offers an expect API: wait for a regex with a
deadline, failing fast when the kernel panics or QEMU exits, and always
saying what it waited for, with the console tail.
"""
from __future__ import annotations

import codecs
import re
import time
from pathlib import Path
from typing import Callable

from vmprobe.errors import BootTimeout, GuestCrash, VmprobeError
from vmprobe.formats.crash import first_fatal

POLL = 0.02        # longest pause between looks at the log (a restore is READY ≈0.13 s after its line)
FIRST_POLL = 0.005  # the pause starts short and doubles: a quick answer is seen quickly


class Console:
    def __init__(self, path: Path, exited: Callable[[], str | None] | None = None,
                 diagnose: Callable[[str], str] | None = None):
        self.path = path
        self._exited = exited or (lambda: None)
        self._diagnose = diagnose   # a boot timeout's likely cause, from the console text
        self._text = ""
        self._offset = 0
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def refresh(self) -> str:
        """Read what QEMU appended since the last call; return the whole text."""
        try:
            with self.path.open("rb") as f:
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            return self._text
        if data:
            self._offset += len(data)
            chunk = self._decoder.decode(data)
            self._text += chunk.replace("\r\n", "\n").replace("\r", "")
        return self._text

    @property
    def text(self) -> str:
        return self.refresh()

    def mark(self) -> int:
        """A position to search from later (e.g. before a step)."""
        return len(self.refresh())

    def since(self, mark: int) -> str:
        return self.refresh()[mark:]

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.refresh().rstrip("\n").splitlines()[-lines:])

    def count(self, pattern: str | re.Pattern, since: int = 0) -> int:
        rx = re.compile(pattern, re.M) if isinstance(pattern, str) else pattern
        return len(rx.findall(self.since(since)))

    def expect(self, pattern: str | re.Pattern, timeout: float, *, what: str, since: int = 0,
               error: type[VmprobeError] = BootTimeout, fail_on_crash: bool = True) -> re.Match:
        """Wait until ``pattern`` appears after ``since``; raise with the tail otherwise."""
        rx = re.compile(pattern, re.M) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        pause = FIRST_POLL
        while True:
            text = self.refresh()
            m = rx.search(text, since)
            if m:
                return m
            # complete lines only: a title must not be cut mid-line
            if fail_on_crash and (crash := first_fatal(text[since:text.rfind("\n") + 1])):
                raise GuestCrash(f"the guest kernel crashed ({crash.title}) while waiting for {what}",
                                 detail=crash.excerpt + "\n...\n" + self.tail(10))
            gone = self._exited()
            if gone:
                self.refresh()
                raise_qemu_gone(gone, what, self)
            if time.monotonic() >= deadline:
                cause = (f"; likely cause: {self._diagnose(text)}"
                         if self._diagnose and error is BootTimeout else "")
                raise error(f"timed out after {timeout:.0f}s waiting for {what}{cause}",
                            detail=self.tail() or "(the console is empty)")
            time.sleep(pause)
            pause = min(pause * 2, POLL)


def raise_qemu_gone(reason: str, what: str, console: Console) -> None:
    from vmprobe.errors import QemuError

    crash = first_fatal(console.text)
    if crash:
        raise GuestCrash(f"the guest kernel crashed ({crash.title}); QEMU {reason} "
                         f"while waiting for {what}", detail=crash.excerpt + "\n...\n" + console.tail(10))
    from vmprobe.vm.panics import PANIC_NOTE, silent_panic_message
    if PANIC_NOTE in reason:
        raise GuestCrash(silent_panic_message(reason, what), detail=console.tail())
    raise QemuError(f"QEMU {reason} while waiting for {what}", detail=console.tail())
