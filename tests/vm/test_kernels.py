"""The three classic probes on every kernel of the catalog, in real VMs.

bookworm (tests/vm/test_probe.py) and bullseye run in the default suite;
trixie and sid need their build chroots (debootstrap, ≈1 min each, once) and
run in the slow suite (``-m slow``).
"""
from __future__ import annotations

import pytest

from vmprobe import modules
from vmprobe.check.probe import AFTER_ENTRY, ProbeOptions, run_probe_check
from vmprobe.kernels import get_kernel
from vmprobe.vm.machine import Machine

KERNELS = [
    pytest.param("debian:bullseye", 0, id="bullseye"),
    pytest.param("debian:trixie", 4, id="trixie", marks=pytest.mark.slow),   # IBT: sym+0 → sym+4
    pytest.param("debian:sid", 4, id="sid", marks=pytest.mark.slow),
]
CHECKS = [  # (offset, post handler, mechanism)
    (0, True, "ftrace"),
    (AFTER_ENTRY, True, "int3"),
    (AFTER_ENTRY, False, "optimized"),
]


@pytest.mark.parametrize("spec, entry_shift", KERNELS)
def test_classic_probes(spec, entry_shift, accel, no_leaks):
    kernel = get_kernel(spec)
    module = modules.build(modules.FORK_PROBE, kernel)[0]
    with Machine(kernel, accel=accel) as vm:
        for offset, post, mechanism in CHECKS:
            report = run_probe_check(vm, module, ProbeOptions(offset=offset, post_handler=post,
                                                              sysrq=False))
            d = report.to_dict()
            assert d["verdict"] == "pass", report.summary()
            assert d["probe"]["mechanism"] == mechanism, report.summary()
            assert d["bytes"]["after"] == d["bytes"]["before"]
            assert d["hits"] > 0
            if offset == 0:
                assert d["probe"]["moved_by"] == entry_shift   # the kernel says where it armed
            else:
                assert d["probe"]["offset"] == 5 + entry_shift  # past ENDBR (IBT) and fentry
