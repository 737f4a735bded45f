"""A small JUnit XML writer (the format CI systems read: one testsuite, one testcase per check)."""
from __future__ import annotations

import platform
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

# Characters XML 1.0 cannot carry at all (console logs have escape codes and NULs).
_INVALID = re.compile("[^\u0009\u000a\u000d\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def xml_text(text: str) -> str:
    """``text`` with the characters XML cannot hold shown as ``\\xNN``."""
    return _INVALID.sub(lambda m: f"\\x{ord(m[0]):02x}", text)


@dataclass
class TestCase:
    classname: str
    name: str
    time: float = 0.0
    status: str = "pass"            # pass | fail | error | skip
    message: str = ""               # one line: the failure's or error's message
    text: str = ""                  # the failure's body (e.g. the report summary)
    system_out: str = ""
    system_err: str = ""
    properties: dict[str, str] = field(default_factory=dict)

    __test__ = False  # not a pytest test class


def to_element(suite_name: str, cases: list[TestCase], *, time: float | None = None,
               timestamp: datetime | None = None) -> ET.Element:
    counts = {s: sum(1 for c in cases if c.status == s) for s in ("fail", "error", "skip")}
    total = sum(c.time for c in cases) if time is None else time
    attrs = {"name": suite_name, "tests": str(len(cases)), "failures": str(counts["fail"]),
             "errors": str(counts["error"]), "skipped": str(counts["skip"]), "time": f"{total:.3f}",
             "timestamp": (timestamp or datetime.now(timezone.utc)).isoformat(timespec="seconds"),
             "hostname": platform.node()}
    root = ET.Element("testsuites", {k: attrs[k] for k in ("name", "tests", "failures", "errors",
                                                           "skipped", "time")})
    suite = ET.SubElement(root, "testsuite", attrs)
    for c in cases:
        tc = ET.SubElement(suite, "testcase", {"classname": xml_text(c.classname),
                                               "name": xml_text(c.name), "time": f"{c.time:.3f}"})
        if c.properties:
            props = ET.SubElement(tc, "properties")
            for key, value in c.properties.items():
                ET.SubElement(props, "property", {"name": xml_text(str(key)),
                                                  "value": xml_text(str(value))})
        tag = {"fail": "failure", "error": "error", "skip": "skipped"}.get(c.status)
        if tag:
            el = ET.SubElement(tc, tag, {"message": xml_text(c.message.splitlines()[0] if c.message else "")})
            if tag != "skipped":
                el.set("type", tag)
            el.text = xml_text(c.text or c.message)
        if c.system_out:
            ET.SubElement(tc, "system-out").text = xml_text(c.system_out)
        if c.system_err:
            ET.SubElement(tc, "system-err").text = xml_text(c.system_err)
    return root


def write(path: Path, suite_name: str, cases: list[TestCase], **kw) -> None:
    root = to_element(suite_name, cases, **kw)
    ET.indent(root)
    path.write_bytes(ET.tostring(root, encoding="utf-8", xml_declaration=True) + b"\n")
