"""vmprobe's pytest plugin: real kernels in QEMU as pytest fixtures.

Loaded through the ``pytest11`` entry point ``vmprobe`` (this module: the hooks
and fixtures, each handing its work to the package's other modules). It gives a
test suite

* options ``--vmprobe-kernel SPEC`` (repeatable; default ``[tool.vmprobe]
  kernels = [...]`` in the rootdir's ``pyproject.toml``, else
  ``debian:bookworm``), ``--vmprobe-accel`` (default ``$VMPROBE_ACCEL`` or
  ``auto``), ``--vmprobe-cold`` (boot VMs instead of restoring the kernel's
  warm-start snapshot), ``--vmprobe-results DIR`` (default
  ``<rootdir>/results``) and ``--vmprobe-shard I/N`` (:mod:`.options`,
  :mod:`.shard`);
* fixtures ``kernel`` (every test that uses it, directly or through ``vm``,
  runs once per spec; test ids carry the spec), ``vm`` (a booted
  :class:`~vmprobe.vm.machine.Machine`, one per kernel per session and, under
  pytest-xdist, per worker; replaced when a test crashed it or left a module,
  a kprobe or a taint behind: :mod:`.pool`), ``kprobe_module``
  (``kprobe_module(path_or_source_text) -> Module`` built against the current
  kernel), ``probe_check`` (``probe_check(**ProbeOptions fields) ->
  ProbeReport`` on the current VM, the same report as ``vmprobe probe``:
  :mod:`.probes`), ``fork_module`` (the built-in fork probe) and ``no_leaks``
  (:mod:`.procscan`);
* markers ``@pytest.mark.kernel(">=5.10,<6.12")`` and
  ``@pytest.mark.arch("x86_64")``, which skip (with the reason) the kernels
  that don't match (:mod:`.markers`);
* on a failed test that used ``vm``: the console, dmesg, the kprobes list and
  the QEMU command line as report sections (shown by pytest, carried in
  ``--junitxml``'s system-out) and saved under ``<results>/<test id>/``
  (:mod:`.artefacts`).

Each session (each xdist worker too) puts its machines' private dirs in a
session dir of its own (``$VMPROBE_RUNTIME_DIR``, inherited by the ``vmprobe``
processes its tests start), so leak checks see only their own session's
machines, and whatever is left at the end is stopped and removed.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import pytest

from vmprobe.pytest_plugin import artefacts, markers, options
from vmprobe.pytest_plugin.pool import VmprobeSession, session_state
from vmprobe.pytest_plugin.probes import ModuleBuilder, ProbeChecker
from vmprobe.pytest_plugin.procscan import leftovers
from vmprobe.pytest_plugin.shard import split

if TYPE_CHECKING:  # the heavy imports (paramiko, qemu.qmp) wait until a test needs a VM
    from vmprobe.check.report import ProbeReport
    from vmprobe.kernels import Kernel
    from vmprobe.modules import Module
    from vmprobe.vm.machine import Machine

_shard_key = pytest.StashKey["tuple[int, int]"]()
_shard_counts_key = pytest.StashKey["tuple[int, int]"]()   # (kept, deselected)


# --------------------------------------------------------------------------
# session set-up and tear-down

def pytest_addoption(parser: pytest.Parser) -> None:
    options.add_options(parser)


def pytest_configure(config: pytest.Config) -> None:
    for line in markers.MARKER_HELP:
        config.addinivalue_line("markers", line)
    shard = options.configured_shard(config)  # a bad I/N is a usage error before anything is set up
    if shard is not None:
        config.stash[_shard_key] = shard
    state = VmprobeSession.open(config)
    if getattr(config.option, "xmlpath", None) and not state.is_worker:
        config.pluginmanager.register(artefacts.JunitSections(config), "vmprobe-junit-sections")


def pytest_unconfigure(config: pytest.Config) -> None:
    state = VmprobeSession.of(config)
    if state is not None:
        state.close()
        state.close_runtime_dir()


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    state = VmprobeSession.of(session.config)
    if state is not None:
        state.close()


# --------------------------------------------------------------------------
# collection: kernels as parameters, shards

def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "kernel" not in metafunc.fixturenames:
        return
    for mark in metafunc.definition.iter_markers("parametrize"):
        names = mark.args[0] if mark.args else mark.kwargs.get("argnames", "")
        names = [n.strip() for n in names.split(",")] if isinstance(names, str) else list(names)
        if "kernel" in names:
            return  # the test chose its kernels itself
    state = session_state(metafunc.config)
    state.validate_specs()
    metafunc.parametrize("kernel", state.specs, indirect=True, ids=state.specs, scope="session")


@pytest.hookimpl(trylast=True)  # after -k/-m and other plugins have deselected theirs
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    shard = config.stash.get(_shard_key, None)
    if shard is None:
        return
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
# running: markers before a test, artefacts after a failure

@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    callspec = getattr(item, "callspec", None)
    spec = callspec.params.get("kernel") if callspec else None
    if not isinstance(spec, str):
        return
    version_marks = list(item.iter_markers("kernel"))
    arch_marks = list(item.iter_markers("arch"))
    if not version_marks and not arch_marks:
        return
    state = session_state(item.config)
    series, arch = state.catalog_facts(spec)
    try:
        reason = markers.unmet_requirement(spec, arch_marks, version_marks, series, arch,
                                           lambda: markers.fetched_version(state.kernel(spec)))
    except markers.BadConstraint as exc:
        pytest.fail(f"vmprobe: @pytest.mark.kernel on {item.nodeid}: {exc}", pytrace=False)
    if reason:
        _skip(reason)


def _skip(reason: str) -> None:
    """Skip, reported at the test's location (as pytest's own skip markers are)."""
    try:
        raise pytest.skip.Exception(reason, _use_item_location=True)
    except TypeError:  # a pytest without that keyword
        pytest.skip(reason)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    report = yield
    artefacts.attach_failure_sections(item, call, report)
    return report


# --------------------------------------------------------------------------
# fixtures

@pytest.fixture(scope="session")
def kernel(request: pytest.FixtureRequest) -> "Kernel":
    """The kernel under test: a fetched, cached :class:`~vmprobe.kernels.Kernel`. Tests that
    use it run once per ``--vmprobe-kernel`` spec (test id ``[debian:bookworm]``)."""
    state = session_state(request.config)
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
    machine = session_state(request.config).machine(kernel)
    artefacts.remember_vm(request.node, machine)
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
    return ModuleBuilder(kernel, request.path.parent, tmp_path_factory.getbasetemp())


@pytest.fixture
def probe_check(request: pytest.FixtureRequest, vm: "Machine", kernel: "Kernel",
                kprobe_module) -> Callable[..., "ProbeReport"]:
    """``probe_check(module=None, expect_mechanism=None, **ProbeOptions fields) -> ProbeReport``.

    Runs vmprobe's probe check on the current VM: with the built-in fork probe by default,
    or ``module`` (a :class:`Module`, a path or source text: a user's module, so
    ``builtin_template`` defaults to False). ``expect_mechanism`` adds the same check as
    ``vmprobe probe --expect-mechanism``. vmprobe's own failures (a refused module, a crash)
    raise; a check that ran and failed returns a report with ``verdict == "fail"``. Splats the
    kernel lived on after (a WARNING, lockdep, KASAN…) are ``report.findings``; they fail the
    check unless ``@pytest.mark.allow_splat(regex)`` or ``[tool.vmprobe] allow_splats`` allows them.
    """
    return ProbeChecker(vm, kernel, kprobe_module,
                        on_report=lambda report: artefacts.remember_report(request.node, report),
                        allow=_allow_rules(request))


def _allow_rules(request: pytest.FixtureRequest) -> list:
    """Splat allow rules: ``@pytest.mark.allow_splat(regex, …)``, then ``[tool.vmprobe] allow_splats``."""
    from vmprobe.check.findings import rules
    try:
        marked = [str(p) for mark in request.node.iter_markers("allow_splat") for p in mark.args]
        return (rules(marked, "@pytest.mark.allow_splat")
                + rules(options.configured_allow_splats(request.config), "[tool.vmprobe] allow_splats"))
    except ValueError as exc:
        pytest.fail(f"vmprobe: {exc}", pytrace=False)


@pytest.fixture
def no_leaks(request: pytest.FixtureRequest):
    """Fail the test if it leaves a QEMU process or a vmprobe machine dir behind (this session's
    own shared VMs aside)."""
    state = session_state(request.config)
    before = set(leftovers(exclude=state.own_machine_traces()))
    yield
    after = [x for x in leftovers(exclude=state.own_machine_traces()) if x not in before]
    assert not after, f"left behind: {after}"
