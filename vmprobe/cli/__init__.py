"""The ``vmprobe`` command line: a thin face over kernels, machines and checks."""
from __future__ import annotations

import argparse
import contextlib
import sys

from vmprobe.cli.commands import (
    _log,
    cmd_doctor,
    cmd_exec,
    cmd_gdb,
    cmd_kernels,
    cmd_matrix,
    cmd_probe,
    cmd_repro,
    cmd_rootfs,
    cmd_shell,
)
from vmprobe.cli.parser import COMMANDS, build_parser
from vmprobe.errors import EXIT_INTERRUPTED, VmprobeError
from vmprobe.host import progress
from vmprobe.host.processes import install_signal_handlers
from vmprobe.runs import live_commands

__all__ = ["build_parser", "main"]


def main(argv: list[str] | None = None) -> int:
    install_signal_handlers()
    argv = sys.argv[1:] if argv is None else argv
    args = None
    if argv[:1] in (["exec"], ["shell"]) and "--on" in argv:
        import io
        with contextlib.suppress(argparse.ArgumentError, SystemExit), contextlib.redirect_stderr(io.StringIO()):
            args, extra = live_commands.live_parser().parse_known_args(argv)
            args = None if extra else args
    command = argv[0] if argv and argv[0] in COMMANDS else None
    args = args or build_parser(only=command).parse_args(argv)
    handler = {"kernels": cmd_kernels, "exec": cmd_exec, "shell": cmd_shell, "probe": cmd_probe,
               "matrix": cmd_matrix, "doctor": cmd_doctor, "gdb": cmd_gdb, "repro": cmd_repro, "rootfs": cmd_rootfs,
               "up": lambda a: live_commands.up(a, _log), "down": lambda a: live_commands.down(a, _log),
               "ls": lambda a: live_commands.ls(a, _log)}
    try:
        return handler[args.command](args)
    except VmprobeError as exc:
        print(exc.render(), file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("vmprobe: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        progress.stop_streams()
        with contextlib.suppress(Exception):
            sys.stdout.flush()
