"""What a person at a terminal sees while vmprobe works: progress (rich) and ``--verbose``.

* :func:`status` — a spinner with the elapsed time and an optional live detail
  (a boot shows the console's last line), for module builds, boots, chroots;
* :func:`transfer` — a download bar: the bytes that arrived in a directory
  against the expected total;
* :func:`stream_console` — ``--verbose``: a machine's serial console copied
  to stderr as it is written.

Progress goes to stderr, and only to a terminal: nothing is drawn when stderr
is not a TTY, under CI (``$CI``), inside pytest, or while the console streams
(they would fight over the screen). ``VMPROBE_PROGRESS=1``/``0`` forces it
on/off. Without a display the context managers cost nothing.
"""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, TYPE_CHECKING, Callable, Iterator, Protocol

if TYPE_CHECKING:
    from rich.console import Console


REFRESH = 0.2              # seconds between updates of a transfer's byte count
DETAIL_WIDTH = 70          # characters of a status's live detail



class Machine(Protocol):
    """What a console stream and a boot's detail read of a machine (vm.machine.Machine)."""
    proc: subprocess.Popen | None
    workdir: Path | None
    accel: str | None


_streaming = 0             # console streams running: they own stderr
_streams: list["ConsoleStream"] = []


def enabled() -> bool:
    forced = os.environ.get("VMPROBE_PROGRESS", "").strip()
    if forced in ("0", "1"):
        return forced == "1"
    if _streaming or os.environ.get("CI") or "PYTEST_CURRENT_TEST" in os.environ:
        return False
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stderr
        return False


def _console() -> "Console":
    from rich.console import Console
    return Console(stderr=True)


def _squeezable(ratio: int | None = None):
    """A column that is cut with an ellipsis, rather than the line wrapped, when space is short."""
    from rich.table import Column
    return Column(no_wrap=True, overflow="ellipsis", ratio=ratio)


def _detail_column(detail: Callable[[], str]):
    from rich.progress import ProgressColumn
    from rich.text import Text

    class Detail(ProgressColumn):
        def render(self, task) -> Text:
            try:
                text = " ".join(str(detail() or "").split())
            except Exception:  # the detail is decoration: never let it break the step
                text = ""
            if len(text) > DETAIL_WIDTH:
                text = text[:DETAIL_WIDTH - 1] + "…"
            return Text(text, style="dim", no_wrap=True, overflow="ellipsis")

    return Detail(table_column=_squeezable(ratio=1))


@contextlib.contextmanager
def status(description: str, detail: Callable[[], str] | None = None) -> Iterator[None]:
    """Show ``description`` with a spinner and the elapsed time while the block runs; a
    ``detail`` callable is asked for a live second column at every refresh."""
    if not enabled():
        yield
        return
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
    columns = [SpinnerColumn(), TextColumn("{task.description}", table_column=_squeezable()),
               TimeElapsedColumn()]
    if detail is not None:
        columns.append(_detail_column(detail))
    # expanded, the detail column (ratio 1) takes what is left of the line and no more
    with Progress(*columns, console=_console(), transient=True, expand=detail is not None) as progress:
        progress.add_task(description, total=None)
        yield


def dir_size(directory: Path) -> int:
    total = 0
    for root, _, files in os.walk(directory):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_size
    return total


@contextlib.contextmanager
def transfer(description: str, directory: Path, total: int | None = None) -> Iterator[None]:
    """A download bar for files arriving in ``directory`` (``total`` bytes expected, if known)."""
    if not enabled():
        yield
        return
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
        TransferSpeedColumn,
    )
    start = dir_size(directory)
    columns = [SpinnerColumn(), TextColumn("{task.description}", table_column=_squeezable(ratio=1)),
               BarColumn(bar_width=24), DownloadColumn(), TransferSpeedColumn(), TimeElapsedColumn()]
    with Progress(*columns, console=_console(), transient=True, expand=True) as progress:
        task = progress.add_task(description, total=total or None)
        done = threading.Event()

        def watch() -> None:
            while not done.wait(REFRESH):
                progress.update(task, completed=max(0, dir_size(directory) - start))

        watcher = threading.Thread(target=watch, name="vmprobe-transfer", daemon=True)
        watcher.start()
        try:
            yield
        finally:
            done.set()
            watcher.join(5)
            progress.update(task, completed=max(0, dir_size(directory) - start))


class ConsoleStream:
    """Copies a machine's console log to ``out`` as QEMU writes it (``--verbose``).

    Follows the machine from before its launch (the log appears in its work dir)
    to after its end (the open log is drained even once the dir is removed), and
    stops by itself when QEMU has exited or the machine was shut down; ``stop()``
    ends it at once.
    """

    def __init__(self, machine: "Machine", out: IO[bytes] | None = None, poll: float = 0.1):
        self.machine = machine
        self.out = out if out is not None else sys.stderr.buffer
        self.poll = poll
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="vmprobe-console-stream", daemon=True)

    def start(self) -> "ConsoleStream":
        global _streaming
        _streaming += 1
        _streams.append(self)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def _finished(self) -> bool:
        m = self.machine
        if m.proc is not None and m.proc.poll() is not None:
            return True
        return m.workdir is not None and not m.workdir.exists()  # shut down (or never started QEMU)

    def _run(self) -> None:
        global _streaming
        f = None
        inode = None
        try:
            while True:
                finished = self._finished() or self._stop.is_set()   # read before the last drain
                path = self.machine.workdir / "console.log" if self.machine.workdir else None
                if path is not None:
                    with contextlib.suppress(OSError):
                        now = os.stat(path).st_ino
                        if now != inode:  # first appearance, or recreated by a QEMU restart
                            if f:
                                self._drain(f)
                                f.close()
                            f, inode = open(path, "rb"), now
                if f:
                    self._drain(f)
                if finished:
                    return
                time.sleep(self.poll)
        finally:
            if f:
                f.close()
            _streaming -= 1

    def _drain(self, f) -> None:
        while data := f.read(65536):
            with contextlib.suppress(OSError, ValueError):
                self.out.write(data)
                self.out.flush()


def stop_streams(timeout: float = 5) -> None:
    """End every console stream, each after a last read of its log (at a command's end)."""
    while _streams:
        _streams.pop().stop(timeout)


def stream_console(machine: "Machine", out: IO[bytes] | None = None) -> ConsoleStream:
    """Start copying ``machine``'s console to stderr (or ``out``); see :class:`ConsoleStream`."""
    return ConsoleStream(machine, out).start()


def boot_detail(machine: "Machine") -> Callable[[], str]:
    """A boot's live detail: the accelerator, then the console's last line (read from the log
    file itself: the machine's Console object belongs to the thread that waits on it)."""
    def detail() -> str:
        last = ""
        if machine.workdir is not None:
            with contextlib.suppress(OSError):
                with open(machine.workdir / "console.log", "rb") as f:
                    f.seek(max(0, os.fstat(f.fileno()).st_size - 4096))
                    lines = f.read().decode(errors="replace").replace("\r", "").splitlines()
                    last = next((line for line in reversed(lines) if line.strip()), "")
        return " · ".join(x for x in (machine.accel, last) if x)
    return detail
