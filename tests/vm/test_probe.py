"""The probe check on a real guest (any x86_64 kernel: offsets read from the bytes): each mechanism, each refusal."""
from __future__ import annotations

import json
import re

import pytest

from vmprobe import modules
from vmprobe.check.probe import ProbeCheck, ProbeOptions, run_probe_check
from vmprobe.errors import ModuleBuildError, ModuleLoadError


@pytest.mark.parametrize("offset, post, mechanism, first_byte, flag", [
    (0, True, "ftrace", "e8", "FTRACE"),
    ("after-entry", True, "int3", "cc", None),      # past the fentry site (and an IBT ENDBR): read from its bytes
    ("after-entry", False, "optimized", "e9", "OPTIMIZED"),
])
def test_mechanism(vm, fork_module, offset, post, mechanism, first_byte, flag):
    report = run_probe_check(vm, fork_module, ProbeOptions(offset=offset, post_handler=post))
    d = report.to_dict()
    assert d["verdict"] == "pass", report.summary()
    assert d["probe"]["symbol"] == "kernel_clone"
    assert d["probe"]["mechanism"] == mechanism
    assert d["bytes"]["armed"].startswith(first_byte)
    assert d["bytes"]["after"] == d["bytes"]["before"]
    assert d["bytes"]["armed"] != d["bytes"]["before"]
    assert (flag in d["probe"]["list_flags"]) if flag else not d["probe"]["list_flags"]
    assert d["hits"] > 0
    assert int(d["registers_at_hit"]["pc"], 16) == int(d["probe"]["address"], 16)
    # the five-fork trigger runs once: its first fork stops for the registers, every fork is counted
    assert d["registers_at_hit"]["trigger"] == d["probe"]["trigger"]["command"] and d["hits"] >= 5
    assert d["sysrq"] == {"proc": True, "send_key": True, "serial_break": True}
    assert d["crashes"] == []
    if post:
        assert d["probe"]["post_hits"] > 0 and d["probe"]["task_dump_lines"] > 0
    # the guest is left clean for the next check
    assert vm.run("cat /sys/kernel/debug/kprobes/list").stdout.strip() == ""


@pytest.mark.parametrize("symbol, offset, message", [
    ("no_such_function_xyz", 0, r"symbol no_such_function_xyz not found in kernel {release} "),
    ("kernel_clone", 1, r"offset 1 into kernel_clone is not an instruction boundary.*EILSEQ"),
    ("kprobe_int3_handler", 0, r"kprobe_int3_handler\+0 cannot be probed.*blacklist.*EINVAL"),
])
def test_refusals_are_specific(vm, fork_module, symbol, offset, message):
    check = ProbeCheck(vm, fork_module, ProbeOptions(symbol=symbol, offset=offset))
    with pytest.raises(ModuleLoadError, match=message.replace("{release}", re.escape(vm.kernel.release))):
        check.run()
    # the failing init ran once: one finit_module, no init_module retry (BusyBox insmod printed it twice)
    dmesg = vm.run("dmesg").stdout
    assert dmesg.count(f"vmprobe-error nonce={check.run_state.nonce} ") == 1, dmesg[-2000:]
    assert "vmprobe_fork" not in vm.run("cat /proc/modules").stdout
    assert vm.run("cat /sys/kernel/debug/kprobes/list").stdout.strip() == ""


def test_module_that_does_not_compile(kernel, tmp_path):
    src = tmp_path / "broken.c"
    src.write_text('#include <linux/module.h>\nint f(void) { return undeclared_thing; }\n'
                   'MODULE_LICENSE("GPL");\n')
    with pytest.raises(ModuleBuildError, match=rf"{src}:2:\d+: error: .*undeclared_thing"):
        modules.build(src, kernel)


def test_ko_for_another_kernel_is_refused_before_insmod(kernel, fork_module, tmp_path):
    data = fork_module.path.read_bytes()
    # Another release of the same length, derived from the fetched one (the
    # archive moves: no ABI number may be pinned here).
    version = kernel.release.split("-", 1)[0]
    fake = kernel.release.replace(version, "9" * len(version), 1)
    assert fake != kernel.release and len(fake) == len(kernel.release)
    other = data.replace(kernel.release.encode(), fake.encode())
    assert other != data
    ko = tmp_path / "other.ko"
    ko.write_bytes(other)
    with pytest.raises(ModuleBuildError, match="built for another kernel"):
        modules.build(ko, kernel)


def test_probe_cli_end_to_end(tmp_path, vmprobe_cli, accel, no_leaks):
    out = tmp_path / "report.json"
    res = vmprobe_cli("probe", "--kernel", "debian:bookworm", "--accel", accel, "--json", str(out),
                      "--expect-mechanism", "ftrace")
    assert res.returncode == 0, res.stdout + res.stderr
    d = json.loads(out.read_text())
    assert d["verdict"] == "pass"
    assert d["kernel"]["release"].startswith("6.1.0-") and d["kernel"]["arch"] == "x86_64"
    for key in ("symbol", "offset", "address", "mechanism", "list_flags"):
        assert key in d["probe"]
    assert set(d["bytes"]) == {"before", "armed", "after"}
    assert {"pc", "flags"} <= set(d["registers_at_hit"])
    assert d["timings"]["build"] >= 0 and "PASS" in res.stdout


def test_probe_cli_unknown_symbol_exit_code(vmprobe_cli, accel, no_leaks):
    res = vmprobe_cli("probe", "--kernel", "debian:bookworm", "--accel", accel, "--symbol", "nope_nope")
    assert res.returncode == 75, res.stderr
    assert "symbol nope_nope not found in kernel 6.1.0-" in res.stderr
