"""A ``local:`` kernel boots and runs the probe check like its Debian original."""
from __future__ import annotations

from vmprobe import modules
from vmprobe.check.probe import ProbeOptions, run_probe_check
from vmprobe.config import cache_dir
from vmprobe.kernels import Kernel, get_kernel
from vmprobe.vm.machine import Machine


def _debian_bookworm() -> Kernel:
    entries = sorted(p for p in cache_dir("kernels").glob("debian-bookworm-cloud-amd64-*")
                     if (p / "kernel.json").exists())
    return Kernel.load(entries[-1]) if entries else get_kernel("debian:bookworm")


def test_local_spec_boots_and_probes(no_leaks, accel):
    """local:<cached Debian vmlinuz>: release from the image, modules/headers found beside it."""
    debian = _debian_bookworm()
    kernel = get_kernel(f"local:{debian.image_path}")
    assert kernel.spec.startswith("local:") and kernel.release == debian.release
    fork = modules.build(modules.FORK_PROBE, kernel)[0]
    assert fork.vermagic.split()[0] == kernel.release
    with Machine(kernel, accel=accel) as vm:
        assert vm.run("uname -r").stdout.strip() == kernel.release
        report = run_probe_check(vm, fork, ProbeOptions(offset=0, post_handler=False, sysrq=False))
    assert report.verdict == "pass", report.summary()
    d = report.to_dict()
    assert d["kernel"]["spec"] == kernel.spec
    assert d["probe"]["mechanism"] == "ftrace"
