"""Live VMs: ``vmprobe up`` keeps a VM running under a small supervisor process.

``start()`` (in the ``vmprobe up`` process) forks twice: the grandchild, in a
session of its own, is the supervisor. It owns one warm-restored
:class:`~vmprobe.vm.machine.Machine` (QEMU started from its main thread, so the
parent-death signal stays tied to the supervisor's life) and its SSH
connection, and serves clients over ``<registry>/<name>/sock`` (see
``live_client``): commands, files, shells and whole probe checks run through
the connection it already holds, so a client does no SSH handshake.

A probe leaves the VM as it found it: the same modules loaded, the same kprobes
registered, no new taint; otherwise (or after a crash, or if QEMU died) the VM
is replaced by a fresh warm restore before the next request.

The supervisor stops after ``idle_timeout`` seconds without a request, on
``vmprobe down`` and on SIGTERM. A reaper process, forked first, holds the read
end of a pipe: if the supervisor dies any other way (SIGKILL), the pipe closes
and the reaper kills QEMU's process group and removes the VM's dirs and sockets.
"""
from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import socket
import sys
import threading
import time
import traceback
from pathlib import Path

from vmprobe.errors import ConfigError, QemuError, VmprobeError
from vmprobe.guest.loader import insmod_line
from vmprobe.runs import live_client as wire
from vmprobe.runs.live_client import INFO, SOCKET

IDLE_TIMEOUT = 1800.0
MODULE_TAINTS = (1 << 12) | (1 << 13)   # O and E: every out-of-tree module sets them


def _tell(fd: int, line: str) -> None:
    with contextlib.suppress(OSError):
        os.write(fd, line.encode() + b"\n")


def _log(msg: str) -> None:
    print(time.strftime("%H:%M:%S ") + msg, file=sys.stderr, flush=True)


# -- the supervisor ---------------------------------------------------------------

class Supervisor:
    def __init__(self, kernel, name: str, d: Path, machine_kw: dict, idle_timeout: float, reaper: int):
        self.kernel, self.name, self.dir = kernel, name, d
        self.machine_kw, self.idle_timeout, self.reaper = machine_kw, idle_timeout, reaper
        self.machine = None
        self.clean = None               # the guest's state when it came up (modules, kprobes, taint)
        self.touched = 0                # requests other than probes that began or ended (exec, put…)
        self.known: tuple | None = None  # (touched, state) read after the last probe
        self.console_seen = 0
        self.started = self.last_used = time.time()
        self.active = 0
        self.replaced = 0
        self.stopping = False
        self.replace_why: str | None = None
        self.cond = threading.Condition()
        self.probe_lock = threading.Lock()
        self.listener: socket.socket | None = None

    # -- the machine (main thread only: QEMU's parent-death signal follows the launching thread)
    def _launch(self) -> None:
        from vmprobe.vm.machine import Machine
        m = Machine(self.kernel, log=_log, **self.machine_kw)
        try:
            m.launch()
        except BaseException:
            m.shutdown()
            raise
        _tell(self.reaper, f"dir {m.workdir}")
        _tell(self.reaper, f"pgid {m.proc.pid}")
        self.machine = m
        m.gdbs.ahead()   # the first probe's gdb
        self.clean = guest_state(m)
        self.console_seen = len(m.console.text)
        self._write_info()
        _log(f"up: {self.kernel.release} under {m.accel}, QEMU pid {m.proc.pid}, dir {m.workdir}, "
             f"{', '.join(f'{k} {v:.2f}s' for k, v in m.timings.items())}")

    def _drop(self) -> None:
        m, self.machine = self.machine, None
        if m is not None:
            pid = m.proc.pid if m.proc else None
            m.shutdown()
            if pid:
                _tell(self.reaper, f"-pgid {pid}")

    def _write_info(self) -> None:
        m = self.machine
        info = {"name": self.name, "pid": os.getpid(), "spec": self.kernel.spec, "release": self.kernel.release,
                "arch": self.kernel.arch, "accel": m.accel, "started": self.started,
                "idle_timeout": self.idle_timeout, "qemu_pid": m.proc.pid, "workdir": str(m.workdir),
                "gdb_socket": str(m.gdb_socket), "console_log": str(m.console_log),
                "command_line": m.command_line, "warm": m.warm, "transport": m.ssh.name}
        tmp = self.dir / f"{INFO}.tmp"
        tmp.write_text(json.dumps(info, indent=1) + "\n")
        os.replace(tmp, self.dir / INFO)

    def unusable(self) -> str | None:
        """Why the VM cannot serve the next request (QEMU gone, a crash on the console)."""
        from vmprobe.formats.crash import first_fatal
        m = self.machine
        if m is None:
            return "is being replaced"
        reason = m._exit_reason()
        if reason:
            return f"is gone (QEMU {reason})"
        crash = first_fatal(m.console.text[self.console_seen:])
        return f"crashed ({crash.title})" if crash else None

    def replace(self, why: str) -> bool:
        """From a handler thread: have the main thread replace the VM; wait for it."""
        with self.cond:
            self.replace_why = self.replace_why or why
            gen = self.replaced
            self.cond.notify_all()
            return self.cond.wait_for(lambda: self.replaced != gen or self.stopping,
                                      timeout=self.machine_kw.get("boot_timeout", 120) + 60)

    # -- serving
    def serve(self, ready_fd: int) -> None:
        try:
            self._launch()
            self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            path = self.dir / SOCKET
            self.listener.bind(str(path))
            os.chmod(path, 0o600)
            self.listener.listen(16)
        except BaseException as exc:
            err = exc if isinstance(exc, VmprobeError) else VmprobeError(f"{type(exc).__name__}: {exc}")
            os.write(ready_fd, json.dumps({"error": _error(err)}).encode() + b"\n")
            os.close(ready_fd)
            raise
        os.write(ready_fd, json.dumps(json.loads((self.dir / INFO).read_text())).encode() + b"\n")
        os.close(ready_fd)
        self.last_used = time.time()   # idle from now on, not from the start of the boot
        checked = time.monotonic()
        while not self.stopping:
            if time.monotonic() - checked > 1 and self.active == 0 and not self.replace_why:
                checked = time.monotonic()   # a crash or a dead QEMU between requests
                self.replace_why = self.unusable()
            if select.select([self.listener], [], [], 0.2)[0]:
                conn, _ = self.listener.accept()
                with self.cond:
                    self.active += 1
                threading.Thread(target=self._handle, args=(conn,), daemon=True).start()
            with self.cond:
                why = self.replace_why
                idle = time.time() - self.last_used
                if not why and self.active == 0 and idle > self.idle_timeout:
                    _log(f"idle for {idle:.0f}s (timeout {self.idle_timeout:.0f}s): stopping")
                    self.stopping = True
            if why and not self.stopping:
                _log(f"the VM {why}: replacing it")
                self._drop()
                try:
                    self._launch()
                finally:
                    with self.cond:
                        self.replace_why = None
                        self.replaced += 1
                        self.cond.notify_all()

    def close(self) -> None:
        with self.cond:
            self.stopping = True
            self.cond.notify_all()
        if self.listener:
            self.listener.close()
        self._drop()
        shutil.rmtree(self.dir, ignore_errors=True)
        with contextlib.suppress(OSError):
            os.rmdir(wire.registry())

    def _handle(self, conn: socket.socket) -> None:
        conn.settimeout(None)
        try:
            kind, payload = wire.recv(conn)
            req = json.loads(payload) if kind == b"R" else {}
            op = req.get("op")
            handler = getattr(self, f"op_{op}", None)
            if handler is None:
                raise VmprobeError(f"unknown request {op!r}")
            if op not in ("info", "down"):
                why = self.unusable()
                if why and not self.replace(why):
                    raise QemuError(f"the live VM {self.name!r} {why}, and no new one came up")
            touches = op not in ("info", "down", "probe")   # may change what a probe must leave alone
            with self.cond:
                self.touched += touches
            try:
                end = handler(conn, req) or {}
            finally:
                with self.cond:
                    self.touched += touches
            if op not in ("info", "down"):
                why = self.unusable()
                if why:
                    self.replace(why)
                    end["replaced"] = why
            wire.send_json(conn, b"x", end)
        except (EOFError, BrokenPipeError, ConnectionResetError):
            pass
        except Exception as exc:  # noqa: BLE001  (the client gets it, rendered)
            why = self.unusable()
            if why:  # a crash: the main thread replaces the VM while the client reads the error
                with self.cond:
                    self.replace_why = self.replace_why or why
            err = exc if isinstance(exc, VmprobeError) else VmprobeError(f"{type(exc).__name__}: {exc}")
            if not isinstance(exc, VmprobeError):
                traceback.print_exc()
            with contextlib.suppress(OSError):
                wire.send_json(conn, b"x", {"error": _error(err)})
        finally:
            conn.close()
            with self.cond:
                self.active -= 1
                self.last_used = time.time()

    # -- the requests
    def op_info(self, conn, req) -> dict:
        return {"state": "replacing" if self.replace_why else "up", "last_used": self.last_used,
                "active": self.active - 1, "replaced": self.replaced}

    def op_down(self, conn, req) -> dict:
        with self.cond:
            self.stopping = True
        return {"stopping": True}

    def op_exec(self, conn, req) -> dict:
        m = self.machine
        out, err = _Frames(conn, b"o"), _Frames(conn, b"e")
        if req.get("stdin"):
            channel = m.ssh.start(req["command"])
            while (frame := wire.recv(conn))[1]:
                channel.sendall(frame[1])
            channel.shutdown_write()
            result = m.ssh.wait(channel, req["command"], req.get("timeout_s", 600), stdout=out, stderr=err)
        else:
            result = m.run(req["command"], req.get("timeout_s", 600), stdout=out, stderr=err)
        return {"status": result.status}

    def op_put(self, conn, req) -> dict:
        self.machine.upload(Path(req["local"]), req["guest"], int(req.get("mode", 0o644)))
        return {"status": 0}

    def op_module(self, conn, req) -> dict:
        from vmprobe import modules
        module = modules.build(Path(req["source"]), self.kernel, log=_Lines(conn))[0]
        guest = f"/tmp/{module.path.name}"
        self.machine.upload(module.path, guest)
        return {"insmod": insmod_line(guest, req.get("params", "")), "ko": str(module.path)}

    def op_shell(self, conn, req) -> dict:
        if self.machine.ssh.name != "ssh":
            raise ConfigError(f"an interactive shell needs SSH (a pty); the live VM {self.name!r} runs over "
                              f"the serial transport: pipe a script in (vmprobe shell --on {self.name} < script.sh)")
        channel = self.machine.ssh._transport().open_session()
        channel.get_pty(term=req.get("term", "vt100"), width=req.get("cols", 80), height=req.get("rows", 24))
        channel.invoke_shell()

        def pump() -> None:  # client → guest
            with contextlib.suppress(Exception):
                while True:
                    kind, data = wire.recv(conn)
                    if kind == b"w":
                        size = json.loads(data)
                        channel.resize_pty(width=size["cols"], height=size["rows"])
                    elif data:
                        channel.sendall(data)
            channel.close()
        threading.Thread(target=pump, daemon=True).start()
        while True:
            data = channel.recv(65536)
            if not data:
                break
            wire.send(conn, b"o", data)
        return {"status": channel.recv_exit_status() if channel.exit_status_ready() else 0}

    def op_gdb(self, conn, req) -> dict:
        from vmprobe.runs.live_gdb import serve
        return serve(self, conn, req, _Lines(conn), guest_state, state_difference)

    def op_probe(self, conn, req) -> dict:
        from vmprobe import modules
        from vmprobe.check.probe import ProbeOptions
        from vmprobe.check.run import run_check
        log = _Lines(conn)
        source = Path(req["module"]) if req.get("module") else None
        with self.probe_lock:
            t0 = time.monotonic()
            module = modules.build(source or modules.FORK_PROBE, self.kernel, log=log)[0]
            build = time.monotonic() - t0
            m = self.machine
            # the state the last probe left, unless another request may have changed it since
            known, self.known = self.known, None
            before = known[1] if known and known[0] == self.touched else guest_state(m)
            run = run_check(m, module, ProbeOptions(**req["options"]), source=source,
                            expect_mechanism=req.get("expect_mechanism"), build_seconds=build, log=log)
            end = {"report": run.report.to_dict(), "summary": run.report.summary(),
                   "verdict": run.report.verdict, "seconds": run.seconds}
            if run.error:
                end["check_error"] = _error(run.error)
            why = self.unusable()
            if why is None:
                try:
                    touched, now = self.touched, guest_state(m)
                    why = state_difference(before, now)
                    self.known = None if why else (touched, now)
                except VmprobeError as exc:
                    why = f"does not answer ({exc.message})"
            if why:
                log(f"vmprobe: the live VM {self.name!r} {why}; replacing it")
                self.replace(why)
                end["replaced"] = why
            else:
                m.gdbs.ahead()   # the next probe's gdb, started while nobody waits
            return end


class _Frames:
    """A binary file that sends what is written to it as frames of one type."""

    def __init__(self, conn: socket.socket, kind: bytes):
        self.conn, self.kind = conn, kind

    def write(self, data: bytes) -> int:
        wire.send(self.conn, self.kind, bytes(data))
        return len(data)

    def flush(self) -> None:
        pass


class _Lines:
    def __init__(self, conn: socket.socket):
        self.conn = conn

    def __call__(self, msg: str) -> None:
        _log(msg)
        with contextlib.suppress(OSError):
            wire.send(self.conn, b"l", msg.encode())


def _error(exc: VmprobeError) -> dict:
    return {"rendered": exc.render(), "kind": exc.kind, "exit_code": exc.exit_code}


def guest_state(m) -> tuple[frozenset[str], tuple[str, ...], int]:
    """What a request may leave behind: loaded modules, registered kprobes, the taint mask (read
    with shell builtins but the taint: this runs after every probe on a live VM, and an exec costs
    ≈10 ms; the shell's read takes a byte at a time, and a sysctl file ends after the first)."""
    from vmprobe.check.listing import KPROBES_LIST, print_file
    out = m.run("while read -r _vp_m _; do echo $_vp_m; done < /proc/modules; echo @; "
                f"{print_file(KPROBES_LIST)}; echo @; cat /proc/sys/kernel/tainted",   # read(1) of a sysctl: 1 byte
                30).stdout
    mods, kprobes, tainted = (out.split("@\n") + ["", "", "0"])[:3]
    return (frozenset(mods.split()), tuple(l for l in kprobes.splitlines() if l.strip()),
            int(tainted.strip() or 0))


def state_difference(before, now) -> str | None:
    extra = sorted(now[0] - before[0])
    if extra:
        return f"still has module(s) {', '.join(extra)} loaded"
    armed = [k for k in now[1] if k not in before[1]]
    if armed:
        return f"still has {len(armed)} kprobe(s) registered ({armed[0]})"
    new = (now[2] & ~before[2]) & ~MODULE_TAINTS
    if new:
        return f"was tainted (/proc/sys/kernel/tainted {before[2]} → {now[2]})"
    return None
