"""The current task on arm64 (SP_EL0 holds it; the BTF found in a raw Image) and on i386 (fs_base +
the address decoded from a function that loads current)."""
from __future__ import annotations

import struct

from test_gdb_state import ReplayGdb, attached, btf_blob, memory_handler

from vmprobe.arch import PROFILES
from vmprobe.formats import btf
from vmprobe.vm import task_offsets
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


#: the start of i386 6.1's __ia32_sys_getpid, read from a guest: nop5 (fentry), push ebp,
#: xor ecx,ecx, mov edx,1, then mov %fs:0xc6e5e6e8,%eax (current), mov ebp,esp, call …
GETPID_386 = bytes.fromhex("3e8d7426005531c9ba0100000064a1e8e6e5c689e5e8c68800005dc3")


def test_i386_current_is_the_first_fs_load_of_its_reader():
    assert task_offsets.fs_load_address(GETPID_386) == 0xC6E5E6E8
    # mov %fs:0x12345678,%edx (64 8b 15 …); a %fs load through a register is not it
    assert task_offsets.fs_load_address(bytes.fromhex("64 8b 10 64 8b 15 78 56 34 12")) == 0x12345678
    assert task_offsets.fs_load_address(bytes.fromhex("5589e5e8c68800005dc3")) is None


def test_i386_task_is_read_through_fs_base_and_the_decoded_address():
    fs_base, reader, task = 0x1E03B000, 0xC6099020, 0xC1D6A880
    layout = TaskLayout("fs_base", 0, pid=1108, tgid=1112, comm=1412, flags=28, pointer_size=4, reader=reader)
    blob = bytearray(1428)
    struct.pack_into("<ii", blob, 1108, 117, 117)
    blob[1412:1421] = b"dropbear\0"
    fake = ReplayGdb(**{"-data-read-memory-bytes": memory_handler({
        reader: GETPID_386.ljust(task_offsets.READER_WINDOW, b"\xcc"),
        (fs_base + 0xC6E5E6E8) & 0xFFFFFFFF: struct.pack("<I", task), task: bytes(blob)})})
    t = current_task(attached(fake), layout, base=fs_base)
    assert (t.pid, t.comm, t.kernel_thread, t.address) == (117, "dropbear", False, task)
