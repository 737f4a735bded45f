"""Every module load in vmprobe: one ``finit_module`` call, never a retry.

BusyBox ``insmod`` falls back to ``init_module`` when ``finit_module`` fails,
so a module whose init fails ran its init twice (its lines printed twice,
its side effects done twice). The probe check, the scenarios, the check of
any module and ``vmprobe gdb`` all load through ``load_once``, which uploads
vmprobe-insmod (guest/loader.py) and reads the errno it reports; each
caller turns a failure into its own specific message.
"""
from __future__ import annotations

import errno as errnos
import os
import re
from dataclasses import dataclass
from pathlib import Path

from vmprobe.errors import ModuleLoadError
from vmprobe.guest.loader import loader_for

LOADER = "/tmp/vmprobe-insmod"          # where it is copied when the image has none
IN_IMAGE = "/bin/vmprobe-insmod"
NO_LOADER = "vmprobe-insmod-absent"
THEN = "vmprobe-insmod-then"            # separates the load's output from its ``then`` command's
GUEST_DIR = "/tmp"
_STATUS = re.compile(r"vmprobe-insmod: (finit_module|open)=(\d+)")


@dataclass
class Load:
    """What the one load call did: ``errno`` 0 is success."""
    module: str          # the .ko's file name
    remote: str          # where it was copied in the guest
    call: str            # the system call that answered: finit_module
    errno: int
    output: str
    then: str | None = None   # what ``then`` printed after the load (None: it did not run)

    @property
    def ok(self) -> bool:
        return self.errno == 0

    def said(self) -> str:
        """``finit_module returned -EINVAL (Invalid argument)``."""
        if self.ok:
            return f"{self.call} returned 0"
        name = errnos.errorcode.get(self.errno, str(self.errno))
        return f"{self.call} returned -{name} ({os.strerror(self.errno)})"


def parse_status(output: str) -> tuple[str, int]:
    """The call and errno vmprobe-insmod printed."""
    m = _STATUS.search(output)
    if not m:
        raise ModuleLoadError(f"vmprobe-insmod said nothing about the load: {output.strip()[:200]!r}")
    return m[1], int(m[2])


def load_once(machine, ko: Path, params: str = "", timeout: float = 60, then: str = "") -> Load:
    """Copy ``ko`` in and load it with exactly one ``finit_module`` (``params`` as insmod takes them).
    ``then``: a guest command run right after a successful load in the same round trip (its
    output in ``Load.then``), as the probe check reads the kprobes list."""
    remote = f"{GUEST_DIR}/{ko.name}"
    machine.upload(ko, remote)
    quoted = params.strip().replace("'", "'\\''")
    after = f" && {{ echo {THEN}; {then}; }}" if then else ""
    # the image's own, when it has one (test is a builtin: no process, and no load when absent)
    res = machine.run(f"if [ -x {IN_IMAGE} ]; then {IN_IMAGE} {remote} '{quoted}'{after}; "
                      f"else echo {NO_LOADER}; fi", timeout)
    if res.stdout.strip() == NO_LOADER:
        machine.upload(loader_for(machine.profile), LOADER, mode=0o755)
        res = machine.run(f"{LOADER} {remote} '{quoted}'{after}", timeout)
    said, marked, later = res.stdout.partition(f"{THEN}\n")
    call, code = parse_status(said + res.stderr)
    load = Load(ko.name, remote, call, code, (said + res.stderr).strip(), later if marked else None)
    if call == "open":   # the copy is not there: vmprobe's own failure, not the kernel's answer
        raise ModuleLoadError(f"vmprobe-insmod could not open {remote} in the guest: {load.said()}")
    return load
