"""The debug kernel (`vmprobe kernels build --debug`) catches what Debian's kernels let pass.

Marked ``slow``: the first run builds Debian's 6.1 source with the debug
fragment (KASAN, lockdep, DEBUG_ATOMIC_SLEEP, kmemleak; 7–15 min or more on 2
shared cores); later runs find it in the cache. Then, on one VM of it: the
mutex in a pre handler is a finding ``BUG: sleeping function called from
invalid context in handler_pre`` after a complete check (the same module
passes on bookworm's kernel: tests/vm/test_splats.py), and a use-after-free in
a handler gets its KASAN title.
"""
from __future__ import annotations

import re
import time

import pytest

from vmprobe import modules
from vmprobe.check.findings import rules
from vmprobe.check.probe import ProbeOptions
from vmprobe.check.run import run_check
from vmprobe.config import TEMPLATES_DIR
from vmprobe.kernels.build import DEBUG_FRAGMENT, DEFAULT_FRAGMENT, build_kernel
from vmprobe.vm.machine import Machine

pytestmark = pytest.mark.slow
BOOT_TIMEOUT = 300   # KASAN + lockdep + kmemleak under TCG on a loaded host


@pytest.fixture(scope="module")
def debug_kernel():
    t0 = time.monotonic()
    kernel = build_kernel("debian-source:6.1", fragments=[DEFAULT_FRAGMENT, DEBUG_FRAGMENT])
    print(f"\ndebug kernel {kernel.spec} ready in {time.monotonic() - t0:.0f}s")
    for option in ("CONFIG_KASAN", "CONFIG_PROVE_LOCKING", "CONFIG_DEBUG_ATOMIC_SLEEP", "CONFIG_DEBUG_KMEMLEAK"):
        assert kernel.kconfig.get(option) == "y", option
    return kernel


@pytest.fixture(scope="module")
def splats(debug_kernel):
    return {m.name.removeprefix("vmprobe_splat_"): m
            for m in modules.build(TEMPLATES_DIR / "splats", debug_kernel)}


@pytest.fixture(scope="module")
def debug_vm(debug_kernel, accel):
    t0 = time.monotonic()
    with Machine(debug_kernel, accel=accel, boot_timeout=BOOT_TIMEOUT, ssh_timeout=120,
                 append=("kasan_multi_shot",)) as m:
        print(f"\ndebug kernel boot to SSH: {time.monotonic() - t0:.1f}s (boot {m.timings.get('boot', 0):.1f}s)")
        yield m


def _check(vm, module, allow=()):
    run = run_check(vm, module, ProbeOptions(symbol="kernel_clone", builtin_template=False, sysrq=False,
                                             registers=False), allow=allow)
    assert run.error is None, run.error.render()
    d = run.report.to_dict()
    print(run.report.summary())
    checks = {c["name"]: c["ok"] for c in d["checks"]}
    for name in ("site armed", "rmmod", "gone from kprobes/list after rmmod", "bytes restored after rmmod"):
        assert checks.get(name) is True, (name, d["checks"])
    return d


def test_a_mutex_in_the_handler_is_a_sleeping_function_finding(debug_vm, splats):
    d = _check(debug_vm, splats["mutex"])
    assert d["verdict"] == "fail"
    titles = [f["title"] for f in d["findings"]]
    assert "BUG: sleeping function called from invalid context in handler_pre" in titles, d["findings"]
    assert d["crashes"] == []


def test_a_use_after_free_in_the_handler_gets_its_kasan_title(debug_vm, splats):
    d = _check(debug_vm, splats["uaf"])
    assert d["verdict"] == "fail"
    kasan = [f for f in d["findings"] if f["kind"] == "kasan"]
    assert kasan and re.fullmatch(r"KASAN: (?:slab-)?use-after-free in handler_pre", kasan[0]["title"]), d["findings"]


def test_an_allowed_warning_passes_on_the_debug_kernel_too(debug_vm, splats):
    d = _check(debug_vm, splats["warn"], allow=rules([r"^WARNING in handler_pre$"], "--allow-splat"))
    assert d["verdict"] == "pass", d["findings"]
    assert [f["title"] for f in d["findings"]] == ["WARNING in handler_pre"]


def test_a_leak_per_hit_is_a_leak_and_a_kmemleak_finding(debug_vm, splats):
    run = run_check(debug_vm, splats["leak"], ProbeOptions(symbol="kernel_clone", builtin_template=False,
                                                           sysrq=False, registers=False), repeat=4)
    assert run.error is None, run.error.render()
    d = run.report.to_dict()
    print(run.report.summary())
    assert [c["verdict"] for c in d["cycles"]] == ["pass"] * 4
    leaks = [f for f in d["findings"] if f["kind"] == "kmemleak"]
    assert leaks and d["verdict"] == "fail", d["findings"]
