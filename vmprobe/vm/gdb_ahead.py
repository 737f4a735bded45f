"""gdb started ahead of time: its start-up overlaps other work instead of adding to it."""
from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from vmprobe.errors import GdbError

if TYPE_CHECKING:
    from vmprobe.vm.gdb import Gdb


class GdbStarter:
    """gdbs for one machine, each started ahead of time in a thread: gdb's start-up (≈0.3 s, more
    on a loaded host) overlaps a restore or a check's first steps instead of adding to them."""

    def __init__(self, gdb_binary: str = "gdb", arch: str | None = None):
        self.binary, self.arch = gdb_binary, arch
        self._thread: threading.Thread | None = None
        self._made: list = []      # the Gdb, or the exception that stopped it

    def ahead(self) -> None:
        """Start the next gdb now (a no-op if one is started already)."""
        if self._thread is None:
            self._made = []
            self._thread = threading.Thread(target=self._make, name="vmprobe-gdb-ahead", daemon=True)
            self._thread.start()

    def _make(self) -> None:
        try:
            from vmprobe.vm.gdb import Gdb   # here: a run that never debugs imports no pygdbmi
            self._made.append(Gdb(self.binary, arch=self.arch))
        except BaseException as exc:  # noqa: BLE001  (raised by take())
            self._made.append(exc)

    def take(self) -> Gdb:
        """A gdb, not attached: the one started ahead, else a new one."""
        self.ahead()
        thread, self._thread = self._thread, None
        thread.join(30)
        made = self._made[0] if self._made else GdbError(f"{self.binary} did not start within 30s")
        if isinstance(made, BaseException):
            raise made
        return made

    def close(self) -> None:
        """End a gdb started ahead and never taken."""
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(30)
            for made in self._made:
                if not isinstance(made, BaseException):   # a Gdb
                    made.close()
