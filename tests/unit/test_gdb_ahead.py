"""gdb started ahead of time (vm/gdb_ahead.py): taken once, or ended if never taken."""
from __future__ import annotations

import shutil

import pytest

from vmprobe.errors import ConfigError
from vmprobe.vm.gdb import State
from vmprobe.vm.gdb_ahead import GdbStarter

pytestmark = pytest.mark.skipif(not shutil.which("gdb"), reason="needs gdb")


def test_started_ahead_then_taken_once():
    starter = GdbStarter("gdb")
    starter.ahead()
    first = starter._thread
    starter.ahead()                      # a no-op while one is on its way
    assert starter._thread is first
    gdb = starter.take()
    try:
        assert gdb.state is State.UNATTACHED
        assert gdb.command("-gdb-version")["message"] == "done"
    finally:
        gdb.close()
    second = starter.take()              # nothing ahead: started on the spot
    assert second is not gdb
    second.close()


def test_one_never_taken_is_ended_by_close():
    starter = GdbStarter("gdb")
    starter.ahead()
    starter._thread.join(30)
    process = starter._made[0]._gdb.gdb_process
    starter.close()
    assert process.poll() is not None


def test_a_missing_gdb_is_the_takers_error():
    starter = GdbStarter("no-such-gdb-binary")
    starter.ahead()
    with pytest.raises(ConfigError, match="no-such-gdb-binary not found"):
        starter.take()
