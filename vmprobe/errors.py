"""vmprobe's own failures, each with a distinct, documented exit code.

A command run in the guest by ``vmprobe exec`` passes its own exit status
through; these codes are what vmprobe itself exits with when *it* fails, so a
CI script can tell "the kernel crashed" from "the download failed".
"""
from __future__ import annotations


class VmprobeError(Exception):
    """Base class: one clear line (``str(err)``) plus optional detail."""

    exit_code = 70
    kind = "error"

    def __init__(self, message: str, *, detail: str | None = None):
        super().__init__(message)
        self.message = message
        self.detail = detail
        if detail:  # shown under the message in tracebacks and pytest reports (the console tail…)
            self.add_note(detail.rstrip())

    def render(self) -> str:
        """The message, then the detail (e.g. a console tail) indented."""
        if not self.detail:
            return f"vmprobe: {self.kind}: {self.message}"
        body = "\n".join("    " + line for line in self.detail.rstrip().splitlines())
        return f"vmprobe: {self.kind}: {self.message}\n{body}"


class SpecError(VmprobeError):
    """The kernel spec names nothing we know (suite, flavour, ABI, path)."""

    exit_code = 64
    kind = "bad kernel spec"


class ConfigError(VmprobeError):
    """The host is missing something vmprobe needs (a binary, a mirror)."""

    exit_code = 65
    kind = "host configuration"


class FetchError(VmprobeError):
    """Downloading, verifying or extracting a kernel failed."""

    exit_code = 66
    kind = "kernel fetch failed"


class QemuError(VmprobeError):
    """QEMU refused to start or exited under us.

    ``exit_status`` is QEMU's (None while it runs or if it never started; negative: the
    signal that killed it), ``command`` its argv, ``output`` what it printed on stderr.
    """

    exit_code = 67
    kind = "QEMU died"

    def __init__(self, message: str, *, detail: str | None = None, exit_status: int | None = None,
                 command: list[str] | tuple[str, ...] = (), output: str = ""):
        super().__init__(message, detail=detail)
        self.exit_status = exit_status
        self.command = list(command)
        self.output = output


class BootTimeout(VmprobeError):
    """The guest never printed its READY marker in time."""

    exit_code = 68
    kind = "boot timeout"


class GuestCrash(VmprobeError):
    """The guest kernel panicked or oopsed."""

    exit_code = 69
    kind = "kernel crash"


class SshError(VmprobeError):
    """The guest's SSH server could not be reached or dropped us."""

    exit_code = 71
    kind = "SSH failed"


class CommandTimeout(VmprobeError):
    """A command in the guest ran past its deadline."""

    exit_code = 72
    kind = "command timeout"


class GdbError(VmprobeError):
    """gdb could not attach to, read from or drive the gdbstub."""

    exit_code = 73
    kind = "gdb failed"


class ModuleBuildError(VmprobeError):
    """A kprobe module did not compile or does not fit the kernel."""

    exit_code = 74
    kind = "module build failed"


class ModuleLoadError(VmprobeError):
    """The guest kernel refused the module (insmod failed)."""

    exit_code = 75
    kind = "module load failed"


class KernelBuildError(VmprobeError):
    """Patching, configuring or compiling a kernel from source failed (``vmprobe kernels build``)."""

    exit_code = 76
    kind = "kernel build failed"


class CacheBusy(VmprobeError):
    """Another vmprobe run held a cache entry's lock for too long."""

    exit_code = 77
    kind = "cache busy"


class ProbeSiteError(VmprobeError):
    """The site to probe is not in the kernel, or the kernel put the probe elsewhere."""

    exit_code = 78
    kind = "probe site"


EXIT_INTERRUPTED = 130

#: name → exit code, for the README and ``vmprobe --help``.
EXIT_CODES = {
    cls.__name__: cls.exit_code
    for cls in (
        SpecError, ConfigError, FetchError, QemuError,
        BootTimeout, GuestCrash, VmprobeError, SshError, CommandTimeout,
        GdbError, ModuleBuildError, ModuleLoadError, KernelBuildError, CacheBusy, ProbeSiteError,
    )
}
