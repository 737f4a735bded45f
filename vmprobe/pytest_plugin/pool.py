"""The session's VM pool: kernels fetched once, one VM per kernel, a private runtime dir.

Booting (even restoring) a VM costs far more than most tests, so a session keeps
one machine per kernel and hands it to every test on that kernel. What makes
that safe is :class:`GuestState`: before each test the machine is compared with
its state right after boot, and replaced when the last test crashed it or left
a module, a kprobe or a taint behind. Each session (each xdist worker too) also
gets a runtime dir of its own, so its leak checks see only its own machines.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from vmprobe.pytest_plugin.options import configured_kernels, results_dir
from vmprobe.pytest_plugin.procscan import stop_machines_under

if TYPE_CHECKING:  # the heavy imports (paramiko, qemu.qmp) wait until a test needs a VM
    from vmprobe.kernels import Kernel
    from vmprobe.vm.machine import Machine

_state_key = pytest.StashKey["VmprobeSession"]()

#: Taint flags every out-of-tree kprobe module sets when it loads (O, E): not a reason to replace a VM.
MODULE_TAINTS = (1 << 12) | (1 << 13)


def session_state(config: pytest.Config) -> "VmprobeSession":
    """The pool of this pytest process (set up by the plugin's ``pytest_configure``)."""
    return config.stash[_state_key]


def describe_error(exc: BaseException) -> str:
    """One line for an exception: vmprobe's own errors by kind and message."""
    from vmprobe.errors import VmprobeError
    if isinstance(exc, VmprobeError):
        return f"{exc.kind}: {exc.message}"
    return f"{type(exc).__name__}: {exc}"


@dataclass
class VmprobeSession:
    """One pytest process's kernels, pooled machines and runtime dir (kept in the config's stash)."""
    specs: list[str]
    accel: str
    results_dir: Path
    warm: bool = True
    is_worker: bool = False
    kernels: dict[str, Any] = field(default_factory=dict)            # spec → Kernel | exception
    # keyed by the kernel's canonical spec (debian:bookworm/cloud-amd64@6.1.0-56)
    machines: dict[str, "Machine"] = field(default_factory=dict)     # live machines
    boot_failures: dict[str, tuple[str, str]] = field(default_factory=dict)  # (error, console)
    console_checked: dict[str, int] = field(default_factory=dict)   # console read up to here for crashes
    clean_state: dict[str, "GuestState"] = field(default_factory=dict)  # each VM's state after boot
    runtime_dir: Path | None = None          # the session dir this process created (owner only)
    _previous_runtime: str | None = None
    _validated: bool = False

    @classmethod
    def open(cls, config: pytest.Config) -> "VmprobeSession":
        """The session for this pytest process, from its options, with its runtime dir made
        and stashed where :func:`session_state` finds it."""
        state = cls(specs=configured_kernels(config), accel=config.getoption("vmprobe_accel"),
                    warm=not config.getoption("vmprobe_cold"), results_dir=results_dir(config),
                    is_worker=hasattr(config, "workerinput"))
        state.open_runtime_dir()
        config.stash[_state_key] = state
        return state

    @staticmethod
    def of(config: pytest.Config) -> "VmprobeSession | None":
        """The session if :meth:`open` made one (unlike :func:`session_state`, None if not)."""
        return config.stash.get(_state_key, None)

    def log(self, msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    # -- specs ---------------------------------------------------------------
    def validate_specs(self) -> None:
        if self._validated:
            return
        from vmprobe.errors import VmprobeError
        from vmprobe.kernels import parse_spec
        for spec in self.specs:
            try:
                parse_spec(spec)
            except VmprobeError as exc:
                raise pytest.UsageError(f"vmprobe: {exc.message}") from None
        self._validated = True

    def catalog_facts(self, spec: str) -> tuple[str, str]:
        """(series, Debian arch) of a spec from the catalog, without fetching it."""
        from vmprobe.kernels import parse_spec
        from vmprobe.kernels.catalog import load_catalog
        catalog = load_catalog()
        parsed = parse_spec(spec, catalog)
        if parsed.provider != "debian":  # local:/built: — described from the image itself
            got = self.kernel(spec)
            return got.series, got.arch
        suite = catalog.suites[parsed.suite]
        return suite.series, suite.flavours[parsed.flavour].arch

    def kernel(self, spec: str) -> "Kernel":
        """The fetched kernel for a spec: once per session (the cache's locks guard other processes)."""
        got = self.kernels.get(spec)
        if got is None:
            from vmprobe.kernels import get_kernel
            try:
                got = get_kernel(spec, log=self.log)
            except Exception as exc:  # remembered: every test on this kernel fails the same way, fast
                got = exc
            self.kernels[spec] = got
        if isinstance(got, BaseException):
            pytest.fail(f"vmprobe: kernel {spec} could not be fetched: {describe_error(got)}",
                        pytrace=False)
        return got

    # -- machines ------------------------------------------------------------
    def machine(self, kernel: "Kernel") -> "Machine":
        """The session's VM for this kernel: reused while it is clean (see GuestState), replaced
        (a warm restore: about a second) after a crash or when a test left something behind."""
        from vmprobe.vm.machine import Machine
        spec = kernel.spec
        m = self.machines.get(spec)
        if m is not None:
            why = _unusable(m, self.console_checked.get(spec, 0)) or self._left_behind(spec, m)
            self.console_checked[spec] = len(m.console.text)
            if why is None:
                return m
            self.log(f"vmprobe: the VM for {spec} {why}; starting a new one")
            self.machines.pop(spec)
            m.shutdown()
        if spec in self.boot_failures:
            error, _ = self.boot_failures[spec]
            pytest.fail(f"vmprobe: the VM for {spec} failed to boot earlier in this session: {error}",
                        pytrace=False)
        m = Machine(kernel, accel=self.accel, warm=self.warm, log=self.log)
        try:
            m.__enter__()  # cleans up after itself if the boot fails
            self.clean_state[spec] = GuestState.read(m)
        except Exception as exc:
            self.boot_failures[spec] = (describe_error(exc), m.console.text if m.console else "")
            m.shutdown()
            raise
        self.machines[spec] = m
        self.console_checked[spec] = 0
        return m

    def _left_behind(self, spec: str, m: "Machine") -> str | None:
        try:
            now = GuestState.read(m)
        except Exception as exc:  # the guest does not answer: replace it
            return f"does not answer ({describe_error(exc)})"
        return self.clean_state[spec].difference(now)

    def close(self) -> None:
        while self.machines:
            _, m = self.machines.popitem()
            with contextlib.suppress(Exception):
                m.shutdown()

    # -- the session's runtime dir -------------------------------------------
    def open_runtime_dir(self) -> None:
        """Give this process's session (and the processes its tests start) a private dir for
        the machines' temp dirs. An xdist worker makes its own inside its controller's."""
        from vmprobe.host.processes import runtime_dir
        base = runtime_dir()
        # unix socket paths cap at 107 bytes: <base>/vmprobe-pytest-XXXXXXXX/vmprobe-XXXXXXXX/qmp.sock
        if len(str(base)) + 55 > 100 or not os.access(base, os.W_OK):
            return
        self.runtime_dir = Path(tempfile.mkdtemp(prefix="vmprobe-pytest-", dir=base))
        os.chmod(self.runtime_dir, 0o700)
        self._previous_runtime = os.environ.get("VMPROBE_RUNTIME_DIR")
        os.environ["VMPROBE_RUNTIME_DIR"] = str(self.runtime_dir)

    def close_runtime_dir(self) -> None:
        if self.runtime_dir is None:
            return
        stray = stop_machines_under(self.runtime_dir)
        leftovers = [p.name for p in self.runtime_dir.iterdir()] if self.runtime_dir.exists() else []
        shutil.rmtree(self.runtime_dir, ignore_errors=True)
        if self._previous_runtime is None:
            os.environ.pop("VMPROBE_RUNTIME_DIR", None)
        else:
            os.environ["VMPROBE_RUNTIME_DIR"] = self._previous_runtime
        if stray or leftovers:
            self.log(f"vmprobe: warning: cleaned up after this session: {len(stray)} QEMU process(es) "
                     f"{stray} and {leftovers} left in {self.runtime_dir}")
        self.runtime_dir = None

    def own_machine_traces(self) -> set[str]:
        """Pool machines (alive on purpose): their dirs and QEMU pids, for leak checks."""
        traces = set()
        for m in self.machines.values():
            if m.workdir:
                traces.add(str(m.workdir))
            if m.proc:
                traces.add(str(m.proc.pid))
        return traces


@dataclass(frozen=True)
class GuestState:
    """What a test may leave behind in a shared VM: loaded modules, armed kprobes, new taints."""
    modules: frozenset[str]
    kprobes: tuple[str, ...]
    tainted: int

    @classmethod
    def read(cls, m: "Machine") -> "GuestState":
        out = m.run("cut -d' ' -f1 /proc/modules; echo @; cat /sys/kernel/debug/kprobes/list; "
                    "echo @; cat /proc/sys/kernel/tainted", 30).stdout
        modules, kprobes, tainted = (out.split("@\n") + ["", "", "0"])[:3]
        return cls(frozenset(modules.split()), tuple(l for l in kprobes.splitlines() if l.strip()),
                   int(tainted.strip() or 0))

    def difference(self, now: "GuestState") -> str | None:
        """Why ``now`` is not as clean as this state, or None."""
        extra = sorted(now.modules - self.modules)
        if extra:
            return f"still has module(s) {', '.join(extra)} loaded"
        armed = [k for k in now.kprobes if k not in self.kprobes]
        if armed:
            return f"still has {len(armed)} kprobe(s) registered ({armed[0]})"
        new = (now.tainted & ~self.tainted) & ~MODULE_TAINTS
        if new:
            return f"was tainted (/proc/sys/kernel/tainted {self.tainted} → {now.tainted})"
        return None


def _unusable(m: "Machine", seen: int) -> str | None:
    """Why a pooled machine cannot serve the next test (QEMU gone, or the guest kernel crashed
    after console position ``seen``), or None."""
    if m.proc is None or m.proc.poll() is not None:
        return f"is gone (QEMU {m._exit_reason() or 'stopped'})"
    text = m.console.text
    try:
        from vmprobe.formats.crash import first_fatal
        crash = first_fatal(text[seen:])
    except Exception:  # crash detection is a nicety here, never a reason to fail a test
        crash = None
    return f"crashed ({crash.title})" if crash else None
