"""vmprobe.formats.kprobes_list: the debugfs list and the 2.6-era SysRq listing."""
from __future__ import annotations

from vmprobe.formats.kprobes_list import ProbeRecord, parse_debugfs_list, parse_sysrq_listing

DEBUGFS = """\
ffffffff8ca941a0  k  kernel_clone+0x0    [FTRACE]
ffffffffc0a01010  r  foo+0x4  mymod [DISABLED][OPTIMIZED]
ffffffff8c8f1234  k  do_sys_openat2+0x1a  vmprobe_fork [OPTIMIZED]
c011ea60  k  do_fork+0x0
0000000000000000  k  kernel_clone+0x0  mymod [GONE]
not a probe line
"""


def test_debugfs_records():
    recs = parse_debugfs_list(DEBUGFS)
    assert len(recs) == 5
    a, b, c, d, e = recs
    assert a == ProbeRecord(0xffffffff8ca941a0, "kernel_clone", 0, "k", None, ["FTRACE"])
    assert b == ProbeRecord(0xffffffffc0a01010, "foo", 4, "r", "mymod", ["DISABLED", "OPTIMIZED"])
    assert (c.symbol, c.offset, c.module, c.flags) == ("do_sys_openat2", 0x1a, "vmprobe_fork", ["OPTIMIZED"])
    assert (d.address, d.symbol, d.offset, d.module, d.flags) == (0xc011ea60, "do_fork", 0, None, [])
    assert (e.address, e.module, e.flags) == (0, "mymod", ["GONE"])


def test_flags_and_has():
    rec = parse_debugfs_list("ffffffffc0a01010  r  foo+0x4  mymod [DISABLED][OPTIMIZED]\n")[0]
    assert rec.has("DISABLED") and rec.has("OPTIMIZED")
    assert not rec.has("FTRACE") and not rec.has("GONE")


def test_to_dict_hex_address():
    rec = parse_debugfs_list("ffffffff8ca941a0  k  kernel_clone+0x0    [FTRACE]")[0]
    d = rec.to_dict()
    assert d["address"] == "0xffffffff8ca941a0"
    assert d["flags"] == ["FTRACE"]
    assert d["type"] == "k"


def test_tolerates_surrounding_whitespace_and_empty_input():
    assert parse_debugfs_list("") == []
    rec = parse_debugfs_list("   ffffffff8ca941a0  k  kernel_clone+0x0  \n")[0]
    assert rec.symbol == "kernel_clone" and rec.flags == []


def test_sysrq_line_matches_debugfs_record():
    old = parse_sysrq_listing("[<c011ea60>] do_fork+0x0/0x1de")
    new = parse_debugfs_list("c011ea60  k  do_fork+0x0")
    assert len(old) == len(new) == 1
    for name in ("address", "symbol", "offset", "type", "module", "flags"):
        assert getattr(old[0], name) == getattr(new[0], name), name
    assert old[0].size == 0x1de
    assert old[0].handler is None


def test_sysrq_line_with_module_and_handler():
    rec = parse_sysrq_listing("[   42.000001] [<c011ea64>] do_fork+0x4/0x1de [mymod] handler_pre")[0]
    assert (rec.address, rec.symbol, rec.offset, rec.size) == (0xc011ea64, "do_fork", 4, 0x1de)
    assert rec.module == "mymod"
    assert rec.handler == "handler_pre"


def test_sysrq_multiline_listing():
    text = "[<c011ea60>] do_fork+0x0/0x1de\n[<c0123456>] sys_open+0x0/0x20\n"
    recs = parse_sysrq_listing(text)
    assert [(r.symbol, r.module, r.handler) for r in recs] == [
        ("do_fork", None, None), ("sys_open", None, None)]


def test_sysrq_2_6_format_with_symbolized_handler():
    """The 2.6.10 patch's line: probed sym+off/size, a tab, the handler via print_symbol."""
    text = ("[   12.345678] sysrq: Show kprobes\n"
            "[   12.345700] [<ffffffff8107a2b0>] kernel_clone+0x0/0x3d0\thandler_pre+0x0/0x30 [vmprobe_fork]\n"
            "[<c011ea60>] do_fork+0x0/0x1de\thandler_pre+0x0/0x30 [kprobe_example]\n"
            "[<ffffffffc0a01010>] my_fn+0x10/0x40 [mymod]\tpre_handler_kretprobe+0x0/0x90\n")
    a, b, c = parse_sysrq_listing(text)
    assert (a.address, a.symbol, a.offset, a.size, a.module) == (0xffffffff8107a2b0, "kernel_clone", 0, 0x3d0, None)
    assert (a.handler, a.handler_module) == ("handler_pre", "vmprobe_fork")
    assert (b.symbol, b.size, b.handler, b.handler_module) == ("do_fork", 0x1de, "handler_pre", "kprobe_example")
    assert (c.symbol, c.offset, c.module, c.handler, c.handler_module) == (
        "my_fn", 0x10, "mymod", "pre_handler_kretprobe", None)
