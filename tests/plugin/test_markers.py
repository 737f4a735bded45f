"""The plugin's pure parts: version constraints, architectures, artefact names."""
from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vmprobe.pytest_plugin.markers import (
    arch_matches,
    artefact_dir_name,
    kernel_version,
    parse_constraints,
    version_matches,
)

versions = st.tuples(st.integers(0, 12), st.integers(0, 30))


@pytest.mark.parametrize("text, version, ok", [
    (">=5.10,<6.12", (6, 1), True),
    (">=5.10,<6.12", (5, 10), True),
    (">=5.10,<6.12", (6, 12), False),
    (">=5.10,<6.12", (5, 4), False),
    ("6.1", (6, 1, 192), True),
    ("==6", (6, 12), True),
    ("<6.1", (6, 1, 192), False),
    (">6.1", (6, 1, 192), False),
    (">=6.1.100", (6, 1, 192), True),
    ("!=6.1", (6, 12), True),
    (" >= 7 ", (7, 0), True),
])
def test_constraints(text, version, ok):
    assert version_matches(version, parse_constraints(text)) is ok


@pytest.mark.parametrize("text", ["", "6.x", "~=6.1", ">=6.1;<7", "about 6", ">=", "6..1"])
def test_bad_constraints_are_refused(text):
    with pytest.raises(ValueError, match="bad kernel version constraint"):
        parse_constraints(text)


@given(versions, versions, versions)
def test_a_range_is_the_tuple_comparison(version, low, high):
    c = parse_constraints(f">={low[0]}.{low[1]},<{high[0]}.{high[1]}")
    assert version_matches(version, c) == (low <= version < high)


@given(versions, st.integers(0, 300))
def test_two_part_constraints_ignore_the_sublevel(version, sublevel):
    text = f"=={version[0]}.{version[1]}"
    assert version_matches(version + (sublevel,), parse_constraints(text))


def test_kernel_version_from_release_and_package():
    assert kernel_version("6.1.0-56-cloud-amd64", "6.1.192-2") == (6, 1, 192)
    assert kernel_version("5.10.0-46-cloud-amd64", "5.10.262-1") == (5, 10, 262)
    assert kernel_version("6.12.74+deb13-amd64", "6.12.74-1") == (6, 12, 74)
    assert kernel_version("6.1.0-56-amd64", "") == (6, 1)
    assert kernel_version("6.1.0-56-amd64", "5.10.1-1") == (6, 1)   # disagreeing package: ignored


def test_arch_names():
    assert arch_matches("amd64", ["x86_64"]) and arch_matches("amd64", ["AMD64"])
    assert arch_matches("arm64", ["aarch64"]) and arch_matches("i386", ["i686", "x86_64"])
    assert not arch_matches("amd64", ["aarch64", "i386"])


@given(st.text(min_size=1, max_size=400))
def test_artefact_dir_names_are_safe(nodeid):
    name = artefact_dir_name(nodeid)
    assert re.fullmatch(r"[A-Za-z0-9._-]+", name) and len(name) <= 150
    assert name not in (".", "..") and name == artefact_dir_name(nodeid)


def test_artefact_dir_name_reads_like_the_test():
    assert (artefact_dir_name("tests/vm/test_probe.py::test_mechanism[debian:bookworm-0-True]")
            == "tests_vm_test_probe.py_test_mechanism_debian_bookworm-0-True")
