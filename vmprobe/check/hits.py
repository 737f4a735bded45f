"""Counting calls into a module's handler functions while a trigger runs.

The counter is the function tracer, filtered on the module's handler
functions (``set_ftrace_filter`` with ``name:mod:module``), counted from the
``trace`` buffer per function. Debian's kernels have no
``CONFIG_FUNCTION_PROFILER``; a gdb breakpoint per call costs a stop of the
whole guest (and x86 has four hardware breakpoints). Lost events (a full
ring buffer) are read from ``per_cpu/*/stats`` and reported: the count is then
a lower bound. Handlers ftrace cannot trace (no fentry site) are counted with
breakpoints instead (:mod:`vmprobe.check.gdb_hits`).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from vmprobe.check import tracefs

COUNTER = "ftrace-function"
BUFFER_KB = 4096


@dataclass
class Counts:
    per_function: dict[str, int] = field(default_factory=dict)
    traced: list[str] = field(default_factory=list)      # functions the filter accepted
    refused: list[str] = field(default_factory=list)     # functions ftrace cannot trace
    overruns: int = 0

    def of(self, name: str | None) -> int | None:
        if name is None or name not in self.traced:
            return None
        return self.per_function.get(name, 0)


class FunctionCounter:
    """The function tracer on ``functions`` of ``module`` in the guest of ``machine``."""

    def __init__(self, machine, module: str, functions: list[str]):
        self.m = machine
        self.module = module
        self.functions = sorted(set(functions))
        self.traced: list[str] = []
        self.refused: list[str] = []

    def start(self) -> None:
        filters = "; ".join(f"(echo '{f}:mod:{self.module}' >> $T/set_ftrace_filter) 2>/dev/null "
                            f"|| echo 'vmprobe-refused {f}'" for f in self.functions)
        out = self.m.run(tracefs.script(
            "echo 0 > $T/tracing_on", "echo nop > $T/current_tracer", "echo > $T/set_ftrace_filter",
            f"echo {BUFFER_KB} > $T/buffer_size_kb", filters, "cat $T/set_ftrace_filter"), 30).stdout
        self.refused = re.findall(r"^vmprobe-refused (\S+)", out, re.M)
        listed = {line.split()[0] for line in out.splitlines() if line and not line.startswith(("vmprobe-", "#"))}
        self.traced = [f for f in self.functions if f in listed]
        if self.traced:
            self.m.run(tracefs.script("echo > $T/trace", "echo function > $T/current_tracer",
                                      "echo 1 > $T/tracing_on"), 30)

    def clear(self) -> None:
        if self.traced:
            self.m.run(tracefs.script("echo > $T/trace"), 15)

    def read(self) -> Counts:
        counts = Counts(traced=list(self.traced), refused=list(self.refused))
        if not self.traced:
            return counts
        out = self.m.run(tracefs.script(
            "grep -v '^#' $T/trace | sed -E 's/.*[0-9]+\\.[0-9]+: ([^ ]+).*/\\1/' | sort | uniq -c",
            "echo vmprobe-stats", "cat $T/per_cpu/cpu*/stats"), 60).stdout
        counted, _, stats = out.partition("vmprobe-stats")
        for line in counted.splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[0].isdigit():
                counts.per_function[parts[1]] = counts.per_function.get(parts[1], 0) + int(parts[0])
        counts.overruns = sum(int(x) for x in re.findall(r"^overrun: (\d+)", stats, re.M))
        return counts

    def stop(self) -> None:
        self.m.run(tracefs.script("echo 0 > $T/tracing_on", "echo nop > $T/current_tracer",
                                  "echo > $T/set_ftrace_filter", "echo > $T/trace"), 30)
