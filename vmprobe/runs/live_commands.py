"""The command-line side of live VMs: ``up``, ``down``, ``ls`` and ``--on NAME``.

``exec --on`` and ``shell --on`` import only ``live_client`` (a socket and
JSON): no paramiko, no kernels, no QEMU code in the client process.
"""
from __future__ import annotations

import argparse
import json
import os
import select
import shutil
import sys
import time
from pathlib import Path

from vmprobe.runs import live_client as lc

WATCH_POLL = 0.5


# -- the command line's options for live VMs and files --------------------------------

def on_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--on", metavar="NAME", help="use the live VM NAME (vmprobe up) instead of starting one")


def files_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--put", action="append", default=[], metavar="LOCAL[:GUEST]",
                   help="copy a host file into the guest (default GUEST: /tmp/<name>; repeatable)")
    p.add_argument("--module", type=Path, metavar="FILE.c|DIR|FILE.ko",
                   help="build a module for the kernel and copy it in (/tmp/<name>.ko); prints the insmod line")
    p.add_argument("--module-params", default="", help="parameters shown in the insmod line of --module")


def dry_run_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dry-run", action="store_true",
                   help="print the QEMU command line and the kernel command line; start nothing")


def live_parser() -> argparse.ArgumentParser:
    """``exec``/``shell`` on a live VM, parsed without importing the VM machinery (fast path)."""
    parser = argparse.ArgumentParser(prog="vmprobe", exit_on_error=False, add_help=False)
    sub = parser.add_subparsers(dest="command", required=True)
    ex = sub.add_parser("exec", exit_on_error=False, add_help=False)
    sh = sub.add_parser("shell", exit_on_error=False, add_help=False)
    for p in (ex, sh):
        p.add_argument("--on", required=True)
        files_args(p)
    ex.add_argument("--timeout", type=float, default=600)
    ex.add_argument("cmd", nargs=argparse.REMAINDER)
    return parser


def add_up_down_ls(sub, machine_args) -> None:
    up = sub.add_parser("up", help="start a live VM that stays up in the background (see --on)",
                        description="Restores (or boots) a VM and keeps it running under a small "
                                    "supervisor process; exec, shell, probe and gdb use it with --on NAME. "
                                    "It stops after --idle-timeout seconds without a request, or on "
                                    "vmprobe down NAME.")
    machine_args(up)
    up.add_argument("--name", help="its name (default: from the kernel spec, e.g. bookworm)")
    up.add_argument("--idle-timeout", type=float, default=1800,
                    help="seconds without a request before it stops (default 1800)")
    dry_run_arg(up)
    dn = sub.add_parser("down", help="stop live VMs")
    dn.add_argument("names", nargs="*", help="live VM names")
    dn.add_argument("--all", action="store_true", help="every live VM")
    ls = sub.add_parser("ls", help="list the live VMs")
    ls.add_argument("--json", action="store_true")


def _say_replaced(name: str, end: dict, log) -> None:
    if end.get("replaced"):
        log(f"vmprobe: the live VM {name!r} {end['replaced']}: it was replaced by a fresh one")


def copy_in_live(args, log) -> None:
    """``--put`` and ``--module`` on a live VM (the supervisor builds the module: it has the kernel)."""
    for text in getattr(args, "put", None) or []:
        from vmprobe.runs.guest_files import parse_put
        local, guest = parse_put(text)
        mode = 0o755 if local.stat().st_mode & 0o111 else 0o644
        lc.call(args.on, "put", timeout=120, local=str(local), guest=guest, mode=mode)
        log(f"vmprobe: {local} copied to {guest}")
    if getattr(args, "module", None):
        end = lc.call(args.on, "module", timeout=600, log=log, source=str(Path(args.module).resolve()),
                      params=getattr(args, "module_params", "") or "")
        log(f"vmprobe: module copied in; load it with:  {end['insmod']}")


def command_of(args) -> str:
    """``exec``'s command: one word as it is (a shell line), several joined shell-quoted."""
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        raise SystemExit("vmprobe exec: give a command after --, e.g. vmprobe exec -- uname -r")
    import shlex
    return cmd[0] if len(cmd) == 1 else shlex.join(cmd)


def exec_on(args, command: str, log) -> int:
    copy_in_live(args, log)
    end = lc.call(args.on, "exec", timeout=args.timeout + 60, stdout=sys.stdout.buffer,
                  stderr=sys.stderr.buffer, log=log, command=command, timeout_s=args.timeout)
    _say_replaced(args.on, end, log)
    return end["status"]


def shell_on(args, log) -> int:
    copy_in_live(args, log)
    if not sys.stdin.isatty():  # a script on stdin: feed it to the guest's shell
        with lc.Connection(args.on, timeout=3600) as c:
            c.request("exec", command="sh -s", stdin=True, timeout_s=3600)
            data = sys.stdin.buffer.read()
            for i in range(0, len(data), 1 << 16):
                lc.send(c.sock, b"i", data[i:i + (1 << 16)])
            lc.send(c.sock, b"i", b"")
            end = c.replies(sys.stdout.buffer, sys.stderr.buffer, log)
        return end["status"]
    import termios
    import tty
    size = shutil.get_terminal_size()
    log(f"vmprobe: a shell on the live VM {args.on!r}; leaving it leaves the VM up")
    with lc.Connection(args.on, timeout=None) as c:
        c.request("shell", term=os.environ.get("TERM", "vt100"), cols=size.columns, rows=size.lines)
        saved = termios.tcgetattr(sys.stdin)
        try:
            tty.setraw(sys.stdin.fileno())
            while True:
                ready, _, _ = select.select([sys.stdin, c.sock], [], [], 0.5)
                if c.sock in ready:
                    kind, payload = lc.recv(c.sock)
                    if kind == b"o":
                        os.write(sys.stdout.fileno(), payload)
                    elif kind == b"x":
                        end = json.loads(payload)
                        if end.get("error"):
                            raise lc.LiveError(end["error"]["rendered"], end["error"]["kind"],
                                               end["error"]["exit_code"])
                        return end.get("status", 0)
                if sys.stdin in ready:
                    data = os.read(sys.stdin.fileno(), 1024)
                    if not data:
                        return 0
                    lc.send(c.sock, b"i", data)
        finally:
            termios.tcsetattr(sys.stdin, termios.TCSADRAIN, saved)


# -- probe --on [--watch] --------------------------------------------------------

def probe_on(args, log) -> int:
    module = str(Path(args.module).resolve()) if args.module else None
    options = {"symbol": args.symbol, "offset": args.offset, "post_handler": args.post_handler,
               "trigger": args.trigger, "module_params": args.module_params,
               "builtin_template": args.module is None, "sysrq": args.sysrq}

    def once() -> int:
        end = lc.call(args.on, "probe", timeout=900, log=log, module=module, options=options,
                      expect_mechanism=args.expect_mechanism)
        if args.json:
            args.json.write_text(json.dumps(end["report"], indent=2) + "\n")
        _say_replaced(args.on, end, log)
        if end.get("check_error"):
            e = end["check_error"]
            raise lc.LiveError(e["rendered"], e["kind"], e["exit_code"])
        print(end["summary"], flush=True)
        return 0 if end["verdict"] == "pass" else 1

    if not args.watch:
        return once()
    from vmprobe.errors import VmprobeError
    status = 0
    seen = None
    while True:
        stamp = _source_stamp(Path(module) if module else None)
        if stamp != seen:
            seen = stamp
            t0 = time.monotonic()
            try:
                status = once()
            except VmprobeError as exc:
                print(exc.render(), file=sys.stderr, flush=True)
                status = exc.exit_code
            log(f"vmprobe: {'PASS' if status == 0 else 'FAIL'} in {time.monotonic() - t0:.1f}s; "
                f"watching {module or 'the built-in fork probe'} for changes (Ctrl-C ends)")
        time.sleep(WATCH_POLL)


def _source_stamp(source: Path | None) -> tuple:
    """(name, mtime, size) of the module's source files: a change means rebuild and re-check."""
    if source is None:
        from vmprobe.modules import FORK_PROBE
        source = FORK_PROBE
    if source.is_file():
        files = [source]
    elif source.is_dir():
        skip = (".o", ".ko", ".mod", ".mod.c", ".cmd", ".symvers", ".order", ".d")
        files = sorted(p for p in source.rglob("*") if p.is_file() and not p.name.endswith(skip)
                       and not p.name.startswith("."))
    else:
        return ("missing", str(source))
    out = []
    for f in files:
        try:
            st = f.stat()
        except OSError:
            continue
        out.append((str(f), st.st_mtime_ns, st.st_size))
    return tuple(out)


# -- up, down, ls ----------------------------------------------------------------

def up(args, log) -> int:
    from vmprobe.kernels import get_kernel
    from vmprobe.runs import live_daemon as live
    from vmprobe.vm.machine import Machine
    kernel = get_kernel(args.kernel, log=log)
    machine_kw = {"accel": args.accel, "smp": args.smp or 1, "memory": args.memory,
                  "boot_timeout": args.boot_timeout, "append": tuple(args.append), "warm": not args.cold,
                  "transport": args.transport, "userland": args.userland}
    if args.dry_run:
        from vmprobe.runs.guest_files import dry_run
        return dry_run(Machine(kernel, **machine_kw))
    name = args.name or lc.default_name(kernel.spec)
    t0 = time.monotonic()
    info = live.start(kernel, name, machine_kw, args.idle_timeout, log=log)
    print(f"{name}: {info['release']} up under {info['accel']} (supervisor pid {info['pid']}, "
          f"{time.monotonic() - t0:.1f}s; idle timeout {args.idle_timeout:.0f}s)")
    log(f"vmprobe: use it with `vmprobe exec --on {name} -- CMD`, `shell --on {name}`, "
        f"`probe --on {name}`; stop it with `vmprobe down {name}`")
    return 0


def down(args, log) -> int:
    names = lc.live_names() if args.all else args.names
    if not names:
        raise SystemExit("vmprobe down: name a live VM (vmprobe ls lists them), or --all")
    for name in names:
        lc.stop(name)
        log(f"vmprobe: {name} is down")
    return 0


def ls(args, log) -> int:
    rows = lc.table()
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(lc.format_table(rows))
    return 0


def gdb_on(args, log) -> int:
    """``gdb --on``: gdb on the live VM's gdbstub (see ``live_gdb``)."""
    from vmprobe.runs.live_gdb import gdb_on as attach
    return attach(args, log)
