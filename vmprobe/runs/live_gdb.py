"""``vmprobe gdb --on NAME``: gdb on a live VM's gdbstub, with the same symbols as ``vmprobe gdb``.

The supervisor owns the machine, so it does what needs the guest: builds and
loads ``--module``, reads the symbols and writes the gdb script (in the VM's
0700 dir, next to the gdbstub's unix socket), then sends the gdb command line
in a ``g`` frame. The client runs gdb on the user's terminal (or ``--batch``)
and, when gdb has ended, sends an empty ``i`` frame; the supervisor then
resumes the guest if gdb left it stopped, unloads the module it loaded and
checks the VM is as it found it (modules, kprobes, taint), replacing it
otherwise. A client that dies mid-session closes the socket: same clean-up.
While gdb is attached the VM's probe lock is held, so no ``probe --on`` runs
against a stopped guest; the idle timeout does not run out during a session.
"""
from __future__ import annotations

import contextlib
import json
from pathlib import Path

from vmprobe.runs import live_client as lc


def serve(sup, conn, req: dict, log, guest_state, state_difference) -> dict:
    """The supervisor's side of one ``gdb --on`` session (a handler thread); ``log`` sends lines
    to the client, the other two are ``live``'s (passed in: ``live`` imports this module)."""
    from vmprobe import modules
    from vmprobe.runs import debugger
    with sup.probe_lock:
        m = sup.machine
        before = guest_state(m)
        module = None
        resumed = False
        try:
            if req.get("module"):
                built = modules.build(Path(req["module"]), sup.kernel, log=log)[0]
                debugger.load_module(m, built, req.get("module_params", ""))
                module = built
            vmlinux = debugger.fetch_vmlinux_dbg(sup.kernel, log) if req.get("vmlinux_dbg") else None
            session = debugger.prepare(m, module, vmlinux, log)
            lc.send_json(conn, b"g", {"command": session.gdb_command(), "script": str(session.script)})
            with contextlib.suppress(EOFError, OSError):   # the client's end, or its death
                while lc.recv(conn)[0] != b"i":
                    pass
        finally:
            if sup.unusable() is None:
                resumed = debugger.resume_guest(m)
                if module is not None:
                    m.run(f"rmmod {module.name}", 60)
        why = sup.unusable() or state_difference(before, guest_state(m))
        end = {"resumed": resumed}
        if why:
            log(f"vmprobe: the live VM {sup.name!r} {why}; replacing it")
            sup.replace(why)
            end["replaced"] = why
        return end


def gdb_on(args, log) -> int:
    """The client's side: ask for a session, run gdb on this terminal, say when it is over."""
    from vmprobe import modules
    from vmprobe.runs.debugger import run_gdb_command
    params = args.module_params
    if args.module == modules.FORK_PROBE and not params:
        params = "nonce=gdb"
    with lc.Connection(args.on, timeout=None) as c:
        c.request("gdb", module=str(Path(args.module).resolve()) if args.module else None,
                  module_params=params, vmlinux_dbg=bool(args.vmlinux_dbg))
        go = _until_go(c, log)
        if not args.batch:
            log(f"vmprobe: gdb on the live VM {args.on!r}, stopped: 'continue' runs it, Ctrl-C stops it; "
                f"quitting gdb leaves the VM up and running")

        def done() -> None:
            with contextlib.suppress(OSError):
                lc.send(c.sock, b"i", b"")
        status = run_gdb_command(go["command"], done, batch=args.batch, commands=args.ex,
                                 timeout=args.timeout)
        end = c.replies(log=log)
    if end.get("replaced"):
        log(f"vmprobe: the live VM {args.on!r} {end['replaced']}: it was replaced by a fresh one")
    return status


def _until_go(c: lc.Connection, log) -> dict:
    """Log lines until the supervisor's ``g`` frame (gdb's command line); its error otherwise."""
    while True:
        try:
            kind, payload = lc.recv(c.sock)
        except (EOFError, OSError) as exc:
            raise lc.LiveError(f"vmprobe: live VM {c.name!r}: the supervisor went away before gdb "
                               f"could attach ({exc})", "live VM gone", 67) from None
        if kind == b"l":
            log(payload.decode(errors="replace"))
        elif kind == b"g":
            return json.loads(payload)
        elif kind == b"x":
            err = json.loads(payload).get("error") or {"rendered": "the supervisor ended the gdb request "
                                                                   "without a session", "kind": "error",
                                                       "exit_code": 70}
            raise lc.LiveError(err["rendered"], err.get("kind", "error"), err.get("exit_code", 70))
