"""Talking to live VMs (``vmprobe up``): the registry, the wire format, and the client side.

A live VM is a supervisor process (``vmprobe.runs.live``) that owns one
:class:`~vmprobe.vm.machine.Machine` and its SSH connection, and serves
clients over a unix socket in ``<runtime dir>/vmprobe-live-<uid>/<name>/``
(the dirs 0700, the socket 0600). Clients send one request and read framed
replies: no SSH handshake, no paramiko import (``exec --on N -- true`` is a
socket round trip plus the guest command).

This module is kept light on purpose (socket, json, struct): ``exec --on`` and
``shell --on`` import nothing else of vmprobe's VM machinery.

Frames: 4-byte big-endian length, 1 type byte, payload. Types: ``R`` request
(JSON), ``o``/``e`` stdout/stderr bytes, ``i`` stdin bytes (empty: EOF), ``l``
a log line for the client's stderr, ``x`` the end (JSON: ``status`` and/or
``error`` {message, kind, exit_code} and whatever the op returns).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import struct
import time
from pathlib import Path

from vmprobe.errors import ConfigError, VmprobeError
from vmprobe.host.processes import runtime_dir

SOCKET, INFO, LOG = "sock", "info.json", "supervisor.log"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$")
CONNECT_TIMEOUT = 5.0


class NoSuchLiveVm(ConfigError):
    kind = "no such live VM"


class LiveError(VmprobeError):
    """An error the supervisor reported: rendered there, with its kind and exit code."""

    def __init__(self, rendered: str, kind: str = "error", exit_code: int = 70):
        super().__init__(rendered.splitlines()[0] if rendered else kind)
        self.rendered, self.kind, self.exit_code = rendered, kind, exit_code

    def render(self) -> str:
        return self.rendered


# -- the registry -------------------------------------------------------------

def registry() -> Path:
    return runtime_dir() / f"vmprobe-live-{os.getuid()}"


def vm_dir(name: str) -> Path:
    if not NAME_RE.match(name):
        raise ConfigError(f"not a live VM name: {name!r} (letters, digits, '.', '_', '-'; at most 32)")
    return registry() / name


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_info(name: str) -> dict | None:
    """The live VM's info (None if there is none, or its supervisor is gone: then its dir,
    left by a killed supervisor whose reaper was killed too, is removed)."""
    d = vm_dir(name)
    try:
        info = json.loads((d / INFO).read_text())
    except (OSError, ValueError):
        return None
    if not _pid_alive(int(info.get("pid", 0))):
        shutil.rmtree(d, ignore_errors=True)
        return None
    return info


def live_names() -> list[str]:
    base = registry()
    return sorted(p.name for p in base.iterdir() if p.is_dir()) if base.is_dir() else []


def require(name: str) -> dict:
    info = read_info(name)
    if info is None:
        up = ", ".join(n for n in live_names() if read_info(n)) or "none"
        raise NoSuchLiveVm(f"no live VM named {name!r} (up: {up}); start one with "
                           f"`vmprobe up --name {name}`")
    return info


# -- frames --------------------------------------------------------------------

def send(sock: socket.socket, kind: bytes, payload: bytes = b"") -> None:
    sock.sendall(struct.pack(">IB", len(payload), kind[0]) + payload)


def send_json(sock: socket.socket, kind: bytes, obj: dict) -> None:
    send(sock, kind, json.dumps(obj).encode())


def _exactly(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError("the other end closed the connection")
        buf += chunk
    return bytes(buf)


def recv(sock: socket.socket) -> tuple[bytes, bytes]:
    size, kind = struct.unpack(">IB", _exactly(sock, 5))
    return bytes([kind]), _exactly(sock, size)


# -- the client ----------------------------------------------------------------

class Connection:
    """One request to a live VM's supervisor."""

    def __init__(self, name: str, timeout: float | None = None):
        self.name = name
        self.info = require(name)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(CONNECT_TIMEOUT)
        try:
            self.sock.connect(str(vm_dir(name) / SOCKET))
        except OSError as exc:
            self.sock.close()
            raise NoSuchLiveVm(f"the live VM {name!r} does not answer on {vm_dir(name) / SOCKET} "
                               f"within {CONNECT_TIMEOUT:.0f}s: {exc}") from None
        self.sock.settimeout(timeout)

    def request(self, op: str, **fields) -> None:
        send_json(self.sock, b"R", {"op": op, **fields})

    def replies(self, stdout=None, stderr=None, log=None) -> dict:
        """Read frames to the end; stream output to the given binary files; return the end."""
        while True:
            try:
                kind, payload = recv(self.sock)
            except (EOFError, OSError) as exc:
                raise LiveError(f"vmprobe: live VM {self.name!r}: the supervisor went away "
                                f"mid-request ({exc})", "live VM gone", 67) from None
            if kind == b"o" and stdout is not None:
                stdout.write(payload)
                stdout.flush()
            elif kind == b"e" and stderr is not None:
                stderr.write(payload)
                stderr.flush()
            elif kind == b"l" and log is not None:
                log(payload.decode(errors="replace"))
            elif kind == b"x":
                end = json.loads(payload)
                err = end.get("error")
                if err:
                    raise LiveError(err["rendered"], err.get("kind", "error"), err.get("exit_code", 70))
                return end

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> "Connection":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def call(name: str, op: str, *, timeout: float | None = None, stdout=None, stderr=None, log=None,
         **fields) -> dict:
    with Connection(name, timeout) as c:
        c.request(op, **fields)
        return c.replies(stdout, stderr, log)


def stop(name: str, timeout: float = 30) -> None:
    """Ask the supervisor to shut its VM down; wait until its process is gone."""
    info = require(name)
    try:
        call(name, "down", timeout=10)
    except (LiveError, NoSuchLiveVm):
        pass
    deadline = time.monotonic() + timeout
    while _pid_alive(info["pid"]):
        if time.monotonic() > deadline:
            os.kill(info["pid"], signal.SIGTERM)
            raise VmprobeError(f"the supervisor of live VM {name!r} (pid {info['pid']}) did not stop "
                               f"within {timeout:.0f}s; sent it SIGTERM")
        time.sleep(0.05)


def table() -> list[dict]:
    """The live VMs with their state (for ``vmprobe ls``)."""
    rows = []
    for name in live_names():
        info = read_info(name)
        if info is None:
            continue
        try:
            info.update(call(name, "info", timeout=5))
        except VmprobeError:
            info["state"] = "not answering"
        rows.append(info)
    return rows


def format_table(rows: list[dict]) -> str:
    now = time.time()
    lines = [f"{'NAME':12} {'KERNEL':28} {'ACCEL':5} {'PID':>7} {'UPTIME':>8} {'IDLE':>8} {'TIMEOUT':>8}"]
    for r in rows:
        idle = f"{now - r['last_used']:.0f}s" if r.get("last_used") else "-"
        lines.append(f"{r['name']:12} {r.get('release', '?'):28} {r.get('accel', '?'):5} {r['pid']:>7} "
                     f"{now - r.get('started', now):>7.0f}s {idle:>8} {r.get('idle_timeout', 0):>7.0f}s")
    return "\n".join(lines)


def default_name(spec: str) -> str:
    """A live VM's name from its kernel spec: ``debian:bookworm/arm64`` → ``bookworm-arm64``."""
    tail = spec.split(":", 1)[-1]
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", tail.split("?", 1)[0]).strip("-.")[-32:] or "vm"
    return name if NAME_RE.match(name) else "vm"
