"""The old-era userland's parts that need no build: the musl configuration of Debian's
busybox config, the uapi header links, and the glibc check on real binaries of this host."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from vmprobe.formats.elf import glibc_problem
from vmprobe.guest.musl_busybox import MUSL_CONFIG, configure, uapi_headers

DEBIAN_LIKE = """\
CONFIG_HAVE_DOT_CONFIG=y
CONFIG_EXTRA_COMPAT=y
# CONFIG_FEATURE_CMDLINE_MODULE_OPTIONS is not set
CONFIG_STATIC=y
CONFIG_EXTRA_CFLAGS=""
CONFIG_FEATURE_VI_REGEX_SEARCH=y
CONFIG_INSMOD=y
"""


def _values(text: str) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for line in text.splitlines():
        if line.startswith("# CONFIG_") and line.endswith(" is not set"):
            out[line[2:-11]] = None
        elif "=" in line:
            key, _, value = line.partition("=")
            out[key] = value
    return out


def test_configure_applies_every_row_once(tmp_path):
    text = configure(DEBIAN_LIKE, tmp_path / "uapi")
    values = _values(text)
    for key, (value, why) in MUSL_CONFIG.items():
        assert why
        assert values[key] == (value.format(headers=tmp_path / "uapi") if value else None), key
        assert sum(1 for line in text.splitlines() if key + "=" in line or key + " is" in line) == 1, key
    assert values["CONFIG_INSMOD"] == "y" and values["CONFIG_HAVE_DOT_CONFIG"] == "y"   # the rest kept
    assert values["CONFIG_FEATURE_CMDLINE_MODULE_OPTIONS"] == "y"   # or insmod drops module parameters


def test_uapi_headers_link_the_hosts_kernel_headers(tmp_path):
    if not Path("/usr/include/linux/types.h").exists():
        pytest.skip("linux-libc-dev not installed")
    d = uapi_headers(tmp_path / "uapi")
    assert (d / "linux" / "types.h").is_file() and (d / "asm" / "unistd.h").is_file()


def test_glibc_check_on_this_hosts_programs():
    busybox = Path("/bin/busybox")
    if not busybox.is_file():
        pytest.skip("busybox-static not installed")
    # Debian's busybox-static: static, but glibc inside (it says "FATAL: kernel too old" before 3.2)
    assert glibc_problem(busybox.read_bytes()) == "it has glibc linked in statically (GLIBC_ strings)"
    assert glibc_problem(Path(shutil.which("sh")).resolve().read_bytes()).startswith("it is dynamically linked")


@pytest.mark.skipif(not shutil.which("musl-gcc"), reason="musl-tools not installed")
def test_glibc_check_passes_a_static_musl_program(tmp_path):
    src = tmp_path / "hello.c"
    src.write_text('#include <stdio.h>\nint main(void) { puts("hello"); return 0; }\n')
    static, dynamic = tmp_path / "static", tmp_path / "dynamic"
    subprocess.run(["musl-gcc", "-static", "-Os", str(src), "-o", str(static)], check=True, timeout=120)
    subprocess.run(["musl-gcc", "-Os", str(src), "-o", str(dynamic)], check=True, timeout=120)
    assert glibc_problem(static.read_bytes()) is None
    assert subprocess.run([str(static)], capture_output=True, text=True).stdout == "hello\n"
    assert "dynamically linked" in glibc_problem(dynamic.read_bytes())   # musl's loader is still a loader
