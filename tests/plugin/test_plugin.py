"""vmprobe's pytest plugin, the way a user meets it: pytest run on a small test file (pytester).

Each inner run is a real pytest process that loads the plugin through its
``pytest11`` entry point and boots real VMs.
"""
from __future__ import annotations

import os
import xml.etree.ElementTree as ET

import pytest

from vmprobe.config import settings

pytest_plugins = ["pytester"]

# pytester gives inner runs a HOME of their own: point them at the real cache and config
_REAL_ENV = {"VMPROBE_CACHE": str(settings().cache_dir),
             "VMPROBE_CONFIG": os.environ.get("VMPROBE_CONFIG")
             or os.path.expanduser("~/.config/vmprobe/config.toml")}

INNER_TIMEOUT = 420  # seconds for one inner pytest run (a few boots under a loaded TCG host)
TWO_KERNELS = ("--vmprobe-kernel", "debian:bookworm", "--vmprobe-kernel", "debian:bullseye")

EXAMPLE = '''
import os
import pytest


def _note(vm, kernel, name):
    with open(os.path.join(os.environ["VMPROBE_EXAMPLE_NOTES"], "vms.txt"), "a") as f:
        f.write(f"{os.environ.get('PYTEST_XDIST_WORKER', 'main')} {kernel.spec} {vm.nonce} {name}\\n")


def test_release(vm, kernel):
    _note(vm, kernel, "release")
    assert vm.run("uname -r").stdout.strip() == kernel.release


def test_guest_kernel_version(vm, kernel):
    _note(vm, kernel, "version")
    assert vm.run("cat /proc/version").stdout.startswith(f"Linux version {kernel.release} ")


@pytest.mark.kernel(">=6.1")
def test_new_kernels_only(vm, kernel):
    _note(vm, kernel, "new")
    assert kernel.release.startswith("6.1.")


@pytest.mark.kernel(">=5.10,<6")
def test_old_kernels_only(kernel):
    assert kernel.release.startswith("5.10.")
'''


@pytest.fixture(autouse=True)
def _real_cache(monkeypatch):
    for key, value in _REAL_ENV.items():
        monkeypatch.setenv(key, value)


@pytest.fixture
def example(pytester, monkeypatch):
    notes = pytester.mkdir("notes")
    monkeypatch.setenv("VMPROBE_EXAMPLE_NOTES", str(notes))
    pytester.makepyfile(test_example=EXAMPLE)
    return notes / "vms.txt"


def _vms(notes) -> list[tuple[str, str, str, str]]:
    return [tuple(line.split()) for line in notes.read_text().splitlines()]


def _run(pytester, accel, *args):
    result = pytester.runpytest_subprocess("-v", "-rs", "-p", "no:cacheprovider",
                                           "--vmprobe-accel", accel, *args, timeout=INNER_TIMEOUT)
    # the inner session stopped and removed all its machines itself
    assert "cleaned up after this session" not in result.stdout.str() + result.stderr.str()
    return result


@pytest.mark.vm
def test_two_kernels_each_run_every_test(pytester, example, accel, no_leaks):
    result = _run(pytester, accel, *TWO_KERNELS)
    out = result.stdout.str()
    result.assert_outcomes(passed=6, skipped=2)
    result.stdout.fnmatch_lines_random([
        "*test_release?debian:bookworm? PASSED*",
        "*test_release?debian:bullseye? PASSED*",
        "*test_new_kernels_only?debian:bookworm? PASSED*",
        "*test_old_kernels_only?debian:bullseye? PASSED*",
        "SKIPPED [[]1[]] test_example.py:*: vmprobe: debian:bullseye is 5.10; the test needs kernel >=6.1",
        "SKIPPED [[]1[]] test_example.py:*: vmprobe: debian:bookworm is 6.1; the test needs kernel >=5.10,<6",
    ])
    vms = _vms(example)
    # one VM per kernel for the whole session, the skipped test never reached it
    by_kernel = {}
    for _, spec, nonce, _ in vms:
        by_kernel.setdefault(spec.split("/")[0], set()).add(nonce)
    assert {k: len(v) for k, v in by_kernel.items()} == {"debian:bookworm": 1, "debian:bullseye": 1}, out
    assert sorted(name for *_, name in vms) == ["new", "release", "release", "version", "version"]


@pytest.mark.vm
def test_under_xdist_two_workers(pytester, example, accel, no_leaks):
    result = _run(pytester, accel, "-n", "2", *TWO_KERNELS)
    result.assert_outcomes(passed=6, skipped=2)
    vms = _vms(example)
    workers = {w for w, *_ in vms}
    assert workers <= {"gw0", "gw1"} and workers, vms
    # at most one VM per kernel in each worker, and they did not collide
    per_worker = {}
    for worker, spec, nonce, _ in vms:
        per_worker.setdefault((worker, spec), set()).add(nonce)
    assert all(len(n) == 1 for n in per_worker.values()), per_worker
    assert len({n for _, _, n, _ in vms}) == len(per_worker)


MARKERS = '''
import pytest


@pytest.mark.kernel(">=5.10,<6.12")
def test_in_range(kernel):
    pass


@pytest.mark.kernel("<5")
def test_too_new(kernel):
    raise AssertionError("must be skipped")


@pytest.mark.kernel(">=6.1.100")   # three parts: compared with the package's 6.1.<sublevel>
def test_sublevel(kernel):
    assert kernel.version.startswith("6.1.")


@pytest.mark.arch("aarch64")
def test_arm_only(kernel):
    raise AssertionError("must be skipped")


@pytest.mark.arch("x86_64", "i386")
def test_x86(kernel):
    assert kernel.arch == "amd64"


@pytest.mark.kernel("about 6")
def test_bad_constraint(kernel):
    pass


@pytest.mark.kernel("<5")
def test_no_kernel_fixture_marker_ignored():
    pass
'''


def test_markers_skip_with_a_reason(pytester, accel):
    """Markers are decided before any VM: these tests only fetch (a cached) kernel."""
    pytester.makepyfile(test_markers=MARKERS)
    result = _run(pytester, accel)
    result.assert_outcomes(passed=4, skipped=2, errors=1)
    result.stdout.fnmatch_lines_random([
        "SKIPPED [1] test_markers.py:9: vmprobe: debian:bookworm is 6.1; the test needs kernel <5",
        "SKIPPED [1] test_markers.py:19: vmprobe: debian:bookworm is x86_64 (amd64); "
        "the test needs arch aarch64",
        "*test_in_range?debian:bookworm? PASSED*",
        "*test_sublevel?debian:bookworm? PASSED*",
        "*test_x86?debian:bookworm? PASSED*",
        "*test_no_kernel_fixture_marker_ignored PASSED*",
        "*bad kernel version constraint 'about 6'*",
    ])


def test_kernels_from_pyproject_and_option_overrides(pytester):
    pytester.makepyfile(test_ids="def test_k(kernel):\n    pass\n")
    pytester.makefile(".toml", pyproject='[tool.vmprobe]\nkernels = ["debian:bullseye", "debian:bookworm"]\n')
    result = pytester.runpytest_subprocess("--collect-only", "-q", timeout=120)
    result.stdout.fnmatch_lines(["test_ids.py::test_k[[]debian:bullseye[]]",
                                 "test_ids.py::test_k[[]debian:bookworm[]]"])
    result = pytester.runpytest_subprocess("--collect-only", "-q", "--vmprobe-kernel",
                                           "debian:bookworm/amd64", timeout=120)
    result.stdout.fnmatch_lines(["test_ids.py::test_k[[]debian:bookworm/amd64[]]", "1 test collected*"])
    result = pytester.runpytest_subprocess("--collect-only", "-q", "--vmprobe-kernel", "debian:potato",
                                           timeout=120)
    assert result.ret != 0
    result.stdout.fnmatch_lines(["*unknown Debian suite 'potato'*"])


FAILING = '''
import pytest

SOURCE = """
#include <linux/module.h>
static int __init hello_init(void) { pr_info("example-module-loaded\\\\n"); return 0; }
static void __exit hello_exit(void) { }
module_init(hello_init);
module_exit(hello_exit);
MODULE_LICENSE("GPL");
"""


def test_probe_check_helper(probe_check):
    report = probe_check(offset=5, post_handler=False, sysrq=False, expect_mechanism="optimized")
    assert report.verdict == "pass", report.summary()
    assert report.timings["build"] >= 0 and "vm-boot" in report.timings


def test_kprobe_module_from_source_text(vm, kprobe_module):
    module = kprobe_module(SOURCE, name="example_hello")
    assert module.name == "example_hello"
    vm.upload(module.path, "/tmp/example_hello.ko")
    assert vm.run("insmod /tmp/example_hello.ko && rmmod example_hello").status == 0
    assert "example-module-loaded" in vm.console.text


def test_fails_with_a_probe_armed(vm, fork_module):
    vm.upload(fork_module.path, "/tmp/fork.ko")
    vm.run("insmod /tmp/fork.ko symbol=kernel_clone offset=0 nonce=feedf00d post=1")
    vm.run("echo example-dmesg-marker > /dev/kmsg")
    assert False, "deliberate failure"
'''


@pytest.mark.vm
def test_failure_attaches_console_dmesg_kprobes_and_qemu(pytester, accel, no_leaks):
    pytester.makepyfile(test_failing=FAILING)
    result = _run(pytester, accel, "--junitxml=junit.xml", "--vmprobe-results=res")
    result.assert_outcomes(passed=2, failed=1)
    out = result.stdout.str()
    for title in ("console", "dmesg", "kprobes list", "qemu command line"):
        assert f"Captured stdout vmprobe {title}" in out
    nodeid = "test_failing.py::test_fails_with_a_probe_armed[debian:bookworm]"
    saved = pytester.path / "res" / "test_failing.py_test_fails_with_a_probe_armed_debian_bookworm"
    files = {p.name: p.read_text() for p in saved.iterdir()}
    assert set(files) >= {"console.log", "dmesg.txt", "kprobes_list.txt", "qemu_cmdline.txt"}
    assert "VMPROBE-READY" in files["console.log"] and "vmprobe-armed nonce=feedf00d" in files["console.log"]
    assert "example-dmesg-marker" in files["dmesg.txt"]
    assert "kernel_clone+0x0" in files["kprobes_list.txt"]
    assert files["qemu_cmdline.txt"].startswith("qemu-system-") and "-name vmprobe-" in files["qemu_cmdline.txt"]
    # the passing tests left nothing behind
    assert [p.name for p in (pytester.path / "res").iterdir()] == [saved.name]

    suite = ET.parse(pytester.path / "junit.xml").getroot().find("testsuite")
    cases = {c.get("name"): c for c in suite.iter("testcase")}
    failed = cases["test_fails_with_a_probe_armed[debian:bookworm]"]
    assert failed.find("failure") is not None
    system_out = failed.find("system-out").text
    for title in ("vmprobe console", "vmprobe dmesg", "vmprobe kprobes list", "vmprobe qemu command line"):
        assert title in system_out
    assert "example-dmesg-marker" in system_out and "kernel_clone+0x0" in system_out
    assert cases["test_probe_check_helper[debian:bookworm]"].find("system-out") is None
    assert nodeid.split("::")[1] in cases


def test_plugin_is_loaded_through_its_entry_point(pytester):
    result = pytester.runpytest_subprocess("--help", timeout=120)
    result.stdout.fnmatch_lines(["*--vmprobe-kernel=SPEC*", "*--vmprobe-accel*", "*--vmprobe-results=DIR*"])
    result = pytester.runpytest_subprocess("--markers", timeout=120)
    result.stdout.fnmatch_lines(["@pytest.mark.kernel(constraint)*", "@pytest.mark.arch(*names)*"])
    assert os.environ.get("VMPROBE_RUNTIME_DIR", "").rsplit("/", 1)[-1].startswith("vmprobe-pytest-")


CRASH = '''
NONCES = []


def test_crash_the_guest(vm):
    NONCES.append(vm.nonce)
    vm.run("echo 1 > /proc/sys/kernel/sysrq; echo c > /proc/sysrq-trigger", timeout=60)


def test_the_next_test_gets_a_fresh_vm(vm):
    assert NONCES and vm.nonce != NONCES[0]
    assert vm.run("echo still-here").stdout.strip() == "still-here"
'''


@pytest.mark.vm
def test_crashed_vm_is_reported_then_replaced(pytester, accel, no_leaks):
    pytester.makepyfile(test_crash=CRASH)
    result = _run(pytester, accel, "--vmprobe-results=res")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines_random(["*sysrq: Trigger a crash*"])
    saved = pytester.path / "res" / "test_crash.py_test_crash_the_guest_debian_bookworm"
    assert "Kernel panic" in (saved / "console.log").read_text()
    assert (saved / "dmesg.txt").read_text().startswith("(not available: the VM is not running: QEMU exited")


REUSE = '''
import os

MODULE = """
#include <linux/module.h>
static int __init left_init(void) { return 0; }
static void __exit left_exit(void) { }
module_init(left_init);
module_exit(left_exit);
MODULE_LICENSE("GPL");
"""


def _note(vm, name):
    with open(os.path.join(os.environ["VMPROBE_EXAMPLE_NOTES"], "vms.txt"), "a") as f:
        f.write(f"{vm.nonce} {name}\\n")


def test_1_clean(vm):
    _note(vm, "clean")
    vm.run("true")


def test_2_leaves_a_module_loaded(vm, kprobe_module):
    _note(vm, "leaves")
    mod = kprobe_module(MODULE, name="vmprobe_left_behind")
    vm.upload(mod.path, "/tmp/left.ko")
    assert vm.run("insmod /tmp/left.ko").status == 0


def test_3_gets_a_clean_vm(vm):
    _note(vm, "after")
    assert "vmprobe_left_behind" not in vm.run("cat /proc/modules").stdout


def test_4_reuses_it(vm):
    _note(vm, "reused")
'''


@pytest.mark.vm
def test_vm_is_reused_while_clean_and_replaced_when_a_test_leaves_a_module(pytester, monkeypatch,
                                                                             accel, no_leaks):
    notes = pytester.mkdir("notes")
    monkeypatch.setenv("VMPROBE_EXAMPLE_NOTES", str(notes))
    pytester.makepyfile(test_reuse=REUSE)
    result = _run(pytester, accel, "-s")  # -s: the plugin's notes reach stderr
    result.assert_outcomes(passed=4)
    nonces = dict(reversed(line.split()) for line in (notes / "vms.txt").read_text().splitlines())
    assert nonces["clean"] == nonces["leaves"]            # reused: the first test left nothing
    assert nonces["after"] != nonces["leaves"]            # replaced: a module was left loaded
    assert nonces["reused"] == nonces["after"]
    result.stderr.fnmatch_lines(["*still has module(s) vmprobe_left_behind loaded; starting a new one*"])


ARCHES = '''
import pytest


@pytest.mark.arch("aarch64")
def test_arm64_brk(vm, kernel, probe_check):
    assert vm.run("uname -m").stdout.strip() == "aarch64"
    report = probe_check(offset="after-entry", post_handler=False)
    assert report.verdict == "pass", report.summary()
    assert report.probe["mechanism"] == "brk"          # arm64 has no optprobes


@pytest.mark.arch("i386")
def test_i386_int3(vm, kernel, probe_check):
    assert vm.run("uname -m").stdout.strip() == "i686"
    report = probe_check(offset="after-entry")
    assert report.verdict == "pass", report.summary()
    assert report.probe["mechanism"] == "int3"
    assert report.registers_at_hit["names"] == ["eip", "eflags"]
'''


@pytest.mark.vm
def test_foreign_arch_kernels_with_arch_markers(pytester, accel, no_leaks):
    """i386 and arm64 kernels in the plugin's kernel list: each test runs on its own arch only."""
    pytester.makepyfile(test_arches=ARCHES)
    result = _run(pytester, accel, "--vmprobe-kernel", "debian:bookworm/686",
                  "--vmprobe-kernel", "debian:bookworm/arm64")
    result.assert_outcomes(passed=2, skipped=2)
    result.stdout.fnmatch_lines_random([
        "*test_arm64_brk?debian:bookworm/arm64? PASSED*",
        "*test_i386_int3?debian:bookworm/686? PASSED*",
        "*debian:bookworm/686 is i386 (i386); the test needs arch aarch64",
        "*debian:bookworm/arm64 is aarch64 (arm64); the test needs arch i386",
    ])
