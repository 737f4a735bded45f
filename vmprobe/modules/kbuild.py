"""Kprobe modules: the built-in templates, out-of-tree builds, vermagic checks.

Builds run kbuild against the kernel's cached headers with the compiler the
catalog names for it, in a temp copy of the sources; the ``.ko`` files are
cached by a hash of the sources and the kernel. Compiler errors are reported
as ``file:line:col: error: …`` against the user's own paths.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from vmprobe.arch import profile_for
from vmprobe.config import TEMPLATES_DIR, cache_dir
from vmprobe.errors import ConfigError, ModuleBuildError
from vmprobe.formats.elf import modinfo, read_module
from vmprobe.host import cache, progress
from vmprobe.host.interrupts import checkpoint
from vmprobe.kernels import Kernel
from vmprobe.modules import old_kbuild
from vmprobe.modules.toolchain import build_env

FORK_PROBE = TEMPLATES_DIR / "vmprobe_fork.c"
BUILD_TIMEOUT = 600
_DIAG = re.compile(r"^(?P<file>[^\s:][^:]*):(?P<line>\d+):(?:(?P<col>\d+):)? (?P<sev>error|fatal error): (?P<msg>.*)$",
                   re.M)


@dataclass(frozen=True)
class Module:
    path: Path       # the .ko
    name: str        # as the kernel knows it (lsmod, rmmod)
    vermagic: str

    @classmethod
    def from_ko(cls, path: Path) -> "Module":
        try:
            info = modinfo(read_module(path))
        except (OSError, ValueError) as exc:
            raise ModuleBuildError(f"{path} is not a kernel module ({exc})") from None
        name = (info.get("name") or [path.name.split(".ko")[0]])[0].replace("-", "_")
        return cls(path, name, (info.get("vermagic") or [""])[0])


def kernel_vermagic(kernel: Kernel) -> str:
    """The kernel's vermagic, read from a module it ships."""
    for ko in sorted(kernel.modules_path.rglob("*.ko*")):
        magic = Module.from_ko(ko).vermagic
        if magic:
            return magic
    from vmprobe.kernels.local import image_vermagic  # everything built in: read the kernel itself
    magic = image_vermagic(kernel)
    if magic:
        return magic
    raise ModuleBuildError(f"cannot tell the vermagic of {kernel.release}: it ships no modules "
                           f"and its image holds no vermagic string")


def check_vermagic(module: Module, kernel: Kernel) -> None:
    expected = kernel_vermagic(kernel)
    if module.vermagic.split() != expected.split():
        raise ModuleBuildError(
            f"{module.path.name} was built for another kernel: vermagic {module.vermagic!r}, "
            f"but {kernel.release} ({kernel.spec}) needs {expected!r}")


def source_files(source: Path) -> tuple[Path, list[Path]]:
    """(directory, files) of a module source: a single .c or a dir with Kbuild/Makefile."""
    if source.is_file():
        return source.parent, [source]
    if source.is_dir():
        if not ((source / "Kbuild").exists() or (source / "Makefile").exists()):
            raise ModuleBuildError(f"{source} has no Kbuild or Makefile")
        files = sorted(p for p in source.rglob("*") if p.is_file() and not p.name.startswith(".")
                       and p.suffix not in (".o", ".ko", ".cmd", ".mod", ".symvers", ".order"))
        return source, files
    raise ModuleBuildError(f"module source {source} does not exist")


def build(source: Path, kernel: Kernel, log=None) -> list[Module]:
    """Build a module source against ``kernel``; cached by source + kernel."""
    source = source.resolve()
    if source.suffix == ".ko" or ".ko." in source.name:
        module = Module.from_ko(source)
        check_vermagic(module, kernel)
        return [module]
    base, files = source_files(source)
    cc = kbuild_cc(kernel)
    if kernel.toolchain == "host" and not shutil.which(cc):
        raise ConfigError(f"{cc} not found: modules for {kernel.release} ({kernel.arch}) are built with it "
                          f"(apt-get install {_cc_package(cc)})")
    if not (kernel.build_path / "Makefile").exists():
        raise ModuleBuildError(f"{kernel.spec} has no build directory to build {source.name} against "
                               f"(local: kernels take ?build=DIR, a tree after `make modules_prepare`)")
    key = cache.digest("module-v1", kernel.spec, kernel.version, cc, kernel.toolchain,
                       kernel.image_sha256,
                       *[f"{f.relative_to(base)}:{cache.sha256_file(f)}" for f in files])
    target = cache_dir("modules") / key
    if not target.exists():
        with cache.locked(target):
            if not target.exists():
                with cache.staging(target) as tmp:
                    _kbuild(source, base, files, kernel, tmp, log)
    modules = [Module.from_ko(p) for p in sorted(target.glob("*.ko"))]
    if not modules:
        raise ModuleBuildError(f"building {source} produced no .ko")
    return modules


def _kbuild(source: Path, base: Path, files: list[Path], kernel: Kernel, out: Path, log) -> None:
    work = out / "src"
    for f in files:
        dest = work / f.relative_to(base)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(f, dest)
    if source.is_file():
        (work / "Kbuild").write_text(f"obj-m := {source.stem}.o\n")
    with build_env(kernel, work, log) as env:
        cc = kbuild_cc(kernel)
        cmd = ["make", "-C", env.build_dir, f"M={env.work_dir}", *kbuild_arch_args(kernel),
               f"CC={cc}", f"HOSTCC={kernel.cc}", f"-j{os.cpu_count() or 1}",
               *old_kbuild.make_args(kernel.build_path, cc), "modules"]   # 2.6 trees: old_kbuild.py
        if log:
            log(f"vmprobe: building {source.name} for {kernel.release} with {cc} ({env.where})")
        checkpoint("build")
        try:
            with progress.status(f"building {source.name} for {kernel.release} ({env.where})"):
                proc = env.run(cmd, capture_output=True, text=True, timeout=BUILD_TIMEOUT,
                               stdin=subprocess.DEVNULL, env=dict(os.environ, LC_ALL="C"))
        except subprocess.TimeoutExpired:
            raise ModuleBuildError(f"building {source} did not finish in {BUILD_TIMEOUT}s") from None
    output = _user_paths(proc.stdout + proc.stderr, env.work_dir, base)
    (out / "build.log").write_text(" ".join(cmd) + f"\n# in {env.where}\n" + output)
    if proc.returncode != 0:
        raise ModuleBuildError(_summarise(output, source, kernel), detail=output[-4000:])
    old = old_kbuild.probe_tree(kernel.build_path).is_old
    for ko in work.rglob("*.ko"):
        if old:  # the kernel's compiler in vermagic, PLT32 → PC32
            old_kbuild.finish(ko, kernel.build_path, kernel_vermagic(kernel), profile_for(kernel.arch).name)
        shutil.move(str(ko), out / ko.name)
    shutil.rmtree(work)


def kbuild_arch_args(kernel: Kernel) -> list[str]:
    """ARCH= / CROSS_COMPILE= for a kernel of another architecture than the host's
    (i386 needs neither: the headers say ARCH=x86 and kbuild adds -m32)."""
    profile = profile_for(kernel.arch)
    prefix = profile.cross_prefix()
    args = [f"ARCH={profile.kbuild_arch}"] if profile.kbuild_arch and prefix else []
    if prefix and profile.kbuild_arch:
        args.append(f"CROSS_COMPILE={prefix}")
    return args


def kbuild_cc(kernel: Kernel) -> str:
    """The compiler for the kernel's modules: the catalog's (e.g. gcc-12), with the cross
    prefix when kbuild needs a cross toolchain (arm64 on an x86 host)."""
    return f"{profile_for(kernel.arch).cross_prefix()}{kernel.cc}" if kbuild_arch_args(kernel) else kernel.cc


def _cc_package(cc: str) -> str:
    prefix, _, name = cc.rpartition("-linux-gnu-")
    return f"{name}-{prefix.replace('_', '-')}-linux-gnu" if prefix else cc


def _user_paths(text: str, work: str | Path, base: Path) -> str:
    """Compiler output with the build copy's paths turned back into the user's."""
    return text.replace(str(work) + "/", str(base) + "/")


def _summarise(output: str, source: Path, kernel: Kernel) -> str:
    diags = list(_DIAG.finditer(output))
    if not diags:
        tool = re.search(r"^(?:ERROR|error): (.+)$", output, re.M)  # modpost, objtool, …
        if tool:
            return f"building {source} against {kernel.release} failed: {tool[1].strip()}"
        return f"building {source} against {kernel.release} failed (see the build output)"
    first = diags[0]
    where = f"{first['file']}:{first['line']}" + (f":{first['col']}" if first["col"] else "")
    more = f" (+{len(diags) - 1} more)" if len(diags) > 1 else ""
    return f"{where}: {first['sev']}: {first['msg']}{more}"
