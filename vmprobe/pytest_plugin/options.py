"""The plugin's command-line options and where their defaults come from.

Kernels come from ``--vmprobe-kernel``, else ``[tool.vmprobe] kernels`` in the
rootdir's ``pyproject.toml``, else :data:`DEFAULT_KERNELS`; the accelerator and
cold boots also read the environment (``$VMPROBE_ACCEL``, ``$VMPROBE_COLD``) so
CI can set them without touching the command line.
"""
from __future__ import annotations

import os
import tomllib
from pathlib import Path

import pytest

from vmprobe.pytest_plugin.shard import parse_shard

DEFAULT_KERNELS = ("debian:bookworm",)


def add_options(parser: pytest.Parser) -> None:
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


def _tool_table(config: pytest.Config) -> dict:
    """``[tool.vmprobe]`` of the rootdir's ``pyproject.toml`` (empty without one)."""
    pyproject = config.rootpath / "pyproject.toml"
    if not pyproject.is_file():
        return {}
    try:
        with pyproject.open("rb") as f:
            return tomllib.load(f).get("tool", {}).get("vmprobe", {})
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise pytest.UsageError(f"vmprobe: cannot read {pyproject}: {exc}") from None


def configured_allow_splats(config: pytest.Config) -> list[str]:
    """``[tool.vmprobe] allow_splats``: regexes of splat titles no test fails on."""
    patterns = _tool_table(config).get("allow_splats", [])
    if not isinstance(patterns, list) or not all(isinstance(p, str) for p in patterns):
        raise pytest.UsageError("vmprobe: [tool.vmprobe] allow_splats in pyproject.toml must be a list "
                                "of regexes, e.g. [\"WARNING in my_handler\"]")
    return patterns


def configured_kernels(config: pytest.Config) -> list[str]:
    """The kernel specs to run on, deduplicated, in the order given."""
    specs = config.getoption("vmprobe_kernels")
    if not specs:
        pyproject = config.rootpath / "pyproject.toml"
        if pyproject.is_file():
            table = _tool_table(config)
            specs = table.get("kernels")
            if specs is not None and (not isinstance(specs, list)
                                      or not all(isinstance(s, str) for s in specs)):
                raise pytest.UsageError(f"vmprobe: [tool.vmprobe] kernels in {pyproject} must be a "
                                        f"list of kernel specs, e.g. [\"debian:bookworm\"]")
    specs = [s.strip() for s in (specs or DEFAULT_KERNELS) if s.strip()]
    return list(dict.fromkeys(specs)) or list(DEFAULT_KERNELS)


def results_dir(config: pytest.Config) -> Path:
    """Where failed tests' artefacts go: ``--vmprobe-results`` (relative to the invocation
    dir), else ``<rootdir>/results``."""
    results = config.getoption("vmprobe_results")
    return (config.invocation_params.dir / results) if results else config.rootpath / "results"


def configured_shard(config: pytest.Config) -> tuple[int, int] | None:
    """``--vmprobe-shard I/N`` as ``(I, N)``, or None; a bad value is a usage error."""
    text = config.getoption("vmprobe_shard")
    if text is None:
        return None
    try:
        return parse_shard(text)
    except ValueError as exc:
        raise pytest.UsageError(f"vmprobe: {exc}") from None
