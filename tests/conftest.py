"""Shared fixtures: the default kernel, the fork probe module, a session VM, leak checks."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from vmprobe import modules
from vmprobe.kernels import DEFAULT_SPEC, get_kernel
from vmprobe.machine import Machine, runtime_dir

ACCEL = os.environ.get("VMPROBE_ACCEL", "auto")


def _vmprobe_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vmprobe", *args], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


@pytest.fixture
def vmprobe_cli():
    """Run the real CLI in a child process (as a user would)."""
    return _vmprobe_cli


@pytest.fixture(scope="session")
def accel():
    return ACCEL


def our_leftovers() -> list[str]:
    """QEMU processes and temp dirs that vmprobe created and did not remove."""
    procs = subprocess.run(["pgrep", "-af", "qemu-system.*-name vmprobe-"], capture_output=True,
                           text=True).stdout.splitlines()
    dirs = [str(p) for p in runtime_dir().glob("vmprobe-*") if p.is_dir()]
    return procs + dirs


@pytest.fixture(scope="session")
def kernel():
    return get_kernel(DEFAULT_SPEC)


@pytest.fixture(scope="session")
def fork_module(kernel):
    return modules.build(modules.FORK_PROBE, kernel)[0]


@pytest.fixture(scope="session")
def vm(kernel):
    """One booted guest shared by the tests that leave it clean."""
    with Machine(kernel, accel=ACCEL) as machine:
        yield machine


@pytest.fixture
def no_leaks():
    """Fail the test if it leaves a QEMU process or a vmprobe temp dir behind."""
    before = set(our_leftovers())
    yield
    after = [x for x in our_leftovers() if x not in before]
    assert not after, f"left behind: {after}"


def pytest_collection_modifyitems(items):
    for item in items:
        if Path(str(item.fspath)).parent.name == "vm":
            item.add_marker(pytest.mark.vm)
