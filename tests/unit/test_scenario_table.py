"""The scenario table, the era quirks it reads, and what a skip looks like (no VM)."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from vmprobe.arch import PROFILES
from vmprobe.check.report import ProbeReport
from vmprobe.check.scenarios import FORK, NAMES, SCENARIOS, default_smp, eras, get_scenario
from vmprobe.config import TEMPLATES_DIR


def test_table():
    assert NAMES[0] == FORK and set(NAMES[1:]) == {"modify-register", "modify-data", "fault-handler", "smp"}
    assert get_scenario(None) is None and get_scenario("fork") is None
    with pytest.raises(ValueError, match="no scenario 'nope'"):
        get_scenario("nope")
    assert default_smp("smp") == 2 and default_smp("modify-register") == 1 and default_smp(None) == 1
    kbuild = (TEMPLATES_DIR / "scenarios" / "Kbuild").read_text()
    for s in SCENARIOS.values():
        assert (TEMPLATES_DIR / "scenarios" / f"{s.module}.c").exists()
        assert f"{s.module}.o" in kbuild
        assert set(s.needs) <= set(eras.QUIRKS)


@pytest.mark.parametrize("release, has", [("5.10.0-46-cloud-amd64", True), ("5.13.19", True),
                                          ("5.14.0", False), ("6.1.0-57-cloud-amd64", False),
                                          ("2.6.11", True)])
def test_fault_handler_era(release, has):
    assert eras.has(release, "fault_handler") is has
    why = eras.missing(release, ("fault_handler",))
    assert (why is None) is has
    if not has:
        assert "removed in 5.14" in why and release in why


def test_every_arch_names_its_return_register():
    for p in PROFILES.values():
        assert p.return_register and p.syscall_prefix.endswith("_sys_")


def test_skip_is_never_pass():
    r = ProbeReport()
    r.skipped = "no fault_handler"
    r.check("applies", None, r.skipped)
    assert r.verdict == "skip" and r.to_dict()["skipped"] == "no fault_handler"
    r.check("something", False)
    assert r.verdict == "fail"


def test_scenario_on_a_kernel_without_the_field_skips_without_touching_the_guest():
    kernel = SimpleNamespace(spec="debian:bookworm", release="6.1.0-57-cloud-amd64", version="6.1.192-3")

    class NoGuest:
        profile = PROFILES["amd64"]
        accel, smp, command_line = "tcg", 1, ["qemu"]

        def __getattr__(self, name):
            raise AssertionError(f"the guest was used: {name}")

    machine = NoGuest()
    machine.kernel = kernel
    report = SCENARIOS["fault-handler"].check(machine).run()
    assert report.verdict == "skip"
    assert "6.1.0-57-cloud-amd64" in report.skipped and "fault_handler" in report.skipped
    assert [c.ok for c in report.checks] == [None]


def test_probe_check_fixture_refuses_options_with_a_scenario():
    from vmprobe.pytest_plugin.probes import ProbeChecker
    checker = ProbeChecker(None, None, None, lambda report: None)   # no VM: refused before it is used
    with pytest.raises(TypeError, match="takes no module or options"):
        checker(scenario="smp", offset=5)
    with pytest.raises(ValueError, match="no scenario 'nope'"):
        checker(scenario="nope")


def test_cli_knows_the_scenarios():
    from vmprobe.cli import build_parser
    parser = build_parser()
    args = parser.parse_args(["probe", "--scenario", "smp"])
    assert args.scenario == "smp" and args.smp is None       # the scenario's default applies (2)
    assert parser.parse_args(["probe"]).scenario == "fork"
    with pytest.raises(SystemExit):
        parser.parse_args(["probe", "--scenario", "nope"])
    m = parser.parse_args(["matrix", "--scenarios", "modify-data,smp"])
    assert m.scenarios == ["modify-data", "smp"] and m.checks is None
    with pytest.raises(SystemExit):
        parser.parse_args(["matrix", "--scenarios", "fork"])
