"""A guest command's result, the same whichever transport ran it (SSH or the serial agent):
apart from ``vm.ssh`` so that neither the serial transport nor the machine imports paramiko
(≈0.17 s) before the SSH connection needs it."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CommandResult:
    status: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr
