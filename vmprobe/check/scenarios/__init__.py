"""Built-in scenarios: the article's claims as checks (``vmprobe probe --scenario NAME``).

One row per scenario: its module (``modules/templates/scenarios/``), the claim
it proves, the class that proves it (imported when used), the CPUs it wants
and the era quirks it needs (``eras.py``). ``fork``, the default, is the probe
check itself (``check/probe.py``) and has no row.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass

FORK = "fork"


@dataclass(frozen=True)
class Scenario:
    name: str
    module: str                   # the module's name (its .c under templates/scenarios/)
    claim: str
    runner: str                   # "module:Class" under vmprobe.check.scenarios
    smp: int = 1                  # CPUs it runs on unless told otherwise
    needs: tuple[str, ...] = ()   # era quirks (eras.QUIRKS) the kernel must have, else the verdict is skip

    def check(self, machine, log=None):
        module, cls = self.runner.split(":")
        return getattr(importlib.import_module(f"{__name__}.{module}"), cls)(machine, self, log=log)


SCENARIOS = {s.name: s for s in (
    Scenario("modify-register", "vmprobe_modreg",
             "a kretprobe handler rewrites a system call's return value in the return register",
             "modify_register:ModifyRegister"),
    Scenario("modify-data", "vmprobe_moddata",
             "a handler writes a field of a kernel object (a task's comm); rmmod undoes it",
             "modify_data:ModifyData"),
    Scenario("fault-handler", "vmprobe_fault",
             "kprobe.fault_handler sees a fault raised in the pre-handler; the kernel survives",
             "fault_handler:FaultHandler", needs=("fault_handler",)),
    Scenario("smp", "vmprobe_smp",
             "one handler on every CPU at once: per-CPU hits, and the updates a plain counter loses",
             "smp:Smp", smp=2),
)}
NAMES = (FORK, *SCENARIOS)


def get_scenario(name: str | None) -> Scenario | None:
    """The scenario called ``name``; None for the fork check (``None`` or ``"fork"``)."""
    if name in (None, FORK):
        return None
    try:
        return SCENARIOS[name]
    except KeyError:
        raise ValueError(f"no scenario {name!r} (known: {', '.join(NAMES)})") from None


def default_smp(name: str | None) -> int:
    scenario = get_scenario(name)
    return scenario.smp if scenario else 1


__all__ = ["FORK", "NAMES", "SCENARIOS", "Scenario", "default_smp", "get_scenario"]
