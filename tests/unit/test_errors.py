"""vmprobe.errors: distinct exit codes and the rendered message."""
from __future__ import annotations

import inspect

import pytest

from vmprobe import errors
from vmprobe.errors import EXIT_CODES, EXIT_INTERRUPTED, BootTimeout, SpecError, VmprobeError


def _error_classes() -> list[type[VmprobeError]]:
    return [obj for _, obj in inspect.getmembers(errors, inspect.isclass)
            if issubclass(obj, VmprobeError)]


def test_exit_codes_are_distinct():
    codes = list(EXIT_CODES.values())
    assert len(codes) == len(set(codes)), EXIT_CODES


def test_every_error_class_has_a_documented_code():
    classes = _error_classes()
    assert len(classes) >= 13
    for cls in classes:
        assert EXIT_CODES.get(cls.__name__) == cls.exit_code, cls.__name__


def test_codes_do_not_collide_with_success_usage_or_interrupt():
    codes = set(EXIT_CODES.values())
    assert 0 not in codes           # success
    assert 2 not in codes           # argparse usage error
    assert EXIT_INTERRUPTED not in codes
    assert all(0 < c < 126 for c in codes)  # 126+ are the shell's (not executable, signals)


@pytest.mark.parametrize("cls, code, kind", [
    (errors.CacheBusy, 77, "cache busy"),
    (errors.ProbeSiteError, 78, "probe site"),
    (SpecError, 64, "bad kernel spec"),
    (errors.ConfigError, 65, "host configuration"),
    (errors.GuestCrash, 69, "kernel crash"),
    (VmprobeError, 70, "error"),
])
def test_some_codes_and_kinds(cls, code, kind):
    assert cls.exit_code == code
    err = cls("boom")
    assert err.render() == f"vmprobe: {kind}: boom"
    assert str(err) == "boom"


def test_render_indents_every_detail_line():
    err = BootTimeout("timed out after 60s waiting for boot",
                      detail="[    1.0] line one\n[    2.0] line two\n\n")
    assert err.render().splitlines() == [
        "vmprobe: boot timeout: timed out after 60s waiting for boot",
        "    [    1.0] line one",
        "    [    2.0] line two",
    ]
    assert err.detail.startswith("[    1.0]")
    assert err.message == "timed out after 60s waiting for boot"


def test_render_without_detail_is_one_line():
    assert "\n" not in SpecError("bad", detail="").render()
    assert "\n" not in SpecError("bad").render()


def test_errors_are_exceptions_catchable_as_base():
    with pytest.raises(VmprobeError) as info:
        raise errors.FetchError("download failed", detail="404")
    assert info.value.exit_code == 66
    assert info.value.detail == "404"


def test_qemu_error_keeps_status_command_and_output():
    err = errors.QemuError("QEMU exited with status 1 at start-up", exit_status=1,
                           command=("qemu-system-x86_64", "-M", "pc"), output="bad option\n")
    assert (err.exit_status, err.command, err.output) == (1, ["qemu-system-x86_64", "-M", "pc"], "bad option\n")
    assert errors.QemuError("gone").exit_status is None and errors.QemuError("gone").command == []
