"""Where the plugin's splat allow rules come from: the test's markers, then ``[tool.vmprobe] allow_splats``.

(The rules at work on a real guest: tests/vm/test_splats.py.)"""
from __future__ import annotations

pytest_plugins = ["pytester"]

RULES = '''
import pytest
from vmprobe.pytest_plugin.hooks import _allow_rules

@pytest.mark.allow_splat(r"WARNING in handler_\\w+", "lockdep")
def test_rules(request):
    got = [(r.pattern, r.source) for r in _allow_rules(request)]
    assert got == [(r"WARNING in handler_\\w+", "@pytest.mark.allow_splat"),
                   ("lockdep", "@pytest.mark.allow_splat"),
                   ("KASAN: .*", "[tool.vmprobe] allow_splats")], got

def test_no_marker(request):
    assert [r.source for r in _allow_rules(request)] == ["[tool.vmprobe] allow_splats"]

@pytest.mark.allow_splat("(")
def test_bad_regex(request):
    _allow_rules(request)
'''


def test_rules_from_markers_and_pyproject(pytester):
    pytester.makepyfile(test_rules=RULES)
    pytester.makefile(".toml", pyproject='[tool.vmprobe]\nallow_splats = ["KASAN: .*"]\n')
    result = pytester.runpytest_subprocess("-q", "-p", "no:cacheprovider", timeout=120)
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(["*@pytest.mark.allow_splat: '(' is not a regular expression*"])


def test_allow_splats_must_be_a_list_of_strings(pytester):
    pytester.makepyfile(test_rules=RULES)
    pytester.makefile(".toml", pyproject='[tool.vmprobe]\nallow_splats = "WARNING"\n')
    result = pytester.runpytest_subprocess("-q", "-p", "no:cacheprovider", "-k", "no_marker", timeout=120)
    assert result.ret != 0
    result.stdout.fnmatch_lines(["*allow_splats in pyproject.toml must be a list of regexes*"])


def test_the_marker_is_registered(pytester):
    result = pytester.runpytest_subprocess("--markers", timeout=120)
    result.stdout.fnmatch_lines(["@pytest.mark.allow_splat(*regexes)*"])
