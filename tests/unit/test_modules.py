"""vmprobe.modules: compiler diagnostics mapped to the user's files, .ko metadata, vermagic."""
from __future__ import annotations

import lzma
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

from vmprobe.errors import ConfigError, ModuleBuildError
from vmprobe.modules.kbuild import _DIAG, Module, _summarise, _user_paths, build, check_vermagic, kernel_vermagic

needs_gcc = pytest.mark.skipif(not shutil.which("gcc"), reason="gcc not installed")

VERMAGIC = "6.1.0-13-cloud-amd64 SMP preempt mod_unload modversions "
WORK = Path("/tmp/vmprobe-build-x1/src")
USER = Path("/home/alice/probes/mymod")
KERNEL = SimpleNamespace(release="6.1.0-13-cloud-amd64", spec="debian:bookworm/cloud-amd64@6.1.0-13")

GCC_OUTPUT = f"""\
make: Entering directory '/root/.cache/vmprobe/kernels/x/usr/src/linux-headers-6.1.0-13-cloud-amd64'
  CC [M]  {WORK}/foo.o
{WORK}/foo.c: In function 'handler_pre':
{WORK}/foo.c:12:5: error: implicit declaration of function 'bar' [-Werror=implicit-function-declaration]
   12 |     bar();
      |     ^~~
{WORK}/foo.c:20:1: warning: control reaches end of non-void function [-Wreturn-type]
{WORK}/util/helpers.h:7: error: expected ';' before '}}' token
cc1: some warnings being treated as errors
make[2]: *** [/usr/src/linux-headers-6.1.0-13-common/scripts/Makefile.build:250: {WORK}/foo.o] Error 1
make[1]: *** [/usr/src/linux-headers-6.1.0-13-common/Makefile:2012: {WORK}] Error 2
make: *** [Makefile:250: __sub-make] Error 2
"""


def compile_ko(path: Path, strings: list[str]) -> Path:
    src = "".join(f'static const char m{i}[] __attribute__((section(".modinfo"), used, aligned(1))) = "{s}";\n'
                  for i, s in enumerate(strings))
    subprocess.run(["gcc", "-c", "-x", "c", "-", "-o", str(path)], input=src.encode(), check=True)
    return path


# -- diagnostics --------------------------------------------------------------------

def test_diag_regex_on_gcc_output():
    diags = [(m["file"], m["line"], m["col"], m["sev"]) for m in _DIAG.finditer(GCC_OUTPUT)]
    assert diags == [(f"{WORK}/foo.c", "12", "5", "error"), (f"{WORK}/util/helpers.h", "7", None, "error")]


def test_user_paths():
    out = _user_paths(GCC_OUTPUT, WORK, USER)
    assert str(WORK) + "/" not in out
    assert f"{USER}/foo.c:12:5: error:" in out


def test_summarise_first_error_in_users_dir():
    msg = _summarise(_user_paths(GCC_OUTPUT, WORK, USER), USER, KERNEL)
    assert msg == (f"{USER}/foo.c:12:5: error: implicit declaration of function 'bar' "
                   f"[-Werror=implicit-function-declaration] (+1 more)")


def test_summarise_fatal_error_single():
    out = f"{WORK}/foo.c:3:10: fatal error: linux/nosuch.h: No such file or directory\ncompilation terminated.\n"
    assert _summarise(_user_paths(out, WORK, USER), USER / "foo.c", KERNEL) == (
        f"{USER}/foo.c:3:10: fatal error: linux/nosuch.h: No such file or directory")


def test_summarise_without_diagnostics():
    out = f'ERROR: modpost: "bar" [{WORK}/foo.ko] undefined!\nmake[2]: *** Error 1\n'
    msg = _summarise(_user_paths(out, WORK, USER), USER, KERNEL)
    assert msg == f'building {USER} against 6.1.0-13-cloud-amd64 failed: modpost: "bar" [{USER}/foo.ko] undefined!'


def test_summarise_without_any_error_line():
    msg = _summarise("make[2]: *** Error 1\n", USER, KERNEL)
    assert msg == f"building {USER} against 6.1.0-13-cloud-amd64 failed (see the build output)"


# -- .ko metadata -------------------------------------------------------------------------

@needs_gcc
def test_from_ko_name_and_vermagic(tmp_path):
    ko = compile_ko(tmp_path / "my-probe.ko", ["license=GPL", "name=my_probe", f"vermagic={VERMAGIC}"])
    m = Module.from_ko(ko)
    assert m == Module(ko, "my_probe", VERMAGIC)


@needs_gcc
def test_from_ko_name_from_file_name(tmp_path):
    ko = compile_ko(tmp_path / "fork-probe.ko", ["license=GPL"])
    m = Module.from_ko(ko)
    assert (m.name, m.vermagic) == ("fork_probe", "")


@needs_gcc
def test_from_ko_xz(tmp_path):
    plain = compile_ko(tmp_path / "plain.o", ["name=xzmod", f"vermagic={VERMAGIC}"])
    xz = tmp_path / "xzmod.ko.xz"
    xz.write_bytes(lzma.compress(plain.read_bytes()))
    assert Module.from_ko(xz).name == "xzmod"
    assert Module.from_ko(xz).vermagic == VERMAGIC


def test_from_ko_not_a_module(tmp_path):
    bogus = tmp_path / "bogus.ko"
    bogus.write_text("not an ELF\n")
    with pytest.raises(ModuleBuildError, match="bogus.ko is not a kernel module"):
        Module.from_ko(bogus)
    with pytest.raises(ModuleBuildError, match="is not a kernel module"):
        Module.from_ko(tmp_path / "missing.ko")


# -- vermagic and build() paths that need no kernel tree ---------------------------------------

@pytest.fixture
def fake_kernel(tmp_path):
    mods = tmp_path / "lib/modules/6.1.0-13-cloud-amd64"
    (mods / "kernel/drivers/virtio").mkdir(parents=True)
    return SimpleNamespace(release="6.1.0-13-cloud-amd64", spec="debian:bookworm/cloud-amd64@6.1.0-13",
                           modules_path=mods, cc="gcc-vmprobe-does-not-exist", toolchain="host",
                           arch="amd64")


@needs_gcc
def test_vermagic_check(tmp_path, fake_kernel):
    compile_ko(fake_kernel.modules_path / "kernel/drivers/virtio/virtio.ko", ["name=virtio", f"vermagic={VERMAGIC}"])
    assert kernel_vermagic(fake_kernel) == VERMAGIC
    ok = compile_ko(tmp_path / "ok.ko", ["name=ok", "vermagic=6.1.0-13-cloud-amd64  SMP preempt mod_unload modversions"])
    check_vermagic(Module.from_ko(ok), fake_kernel)  # whitespace differences are fine
    assert build(ok, fake_kernel) == [Module.from_ko(ok)]
    other = compile_ko(tmp_path / "other.ko", ["name=other", "vermagic=5.10.0-28-amd64 SMP mod_unload modversions "])
    with pytest.raises(ModuleBuildError) as info:
        build(other, fake_kernel)
    assert "other.ko was built for another kernel" in str(info.value)
    assert "5.10.0-28-amd64" in str(info.value) and "6.1.0-13-cloud-amd64" in str(info.value)


def test_kernel_without_modules(fake_kernel):
    with pytest.raises(ModuleBuildError, match="ships no modules"):
        kernel_vermagic(fake_kernel)


def test_build_source_errors(tmp_path, fake_kernel):
    with pytest.raises(ModuleBuildError, match="does not exist"):
        build(tmp_path / "nope.c", fake_kernel)
    (tmp_path / "srcdir").mkdir()
    (tmp_path / "srcdir" / "a.c").write_text("int x;\n")
    with pytest.raises(ModuleBuildError, match="has no Kbuild or Makefile"):
        build(tmp_path / "srcdir", fake_kernel)
    (tmp_path / "probe.c").write_text("int x;\n")
    with pytest.raises(ConfigError, match="gcc-vmprobe-does-not-exist not found"):
        build(tmp_path / "probe.c", fake_kernel)
