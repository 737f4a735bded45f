"""The fork probe template compiled for real against each kernel's headers (run with
--vmprobe-kernel debian:bullseye, debian:bookworm, debian:trixie): it builds without a warning
from the template, and carries the parameters the tool passes on every era (addr included);
and the old kernels' way to the site (addr= from kallsyms) taken on a modern guest."""
from __future__ import annotations

import re

from vmprobe.arch.eras import era_fork_symbol
from vmprobe.check import probe
from vmprobe.formats.elf import modinfo, read_module


def test_fork_template_builds_cleanly(kernel, fork_module):
    log = (fork_module.path.parent / "build.log").read_text()
    assert re.search(r"CC \[M\]\s+\S*vmprobe_fork\.o", log), log[-2000:]   # the log is the compile's
    ours = [line for line in log.splitlines() if "vmprobe_fork.c" in line and "warning:" in line]
    assert ours == [], "\n".join(ours)
    info = modinfo(read_module(fork_module.path))
    params = {p.split(":")[0] for p in info.get("parm", [])}
    assert {"symbol", "addr", "offset", "nonce", "post", "dump_tasks", "max_prints"} <= params
    assert fork_module.vermagic.split()[0] == kernel.release


def test_template_default_is_the_eras_fork_function(kernel, fork_module):
    """The default symbol compiled in (LINUX_VERSION_CODE) is the one the era table names."""
    data = fork_module.path.read_bytes()
    expected = era_fork_symbol(kernel.release)
    assert expected and re.search(rb"\x00" + expected.encode() + rb"\x00", data), expected


def test_site_by_address_as_on_old_kernels(vm, fork_module, monkeypatch):
    """The path old kernels take (< 2.6.33: the check passes addr= from /proc/kallsyms and the
    module arms addr + offset, no symbol_name), taken on this kernel: the probe lands where the
    symbol would have put it and the check passes."""
    monkeypatch.setattr(probe, "passes_address", lambda release: True)
    report = probe.run_probe_check(vm, fork_module, probe.ProbeOptions(offset="after-entry", sysrq=False,
                                                                       registers=False))
    d = report.to_dict()
    assert d["verdict"] == "pass", report.summary()
    base = int(d["probe"]["addr_param"], 16)
    assert base + d["probe"]["offset"] == int(d["probe"]["requested_address"], 16)
    line = d["probe"]["list_line"]
    assert (line["symbol"], line["offset"]) == (d["probe"]["symbol"], d["probe"]["offset"] + d["probe"]["moved_by"])
    assert d["evidence"] == ["kprobes/list", "bytes", "hits"]
