"""What the fault suites must leave behind: nothing.

``leaves_nothing_behind`` (module scope) takes stock before a module of fault
tests runs and again after its last test: no process started by this pytest
process may remain (QEMU, gdb, ``vmprobe`` CLIs, helpers), no vmprobe QEMU
under the session's runtime dir, no unix socket bound there and no machine
dir. The session's pooled VMs (alive on purpose) are
left out of the count.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from vmprobe.host.processes import runtime_dir
from vmprobe.pytest_plugin.pool import session_state
from vmprobe.pytest_plugin.procscan import leftovers


def _children(pid: int) -> dict[str, str]:
    """This process's descendants: pid → command line."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = {}, {pid}
    while frontier:
        frontier = {p for p, parent in parents.items() if parent in frontier and p not in found}
        for p in frontier:
            try:
                found[p] = (Path(f"/proc/{p}/cmdline").read_bytes().replace(b"\0", b" ")
                            .decode(errors="replace").strip())
            except OSError:
                found[p] = "?"
    return {str(p): cmd for p, cmd in found.items()}


def _unix_sockets(under: Path) -> list[str]:
    return [line.split()[-1] for line in Path("/proc/net/unix").read_text().splitlines()[1:]
            if f" {under}/" in line]


def traces(config: pytest.Config) -> set[str]:
    """Everything of vmprobe's that is alive or on disk now, this session's pooled VMs aside."""
    state = session_state(config)
    pool = state.own_machine_traces()
    base = runtime_dir()
    found = {f"process {pid}: {cmd}" for pid, cmd in _children(os.getpid()).items()
             if pid not in pool and not any(d in cmd for d in pool if d.startswith("/"))}
    found |= {f"leftover {x}" for x in leftovers(base, exclude=pool)}
    found |= {f"socket {s}" for s in _unix_sockets(base) if not any(s.startswith(d + "/") for d in pool)}
    return found


@pytest.fixture(scope="module")
def leaves_nothing_behind(request: pytest.FixtureRequest):
    before = traces(request.config)
    yield
    after = traces(request.config) - before
    assert not after, "the fault set left behind:\n" + "\n".join(sorted(after))
