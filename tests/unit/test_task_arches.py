"""The current task on arm64 (SP_EL0 holds it) and the BTF found in a raw arm64 Image."""
from __future__ import annotations

import struct

from test_gdb_state import ReplayGdb, attached, btf_blob, memory_handler

from vmprobe.arch import PROFILES
from vmprobe.formats import btf
from vmprobe.vm.tasks import TaskLayout, current_task, layout_from_btf


def test_arm64_layout_is_the_register_itself():
    layout = layout_from_btf(btf_blob(percpu_var="something_else"),
                             current_register=PROFILES["arm64"].current_register)
    assert layout == TaskLayout("SP_EL0", 0, 2416, 2420, 2976, 44, holds_current=True)


def test_arm64_task_is_read_at_sp_el0_without_a_per_cpu_hop():
    layout = TaskLayout("SP_EL0", 0, pid=2416, tgid=2420, comm=2976, flags=44, holds_current=True)
    task = 0xFFFF0000C1234000
    blob = bytearray(3000)
    struct.pack_into("<ii", blob, 2416, 55, 54)
    blob[2976:2980] = b"sh\0\0"
    fake = ReplayGdb(**{"-data-read-memory-bytes": memory_handler({task: bytes(blob)})})
    t = current_task(attached(fake), layout, base=task)
    assert (t.pid, t.tgid, t.comm, t.kernel_thread, t.address) == (55, 54, "sh", False, task)


def test_btf_is_found_in_a_raw_image_past_a_false_header():
    blob = btf_blob()
    false = b"\x9f\xeb\x01\x00\x18\x00\x00\x00" + struct.pack("<4I", 0, 99, 7, 1 << 30)   # lengths disagree
    image = b"\0" * 0x38 + b"ARM\x64" + b"\0" * 64 + false + b"code" + blob + b"rodata after it"
    assert btf.find_blob(image) == blob
    assert btf.find_blob(image[:-len(blob) - 15]) is None
