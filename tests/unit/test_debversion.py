"""vmprobe.kernels.debversion: dpkg's version ordering."""
from __future__ import annotations

import shutil
import subprocess

import pytest

from vmprobe.kernels.debversion import compare, sort_key

PAIRS = [
    # (a, b, expected sign of compare(a, b))
    ("1.0", "1.0", 0),
    ("1.0", "1.1", -1),
    ("1.10", "1.9", 1),           # numeric, not lexical
    ("1.01", "1.1", 0),           # leading zeros
    ("1.0~rc1", "1.0", -1),       # tilde sorts before the end
    ("1.0~~", "1.0~", -1),
    ("1.0~rc1", "1.0~rc2", -1),
    ("1.0", "1.0+b1", -1),         # "+" after the end
    ("1.0a", "1.0+", -1),         # letters before non-letters
    ("1.0A", "1.0a", -1),
    ("1.0", "1.0.0", -1),
    ("1:0.1", "2.0", 1),          # epoch wins
    ("0:1.0", "1.0", 0),
    ("2:1.0", "10:0.1", -1),
    ("1.0-1", "1.0-2", -1),
    ("1.0-10", "1.0-9", 1),
    ("1.0-1~bpo12+1", "1.0-1", -1),
    ("1.0-1", "1.0-1+b1", -1),
    ("1.0", "1.0-0", 0),
    ("1.0-1-2", "1.0-1-10", -1),  # the revision starts after the last hyphen
    ("6.1.0-56", "6.1.0-9", 1),
    ("6.1.158-1", "6.1.192-2", -1),
    ("6.1.55-1", "6.1.55-1~bpo11+1", 1),
    ("5.10.223-1", "6.1.0-1", -1),
]


@pytest.mark.parametrize("a, b, want", PAIRS)
def test_compare(a, b, want):
    assert compare(a, b) == want
    assert compare(b, a) == -want


def _dpkg(a: str, b: str) -> int:
    for op, sign in (("lt", -1), ("eq", 0), ("gt", 1)):
        if subprocess.run(["dpkg", "--compare-versions", a, op, b]).returncode == 0:
            return sign
    raise AssertionError(f"dpkg compared nothing for {a!r} {b!r}")


@pytest.mark.skipif(not shutil.which("dpkg"), reason="dpkg not installed")
@pytest.mark.parametrize("a, b", [(a, b) for a, b, _ in PAIRS[4:20:2]] + [
    ("1.2.3~beta+dfsg-1", "1.2.3-1"), ("3:1.0", "2:9.9"), ("1.0b", "1.0~a"), ("0.9+git20240101-1", "0.9-1"),
])
def test_agrees_with_dpkg(a, b):
    assert compare(a, b) == _dpkg(a, b)


def test_sort_key_orders_newest_last():
    versions = ["6.1.0-9", "6.1.0-56", "6.1.0-13~bpo11+1", "1:5.0-1", "6.1.0-13", "6.1.0~rc7-1~exp1"]
    assert sorted(versions, key=sort_key) == [
        "6.1.0~rc7-1~exp1", "6.1.0-9", "6.1.0-13~bpo11+1", "6.1.0-13", "6.1.0-56", "1:5.0-1"]
    assert max(versions, key=sort_key) == "1:5.0-1"


def test_colon_in_upstream_with_epoch():
    assert compare("1:2:3-1", "1:2:4-1") == -1
