"""vmprobe's pytest plugin: real kernels in QEMU as pytest fixtures.

Loaded through the ``pytest11`` entry point ``vmprobe``. It gives a test suite

* options ``--vmprobe-kernel SPEC`` (repeatable; default ``[tool.vmprobe]
  kernels = [...]`` in the rootdir's ``pyproject.toml``, else
  ``debian:bookworm``), ``--vmprobe-accel`` (default ``$VMPROBE_ACCEL`` or
  ``auto``), ``--vmprobe-cold`` (boot VMs instead of restoring the kernel's
  warm-start snapshot) and ``--vmprobe-results DIR`` (default
  ``<rootdir>/results``);
* fixtures ``kernel`` (every test that uses it, directly or through ``vm``,
  runs once per spec; test ids carry the spec), ``vm`` (a booted
  :class:`~vmprobe.vm.machine.Machine`, one per kernel per session and, under
  pytest-xdist, per worker; replaced when a test crashed it or left a module,
  a kprobe or a taint behind), ``kprobe_module``
  (``kprobe_module(path_or_source_text) -> Module`` built against the current
  kernel), ``probe_check`` (``probe_check(**ProbeOptions fields) ->
  ProbeReport`` on the current VM, the same report as ``vmprobe probe``),
  ``fork_module`` (the built-in fork probe) and ``no_leaks``;
* markers ``@pytest.mark.kernel(">=5.10,<6.12")`` and
  ``@pytest.mark.arch("x86_64")``, which skip (with the reason) the kernels
  that don't match;
* on a failed test that used ``vm``: the console, dmesg, the kprobes list and
  the QEMU command line as report sections (shown by pytest, carried in
  ``--junitxml``'s system-out) and saved under ``<results>/<test id>/``.

Each session (each xdist worker too) puts its machines' private dirs in a
session dir of its own (``$VMPROBE_RUNTIME_DIR``, inherited by the ``vmprobe``
processes its tests start), so leak checks see only their own session's
machines, and whatever is left at the end is stopped and removed.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import sys
import tempfile
import time
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import pytest

if TYPE_CHECKING:  # the heavy imports (paramiko, qemu.qmp) wait until a test needs a VM
    from vmprobe.check.report import ProbeReport
    from vmprobe.kernels import Kernel
    from vmprobe.modules import Module
    from vmprobe.vm.machine import Machine

DEFAULT_KERNELS = ("debian:bookworm",)
SECTION = "vmprobe"                 # report sections are "Captured stdout vmprobe <what>"
_SECTION_PREFIX = f"Captured stdout {SECTION} "
CONSOLE_SECTION_LINES = 400         # the console section keeps this many lines (the file keeps all)
ARTEFACT_TIMEOUT = 20               # seconds for each guest command run to collect failure artefacts

_state_key = pytest.StashKey["VmprobeSession"]()
_used_vm_key = pytest.StashKey["tuple[Any, int]"]()       # (machine, console mark) of the test
_reports_key = pytest.StashKey["list"]()                  # ProbeReports made by probe_check


# --------------------------------------------------------------------------
# markers: kernel version constraints and architectures (pure functions)

_CLAUSE = re.compile(r"^\s*(?P<op>>=|<=|==|!=|>|<)?\s*(?P<ver>\d+(?:\.\d+)*)\s*$")
_OPS: dict[str, Callable[[tuple, tuple], bool]] = {
    ">=": lambda a, b: a >= b, "<=": lambda a, b: a <= b, "==": lambda a, b: a == b,
    "!=": lambda a, b: a != b, ">": lambda a, b: a > b, "<": lambda a, b: a < b,
}

#: Debian architecture → the names a test may use for it in ``@pytest.mark.arch``.
ARCH_NAMES = {
    "amd64": ("x86_64", "amd64", "x86-64", "x64"),
    "i386": ("i386", "i686", "x86_32"),
    "arm64": ("aarch64", "arm64"),
}


def parse_constraints(text: str) -> list[tuple[str, tuple[int, ...]]]:
    """``">=5.10,<6.12"`` → ``[(">=", (5, 10)), ("<", (6, 12))]``; a bare version means ``==``."""
    clauses = []
    for part in str(text).split(","):
        m = _CLAUSE.match(part)
        if not m:
            raise ValueError(f"bad kernel version constraint {text!r}: expected clauses like "
                             f"'>=5.10', '<6.12', '==6.1' separated by commas")
        clauses.append((m["op"] or "==", tuple(int(x) for x in m["ver"].split("."))))
    return clauses


def version_matches(version: tuple[int, ...], constraints: list[tuple[str, tuple[int, ...]]]) -> bool:
    """Whether ``version`` meets every clause, compared at each clause's precision
    (``6.1.192`` is ``==6.1`` and ``<6.2``, and not ``<6.1``)."""
    for op, want in constraints:
        have = tuple(version[:len(want)]) + (0,) * (len(want) - len(version))
        if not _OPS[op](have, want):
            return False
    return True


def arch_matches(debian_arch: str, wanted: list[str]) -> bool:
    names = {n.lower() for n in ARCH_NAMES.get(debian_arch, (debian_arch,))} | {debian_arch.lower()}
    return any(str(w).lower() in names for w in wanted)


def kernel_version(release: str, package_version: str = "") -> tuple[int, ...]:
    """The version markers compare: major.minor from the release (``6.1.0-56-…`` → 6.1), and
    the sublevel from the package's upstream version (``6.1.192-2`` → 6.1.192) when it agrees."""
    m = re.match(r"^(\d+)\.(\d+)", release)
    if not m:
        return ()
    base = (int(m[1]), int(m[2]))
    p = re.match(r"^(?:\d+:)?(\d+)\.(\d+)\.(\d+)", package_version or "")
    if p and (int(p[1]), int(p[2])) == base:
        return base + (int(p[3]),)
    return base


def artefact_dir_name(nodeid: str) -> str:
    """A test id as one safe directory name (``tests/a.py::t[x:y]`` → ``tests_a.py_t_x_y``)."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", nodeid).strip("_.") or "test"
    if len(name) > 150:
        name = f"{name[:130]}-{hashlib.sha256(nodeid.encode()).hexdigest()[:12]}"
    return name


# --------------------------------------------------------------------------
# options and configuration

def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("vmprobe", "vmprobe: kprobe modules on real kernels in QEMU")
    group.addoption("--vmprobe-kernel", action="append", dest="vmprobe_kernels", metavar="SPEC",
                    default=None,
                    help="kernel spec to run the tests that use `kernel`/`vm` on (repeatable; default "
                         "[tool.vmprobe] kernels in pyproject.toml, else debian:bookworm)")
    group.addoption("--vmprobe-accel", dest="vmprobe_accel", choices=("auto", "kvm", "tcg"),
                    default=os.environ.get("VMPROBE_ACCEL") or "auto",
                    help="QEMU accelerator for the VMs (default $VMPROBE_ACCEL or auto)")
    group.addoption("--vmprobe-cold", dest="vmprobe_cold", action="store_true",
                    default=bool(os.environ.get("VMPROBE_COLD")),
                    help="boot every VM instead of restoring the kernel's warm-start snapshot "
                         "(fresh KASLR layout and RNG state; default $VMPROBE_COLD)")
    group.addoption("--vmprobe-results", dest="vmprobe_results", metavar="DIR", default=None,
                    help="where failed tests' console logs, dmesg, kprobes list and QEMU command "
                         "line are saved (default <rootdir>/results)")
    group.addoption("--vmprobe-shard", dest="vmprobe_shard", metavar="I/N", default=None,
                    help="run only shard I of N of the collected tests (deterministic; the N "
                         "shards together run every test once), e.g. 1/2 on one CI runner, 2/2 on another")


def _configured_kernels(config: pytest.Config) -> list[str]:
    specs = config.getoption("vmprobe_kernels")
    if not specs:
        pyproject = config.rootpath / "pyproject.toml"
        if pyproject.is_file():
            try:
                with pyproject.open("rb") as f:
                    table = tomllib.load(f).get("tool", {}).get("vmprobe", {})
            except (OSError, tomllib.TOMLDecodeError) as exc:
                raise pytest.UsageError(f"vmprobe: cannot read {pyproject}: {exc}") from None
            specs = table.get("kernels")
            if specs is not None and (not isinstance(specs, list)
                                      or not all(isinstance(s, str) for s in specs)):
                raise pytest.UsageError(f"vmprobe: [tool.vmprobe] kernels in {pyproject} must be a "
                                        f"list of kernel specs, e.g. [\"debian:bookworm\"]")
    specs = [s.strip() for s in (specs or DEFAULT_KERNELS) if s.strip()]
    return list(dict.fromkeys(specs)) or list(DEFAULT_KERNELS)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "kernel(constraint): run only on kernels whose version "
                            "matches, e.g. @pytest.mark.kernel('>=5.10,<6.12'); others are skipped")
    config.addinivalue_line("markers", "arch(*names): run only on kernels of these architectures, "
                            "e.g. @pytest.mark.arch('x86_64'); others are skipped")
    _configure_shard(config)  # a bad I/N is a usage error before anything is set up
    results = config.getoption("vmprobe_results")
    results_dir = (config.invocation_params.dir / results) if results else config.rootpath / "results"
    state = VmprobeSession(specs=_configured_kernels(config), accel=config.getoption("vmprobe_accel"),
                           warm=not config.getoption("vmprobe_cold"), results_dir=results_dir, is_worker=hasattr(config, "workerinput"))
    state.open_runtime_dir()
    config.stash[_state_key] = state
    if getattr(config.option, "xmlpath", None) and not state.is_worker:
        config.pluginmanager.register(_JunitSections(config), "vmprobe-junit-sections")


def pytest_unconfigure(config: pytest.Config) -> None:
    state = config.stash.get(_state_key, None)
    if state is not None:
        state.close()
        state.close_runtime_dir()


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    state = session.config.stash.get(_state_key, None)
    if state is not None:
        state.close()


def _state(config: pytest.Config) -> "VmprobeSession":
    return config.stash[_state_key]


# --------------------------------------------------------------------------
# the session: kernels fetched once, one VM per kernel, a private runtime dir

@dataclass
class VmprobeSession:
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
            pytest.fail(f"vmprobe: kernel {spec} could not be fetched: {_render(got)}", pytrace=False)
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
            self.boot_failures[spec] = (_render(exc), m.console.text if m.console else "")
            m.shutdown()
            raise
        self.machines[spec] = m
        self.console_checked[spec] = 0
        return m

    def _left_behind(self, spec: str, m: "Machine") -> str | None:
        try:
            now = GuestState.read(m)
        except Exception as exc:  # the guest does not answer: replace it
            return f"does not answer ({_render(exc)})"
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


#: Taint flags every out-of-tree kprobe module sets when it loads (O, E): not a reason to replace a VM.
MODULE_TAINTS = (1 << 12) | (1 << 13)


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


def _render(exc: BaseException) -> str:
    from vmprobe.errors import VmprobeError
    if isinstance(exc, VmprobeError):
        return f"{exc.kind}: {exc.message}"
    return f"{type(exc).__name__}: {exc}"


def _qemu_processes() -> list[tuple[int, str]]:
    """(pid, command line) of every running QEMU system emulator."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and b"qemu-system" in Path(argv[0].decode(errors="replace")).name.encode():
            found.append((int(entry.name), " ".join(a.decode(errors="replace") for a in argv if a)))
    return found


def leftovers(runtime: Path | None = None, exclude: set[str] = frozenset()) -> list[str]:
    """vmprobe QEMU processes and machine dirs under ``runtime`` (default: the current runtime
    dir) that are not in ``exclude`` (dirs, pids)."""
    from vmprobe.host.processes import runtime_dir
    base = runtime or runtime_dir()
    procs = [f"{pid} {cmd}" for pid, cmd in _qemu_processes()
             if f"{base}/vmprobe-" in cmd and str(pid) not in exclude
             and not any(d in cmd for d in exclude if d.startswith("/"))]
    dirs = [str(p) for p in sorted(base.glob("vmprobe-*"))
            if p.is_dir() and str(p) not in exclude and not p.name.startswith("vmprobe-pytest-")]
    return procs + dirs


def stop_machines_under(directory: Path) -> list[int]:
    """SIGKILL the QEMU processes whose files live under ``directory`` (a session dir whose
    machines should all be gone); returns their pids."""
    pids = [pid for pid, cmd in _qemu_processes() if f"{directory}/" in cmd]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while pids and time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() for p in pids):
        time.sleep(0.05)
    return pids


# --------------------------------------------------------------------------
# sharding across CI runners (vmprobe/shard.py)

_shard_key = pytest.StashKey["tuple[int, int]"]()
_shard_counts_key = pytest.StashKey["tuple[int, int]"]()   # (kept, deselected)


def _configure_shard(config: pytest.Config) -> None:
    text = config.getoption("vmprobe_shard")
    if text is None:
        return
    from vmprobe.pytest_plugin.shard import parse_shard
    try:
        config.stash[_shard_key] = parse_shard(text)
    except ValueError as exc:
        raise pytest.UsageError(f"vmprobe: {exc}") from None


@pytest.hookimpl(trylast=True)  # after -k/-m and other plugins have deselected theirs
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    shard = config.stash.get(_shard_key, None)
    if shard is None:
        return
    from vmprobe.pytest_plugin.shard import split
    kept, dropped = split(items, *shard)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept
    config.stash[_shard_counts_key] = (len(kept), len(dropped))


def pytest_report_collectionfinish(config: pytest.Config) -> str | None:
    shard, counts = config.stash.get(_shard_key, None), config.stash.get(_shard_counts_key, None)
    if shard is None or counts is None:
        return None
    return (f"vmprobe: shard {shard[0]}/{shard[1]}: running {counts[0]} of {sum(counts)} tests "
            f"({counts[1]} deselected for the other shards)")


# --------------------------------------------------------------------------
# parametrization and markers

def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "kernel" not in metafunc.fixturenames:
        return
    for mark in metafunc.definition.iter_markers("parametrize"):
        names = mark.args[0] if mark.args else mark.kwargs.get("argnames", "")
        names = [n.strip() for n in names.split(",")] if isinstance(names, str) else list(names)
        if "kernel" in names:
            return  # the test chose its kernels itself
    state = _state(metafunc.config)
    state.validate_specs()
    metafunc.parametrize("kernel", state.specs, indirect=True, ids=state.specs, scope="session")


def _item_spec(item: pytest.Item) -> str | None:
    callspec = getattr(item, "callspec", None)
    spec = callspec.params.get("kernel") if callspec else None
    return spec if isinstance(spec, str) else None


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    spec = _item_spec(item)
    if spec is None:
        return
    version_marks = list(item.iter_markers("kernel"))
    arch_marks = list(item.iter_markers("arch"))
    if not version_marks and not arch_marks:
        return
    state = _state(item.config)
    series, arch = state.catalog_facts(spec)
    for mark in arch_marks:
        wanted = [str(a) for a in mark.args]
        if wanted and not arch_matches(arch, wanted):
            names = ARCH_NAMES.get(arch, (arch,))
            _skip(f"vmprobe: {spec} is {names[0]} ({arch}); the test needs arch {' or '.join(wanted)}")
    for mark in version_marks:
        texts = [str(a) for a in mark.args] or [str(mark.kwargs.get("version", ""))]
        for text in texts:
            try:
                constraints, problem = parse_constraints(text), None
            except ValueError as exc:
                constraints, problem = [], str(exc)
            if problem:
                pytest.fail(f"vmprobe: @pytest.mark.kernel on {item.nodeid}: {problem}", pytrace=False)
            precision = max(len(v) for _, v in constraints)
            known = tuple(int(x) for x in re.findall(r"\d+", series)[:2])
            if precision <= len(known):  # the catalog's series says enough: no fetch needed
                version, label = known, series
            else:  # e.g. sid's series is "7": the release tells the minor, the package the sublevel
                k = state.kernel(spec)
                version = kernel_version(k.release, k.version)
                label = ".".join(map(str, version)) + f" ({k.release})"
            if not version_matches(version, constraints):
                _skip(f"vmprobe: {spec} is {label}; the test needs kernel {text}")


def _skip(reason: str) -> None:
    """Skip, reported at the test's location (as pytest's own skip markers are)."""
    try:
        raise pytest.skip.Exception(reason, _use_item_location=True)
    except TypeError:  # a pytest without that keyword
        pytest.skip(reason)


# --------------------------------------------------------------------------
# fixtures

@pytest.fixture(scope="session")
def kernel(request: pytest.FixtureRequest) -> "Kernel":
    """The kernel under test: a fetched, cached :class:`~vmprobe.kernels.Kernel`. Tests that
    use it run once per ``--vmprobe-kernel`` spec (test id ``[debian:bookworm]``)."""
    state = _state(request.config)
    spec = getattr(request, "param", None) or state.specs[0]
    return state.kernel(spec)


@pytest.fixture
def vm(request: pytest.FixtureRequest, kernel: "Kernel") -> "Machine":
    """A booted guest of the current kernel (``.run``, ``.ssh``, ``.console``, ``.qmp``,
    ``.gdb_socket``, ``.command_line``), shared by the session's tests on that kernel.
    Before each test the VM is checked: if the last test crashed it, left a module loaded
    or a kprobe registered, or tainted the kernel (beyond the out-of-tree/unsigned module
    flags), the test gets a fresh VM (restored from the warm-start snapshot unless
    ``--vmprobe-cold``)."""
    machine = _state(request.config).machine(kernel)
    request.node.stash[_used_vm_key] = (machine, machine.console.mark())
    return machine


@pytest.fixture(scope="session")
def fork_module(kernel: "Kernel") -> "Module":
    """vmprobe's built-in fork probe (pre and post handlers, nonce-counted hits), built for the kernel."""
    from vmprobe import modules
    return modules.build(modules.FORK_PROBE, kernel)[0]


@pytest.fixture
def kprobe_module(request: pytest.FixtureRequest, kernel: "Kernel",
                  tmp_path_factory: pytest.TempPathFactory) -> Callable[..., "Module"]:
    """``kprobe_module(source, name=None) -> Module``: build a module for the current kernel.

    ``source`` is a path (a ``.c`` file, a directory with a Kbuild/Makefile, or a built
    ``.ko``; relative paths are looked up beside the test file, then in the current dir),
    or the text of a single-file module (``name`` names it; default ``vmprobe_user_<hash>``).
    Builds are cached by sources and kernel.
    """
    from vmprobe import modules

    def build(source: "str | os.PathLike[str]", name: str | None = None) -> "Module":
        path = _module_source(source, name, request, tmp_path_factory)
        return modules.build(path, kernel)[0]

    return build


def _module_source(source, name, request, tmp_path_factory) -> Path:
    if isinstance(source, os.PathLike) or (isinstance(source, str) and "\n" not in source
                                           and not source.lstrip().startswith("#")):
        path = Path(source)
        candidates = [path] if path.is_absolute() else [request.path.parent / path, Path.cwd() / path]
        for candidate in candidates:
            if candidate.exists():
                return candidate
        raise FileNotFoundError(f"kprobe_module: no module source at {source} "
                                f"(looked in {', '.join(str(c) for c in candidates)})")
    text = str(source)
    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    name = name or f"vmprobe_user_{digest}"
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise ValueError(f"kprobe_module: {name!r} is not a valid module name")
    directory = tmp_path_factory.getbasetemp() / "vmprobe-modules" / f"{name}-{digest}"
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.c"
    if not path.exists():
        path.write_text(text)
    return path


@pytest.fixture
def probe_check(request: pytest.FixtureRequest, vm: "Machine", kernel: "Kernel",
                kprobe_module) -> Callable[..., "ProbeReport"]:
    """``probe_check(module=None, expect_mechanism=None, **ProbeOptions fields) -> ProbeReport``.

    Runs vmprobe's probe check on the current VM: with the built-in fork probe by default,
    or ``module`` (a :class:`Module`, a path or source text: a user's module, so
    ``builtin_template`` defaults to False). ``expect_mechanism`` adds the same check as
    ``vmprobe probe --expect-mechanism``. vmprobe's own failures (a refused module, a crash)
    raise; a check that ran and failed returns a report with ``verdict == "fail"``.
    """
    from vmprobe import modules
    from vmprobe.check.probe import ProbeOptions
    from vmprobe.check.run import run_check
    from vmprobe.modules import Module
    known = {f.name for f in fields(ProbeOptions)}

    def run(module: "Module | str | os.PathLike[str] | None" = None, *,
            expect_mechanism: str | None = None, **options) -> "ProbeReport":
        unknown = sorted(set(options) - known)
        if unknown:
            raise TypeError(f"probe_check: unknown option(s) {', '.join(unknown)}; "
                            f"ProbeOptions has {', '.join(sorted(known))}")
        t0 = time.monotonic()
        source = None
        if module is None:
            mod = modules.build(modules.FORK_PROBE, kernel)[0]
        elif isinstance(module, Module):
            mod, source = module, module.path
            options.setdefault("builtin_template", False)
        else:
            mod = kprobe_module(module)
            source = mod.path
            options.setdefault("builtin_template", False)
        build_time = time.monotonic() - t0
        run = run_check(vm, mod, ProbeOptions(**options), source=source, expect_mechanism=expect_mechanism,
                        build_seconds=build_time,
                        on_start=lambda check: request.node.stash.setdefault(_reports_key, []).append(check.report))
        if run.error:
            raise run.error
        report = run.report
        return report

    return run


@pytest.fixture
def no_leaks(request: pytest.FixtureRequest):
    """Fail the test if it leaves a QEMU process or a vmprobe machine dir behind (this session's
    own shared VMs aside)."""
    state = _state(request.config)
    before = set(leftovers(exclude=state.own_machine_traces()))
    yield
    after = [x for x in leftovers(exclude=state.own_machine_traces()) if x not in before]
    assert not after, f"left behind: {after}"


# --------------------------------------------------------------------------
# failure artefacts

@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    report = yield
    if report.failed and call.when in ("setup", "call"):
        with contextlib.suppress(Exception):  # never let artefact collection hide the failure
            sections = _failure_sections(item, call)
            for title, content in sections:
                report.sections.append((_SECTION_PREFIX + title, content))
                # the teardown report (what --junitxml writes out) is built from these
                item.add_report_section(f"{SECTION} {title}", "stdout", content)
    return report


def _failure_sections(item: pytest.Item, call: pytest.CallInfo) -> list[tuple[str, str]]:
    state = _state(item.config)
    used = item.stash.get(_used_vm_key, None)
    machine, mark = used if used else (None, 0)
    boot_failure = None
    if machine is None:  # the test wanted a VM and did not get one: its boot failed?
        k = getattr(item, "funcargs", {}).get("kernel")
        if "vm" not in getattr(item, "fixturenames", ()) or getattr(k, "spec", None) not in state.boot_failures:
            return []
        boot_failure = state.boot_failures[k.spec]
    out = state.results_dir / artefact_dir_name(item.nodeid)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, str] = {}
    sections: list[tuple[str, str]] = []

    if boot_failure:
        error, console = boot_failure
        files["console.log"] = console
        sections.append(("console", f"(the boot failed: {error}; full log in {out / 'console.log'})\n"
                                    + _last_lines(console, CONSOLE_SECTION_LINES)))
    else:
        full = machine.console.text
        files["console.log"] = full
        since = full[mark:] if mark <= len(full) else full
        sections.append(("console", f"(since this test started; full log in {out / 'console.log'})\n"
                                    + _last_lines(since, CONSOLE_SECTION_LINES)))
        alive = machine.proc is not None and machine.proc.poll() is None and machine.ssh is not None
        why = f"QEMU {machine._exit_reason() or 'is not running'}"
        for title, filename, command in (("dmesg", "dmesg.txt", "dmesg"),
                                         ("kprobes list", "kprobes_list.txt",
                                          "cat /sys/kernel/debug/kprobes/list")):
            if alive:
                try:
                    res = machine.run(command, ARTEFACT_TIMEOUT)
                    text = res.stdout + (f"\n(stderr: {res.stderr.strip()})" if res.stderr.strip() else "")
                    text = text if text.strip() else "(empty)\n"
                except Exception as exc:
                    text = f"(not available: {_render(exc)})\n"
                    alive = False
            else:
                text = f"(not available: the VM is not running: {why})\n"
            files[filename] = text
            sections.append((title, text))
        cmdline = shlex.join(machine.command_line) + "\n"
        files["qemu_cmdline.txt"] = cmdline
        sections.append(("qemu command line", cmdline))

    from vmprobe.errors import VmprobeError
    exc = call.excinfo.value if call.excinfo else None
    if isinstance(exc, VmprobeError) and exc.detail:
        files["error_detail.txt"] = exc.detail
        sections.append(("error detail", f"{exc.kind}: {exc.message}\n{exc.detail}"))
    for i, report in enumerate(item.stash.get(_reports_key, []), 1):
        files[f"probe_report_{i}.json"] = json.dumps(report.to_dict(), indent=2) + "\n"
        sections.append((f"probe report {i}", report.summary()))
    for name, text in files.items():
        (out / name).write_text(text)
    return sections


def _last_lines(text: str, n: int) -> str:
    lines = text.splitlines()
    if len(lines) <= n:
        return text
    return f"[… {len(lines) - n} earlier lines in the file]\n" + "\n".join(lines[-n:]) + "\n"


class _JunitSections:
    """Puts the vmprobe sections in --junitxml's <system-out> when junit_logging would not (its
    default is "no"). Registered on the process that writes the XML (not on xdist workers)."""

    def __init__(self, config: pytest.Config):
        self.config = config

    @pytest.hookimpl(tryfirst=True)  # before junitxml closes the test case at teardown
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when != "teardown":
            return
        content = "".join(f"{name[len('Captured stdout '):].center(80, '-')}\n{text}\n"
                          for name, text in report.sections if name.startswith(_SECTION_PREFIX))
        if not content:
            return
        try:
            import xml.etree.ElementTree as ET

            from _pytest.junitxml import bin_xml_escape, xml_key
            xml = self.config.stash.get(xml_key, None)
            if xml is None or xml.logging not in ("no", "system-err"):
                return  # no XML, or pytest writes captured stdout (ours included) itself
            tag = ET.Element("system-out")
            tag.text = bin_xml_escape(content)
            xml.node_reporter(report).append(tag)
        except Exception:  # a pytest without these internals: the sections still show in the terminal
            return
