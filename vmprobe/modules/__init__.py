"""Kprobe modules: templates (``templates/``), out-of-tree kbuild, the toolchains kernels need."""
from vmprobe.modules.kbuild import FORK_PROBE, Module, build, check_vermagic, kernel_vermagic, source_files

__all__ = ["FORK_PROBE", "Module", "build", "check_vermagic", "kernel_vermagic", "source_files"]
