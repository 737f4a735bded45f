"""The ``vmprobe`` command line: a thin face over kernels, machines and checks.

The subcommands' code (``cli.commands``) is imported once the command is known:
``exec``/``shell``/``probe --on`` talk to a live VM's supervisor and import only
the grammar and ``runs.live_commands``.
"""
from __future__ import annotations

import argparse
import atexit
import contextlib
import os
import sys

from vmprobe.cli.parser import COMMANDS, build_parser
from vmprobe.errors import EXIT_INTERRUPTED, VmprobeError
from vmprobe.host.processes import install_signal_handlers
from vmprobe.runs import live_commands

__all__ = ["build_parser", "main", "run"]


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _handler(args):
    """The function that runs ``args.command`` (importing the commands only when needed)."""
    if args.command in ("up", "down", "ls"):
        return lambda a: getattr(live_commands, a.command)(a, _log)
    if getattr(args, "on", None):
        if args.command == "exec":
            return lambda a: live_commands.exec_on(a, live_commands.command_of(a), _log)
        if args.command == "shell":
            return lambda a: live_commands.shell_on(a, _log)
        if args.command == "probe":
            return lambda a: live_commands.probe_on(a, _log)
    from vmprobe.cli import commands
    return getattr(commands, f"cmd_{args.command}")


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
    try:
        return _handler(args)(args)
    except VmprobeError as exc:
        print(exc.render(), file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("vmprobe: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        if "vmprobe.host.progress" in sys.modules:
            sys.modules["vmprobe.host.progress"].stop_streams()
        with contextlib.suppress(Exception):
            sys.stdout.flush()


def run() -> None:
    """The ``vmprobe`` command: ``main()``, then a quick exit. Python's own finalization of what a
    run imports (paramiko, cryptography, ...) took 0.13-0.2 s after the work was done; the exit
    handlers (vmprobe's leftover-QEMU guard, file locks, temp dirs) still run first."""
    try:
        status = main()
    except SystemExit as exc:   # argparse's errors and usage messages, as sys.exit shows them
        status = exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
        if not isinstance(exc.code, int) and exc.code is not None:
            print(exc.code, file=sys.stderr)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):   # a closed pipe: nothing more can be said
            stream.flush()
    atexit._run_exitfuncs()
    os._exit(status if isinstance(status, int) else 0 if status is None else 1)
