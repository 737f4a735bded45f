"""A kernel built from Debian's linux-source-6.1 with the SysRq-K patch: build, boot, list probes.

Slow: a cold build compiles a tinyconfig-based 6.1 kernel (minutes on 2 cores);
with the cache warm it takes seconds. ``-s`` shows the build's progress and times.
"""
from __future__ import annotations

import re
import time

import pytest

from vmprobe import modules
from vmprobe.check.probe import ProbeOptions, run_probe_check
from vmprobe.formats.kprobes_list import parse_debugfs_list, parse_sysrq_listing
from vmprobe.kernels.build import DEFAULT_FRAGMENT, PATCHES_DIR, build_kernel
from vmprobe.vm.machine import Machine

pytestmark = [pytest.mark.slow, pytest.mark.timeout(4 * 3600)]

PATCH = PATCHES_DIR / "0001-sysrq-show-kprobes.patch"


@pytest.fixture(scope="module")
def built():
    t0 = time.monotonic()
    kernel = build_kernel("debian-source:6.1", [PATCH], [DEFAULT_FRAGMENT], log=print)
    print(f"vmprobe benchmark: kernels build debian-source:6.1 + {PATCH.name}: "
          f"{time.monotonic() - t0:.1f}s ({kernel.spec})")
    return kernel


def test_built_kernel_record(built):
    assert built.spec.startswith("built:") and built.flavour == "built"
    assert re.match(r"^6\.1\.\d+", built.release) and built.arch == "amd64"
    assert (built.build_path / "Module.symvers").is_file()
    for option in ("KPROBES", "MAGIC_SYSRQ", "KALLSYMS_ALL", "DEBUG_FS", "VIRTIO_NET"):
        assert built.kconfig.get(f"CONFIG_{option}") == "y", option
    assert "CONFIG_ACPI" not in built.kconfig
    t0 = time.monotonic()
    again = build_kernel("debian-source:6.1", [PATCH], [DEFAULT_FRAGMENT], log=print)
    print(f"vmprobe benchmark: kernels build, cached: {time.monotonic() - t0:.2f}s")
    assert again.root == built.root


def test_sysrq_k_lists_the_armed_probe(built, no_leaks, accel):
    """Boot the patched kernel, arm the fork probe, press Alt+Shift+SysRq+K through QMP."""
    fork = modules.build(modules.FORK_PROBE, built)[0]
    with Machine(built, accel=accel) as vm:
        vm.upload(fork.path, "/tmp/vmprobe_fork.ko")
        res = vm.run("insmod /tmp/vmprobe_fork.ko symbol=kernel_clone offset=0 nonce=k1 post=0")
        assert res.status == 0, res.output
        listed = [r for r in parse_debugfs_list(vm.run("cat /sys/kernel/debug/kprobes/list").stdout)
                  if r.symbol == "kernel_clone"]
        assert len(listed) == 1
        address = listed[0].address
        vm.run("echo 1 > /proc/sys/kernel/sysrq")
        mark = vm.console.mark()
        vm.qmp.cmd("send-key", keys=[{"type": "qcode", "data": k} for k in ("alt", "shift", "sysrq", "k")])
        vm.console.expect(r"sysrq: Show kprobes", 15, since=mark, what="SysRq-K's header")
        line = vm.console.expect(r"\[<[0-9a-f]+>\] kernel_clone\+0x0/0x[0-9a-f]+\t\S+.*\n", 15,
                                 since=mark, what="SysRq-K's line for the armed probe")
        records = parse_sysrq_listing(vm.console.since(mark))
        assert len(records) == 1, vm.console.since(mark)
        rec = records[0]
        assert (rec.address, rec.symbol, rec.offset) == (address, "kernel_clone", 0), line[0]
        assert rec.size and rec.size > 0
        assert rec.module is None
        assert rec.handler_module == "vmprobe_fork" and rec.handler.startswith("handler_pre")
        # the same listing through /proc, and an empty one once the module is gone
        mark = vm.console.mark()
        vm.run("echo K > /proc/sysrq-trigger")
        vm.console.expect(r"sysrq: Show kprobes", 15, since=mark, what="SysRq-K via /proc")
        time.sleep(0.5)
        assert [r.address for r in parse_sysrq_listing(vm.console.since(mark))] == [address]
        vm.run("rmmod vmprobe_fork")
        mark = vm.console.mark()
        vm.run("echo K > /proc/sysrq-trigger")
        vm.console.expect(r"sysrq: Show kprobes", 15, since=mark, what="SysRq-K after rmmod")
        time.sleep(0.5)
        assert parse_sysrq_listing(vm.console.since(mark)) == []


def test_probe_check_on_the_built_kernel(built, no_leaks, accel):
    """The whole probe check (ftrace entry probe, SysRq-W via /proc and send-key) on the built kernel."""
    fork = modules.build(modules.FORK_PROBE, built)[0]
    with Machine(built, accel=accel) as vm:
        report = run_probe_check(vm, fork, ProbeOptions(offset=0, post_handler=True))
    assert report.verdict == "pass", report.summary()
    assert report.to_dict()["sysrq"] == {"proc": True, "send_key": True, "serial_break": True}


def test_probe_check_without_debugfs_uses_the_sysrq_listing(built, no_leaks, accel):
    """No kprobes/list (debugfs unmounted): the check finds SysRq-K in the kernel's SysRq help and
    proves the probe by that listing (before and after rmmod), the bytes and the hits."""
    fork = modules.build(modules.FORK_PROBE, built)[0]
    with Machine(built, accel=accel) as vm:
        assert vm.run("umount /sys/kernel/debug").status == 0
        report = run_probe_check(vm, fork, ProbeOptions(offset="after-entry", post_handler=True, sysrq=False))
    print(report.summary())
    d = report.to_dict()
    assert d["verdict"] == "pass", report.summary()
    assert d["evidence"] == ["sysrq-listing", "bytes", "hits"]
    assert d["probe"]["listing"] == {"source": "sysrq-listing", "key": "K", "why_no_list": "debugfs is not mounted"}
    checks = {c["name"]: c["ok"] for c in d["checks"]}
    assert checks["listed in the SysRq-K listing"] and checks["gone from the SysRq-K listing after rmmod"]
    line = d["probe"]["list_line"]
    assert int(line["address"], 16) == int(d["probe"]["address"], 16) and line["symbol"] == "kernel_clone"
    assert line["handler"].startswith("handler_pre") and line["handler_module"] == "vmprobe_fork"


def test_cli_prints_the_spec_of_the_cached_build(built, vmprobe_cli):
    res = vmprobe_cli("kernels", "build", "--source", "debian-source:6.1", "--patch", str(PATCH))
    assert res.returncode == 0, res.stderr
    spec, release, arrow, root = res.stdout.split()
    assert (spec, release, root) == (built.spec, built.release, str(built.root))
    assert f"--kernel {built.spec}" in res.stderr
    res = vmprobe_cli("exec", "--kernel", built.spec, "--", "sh", "-c", "uname -r")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == built.release


def test_a_patch_that_does_not_apply_names_its_hunk(tmp_path, vmprobe_cli):
    """A hunk removing a line 6.1's kprobes.c lacks (no fuzz helps): exit 76, hunk named, nothing built."""
    bad = tmp_path / "bad.patch"
    bad.write_text("--- a/kernel/kprobes.c\n+++ b/kernel/kprobes.c\n@@ -23,3 +23,3 @@\n"
                   " #include <linux/kprobes.h>\n-#include <linux/no_such_header.h>\n"
                   "+#include <linux/vmprobe_other.h>\n #include <linux/init.h>\n")
    res = vmprobe_cli("kernels", "build", "--source", "debian-source:6.1", "--patch", str(PATCH),
                      "--patch", str(bad), timeout=900)
    assert res.returncode == 76, res.stderr
    assert "bad.patch does not apply: kernel/kprobes.c: hunk #1 at line 23" in res.stderr
    assert "make bzImage" not in res.stderr


def test_options_kconfig_drops_are_reported(tmp_path, vmprobe_cli):
    """virtio-net without networking: kconfig drops it, and the build stops saying so."""
    frag = tmp_path / "nonet.config"
    frag.write_text(DEFAULT_FRAGMENT.read_text().replace("CONFIG_NET=y\n", "# CONFIG_NET is not set\n"))
    res = vmprobe_cli("kernels", "build", "--source", "debian-source:6.1", "--config-fragment", str(frag),
                      timeout=900)
    assert res.returncode == 76, res.stderr
    assert "kconfig dropped options" in res.stderr
    assert "CONFIG_VIRTIO_NET=y (is not set)" in res.stderr
