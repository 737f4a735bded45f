"""Counting calls with breakpoints (check/gdb_hits.py), against recorded gdb/MI output."""
from __future__ import annotations

import time

import pytest
from test_gdb_state import HIT_PC, ReplayGdb, resp, running

from vmprobe.check import gdb_hits
from vmprobe.vm.gdb import State
from vmprobe.vm.hits import first_hit


def script(fake: ReplayGdb, hits: int) -> None:
    fake.answer("-exec-interrupt", resp("-exec-interrupt"), resp("-exec-interrupt"))
    fake.answer("-break-insert", resp("-break-insert"))
    fake.answer("-exec-continue", *[resp("-exec-continue (hot breakpoint)")] * hits,
                *[resp("-exec-continue (no breakpoint)")] * 3)
    fake.answer("-break-delete", resp("-break-delete"), resp("-break-delete"))


def slow_trigger():
    time.sleep(0.6)
    return "trigger done"


def test_every_stop_at_the_handler_is_counted_while_the_trigger_runs():
    fake = ReplayGdb()
    g = running(fake)
    script(fake, hits=3)
    value, counts = gdb_hits.count_calls(g, {"handler_pre": HIT_PC}, slow_trigger, timeout=20)
    assert value == "trigger done"
    assert counts.per_function == {"handler_pre": 3} and counts.capped == []
    assert g.state is State.RUNNING
    assert f"-break-insert -h *{HIT_PC:#x}" in fake.commands and "-break-delete 1" in fake.commands


def test_counting_stops_at_the_cap_and_the_guest_runs_on(monkeypatch):
    monkeypatch.setattr(gdb_hits, "CAP", 2)
    fake = ReplayGdb()
    g = running(fake)
    script(fake, hits=5)
    _, counts = gdb_hits.count_calls(g, {"handler_pre": HIT_PC}, slow_trigger, timeout=20)
    assert counts.per_function == {"handler_pre": 2} and counts.capped == ["handler_pre"]
    assert fake.sent("-break-delete") == 1 and g.state is State.RUNNING


def test_a_failing_trigger_is_raised_after_the_breakpoints_are_gone():
    fake = ReplayGdb()
    g = running(fake)
    script(fake, hits=0)

    def broken():
        raise TimeoutError("ssh timed out")
    with pytest.raises(TimeoutError, match="ssh timed out"):
        gdb_hits.count_calls(g, {"handler_pre": HIT_PC}, broken, timeout=20)
    assert "-break-delete 1" in fake.commands and g.state is State.RUNNING


def test_first_hit_then_sees_the_handler_entered_after_the_stop():
    fake = ReplayGdb()
    g = running(fake)
    fake.answer("-exec-interrupt", resp("-exec-interrupt"))
    fake.answer("-break-insert", resp("-break-insert"), resp("-break-insert"))
    fake.answer("-exec-continue", resp("-exec-continue (hot breakpoint)"), resp("-exec-continue (hot breakpoint)"),
                resp("-exec-continue (no breakpoint)"))
    fake.answer("-data-list-register-names", resp("-data-list-register-names"))
    fake.answer("-data-list-register-values", resp("-data-list-register-values"))
    fake.answer("-break-delete", resp("-break-delete"), resp("-break-delete"))
    site = 0xFFFFFFFF81000000   # never the handler: the handler's stop is the recorded one at HIT_PC
    hit = first_hit(g, site, ["rip"], then={HIT_PC: "handler_pre"}, timeout=5)
    assert hit.then == "handler_pre" and hit.to_dict()["then"] == "handler_pre"
    assert fake.commands[-5:] == ["-break-delete 1", f"-break-insert -h *{HIT_PC:#x}", "-exec-continue",
                                  "-break-delete 1", "-exec-continue"]
    assert g.state is State.RUNNING
