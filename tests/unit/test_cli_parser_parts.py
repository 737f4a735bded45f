"""The command line builds only the subcommand it runs: the same grammar, fewer imports."""
from __future__ import annotations

import subprocess
import sys

import pytest

from vmprobe.cli.parser import COMMANDS, build_parser

ARGV = [
    ["probe", "--on", "x", "--symbol", "vfs_read", "--offset", "after-entry", "--no-sysrq", "--json", "r.json"],
    ["probe", "--kernel", "debian:trixie", "--module", "m.c", "--scenario", "smp", "--smp", "2"],
    ["exec", "--cold", "--", "uname", "-r"],
    ["exec", "--on", "x", "--put", "a:/tmp/a", "--", "true"],
    ["shell", "--kernel", "debian:bullseye"],
    ["up", "--name", "n", "--idle-timeout", "5"],
    ["down", "--all"],
    ["ls", "--json"],
    ["gdb", "--module", "-ex", "info registers", "--batch"],
    ["repro", "r.json", "--all"],
    ["matrix", "--kernels", "debian:bookworm", "--checks", "entry,int3", "--jobs", "2"],
    ["doctor", "--json"],
    ["kernels", "fetch", "debian:trixie"],
    ["kernels", "list"],
]


def test_commands_are_the_full_parsers_subcommands():
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert tuple(sub.choices) == COMMANDS


@pytest.mark.parametrize("argv", ARGV, ids=[" ".join(a[:2]) for a in ARGV])
def test_one_subcommand_parses_as_the_whole_grammar_does(argv):
    assert build_parser(only=argv[0]).parse_args(argv) == build_parser().parse_args(argv)


def test_probe_on_imports_no_vm_machinery():
    code = ("import sys; from vmprobe.cli.parser import build_parser; "
            "build_parser(only='probe').parse_args(['probe', '--on', 'x']); "
            "print(sorted(m for m in ('paramiko', 'qemu.qmp', 'vmprobe.vm.machine', 'vmprobe.kernels', "
            "'vmprobe.modules', 'vmprobe.check.run') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "[]", out.stderr
