"""Any module, any probe: real-world module shapes and the mistakes users make, on a real guest.

The modules live in tests/vm/modules/. Each check discovers the probes the
module registered (kprobes/list before and after a single finit_module),
proves each one and counts calls into its own handlers.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from entry_sites import after_entry  # tests/vm/entry_sites.py

from vmprobe.errors import ModuleLoadError

pytestmark = pytest.mark.arch("x86_64")

MODULES = Path(__file__).parent / "modules"
PROBE_KEYS = {"symbol", "offset", "address", "kind", "mechanism", "bytes", "hits", "list_flags"}


def _probes_clean(vm) -> None:
    assert vm.run("cat /sys/kernel/debug/kprobes/list").stdout.strip() == ""


def _well_formed(report) -> dict:
    d = report.to_dict()
    assert d["verdict"] == "pass", report.summary()
    # ftrace, else (handlers it cannot trace: __kprobes on 6.12) gdb breakpoints
    assert d["hits_counter"] in ("ftrace-function", "gdb-hardware-breakpoint")
    assert d["hits_counter"] == d["probes"][0]["hits_counter"]
    for p in d["probes"]:
        assert PROBE_KEYS <= set(p), p
        assert set(p["bytes"]) == {"before", "armed", "after"}
        assert p["bytes"]["armed"] != p["bytes"]["before"]
        assert p["bytes"]["after"] == p["bytes"]["before"]
        assert isinstance(p["hits"], int) and p["hits"] >= 1
    first = d["probes"][0]
    assert (d["probe"]["symbol"], d["probe"]["address"], d["hits"]) == (first["symbol"], first["address"], first["hits"])
    assert d["bytes"] == first["bytes"]
    assert int(d["registers_at_hit"]["pc"], 16) == int(first["address"], 16)
    # the probe fired at that very stop: its handler was entered next by the task that hit
    at_stop = d["registers_at_hit"]["handler_at_stop"]
    assert at_stop["handler"] in first["handlers"].values()
    assert at_stop["same_task"] is True and at_stop["task"] == d["registers_at_hit"]["task"], at_stop
    if first["kind"] == "kprobe":
        assert at_stop["argument_is_the_probe"] is True, at_stop
    return d


def test_kretprobe_timing_module(vm, probe_check):
    report = probe_check(MODULES / "kretprobe_timing.c")
    d = _well_formed(report)
    (p,) = d["probes"]
    assert p["kind"] == "kretprobe" and p["list_type"] == "r" and p["symbol"] == "kernel_clone"
    assert p["handlers"] == {"entry": "entry_handler", "return": "ret_handler"}
    assert p["data_size"] == 8 and p["maxactive"] == 20
    assert p["entry_hits"] >= 1 and p["hits"] >= 1
    assert any("took" in line for line in d["module"]["kernel_lines"])
    assert p["offset"] == 0 and p.get("list_offset", 0) == p.get("moved_by", 0)   # IBT: armed at +4
    assert "kretprobe kernel_clone+0x0" in report.summary()
    _probes_clean(vm)


def test_register_kprobes_array(vm, probe_check):
    off = after_entry(vm, "do_sys_openat2")[1]
    report = probe_check(MODULES / "kprobes_array.c", module_params=f"second=do_sys_openat2 second_offset={off}",
                         trigger="cat /proc/version; /bin/true")
    d = _well_formed(report)
    assert [(p["symbol"], p["offset"]) for p in d["probes"]] == [("kernel_clone", 0), ("do_sys_openat2", off)]
    assert [p["handlers"] for p in d["probes"]] == [{"pre": "pre_fork"},
                                                    {"pre": "pre_second", "post": "post_second"}]
    assert d["probes"][1]["mechanism"] == "int3" and d["probes"][1]["list_flags"] == []
    text = report.summary()
    assert "kernel_clone+0x0" in text and f"do_sys_openat2+{off:#x}" in text
    _probes_clean(vm)


def test_target_as_module_parameter(vm, probe_check):
    report = probe_check(MODULES / "param_target.c", module_params="symbol=do_exit", symbol="do_exit")
    d = _well_formed(report)
    (p,) = d["probes"]
    assert p["symbol"] == "do_exit" and p["asserted"]
    assert p["handlers"] == {"pre": "handler_pre", "post": "handler_post"}
    assert any("<do_exit> p->addr" in line for line in d["module"]["kernel_lines"])
    assert d["module"]["registrations"][0]["symbol"] == "do_exit"
    _probes_clean(vm)


def test_post_handler_only(vm, probe_check):
    report = probe_check(MODULES / "post_only.c")
    d = _well_formed(report)
    (p,) = d["probes"]
    assert p["handlers"] == {"post": "only_post"}
    assert p["description"].startswith("kprobe with only a post handler")
    assert d["probe"].get("post_handler") is None     # nothing claimed that the module does not have
    _probes_clean(vm)


def test_disabled_probe_did_not_fire_at_the_stop(vm, probe_check):
    """The hardware breakpoint on the site is hit all the same: only the handler's own stop in
    the task that hit tells a probe that fired from one that did not."""
    report = probe_check(MODULES / "disabled_probe.c")
    d = report.to_dict()
    checks = {c["name"]: c["ok"] for c in d["checks"]}
    assert d["verdict"] == "fail" and "DISABLED" in d["probes"][0]["list_flags"], report.summary()
    assert checks["pc at the hit is the probe address"] is True
    assert checks["the probe fired at that stop (its handler ran next in that task)"] is False
    assert d["registers_at_hit"]["handler_at_stop"]["address"] is None
    assert d["probes"][0]["hits"] == 0
    _probes_clean(vm)


@pytest.mark.parametrize("module, params, options, message", [
    ("typo_symbol.c", "", {"symbol": "vfs_read"},
     r"^typo_symbol asked for vfsread\+0: symbol vfsread not found in kernel \S+ "
     r"\(register_kprobe returned -ENOENT\)$"),
    ("failing_init.c", "", {},
     r"^failing_init's init failed with -EINVAL \(Invalid argument\); its last kernel lines: "
     r"failing_init: giving up: no device$"),
    ("param_target.c", "symbol=kprobe_int3_handler", {},
     r"^param_target asked for kprobe_int3_handler\+0: kprobe_int3_handler\+0 cannot be probed in kernel "
     r"\S+: kprobe_int3_handler is on the kprobe blacklist \(0x[0-9a-f]+-0x[0-9a-f]+\) "
     r"\(register_kprobe returned -EINVAL\)$"),
    ("param_target.c", "", {"symbol": "vfs_read", "offset": 0},
     r"^param_target registered no probe at vfs_read\+0 \(--symbol/--offset\): it registered "
     r"kernel_clone\+0 \(kprobe\); run with --symbol kernel_clone --offset 0, or leave --symbol out$"),
])
def test_user_mistakes(vm, probe_check, module, params, options, message):
    with pytest.raises(ModuleLoadError) as caught:
        probe_check(MODULES / module, module_params=params, **options)
    assert re.match(message, caught.value.message), caught.value.message
    assert Path(module).stem not in vm.run("cat /proc/modules").stdout
    assert vm.run("cat /sys/kernel/debug/kprobes/list").stdout.strip() == ""


def test_failing_init_runs_once(vm, probe_check):
    mark = vm.console.mark()
    with pytest.raises(ModuleLoadError):
        probe_check(MODULES / "failing_init.c")
    vm.run("true")
    assert vm.console.count(r"failing_init: giving up", since=mark) == 1


def test_cli_lists_every_probe(tmp_path, vmprobe_cli, accel, no_leaks):
    out = tmp_path / "report.json"
    res = vmprobe_cli("probe", "--kernel", "debian:bookworm", "--accel", accel, "--module",
                      str(MODULES / "kprobes_array.c"), "--module-params", "second=kernel_clone second_offset=5",
                      "--min-hits", "2", "--no-sysrq", "--json", str(out))
    assert res.returncode == 0, res.stdout + res.stderr
    d = json.loads(out.read_text())
    assert len(d["probes"]) == 2 and all(p["hits"] >= 2 for p in d["probes"])
    assert "probes    2 registered by kprobes_array" in res.stdout
    assert "kernel_clone+0x0" in res.stdout and "kernel_clone+0x5" in res.stdout
    assert "planted 2 kprobes" in res.stdout
