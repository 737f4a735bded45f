"""Telling a guest panic from a clean power-off, with the panic's report on the console.

QEMU gets a pvpanic device with ``-action panic=none``: the guest kernel's
panic notifier writes to the device, QEMU sends the QMP event
``GUEST_PANICKED`` and lets the guest go on. So the panic's report reaches the
console even when the kernel prints it only after the notifiers (a panic in
NMI context defers its printk output to ``console_flush_on_panic``; with
``panic=exit-failure`` QEMU was gone by then and the console said nothing).
Then ``panic=-1`` reboots the guest, which ``-no-reboot`` turns into QEMU's
exit — status 0, like a poweroff: the event is what tells the two apart.
"""
from __future__ import annotations

import asyncio
import time

from vmprobe.errors import GuestCrash
from vmprobe.formats.crash import find_crashes


def qemu_args(device: str = "pvpanic") -> tuple[str, ...]:
    """The pvpanic device (``pvpanic`` on ISA, ``pvpanic-pci`` on virt) and the action."""
    return ("-device", device, "-action", "panic=none")

PANIC_EVENT = "GUEST_PANICKED"
#: How an exit reason says it (Machine._exit_reason); raise_qemu_gone looks for it.
PANIC_NOTE = "(guest panic reported through pvpanic)"
#: How long to let the QMP reader pick up events still in the socket after QEMU exited.
DRAIN_SECONDS = 0.5


class PanicWatch:
    """Remembers whether QEMU reported a guest panic on its QMP connection."""

    def __init__(self) -> None:
        self.event: dict | None = None
        self.drained = False  # QEMU is gone and its last events were read: nothing more can come

    @property
    def panicked(self) -> bool:
        return self.event is not None

    def poll(self, qmp, *, drain: bool = False) -> bool:
        """Look at the QMP events received so far (``drain``: wait up to DRAIN_SECONDS for the
        ones still in the socket — after QEMU's exit, where none can come later)."""
        if self.event is not None or qmp is None or self.drained:
            return self.panicked
        self.drained = drain
        deadline = time.monotonic() + (DRAIN_SECONDS if drain else 0)
        while self.event is None:
            try:
                event = qmp.pull_event(wait=max(0.01, deadline - time.monotonic()) if drain else False)
            except (asyncio.TimeoutError, TimeoutError):
                break
            except Exception:  # the connection is gone: what was read is all there is
                break
            if event is None:
                if not drain or time.monotonic() >= deadline:
                    break
                continue
            if event.get("event") == PANIC_EVENT:
                self.event = event
        return self.panicked


def silent_panic_message(reason: str, what: str) -> str:
    """What to say when pvpanic reported a panic but the console holds no report of it."""
    return (f"the guest kernel panicked (reported through pvpanic; no panic report on the console); "
            f"QEMU {reason} while waiting for {what}")


__all__ = ["DRAIN_SECONDS", "PANIC_EVENT", "PANIC_NOTE", "PanicWatch", "qemu_args", "silent_panic_message"]


def raise_if_fatal(console_text: str, during: str) -> None:
    """GuestCrash for the first fatal report in ``console_text``. A splat the kernel lives on
    after (a WARNING, a debug check) is a finding for the caller to collect, not a crash."""
    crashes = [c for c in find_crashes(console_text) if not c.is_splat]
    if crashes:
        raise GuestCrash(f"the guest kernel reported {crashes[0].title} {during}", detail=crashes[0].excerpt)
