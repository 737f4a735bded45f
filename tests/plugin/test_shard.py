"""``--vmprobe-shard I/N``: the N shards run every collected test exactly once (pytester,
real inner pytest runs; no VM is booted)."""
from __future__ import annotations

import collections

import pytest

from vmprobe.pytest_plugin.shard import parse_shard, split

pytest_plugins = ["pytester"]

# 11 tests in two files, parametrized ones included; each records its node id when it runs
SUITE_A = '''
import os
import pytest


def _ran(request):
    with open(os.environ["SHARD_NOTES"], "a") as f:
        f.write(request.node.nodeid + "\\n")


@pytest.mark.parametrize("n", range(5))
def test_numbers(request, n):
    _ran(request)


def test_plain(request):
    _ran(request)


class TestGroup:
    def test_one(self, request):
        _ran(request)

    def test_two(self, request):
        _ran(request)
'''

SUITE_B = '''
import pytest
from test_a import _ran


@pytest.mark.parametrize("word", ["alpha", "beta", "gamma"])
def test_words(request, word):
    _ran(request)
'''


@pytest.fixture
def suite(pytester, monkeypatch):
    notes = pytester.path / "ran.txt"
    monkeypatch.setenv("SHARD_NOTES", str(notes))
    pytester.makepyfile(test_a=SUITE_A, test_b=SUITE_B)
    return notes


def _collected(pytester, *args) -> list[str]:
    result = pytester.runpytest_subprocess("--collect-only", "-q", "-p", "no:cacheprovider", *args,
                                           timeout=120)
    return [line for line in result.stdout.lines if "::" in line]


def test_two_shards_run_every_test_exactly_once(pytester, suite):
    everything = _collected(pytester)
    assert len(everything) == 11, everything
    per_shard = {}
    for shard in ("1/2", "2/2"):
        suite.unlink(missing_ok=True)
        result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--vmprobe-shard", shard,
                                               timeout=120)
        per_shard[shard] = suite.read_text().splitlines()
        kept = len(per_shard[shard])
        result.assert_outcomes(passed=kept, deselected=11 - kept)
        result.stdout.fnmatch_lines([f"vmprobe: shard {shard}: running {kept} of 11 tests "
                                     f"({11 - kept} deselected for the other shards)"])
    counts = collections.Counter(per_shard["1/2"] + per_shard["2/2"])
    assert sorted(counts) == sorted(everything)          # every collected test ran …
    assert set(counts.values()) == {1}, counts          # … exactly once
    assert sorted(len(v) for v in per_shard.values()) == [5, 6]   # balanced


def test_shards_split_what_is_left_and_kernel_parametrized_tests(pytester, suite):
    """Three shards (three processes) of what -k leaves, kernel-parametrized tests included."""
    pytester.makepyfile(test_k="def test_k(kernel):\n    pass\n\ndef test_j(kernel):\n    pass\n")
    args = ("-k", "not words", "--vmprobe-kernel", "debian:bookworm", "--vmprobe-kernel", "debian:bullseye")
    everything = _collected(pytester, *args)
    assert len(everything) == 12 and sum("[debian:" in t for t in everything) == 4, everything
    shards = [_collected(pytester, *args, "--vmprobe-shard", f"{i}/3") for i in (1, 2, 3)]
    union = [t for s in shards for t in s]
    assert sorted(union) == sorted(everything) and len(set(union)) == len(union)
    assert [len(s) for s in shards] == [4, 4, 4]


@pytest.mark.parametrize("bad", ["0/2", "3/2", "x", "1/0", "2", "-1/2", "1/2/3"])
def test_bad_shard_values_are_usage_errors(pytester, bad):
    pytester.makepyfile(test_x="def test_x():\n    pass\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", f"--vmprobe-shard={bad}", timeout=120)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: vmprobe: --vmprobe-shard*"])
    assert "1 passed" not in result.stdout.str()


@pytest.mark.parametrize("text,want", [("1/1", (1, 1)), ("2/2", (2, 2)), (" 3 / 4 ", (3, 4))])
def test_parse_shard(text, want):
    assert parse_shard(text) == want


def test_split_keeps_order_and_balances():
    names = [f"t{i:02d}" for i in range(10)][::-1]
    parts = [split(names, i, 3, key=str) for i in (1, 2, 3)]
    kept = [p[0] for p in parts]
    assert sorted(sum(kept, [])) == sorted(names)
    assert [len(k) for k in kept] == [4, 3, 3]
    assert all(k == [n for n in names if n in k] for k in kept)   # the collection's own order
    for k, dropped in parts:
        assert sorted(k + dropped) == sorted(names)
