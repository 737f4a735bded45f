"""What a failed test that used a VM leaves for its reader: report sections and files.

A failure inside a guest is hard to read from a Python traceback alone, so the
console (since the test started), dmesg, the kprobes list, the QEMU command line
and any probe reports are attached to the test's report (shown by pytest,
carried in ``--junitxml``'s system-out) and saved under ``<results>/<test id>/``.
"""
from __future__ import annotations

import contextlib
import json
import shlex
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from vmprobe.pytest_plugin.markers import artefact_dir_name
from vmprobe.pytest_plugin.pool import describe_error, session_state

if TYPE_CHECKING:
    from vmprobe.check.report import ProbeReport
    from vmprobe.vm.machine import Machine

SECTION = "vmprobe"                 # report sections are "Captured stdout vmprobe <what>"
SECTION_PREFIX = f"Captured stdout {SECTION} "
CONSOLE_SECTION_LINES = 400         # the console section keeps this many lines (the file keeps all)
ARTEFACT_TIMEOUT = 20               # seconds for each guest command run to collect failure artefacts

_used_vm_key = pytest.StashKey["tuple[Any, int]"]()       # (machine, console mark) of the test
_reports_key = pytest.StashKey["list"]()                  # ProbeReports made by probe_check


def remember_vm(item: pytest.Item, machine: "Machine") -> None:
    """Note the test's VM and where its console stood when the test started."""
    item.stash[_used_vm_key] = (machine, machine.console.mark())


def remember_report(item: pytest.Item, report: "ProbeReport") -> None:
    """Note a probe report the test made (saved, with its summary, if the test fails)."""
    item.stash.setdefault(_reports_key, []).append(report)


def attach_failure_sections(item: pytest.Item, call: pytest.CallInfo, report: pytest.TestReport) -> None:
    """Add the VM's sections to a failed setup or call report (and to the item, so the teardown
    report that ``--junitxml`` writes out carries them too)."""
    if not (report.failed and call.when in ("setup", "call")):
        return
    with contextlib.suppress(Exception):  # never let artefact collection hide the failure
        for title, content in failure_sections(item, call):
            report.sections.append((SECTION_PREFIX + title, content))
            item.add_report_section(f"{SECTION} {title}", "stdout", content)


def failure_sections(item: pytest.Item, call: pytest.CallInfo) -> list[tuple[str, str]]:
    """(title, text) sections for a failed test, its files written to the results dir; none
    for a test that neither used a VM nor failed for want of one."""
    state = session_state(item.config)
    used = item.stash.get(_used_vm_key, None)
    machine, mark = used if used else (None, 0)
    boot_failure = None
    if machine is None:  # the test wanted a VM and did not get one: its boot failed?
        k = getattr(item, "funcargs", {}).get("kernel")
        if "vm" not in getattr(item, "fixturenames", ()) or getattr(k, "spec", None) not in state.boot_failures:
            return []
        boot_failure = state.boot_failures[k.spec]
    out = state.results_dir / artefact_dir_name(item.nodeid)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, str] = {}
    sections: list[tuple[str, str]] = []

    if boot_failure:
        error, console = boot_failure
        files["console.log"] = console
        sections.append(("console", f"(the boot failed: {error}; full log in {out / 'console.log'})\n"
                                    + _last_lines(console, CONSOLE_SECTION_LINES)))
    else:
        _machine_sections(machine, mark, out, files, sections)

    from vmprobe.errors import VmprobeError
    exc = call.excinfo.value if call.excinfo else None
    if isinstance(exc, VmprobeError) and exc.detail:
        files["error_detail.txt"] = exc.detail
        sections.append(("error detail", f"{exc.kind}: {exc.message}\n{exc.detail}"))
    for i, report in enumerate(item.stash.get(_reports_key, []), 1):
        files[f"probe_report_{i}.json"] = json.dumps(report.to_dict(), indent=2) + "\n"
        sections.append((f"probe report {i}", report.summary()))
    for name, text in files.items():
        (out / name).write_text(text)
    return sections


def _machine_sections(machine: "Machine", mark: int, out: Path, files: dict[str, str],
                      sections: list[tuple[str, str]]) -> None:
    """The console since ``mark``, dmesg and the kprobes list (asked of the guest while it
    answers) and the QEMU command line."""
    full = machine.console.text
    files["console.log"] = full
    since = full[mark:] if mark <= len(full) else full
    sections.append(("console", f"(since this test started; full log in {out / 'console.log'})\n"
                                + _last_lines(since, CONSOLE_SECTION_LINES)))
    alive = machine.proc is not None and machine.proc.poll() is None and machine.ssh is not None
    why = f"QEMU {machine._exit_reason() or 'is not running'}"
    for title, filename, command in (("dmesg", "dmesg.txt", "dmesg"),
                                     ("kprobes list", "kprobes_list.txt",
                                      "cat /sys/kernel/debug/kprobes/list")):
        if alive:
            try:
                res = machine.run(command, ARTEFACT_TIMEOUT)
                text = res.stdout + (f"\n(stderr: {res.stderr.strip()})" if res.stderr.strip() else "")
                text = text if text.strip() else "(empty)\n"
            except Exception as exc:
                text = f"(not available: {describe_error(exc)})\n"
                alive = False
        else:
            text = f"(not available: the VM is not running: {why})\n"
        files[filename] = text
        sections.append((title, text))
    cmdline = shlex.join(machine.command_line) + "\n"
    files["qemu_cmdline.txt"] = cmdline
    sections.append(("qemu command line", cmdline))


def _last_lines(text: str, n: int) -> str:
    lines = text.splitlines()
    if len(lines) <= n:
        return text
    return f"[… {len(lines) - n} earlier lines in the file]\n" + "\n".join(lines[-n:]) + "\n"


class JunitSections:
    """Puts the vmprobe sections in --junitxml's <system-out> when junit_logging would not (its
    default is "no"). Registered on the process that writes the XML (not on xdist workers)."""

    def __init__(self, config: pytest.Config):
        self.config = config

    @pytest.hookimpl(tryfirst=True)  # before junitxml closes the test case at teardown
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when != "teardown":
            return
        content = "".join(f"{name[len('Captured stdout '):].center(80, '-')}\n{text}\n"
                          for name, text in report.sections if name.startswith(SECTION_PREFIX))
        if not content:
            return
        try:
            import xml.etree.ElementTree as ET

            from _pytest.junitxml import bin_xml_escape, xml_key
            xml = self.config.stash.get(xml_key, None)
            if xml is None or xml.logging not in ("no", "system-err"):
                return  # no XML, or pytest writes captured stdout (ours included) itself
            tag = ET.Element("system-out")
            tag.text = bin_xml_escape(content)
            xml.node_reporter(report).append(tag)
        except Exception:  # a pytest without these internals: the sections still show in the terminal
            return
