"""The old-era guest userland: Debian's busybox, built statically against musl.

Debian's busybox-static is glibc-static, and glibc's start-up code refuses kernels
older than 3.2 ("FATAL: kernel too old"); musl has no such floor (a musl busybox
was measured running on 2.6.11). It is built here from the busybox *source
package* of the host's Debian suite (``apt-get source`` through a private deb-src
state: apt checks every file against the signed index; ``dpkg-source -x``
applies Debian's patches) with Debian's own busybox-static configuration, so the
guest has the same applets as the modern one and ``/init`` and the serial agent
run unchanged. :data:`MUSL_CONFIG` says what changes for musl and why. The
compiler is ``musl-gcc`` (Debian's musl-tools), with the kernel's uapi headers
(linux-libc-dev) put on its include path. One build takes minutes under load;
it is cached per (source version, musl's libc.a, configuration).
"""
from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from vmprobe.arch import profile_for
from vmprobe.config import cache_dir, settings
from vmprobe.errors import ConfigError, FetchError
from vmprobe.formats.elf import glibc_problem
from vmprobe.host import cache, progress
from vmprobe.kernels.apt import host_debian_arch

#: Debian's busybox-static .config, then these (None: off), each for a reason
MUSL_CONFIG: dict[str, tuple[str | None, str]] = {
    "CONFIG_STATIC": ("y", "no loader, no shared libraries in the guest"),
    "CONFIG_FEATURE_CMDLINE_MODULE_OPTIONS": ("y", "or insmod drops the module's parameters"),
    "CONFIG_EXTRA_COMPAT": (None, "grep's extras use GNU regex (re_search), which musl lacks"),
    "CONFIG_FEATURE_VI_REGEX_SEARCH": (None, "likewise GNU regex, in vi"),
    "CONFIG_EXTRA_CFLAGS": ('"-isystem {headers}"', "the kernel's uapi headers, which musl does not ship"),
}
UAPI_DIRS = ("linux", "asm-generic", "mtd", "scsi", "sound", "rdma", "misc", "video", "drm", "xen")
BUILD_TIMEOUT = 1800
PACKAGES = "musl-tools and dpkg-dev"


def _host_suite():
    """The catalog suite of the host's Debian release (its musl built the busybox), else the default."""
    from vmprobe.kernels import DEFAULT_SPEC, parse_spec
    from vmprobe.kernels.catalog import load_catalog
    catalog = load_catalog()
    codename = ""
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("VERSION_CODENAME="):
                codename = line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    if codename in catalog.suites:
        return catalog.suites[codename]
    return catalog.suites[parse_spec(DEFAULT_SPEC, catalog).suite]


@dataclass(frozen=True)
class Toolchain:
    """How to compile for the guest's arch with musl: make's variables, and what identifies it."""

    make_vars: tuple[str, ...]
    libc: Path                    # musl's libc.a (its hash is part of the cache key)
    key_parts: tuple[str, ...] = ()


def toolchain(arch: str, log=None) -> Toolchain:
    """The host's musl-gcc for the host's arch; for another arch with a cross gcc here (i386 on
    amd64: gcc-12-i686-linux-gnu), that arch's musl-dev from Debian through the private apt
    state, extracted, with a specs file that points the cross gcc at it (as musl-gcc does)."""
    if arch == host_debian_arch():
        gcc = shutil.which("musl-gcc")
        if not gcc:
            raise ConfigError(f"musl-gcc not found: the old-era guest userland is built with it; install {PACKAGES}")
        out = subprocess.run([gcc, "-print-file-name=libc.a"], capture_output=True, text=True, timeout=30).stdout
        libc = Path(out.strip())
        if not libc.is_absolute() or not libc.is_file():
            raise ConfigError(f"musl-gcc does not find its libc.a ({out.strip() or 'no answer'}); "
                              f"reinstall musl-tools")
        return Toolchain(("CC=musl-gcc",), libc)
    profile = profile_for(arch)
    cross = profile.cross_compile or ""
    gcc = next((g for g in (f"{cross}gcc", f"{cross}gcc-12") if cross and shutil.which(g)), None)
    if gcc is None:
        raise ConfigError(f"no musl toolchain for {arch} guests here: the old-era userland is built with the "
                          f"host's musl-gcc ({host_debian_arch()}) or a cross gcc ({cross or 'none'}gcc) with "
                          f"{arch}'s musl-dev")
    root = _foreign_musl(arch, log)
    triplet = profile.multiarch.replace("-linux-gnu", "-linux-musl")   # i386-linux-gnu → i386-linux-musl
    specs_in = root / "usr/lib" / triplet / "musl-gcc.specs"
    if not specs_in.is_file():
        raise ConfigError(f"{arch}'s musl-dev has no {specs_in.relative_to(root)}")
    text = specs_in.read_text()
    for sub in (f"/usr/lib/{triplet}", f"/usr/include/{triplet}"):
        text = text.replace(sub, str(root) + sub)
    specs = root / "vmprobe-musl.specs"
    if not specs.exists() or specs.read_text() != text:
        specs.write_text(text)
    return Toolchain((f"CROSS_COMPILE={cross}", f"CC={gcc} -specs={specs}"), root / "usr/lib" / triplet / "libc.a",
                     (arch, text))


def _foreign_musl(arch: str, log=None) -> Path:
    """musl and musl-dev of ``arch`` from the host's suite, extracted (cached per version)."""
    from vmprobe.kernels.catalog import load_catalog
    from vmprobe.kernels.debian import DebianProvider
    apt = DebianProvider(load_catalog()).apt(_host_suite(), arch)
    apt.update(settings().apt_refresh_hours)
    stanzas = [apt.show(name)[:1] for name in ("musl-dev", "musl")]
    if not all(stanzas):
        raise FetchError(f"musl-dev for {arch} is not in the archive ({', '.join(s for _, s in apt.sources)})")
    pins = [f"{st[0]['Package']}={st[0]['Version']}" for st in stanzas]
    entry = cache_dir("userland") / f"musl-{arch}-{cache.digest(*pins)[:12]}"
    if not (entry / "root").is_dir():
        with cache.locked(entry):
            if not (entry / "root").is_dir():
                if log:
                    log(f"vmprobe: fetching {', '.join(pins)} ({arch}) for the old-era guest userland")
                with cache.staging(entry) as tmp:
                    apt.download(pins, tmp)
                    for deb in tmp.glob("*.deb"):
                        subprocess.run(["dpkg-deb", "-x", str(deb), str(tmp / "root")], check=True, timeout=120)
                        deb.unlink()
    return entry / "root"


def configure(text: str, headers: Path) -> str:
    """Debian's static .config with :data:`MUSL_CONFIG` applied (lines replaced or added)."""
    lines = [line for line in text.splitlines()
             if not any(line.startswith(f"{key}=") or line == f"# {key} is not set" for key in MUSL_CONFIG)]
    for key, (value, _why) in MUSL_CONFIG.items():
        lines.append(f"{key}={value.format(headers=headers)}" if value else f"# {key} is not set")
    return "\n".join(lines) + "\n"


def uapi_headers(dest: Path, multiarch: str = "x86_64-linux-gnu") -> Path:
    """A directory of links to the host's kernel uapi headers (and its arch's asm/)."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in UAPI_DIRS:
        if Path("/usr/include", name).is_dir():
            (dest / name).symlink_to(Path("/usr/include", name))
    asm = Path("/usr/include", multiarch, "asm")
    if not asm.is_dir() or not (dest / "linux").exists():
        raise ConfigError(f"the kernel's uapi headers are missing (/usr/include/linux, {asm}): install linux-libc-dev")
    (dest / "asm").symlink_to(asm)
    return dest


def busybox(arch: str | None = None, log=None) -> Path:
    """The musl busybox for ``arch`` (default: the host's), built and cached if missing, checked
    to be free of glibc."""
    from vmprobe.kernels.debian import DebianProvider

    if not shutil.which("dpkg-source"):
        raise ConfigError(f"dpkg-source not found: the old-era guest userland is built from Debian's "
                          f"busybox source package; install {PACKAGES}")
    tools = toolchain(arch or host_debian_arch(), log)
    suite = _host_suite()
    from vmprobe.kernels.catalog import load_catalog
    apt = DebianProvider(load_catalog()).apt(suite, host_debian_arch(), kind="deb-src")
    apt.update(settings().apt_refresh_hours)
    stanzas = [s for s in _showsrc(apt) if s.get("Package") == "busybox"]
    if not stanzas:
        raise FetchError(f"the busybox source package is not in {suite.name}'s deb-src index")
    version = stanzas[0]["Version"]
    key = cache.digest("musl-busybox-v1", version, cache.sha256_file(tools.libc), repr(sorted(MUSL_CONFIG.items())),
                       *tools.key_parts)
    entry = cache_dir("userland") / f"musl-busybox-{version.replace(':', '_')}-{key[:12]}"
    target = entry / "busybox"
    if not target.exists():
        with cache.locked(entry, timeout=BUILD_TIMEOUT + 300):   # another run may be building it
            if not target.exists():
                if log:
                    log(f"vmprobe: building the old-era guest userland: busybox {version} ({suite.name}) "
                        f"with musl (once; a few minutes under TCG load)")
                with cache.staging(entry) as tmp:
                    _build(apt, version, tmp, tools)
    problem = glibc_problem(target.read_bytes())
    if problem:
        raise ConfigError(f"the old-era busybox {target} would not run on an old kernel: {problem}")
    return target


def _showsrc(apt) -> list[dict[str, str]]:
    """The source stanzas of busybox (newest first, as apt-cache showsrc lists them)."""
    from vmprobe.kernels.debversion import sort_key
    out = apt.run("apt-cache", "showsrc", "busybox")
    stanzas = []
    for block in out.split("\n\n"):
        fields = {k: v.strip() for k, _, v in (line.partition(":") for line in block.splitlines()
                                                if line and not line[0].isspace() and ":" in line)}
        if fields.get("Version"):
            stanzas.append(fields)
    return sorted(stanzas, key=lambda f: sort_key(f["Version"]), reverse=True)


def _step(cmd: list[str], what: str, cwd: Path, log_file: Path, timeout: float = 600, **kw) -> None:
    with log_file.open("ab") as out:
        try:
            proc = subprocess.run(cmd, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, timeout=timeout,
                                  stdin=subprocess.DEVNULL, **kw)
        except subprocess.TimeoutExpired:
            raise ConfigError(f"{what} did not finish within {timeout:.0f}s",
                              detail=log_file.read_text(errors="replace")[-3000:]) from None
    if proc.returncode != 0:
        tail = log_file.read_text(errors="replace")[-3000:]
        raise ConfigError(f"{what} failed (exit {proc.returncode})", detail=tail)


def _build(apt, version: str, tmp: Path, tools: Toolchain) -> None:
    dl, log_file = tmp / "dl", tmp / "build.log"
    dl.mkdir()
    apt.source(f"busybox={version}", dl)
    dsc = next(dl.glob("busybox_*.dsc"), None)
    if dsc is None:
        raise FetchError(f"apt did not deliver the busybox {version} source package")
    # apt checked each file against the signed Sources index; dpkg-source need not check again
    _step(["dpkg-source", "--no-check", "-x", str(dsc), str(tmp / "src")], "unpacking busybox's source", tmp,
          log_file)
    src = tmp / "src"
    headers = uapi_headers(tmp / "uapi")
    (src / ".config").write_text(configure((src / "debian/config/pkg/static").read_text(), headers))
    env = dict(os.environ, LC_ALL="C")
    make = ["make", *tools.make_vars, "HOSTCC=gcc"]
    _step(["sh", "-c", "yes '' | \"$@\" oldconfig", "sh", *make], "configuring busybox for musl", src,
          log_file, env=env)
    with progress.status("building busybox with musl (the old-era guest userland)"):
        _step([*make, f"-j{os.cpu_count() or 1}", "busybox"], "building busybox with musl-gcc", src, log_file,
              timeout=BUILD_TIMEOUT, env=env)
    shutil.copy2(src / "busybox", tmp / "busybox")
    for path in tmp.iterdir():   # the cache keeps the program and how it was built, not the sources
        if path.name not in ("busybox", "build.log"):
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
