"""tracefs in the guest: where it is, and the shell that finds it."""
from __future__ import annotations

#: a shell prologue that sets $T to the tracefs mount (mounting it if needed)
FIND = ("T=/sys/kernel/tracing; [ -e $T/trace ] || mount -t tracefs nodev $T 2>/dev/null; "
        "[ -e $T/trace ] || T=/sys/kernel/debug/tracing; ")


def script(*lines: str) -> str:
    return FIND + "; ".join(lines)
