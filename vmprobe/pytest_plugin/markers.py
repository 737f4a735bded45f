"""The marker grammar: ``@pytest.mark.kernel(">=5.10,<6.12")`` and ``@pytest.mark.arch("x86_64")``.

Pure functions (parse a constraint, match a version or an architecture, name a
test's artefact dir), kept apart from pytest's hooks so they can be tested
without a VM. :func:`unmet_requirement` decides whether one kernel suits a
test's marks, from the catalog's facts, fetching the kernel only when the
catalog's series is not precise enough.
"""
from __future__ import annotations

import hashlib
import re
from typing import Any, Callable, Iterable

from vmprobe.arch import PROFILES

#: The lines ``pytest --markers`` shows for the plugin's markers.
MARKER_HELP = (
    "kernel(constraint): run only on kernels whose version matches, "
    "e.g. @pytest.mark.kernel('>=5.10,<6.12'); others are skipped",
    "arch(*names): run only on kernels of these architectures, "
    "e.g. @pytest.mark.arch('x86_64'); others are skipped",
    "allow_splat(*regexes): probe_check findings (WARNING, lockdep, KASAN… splats the kernel "
    "lived on after) whose title matches one of these do not fail the check",
)

_CLAUSE = re.compile(r"^\s*(?P<op>>=|<=|==|!=|>|<)?\s*(?P<ver>\d+(?:\.\d+)*)\s*$")
_OPS: dict[str, Callable[[tuple, tuple], bool]] = {
    ">=": lambda a, b: a >= b, "<=": lambda a, b: a <= b, "==": lambda a, b: a == b,
    "!=": lambda a, b: a != b, ">": lambda a, b: a > b, "<": lambda a, b: a < b,
}

#: Debian architecture → the names a test may use for it in ``@pytest.mark.arch``.
#: Debian arch → every name the ``arch`` marker accepts for it (from the arch profiles)
ARCH_NAMES = {debian_arch: profile.names for debian_arch, profile in PROFILES.items()}


class BadConstraint(ValueError):
    """A ``@pytest.mark.kernel`` argument that is not a version constraint."""


def parse_constraints(text: str) -> list[tuple[str, tuple[int, ...]]]:
    """``">=5.10,<6.12"`` → ``[(">=", (5, 10)), ("<", (6, 12))]``; a bare version means ``==``."""
    clauses = []
    for part in str(text).split(","):
        m = _CLAUSE.match(part)
        if not m:
            raise BadConstraint(f"bad kernel version constraint {text!r}: expected clauses like "
                                f"'>=5.10', '<6.12', '==6.1' separated by commas")
        clauses.append((m["op"] or "==", tuple(int(x) for x in m["ver"].split("."))))
    return clauses


def version_matches(version: tuple[int, ...], constraints: list[tuple[str, tuple[int, ...]]]) -> bool:
    """Whether ``version`` meets every clause, compared at each clause's precision
    (``6.1.192`` is ``==6.1`` and ``<6.2``, and not ``<6.1``)."""
    for op, want in constraints:
        have = tuple(version[:len(want)]) + (0,) * (len(want) - len(version))
        if not _OPS[op](have, want):
            return False
    return True


def arch_matches(debian_arch: str, wanted: list[str]) -> bool:
    """Whether one of the ``wanted`` names (any alias in :data:`ARCH_NAMES`) is ``debian_arch``."""
    names = {n.lower() for n in ARCH_NAMES.get(debian_arch, (debian_arch,))} | {debian_arch.lower()}
    return any(str(w).lower() in names for w in wanted)


def kernel_version(release: str, package_version: str = "") -> tuple[int, ...]:
    """The version markers compare: major.minor from the release (``6.1.0-56-…`` → 6.1), and
    the sublevel from the package's upstream version (``6.1.192-2`` → 6.1.192) when it agrees."""
    m = re.match(r"^(\d+)\.(\d+)", release)
    if not m:
        return ()
    base = (int(m[1]), int(m[2]))
    p = re.match(r"^(?:\d+:)?(\d+)\.(\d+)\.(\d+)", package_version or "")
    if p and (int(p[1]), int(p[2])) == base:
        return base + (int(p[3]),)
    return base


def fetched_version(kernel: Any) -> tuple[tuple[int, ...], str]:
    """(version, label) of a fetched kernel (``.release``, ``.version``), e.g.
    ``((6, 1, 192), "6.1.192 (6.1.0-56-cloud-amd64)")``."""
    version = kernel_version(kernel.release, kernel.version)
    return version, ".".join(map(str, version)) + f" ({kernel.release})"


def unmet_requirement(spec: str, arch_marks: Iterable[Any], version_marks: Iterable[Any],
                      series: str, arch: str,
                      precise_version: Callable[[], tuple[tuple[int, ...], str]]) -> str | None:
    """Why kernel ``spec`` (catalog ``series``, Debian ``arch``) does not suit a test with these
    ``arch``/``kernel`` marks (the skip reason), or None. ``precise_version()`` gives (version,
    label) from the fetched kernel; it is asked only when a constraint is more precise than the
    series (e.g. sid's series is "7": the release tells the minor, the package the sublevel).
    Raises :class:`BadConstraint` for a kernel mark that does not parse."""
    for mark in arch_marks:
        wanted = [str(a) for a in mark.args]
        if wanted and not arch_matches(arch, wanted):
            names = ARCH_NAMES.get(arch, (arch,))
            return f"vmprobe: {spec} is {names[0]} ({arch}); the test needs arch {' or '.join(wanted)}"
    for mark in version_marks:
        texts = [str(a) for a in mark.args] or [str(mark.kwargs.get("version", ""))]
        for text in texts:
            constraints = parse_constraints(text)
            precision = max(len(v) for _, v in constraints)
            known = tuple(int(x) for x in re.findall(r"\d+", series)[:2])
            if precision <= len(known):  # the catalog's series says enough: no fetch needed
                version, label = known, series
            else:
                version, label = precise_version()
            if not version_matches(version, constraints):
                return f"vmprobe: {spec} is {label}; the test needs kernel {text}"
    return None


def artefact_dir_name(nodeid: str) -> str:
    """A test id as one safe directory name (``tests/a.py::t[x:y]`` → ``tests_a.py_t_x_y``)."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", nodeid).strip("_.") or "test"
    if len(name) > 150:
        name = f"{name[:130]}-{hashlib.sha256(nodeid.encode()).hexdigest()[:12]}"
    return name
