"""Splats are findings: modules with bugs the kernel lives through, in a real guest.

The splat modules (vmprobe/modules/templates/splats/) WARN, take a mutex in
their pre handler, leak per hit, or use memory after freeing it, without
crashing a production kernel. The check must go on to its end (rmmod, the
restored bytes), keep each splat as a finding with its title, and fail unless
every finding is allowed (``--allow-splat``, ``@pytest.mark.allow_splat``).
"""
from __future__ import annotations

import json
import shutil

import pytest

from vmprobe import modules
from vmprobe.config import TEMPLATES_DIR

SPLATS = TEMPLATES_DIR / "splats"
WARN_TITLE = "WARNING in handler_pre"


@pytest.fixture(scope="module")
def splats(kernel):
    built = {m.name.removeprefix("vmprobe_splat_"): m for m in modules.build(SPLATS, kernel)}
    assert set(built) == {"warn", "mutex", "leak", "uaf"}
    return built


def _warn_source(tmp_path):
    """The WARN module alone, as a user's module directory."""
    d = tmp_path / "warnmod"
    d.mkdir()
    for name in ("warn.c", "splat_probe.h"):
        shutil.copy(SPLATS / name, d / name)
    (d / "Makefile").write_text("obj-m := vmprobe_splat_warn.o\nvmprobe_splat_warn-y := warn.o\n")
    return d


def _completed(d: dict) -> None:
    """The check ran to its end: unloaded, gone from the list, the bytes back."""
    # a user's module is checked per discovered probe ("kernel_clone+0x0: site armed")
    def passed(suffix: str) -> bool:
        return any(c["name"].endswith(suffix) and c["ok"] is True for c in d["checks"])
    assert d["probes"], "no probe of the module was listed in kprobes/list"
    for suffix in ("site armed", "rmmod", "gone from kprobes/list after rmmod", "bytes restored after rmmod"):
        assert passed(suffix), (suffix, d["checks"])
    assert d["crashes"] == [] and d["error"] is None


def test_warning_module_fails_with_its_finding_after_a_complete_check(tmp_path, kernel, vmprobe_cli, accel,
                                                                     no_leaks):
    source, out = _warn_source(tmp_path), tmp_path / "report.json"
    common = ("probe", "--kernel", kernel.spec, "--accel", accel, "--module", str(source),
              "--symbol", "kernel_clone", "--no-sysrq")
    res = vmprobe_cli(*common, "--json", str(out))
    assert res.returncode == 1, res.stdout + res.stderr
    d = json.loads(out.read_text())
    _completed(d)
    assert d["verdict"] == "fail"
    assert [(f["title"], f["kind"], f["allowed_by"]) for f in d["findings"]] == [(WARN_TITLE, "warning", None)]
    assert f"SPLAT {WARN_TITLE} [warning]: not allowed" in res.stdout

    res = vmprobe_cli(*common, "--json", str(out), "--allow-splat", "lockdep",
                      "--allow-splat", r"WARNING in handler_\w+")
    assert res.returncode == 0, res.stdout + res.stderr
    d = json.loads(out.read_text())
    _completed(d)
    assert d["verdict"] == "pass"
    assert [(f["title"], f["allowed_by"]) for f in d["findings"]] == [
        (WARN_TITLE, r"--allow-splat 'WARNING in handler_\\w+'")]
    assert d["repro"]["allow_splats"] == [{"pattern": "lockdep", "source": "--allow-splat"},
                                          {"pattern": r"WARNING in handler_\w+", "source": "--allow-splat"}]


@pytest.mark.allow_splat(r"^WARNING in handler_pre$")
def test_the_marker_allows_a_finding(probe_check, splats):
    report = probe_check(splats["warn"], symbol="kernel_clone", sysrq=False)
    d = report.to_dict()
    _completed(d)
    assert d["verdict"] == "pass", report.summary()
    assert [(f["title"], f["allowed_by"]) for f in d["findings"]] == [
        (WARN_TITLE, "@pytest.mark.allow_splat '^WARNING in handler_pre$'")]


def test_a_mutex_in_the_handler_is_caught_only_with_debug_atomic_sleep(kernel, probe_check, splats):
    """A production kernel (Debian's: no CONFIG_DEBUG_ATOMIC_SLEEP) lets it pass; a debug kernel does not."""
    report = probe_check(splats["mutex"], symbol="kernel_clone", sysrq=False, registers=False)
    d = report.to_dict()
    _completed(d)
    if kernel.kconfig.get("CONFIG_DEBUG_ATOMIC_SLEEP") == "y":
        assert d["verdict"] == "fail"
        assert any(f["title"].startswith("BUG: sleeping function called from invalid context in")
                   for f in d["findings"]), d["findings"]
    else:
        assert d["verdict"] == "pass", report.summary()
        assert d["findings"] == []


@pytest.mark.allow_splat(r"^WARNING in handler_pre$")
def test_a_splat_during_a_scenario_is_a_finding_too(vm, probe_check, splats):
    """The scenarios file the kernel's reports as the probe check does: a splat is a finding, allowable."""
    vm.upload(splats["warn"].path, "/tmp/warn.ko")
    loaded = vm.run("insmod /tmp/warn.ko symbol=kernel_clone", 60)
    assert loaded.status == 0, loaded.output
    try:
        report = probe_check(scenario="modify-register")   # its guest commands fork: the WARN fires then
    finally:
        assert vm.run("rmmod vmprobe_splat_warn", 60).status == 0
    d = report.to_dict()
    assert d["crashes"] == [] and d["error"] is None
    assert [(f["title"], f["allowed_by"]) for f in d["findings"]] == [
        (WARN_TITLE, "@pytest.mark.allow_splat '^WARNING in handler_pre$'")]
    assert d["verdict"] == "pass", report.summary()
    assert "SPLAT WARNING in handler_pre [warning]: allowed by" in report.summary()
