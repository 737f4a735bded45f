"""Which task is on a stopped vCPU: ``current``'s pid, tgid and comm, through the gdbstub.

No vmlinux with debug info is needed: the layout comes from the kernel's own
BTF (the ``.BTF`` section of the vmlinux inside the image, what
``/sys/kernel/btf/vmlinux`` serves), read once per kernel image on the host
and cached (``$VMPROBE_CACHE/tasklayout/<image sha256>.json``):

* ``current`` on x86_64 is the per-CPU variable ``current_task`` (6.2–6.14:
  ``pcpu_hot.current_task``), read at ``gs_base`` + its offset in
  ``.data..percpu`` (zero-based on x86_64; ``gs_base`` is the kernel's per-CPU
  base whenever the vCPU runs kernel code, as at a breakpoint in the kernel).
  The offset is in the BTF when pahole described per-CPU variables; otherwise
  (bullseye's 5.10) it comes from the guest's /proc/kallsyms;
* ``current`` on arm64 is ``SP_EL0`` itself (the kernel keeps the task
  pointer there while it runs; QEMU's gdbstub shows the register), and its
  BTF is found in the raw ``Image`` by its header;
* ``task_struct``'s ``pid``, ``tgid``, ``comm`` and ``flags`` (``PF_KTHREAD``).

* on i386 (no BTF, no data symbols in kallsyms) both come another way:
  :mod:`vmprobe.vm.task_offsets`.

Which register says what is the arch profile's (``percpu_base_register``,
``current_register``, ``current_reader``). Other arches, and kernels without
BTF, get a reason instead of a task.
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
from vmprobe.vm import task_offsets
from vmprobe.vm.gdb import Gdb

PF_KTHREAD = 0x00200000
LAYOUT_FORMAT = 2


class NoTaskInfo(Exception):
    """Why the current task cannot be read on this kernel/arch."""


@dataclass(frozen=True)
class TaskLayout:
    base_register: str    # the register holding the per-CPU base (or the task itself: ``holds_current``)
    current: int          # offset of the current task pointer from that base
    pid: int
    tgid: int
    comm: int
    flags: int
    pointer_size: int = 8
    holds_current: bool = False   # the register's value is the task pointer (arm64's SP_EL0)
    reader: int = 0               # i386: a function whose first %fs load is current's (per boot: KASLR)


#: per-CPU variables that hold (or start with) the current task pointer, most recent first
CURRENT_VARS = ("current_task", "pcpu_hot")


def layout_from_btf(data: bytes, percpu: dict[str, int] | None = None, current_register: str = "") -> TaskLayout:
    """The layout from a BTF blob: with ``current_register``, the task is that register's
    value (arm64); else (x86_64) the per-CPU offsets come from its ``.data..percpu``
    section, else from ``percpu`` (name → offset, from kallsyms: older pahole, e.g.
    bullseye's 5.10, does not describe per-CPU variables)."""
    info = btf_format.parse(data, ("task_struct", "pcpu_hot"))
    fields = {n: info.member("task_struct", n) for n in ("pid", "tgid", "comm", "flags")}
    missing = [n for n, m in fields.items() if m is None]
    if missing:
        raise NoTaskInfo(f"the kernel's BTF has no task_struct.{', '.join(missing)}")
    if current_register:
        return TaskLayout(current_register, 0, fields["pid"].offset, fields["tgid"].offset,
                          fields["comm"].offset, fields["flags"].offset, holds_current=True)
    offsets = {**(percpu or {}), **info.percpu}
    if "current_task" in offsets:
        current = offsets["current_task"]
    elif "pcpu_hot" in offsets and info.member("pcpu_hot", "current_task"):
        current = offsets["pcpu_hot"] + info.member("pcpu_hot", "current_task").offset
    else:
        where = "the kernel's BTF" if percpu is None else "the kernel's BTF or kallsyms"
        raise NoTaskInfo(f"{where} has no per-CPU current_task (nor pcpu_hot.current_task)")
    return TaskLayout("gs_base", current, fields["pid"].offset, fields["tgid"].offset,
                      fields["comm"].offset, fields["flags"].offset)


def percpu_from_kallsyms(text: str, names=CURRENT_VARS) -> dict[str, int]:
    """Per-CPU symbols' offsets from /proc/kallsyms text (x86_64 lists them zero-based,
    untouched by KASLR)."""
    found = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 3 and fields[2] in names and fields[2] not in found:
            found[fields[2]] = int(fields[0], 16)
    return found


def vmlinux_btf(kernel) -> bytes:
    image = kernel.image_path.read_bytes()
    if image[:2] == b"\x1f\x8b":     # arm64's vmlinuz may be a gzip'ed Image
        image = decompress(image, "gzip")
    if image[:4] == b"\x7fELF":
        vmlinux = image
    elif image[0x38:0x3C] == b"ARM\x64":   # a raw arm64 Image: no sections, find the header
        data = btf_format.find_blob(image)
        if data is None:
            raise NoTaskInfo(f"kernel {kernel.release} has no BTF in its Image (CONFIG_DEBUG_INFO_BTF is off?)")
        return data
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


def task_layout(kernel, profile, kallsyms=None) -> TaskLayout:
    """The layout for ``kernel`` (a Kernel) on ``profile`` (its ArchProfile); raises NoTaskInfo.

    ``kallsyms()`` returns the guest's /proc/kallsyms text (or the lines of the
    per-CPU current-task symbols); it is asked only when the BTF lacks them."""
    if not (profile.percpu_base_register or profile.current_register):
        raise NoTaskInfo(f"reading the current task is not implemented for {profile.name} guests")
    key = kernel.image_sha256 or f"{kernel.release}-{kernel.image_path.stat().st_size}"
    path = cache_dir() / "tasklayout" / f"{key}.json"
    try:
        saved = json.loads(path.read_text())
        if saved.pop("format", None) == LAYOUT_FORMAT:
            return TaskLayout(**saved)
    except (OSError, ValueError, TypeError):
        pass
    if profile.current_reader:
        layout = _layout_from_headers(kernel, profile)
    else:
        data = vmlinux_btf(kernel)
        try:
            layout = layout_from_btf(data, current_register=profile.current_register)
        except NoTaskInfo:
            if kallsyms is None:
                raise
            layout = layout_from_btf(data, percpu_from_kallsyms(kallsyms()))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps({"format": LAYOUT_FORMAT, **asdict(layout)}) + "\n")
    tmp.replace(path)
    return layout


def _layout_from_headers(kernel, profile) -> TaskLayout:
    """task_struct's offsets from an object built against the kernel's headers (i386)."""
    from vmprobe import modules
    from vmprobe.errors import VmprobeError
    try:
        built = modules.build(task_offsets.SOURCE, kernel)[0]
        found = task_offsets.offsets_from_object(built.path.read_bytes())
    except (VmprobeError, task_offsets.NoOffsets, OSError) as exc:
        raise NoTaskInfo(f"task_struct's offsets could not be built for {kernel.release}: {exc}") from None
    return TaskLayout(profile.percpu_base_register, 0, found["pid"], found["tgid"], found["comm"],
                      found["flags"], pointer_size=found["pointer_size"])


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


def current_task(gdb: Gdb, layout: TaskLayout, base: int | None = None) -> Task:
    """The task on gdb's selected vCPU (the guest must be stopped in the kernel); ``base``:
    the per-CPU base register's value if it was read already."""
    if base is None:
        base = gdb.registers([layout.base_register])[layout.base_register]
    if not base:
        raise NoTaskInfo(f"{layout.base_register} is 0: the vCPU is not in the kernel")
    current = layout.current
    if layout.reader:
        current = task_offsets.fs_load_address(gdb.read_memory(layout.reader, task_offsets.READER_WINDOW))
        if current is None:
            raise NoTaskInfo(f"no %fs load in the first {task_offsets.READER_WINDOW} bytes at {layout.reader:#x}")
    if layout.holds_current:
        task = base
    else:
        word = gdb.read_memory((base + current) & ((1 << 8 * layout.pointer_size) - 1), layout.pointer_size)
        task, = struct.unpack("<Q" if layout.pointer_size == 8 else "<I", word)
    # one read for the fields (a few KB apart: one MI command instead of four)
    start = min(layout.pid, layout.tgid, layout.comm, layout.flags)
    end = max(layout.pid + 4, layout.tgid + 4, layout.comm + 16, layout.flags + 4)
    blob = gdb.read_memory(task + start, end - start)
    pid, = struct.unpack_from("<i", blob, layout.pid - start)
    tgid, = struct.unpack_from("<i", blob, layout.tgid - start)
    flags, = struct.unpack_from("<I", blob, layout.flags - start)
    comm = blob[layout.comm - start:layout.comm - start + 16].split(b"\0", 1)[0].decode(errors="replace")
    return Task(pid, tgid, comm, bool(flags & PF_KTHREAD), task)


__all__ = ["NoTaskInfo", "Task", "TaskLayout", "current_task", "layout_from_btf", "percpu_from_kallsyms",
           "task_layout"]


def _main(argv: list[str]) -> int:  # pragma: no cover - a manual check: python -m vmprobe.vm.tasks SPEC
    from vmprobe.arch import profile_for
    from vmprobe.kernels import get_kernel
    kernel = get_kernel(argv[0])
    print(task_layout(kernel, profile_for(kernel.arch)))
    return 0


if __name__ == "__main__":  # pragma: no cover
    import sys
    raise SystemExit(_main(sys.argv[1:]))

