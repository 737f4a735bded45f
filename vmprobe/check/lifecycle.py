"""What every check (the probe check, each scenario) does around its own steps.

One place decides how a check begins (the kernel and machine blocks, the
console mark), how a vmprobe error is worded (with the phase it ended in), and
how it ends: the module unloaded unless the kernel is damaged, then the kernel
reports printed since the mark filed as crashes (fatal) or findings (splats the
kernel lived on after, which allow rules may allow: check/findings.py).
"""
from __future__ import annotations

import contextlib

from vmprobe.check import findings as _findings
from vmprobe.errors import VmprobeError
from vmprobe.formats.crash import find_crashes
from vmprobe.host.interrupts import checkpoint


class CheckLifecycle:
    """Mixed into a check with ``m`` (Machine), ``report`` (ProbeReport) and ``_cleanup()``."""

    phase_name = "?"
    _start_mark = 0

    def phase(self, name: str):
        """A named, timed step: errors name it, and the test hold can stop there."""
        self.phase_name = name
        checkpoint(name)
        return self.report.timed(name)

    def describe(self) -> None:
        """The report's kernel and machine blocks."""
        k, m = self.m.kernel, self.m
        self.report.kernel = {"spec": k.spec, "release": k.release, "version": k.version, "arch": m.profile.name}
        self.report.machine = {"accel": m.accel, "smp": m.smp, "qemu": " ".join(m.command_line)}

    def kernel_damaged(self) -> bool:
        """A fatal report since the check began: rmmod could hang, so leave the module."""
        return any(not c.is_splat for c in find_crashes(self.m.console.since(self._start_mark)))

    @contextlib.contextmanager
    def observed(self):
        """Run the check's steps: errors get the phase, then cleanup and the console's reports filed."""
        self._start_mark = self.m.console.mark()
        r = self.report
        try:
            yield
        except VmprobeError as exc:
            r.error = f"{exc.kind} in phase {self.phase_name}: {exc.message}"
            raise
        finally:
            self._cleanup()
            r.crashes, r.findings = _findings.split(find_crashes(self.m.console.since(self._start_mark)))

    def _cleanup(self) -> None:
        raise NotImplementedError
