"""gdb --on's side of the wire without a VM: log lines until the ``g`` frame, or the error."""
from __future__ import annotations

import socket
from types import SimpleNamespace

import pytest

from vmprobe.runs import live_client as lc
from vmprobe.runs.live_gdb import _until_go


def test_log_lines_then_the_gdb_command_line():
    a, b = socket.socketpair()
    logged: list[str] = []
    with a, b:
        lc.send(a, b"l", b"vmprobe: 87000 kernel symbols")
        lc.send_json(a, b"g", {"command": ["gdb", "--nx", "-x", "/tmp/x/vmprobe.gdb"]})
        go = _until_go(SimpleNamespace(sock=b, name="vm"), logged.append)
    assert go["command"][-1] == "/tmp/x/vmprobe.gdb" and logged == ["vmprobe: 87000 kernel symbols"]


def test_the_supervisors_error_or_its_death_is_raised():
    a, b = socket.socketpair()
    with a, b:
        lc.send_json(a, b"x", {"error": {"rendered": "error: insmod vmprobe_fork.ko failed", "kind": "module",
                                         "exit_code": 66}})
        with pytest.raises(lc.LiveError) as err:
            _until_go(SimpleNamespace(sock=b, name="vm"), print)
    assert err.value.exit_code == 66 and "insmod" in err.value.render()
    a, b = socket.socketpair()
    with b:
        a.close()
        with pytest.raises(lc.LiveError, match="went away before gdb could attach") as err:
            _until_go(SimpleNamespace(sock=b, name="vm"), print)
    assert err.value.exit_code == 67
