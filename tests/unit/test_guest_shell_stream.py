"""The guest shell's output framing: what comes before a command's marker is its output."""
from __future__ import annotations

import io

import pytest

from vmprobe.vm.guest_shell import _Stream

MARKER = b"vmprobe-sh-0123456789abcdef "


@pytest.mark.parametrize("cut", range(1, 40))
def test_marker_split_anywhere_is_found_and_never_passed_on(cut):
    data = b"line one\nno newline at the end" + MARKER + b"7\n"
    sink = io.BytesIO()
    s = _Stream(MARKER, sink)
    for i in range(0, len(data), cut):
        s.feed(data[i:i + cut])
    assert s.output == b"line one\nno newline at the end"
    assert sink.getvalue() == s.output          # streamed as it came, the marker held back
    assert s.after_marker() == b"7\n"


def test_output_is_passed_on_before_the_marker_arrives():
    sink = io.BytesIO()
    s = _Stream(MARKER, sink)
    s.feed(b"x" * 1000)
    assert s.end is None
    assert len(sink.getvalue()) >= 1000 - len(MARKER)   # only a possible marker prefix is held


def test_no_marker_means_no_end():
    s = _Stream(MARKER, None)
    s.feed(MARKER[:-1])
    assert s.end is None and s.after_marker() == b""


def test_a_short_line_is_passed_on_at_once():
    """'started\\n' is shorter than the marker: only a tail that could begin the marker waits."""
    sink = io.BytesIO()
    s = _Stream(MARKER, sink)
    s.feed(b"started\n")
    assert sink.getvalue() == b"started\n"
    s.feed(b"half " + MARKER[:5])
    assert sink.getvalue() == b"started\nhalf "      # 'vmpro' might begin the marker: held
    s.feed(b"no")                                   # it did not
    assert sink.getvalue() == b"started\nhalf vmprono"
