"""Reading re-run inputs back from probe and matrix reports, and judging a re-run."""
from __future__ import annotations

import pytest

from vmprobe import modules
from vmprobe.errors import ConfigError
from vmprobe.runs.repro import BUILTIN, Case, Outcome, _module_source, _options, load_cases, source_digest

REPRO = {"format": 1, "kernel": {"spec": "debian:bookworm/cloud-amd64@6.1.0-56", "version": "6.1.192-2"},
         "module": {"source": BUILTIN, "sha256": source_digest(modules.FORK_PROBE)},
         "options": {"symbol": None, "offset": "after-entry", "post_handler": False, "trigger": None,
                     "module_params": "", "builtin_template": True, "sysrq": False, "registers": True,
                     "settle_timeout": 1},
         "expect_mechanism": "optimized", "machine": {"accel": "tcg", "smp": 1}}


def _probe_report(verdict="fail", error=None):
    return {"verdict": verdict, "error": error, "repro": REPRO,
            "checks": [{"name": "site armed", "ok": True}, {"name": "mechanism is optimized", "ok": False}]}


def test_probe_report_gives_one_case_with_its_failed_checks():
    [case] = load_cases(_probe_report())
    assert case.failed == ["mechanism is optimized"] and case.verdict == "fail"
    assert case.repro["options"]["offset"] == "after-entry"
    assert load_cases(_probe_report("pass")) == [] and len(load_cases(_probe_report("pass"), every=True)) == 1


def test_matrix_report_gives_failed_checks_and_rebuilds_ones_that_never_ran():
    matrix = {"machine": {"accel": "tcg"}, "kernels": [
        {"spec": "debian:bookworm", "kernel": {"spec": "debian:bookworm/cloud-amd64@6.1.0-56"}, "checks": [
            {"name": "entry", "verdict": "pass", "report": {"repro": REPRO, "checks": []}},
            {"name": "int3", "verdict": "fail", "repro": REPRO,
             "report": {"repro": REPRO, "checks": [{"name": "handler hits", "ok": False}]}}]},
        {"spec": "debian:sid", "kernel": None, "error": "vmprobe: kernel fetch failed: …", "checks": [
            {"name": "entry", "verdict": "error", "report": None, "error": "vmprobe: kernel fetch failed: x"}]}]}
    cases = load_cases(matrix)
    assert [c.label for c in cases] == ["debian:bookworm int3", "debian:sid entry"]
    assert cases[0].failed == ["handler hits"]
    assert cases[1].repro["matrix_check"] == "entry" and cases[1].repro["kernel"]["spec"] == "debian:sid"


def test_a_report_without_inputs_is_refused():
    with pytest.raises(ConfigError, match="no 'repro' block"):
        load_cases({"verdict": "fail", "checks": []})


def test_options_keep_only_probe_fields():
    opts, expect = _options(REPRO, kernel=None)
    assert opts.offset == "after-entry" and opts.post_handler is False and expect == "optimized"
    assert opts.settle_timeout == 10.0  # the tool's timeouts are not replayed


def test_same_failure_means_same_failed_checks_or_same_error_kind():
    fail = Case("probe", REPRO, "fail", ["mechanism is optimized"])
    assert Outcome("fail", ["mechanism is optimized"], None, "", 1).same_as(fail)
    assert not Outcome("fail", ["handler hits"], None, "", 1).same_as(fail)
    assert not Outcome("pass", [], None, "", 0).same_as(fail)
    err = Case("probe", REPRO, "error", [], "module load failed in phase insmod: symbol x not found")
    assert Outcome("error", [], "module load failed in phase insmod: symbol x not found …", "", 75).same_as(err)
    assert not Outcome("error", [], "kernel crash in phase trigger: BUG", "", 69).same_as(err)
    # a matrix records the rendered error ("vmprobe: <kind>: …"): the same kind either way
    matrix_err = Case("debian:bookworm int3", REPRO, "error", [], "vmprobe: module load failed: symbol x …")
    assert Outcome("error", [], "module load failed in phase insmod: symbol x", "", 75).same_as(matrix_err)
    assert not Outcome("error", [], "vmprobe: kernel crash: BUG at …", "", 69).same_as(matrix_err)


def test_changed_module_source_is_reported(tmp_path):
    src = tmp_path / "m.c"
    src.write_text("int x;\n")
    repro = {**REPRO, "module": {"source": str(src), "sha256": source_digest(src)}}
    said = []
    assert _module_source(repro, None, said.append) == src and said == []
    src.write_text("int y;\n")
    _module_source(repro, None, said.append)
    assert said and "changed since the report" in said[0]
    gone = {**REPRO, "module": {"source": str(tmp_path / "gone.c")}}
    with pytest.raises(ConfigError, match="pass --module"):
        _module_source(gone, None, said.append)
