"""Which task is on a stopped vCPU: ``current``'s pid, tgid and comm, through the gdbstub.

No vmlinux with debug info is needed: the layout comes from the kernel's own
BTF (the ``.BTF`` section of the vmlinux inside the image, what
``/sys/kernel/btf/vmlinux`` serves), read once per kernel image on the host
and cached (``$VMPROBE_CACHE/tasklayout/<image sha256>.json``):

* ``current`` on x86_64 is the per-CPU variable ``current_task`` (6.2–6.14:
  ``pcpu_hot.current_task``), read at ``gs_base`` + its offset in
  ``.data..percpu`` (zero-based on x86_64; ``gs_base`` is the kernel's per-CPU
  base whenever the vCPU runs kernel code, as at a breakpoint in the kernel);
* ``task_struct``'s ``pid``, ``tgid``, ``comm`` and ``flags`` (``PF_KTHREAD``).

Other arches, and kernels without BTF, get a reason instead of a task.
"""
from __future__ import annotations

import json
import os
import struct
from dataclasses import asdict, dataclass

from vmprobe.config import cache_dir
from vmprobe.formats import btf as btf_format
from vmprobe.formats import elf
from vmprobe.kernels.local import decompress, x86_payload
from vmprobe.vm.gdb import Gdb

PF_KTHREAD = 0x00200000
LAYOUT_FORMAT = 1


class NoTaskInfo(Exception):
    """Why the current task cannot be read on this kernel/arch."""


@dataclass(frozen=True)
class TaskLayout:
    base_register: str    # the register holding the per-CPU base
    current: int          # offset of the current task pointer from that base
    pid: int
    tgid: int
    comm: int
    flags: int
    pointer_size: int = 8


def layout_from_btf(data: bytes) -> TaskLayout:
    """The x86_64 layout from a BTF blob."""
    info = btf_format.parse(data, ("task_struct", "pcpu_hot"))
    fields = {n: info.member("task_struct", n) for n in ("pid", "tgid", "comm", "flags")}
    missing = [n for n, m in fields.items() if m is None]
    if missing:
        raise NoTaskInfo(f"the kernel's BTF has no task_struct.{', '.join(missing)}")
    if "current_task" in info.percpu:
        current = info.percpu["current_task"]
    elif "pcpu_hot" in info.percpu and info.member("pcpu_hot", "current_task"):
        current = info.percpu["pcpu_hot"] + info.member("pcpu_hot", "current_task").offset
    else:
        raise NoTaskInfo("the kernel's BTF has no per-CPU current_task (nor pcpu_hot.current_task)")
    return TaskLayout("gs_base", current, fields["pid"].offset, fields["tgid"].offset,
                      fields["comm"].offset, fields["flags"].offset)


def _vmlinux_btf(kernel) -> bytes:
    image = kernel.image_path.read_bytes()
    if image[:4] == b"\x7fELF":
        vmlinux = image
    else:
        found = x86_payload(image) if len(image) > 0x210 and image[0x202:0x206] == b"HdrS" else None
        if found is None:
            raise NoTaskInfo(f"cannot find the vmlinux inside {kernel.image_path.name}")
        vmlinux = decompress(*found)
    try:
        data = elf.section(vmlinux, ".BTF")
    except ValueError:
        data = None
    if not data:
        raise NoTaskInfo(f"kernel {kernel.release} has no BTF (CONFIG_DEBUG_INFO_BTF is off)")
    return data


def task_layout(kernel, profile) -> TaskLayout:
    """The layout for ``kernel`` (a Kernel) on ``profile`` (its ArchProfile); raises NoTaskInfo."""
    if profile.name != "x86_64":
        raise NoTaskInfo(f"reading the current task is not implemented for {profile.name} guests")
    key = kernel.image_sha256 or f"{kernel.release}-{kernel.image_path.stat().st_size}"
    path = cache_dir() / "tasklayout" / f"{key}.json"
    try:
        saved = json.loads(path.read_text())
        if saved.pop("format", None) == LAYOUT_FORMAT:
            return TaskLayout(**saved)
    except (OSError, ValueError, TypeError):
        pass
    layout = layout_from_btf(_vmlinux_btf(kernel))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps({"format": LAYOUT_FORMAT, **asdict(layout)}) + "\n")
    tmp.replace(path)
    return layout


@dataclass(frozen=True)
class Task:
    pid: int
    tgid: int
    comm: str
    kernel_thread: bool
    address: int

    def to_dict(self) -> dict:
        return {"pid": self.pid, "tgid": self.tgid, "comm": self.comm,
                "kernel_thread": self.kernel_thread, "task_struct": f"{self.address:#x}"}


def current_task(gdb: Gdb, layout: TaskLayout) -> Task:
    """The task on gdb's selected vCPU (the guest must be stopped in the kernel)."""
    base = gdb.registers([layout.base_register])[layout.base_register]
    if not base:
        raise NoTaskInfo(f"{layout.base_register} is 0: the vCPU is not in the kernel")
    task, = struct.unpack("<Q", gdb.read_memory(base + layout.current, layout.pointer_size))
    pid, = struct.unpack("<i", gdb.read_memory(task + layout.pid, 4))
    tgid, = struct.unpack("<i", gdb.read_memory(task + layout.tgid, 4))
    flags, = struct.unpack("<I", gdb.read_memory(task + layout.flags, 4))
    comm = gdb.read_memory(task + layout.comm, 16).split(b"\0", 1)[0].decode(errors="replace")
    return Task(pid, tgid, comm, bool(flags & PF_KTHREAD), task)


__all__ = ["NoTaskInfo", "Task", "TaskLayout", "current_task", "layout_from_btf", "task_layout"]


def _main(argv: list[str]) -> int:  # pragma: no cover - a manual check: python -m vmprobe.vm.tasks SPEC
    from vmprobe.arch import profile_for
    from vmprobe.kernels import get_kernel
    kernel = get_kernel(argv[0])
    print(task_layout(kernel, profile_for(kernel.arch)))
    return 0


if __name__ == "__main__":  # pragma: no cover
    import sys
    raise SystemExit(_main(sys.argv[1:]))

