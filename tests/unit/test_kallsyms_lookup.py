"""Text symbols from kallsyms text (check/symbols.py): the first text line of each name."""
from __future__ import annotations

from vmprobe.check.symbols import _text_symbols

KALLSYMS = """\
ffffffff81000000 T _text
ffffffff81001000 t kernel_clone_helper
ffffffff81002000 d kernel_clone
ffffffff81003000 T kernel_clone
ffffffff81004000 T kernel_clone
ffffffff81005000 t vfs_read\t[ext4]
ffffffff81006000 W weak_one
0000000000012340 D current_task
ffffffff81007000 t last_one"""


def test_first_text_line_of_each_name():
    found = _text_symbols(KALLSYMS, ["kernel_clone", "vfs_read", "weak_one", "last_one", "current_task",
                                     "missing", "kernel_clone_helper", "_text"])
    assert found == {"kernel_clone": 0xffffffff81003000, "vfs_read": 0xffffffff81005000,
                     "weak_one": 0xffffffff81006000, "last_one": 0xffffffff81007000,
                     "kernel_clone_helper": 0xffffffff81001000, "_text": 0xffffffff81000000}


def test_a_name_that_is_the_tail_of_another_is_not_taken_for_it():
    assert _text_symbols("ffffffff81000000 T do_kernel_clone\n", ["kernel_clone"]) == {}
    assert _text_symbols("ffffffff81000000 T xkernel_clone\n", ["kernel_clone"]) == {}
