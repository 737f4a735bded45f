"""The project's own test helpers.

The VM fixtures (``kernel``, ``vm``, ``fork_module``, ``kprobe_module``,
``probe_check``, ``no_leaks``) come from vmprobe's pytest plugin
(``vmprobe/pytest_plugin/``, entry point ``pytest11: vmprobe`` → ``hooks.py``); its options
pick the kernels (``--vmprobe-kernel``, default debian:bookworm) and the
accelerator (``--vmprobe-accel``, default ``$VMPROBE_ACCEL`` or auto).
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


def pytest_configure(config):
    if not config.pluginmanager.has_plugin("vmprobe"):
        raise pytest.UsageError("vmprobe's pytest plugin is not loaded: install the project "
                                "(scripts/setup.sh, or pip install -e '.[test]') so its pytest11 "
                                "entry point is registered")


def _vmprobe_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vmprobe", *args], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


@pytest.fixture
def vmprobe_cli():
    """Run the real CLI in a child process (as a user would)."""
    return _vmprobe_cli


@pytest.fixture(scope="session")
def accel(pytestconfig):
    """The accelerator the VMs use (``--vmprobe-accel``), to pass on to the CLI."""
    return pytestconfig.getoption("vmprobe_accel")


def pytest_collection_modifyitems(items):
    for item in items:
        if Path(str(item.fspath)).parent.name == "vm":
            item.add_marker(pytest.mark.vm)
