"""Where a kernel build's source comes from: a tree on disk, or Debian's ``linux-source`` package.

Each :class:`Source` knows how to unpack itself and what identifies it for the
cache key, so the builder (``kernels.build``) needs to know neither.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from vmprobe.config import cache_dir
from vmprobe.errors import ConfigError, KernelBuildError, SpecError
from vmprobe.host import cache

STEP_TIMEOUT = 600        # configuring, patching, unpacking


@dataclass
class Source:
    """Where the kernel source comes from and what identifies it for the cache."""

    label: str                  # for messages and the record
    identity: str               # cache key part: changes whenever the source does
    unpack: "callable"          # unpack(dest) fills dest with the tree
    cc: str = "gcc"
    suite: str = ""
    version: str = ""
    extra: dict = field(default_factory=dict)


# -- sources --------------------------------------------------------------------

def debian_source(series: str, log) -> Source:
    """``debian-source:<series>``: linux-source-<series> from the suite that ships it."""
    from vmprobe.kernels.catalog import load_catalog

    catalog = load_catalog()
    suites = [s for s in catalog.suites.values() if s.series == series]
    if not suites:
        known = ", ".join(sorted({s.series for s in catalog.suites.values()}))
        raise SpecError(f"no Debian suite in the catalog ships a {series} kernel; known series: {known}")
    suite = suites[0]
    if suite.toolchain.kind != "host":
        raise ConfigError(f"debian-source:{series} needs {suite.toolchain.cc} from {suite.name}; "
                          f"building it in a {suite.name} chroot is not supported yet")
    arch = next(iter(suite.flavours.values())).arch
    deb, stanza = fetch_linux_source(suite, arch, None, log)
    package, version = stanza["Package"], stanza["Version"]
    sha = stanza.get("SHA256") or cache.sha256_file(deb)

    def unpack(dest: Path) -> None:
        tarball = f"./usr/src/linux-source-{series}.tar.xz"
        cmd = (f"dpkg-deb --fsys-tarfile {quote(deb)} | tar -xO {quote(tarball)} "
               f"| tar -xJ -C {quote(dest)} --strip-components=1")
        run_step(["bash", "-eo", "pipefail", "-c", cmd], cwd=dest,
             what=f"unpacking {deb.name}", timeout=STEP_TIMEOUT)

    return Source(label=f"debian-source:{series} ({package} {version})",
                  identity=f"debian-source:{package}={version}:{sha}", unpack=unpack,
                  cc=suite.toolchain.cc, suite=suite.name, version=version)


def fetch_linux_source(suite, arch: str, prefer: str | None, log) -> tuple[Path, dict]:
    """Debian's ``linux-source-<series>`` .deb for ``suite`` (version ``prefer`` if the archive
    has it, else the newest), fetched through the private apt state, checked against the
    archive's sha256 and cached."""
    from vmprobe.config import settings
    from vmprobe.kernels.catalog import load_catalog
    from vmprobe.kernels.debian import DebianProvider, verified_deb

    provider = DebianProvider(load_catalog())
    apt = provider.apt(suite, arch)
    apt.update(settings().apt_refresh_hours)
    package = f"linux-source-{suite.series}"
    have = {s["Version"] for s in apt.show(package)}
    if prefer and prefer not in have:
        log(f"vmprobe: {package} {prefer} is no longer in the archive; using the newest of the series")
    stanza = provider._newest(apt, package, prefer if prefer in have else None)
    version = stanza["Version"]
    deb = cache_dir("sources") / f"{package}_{version}_all.deb"
    if not deb.exists():
        with cache.locked(deb):
            if not deb.exists():
                log(f"vmprobe: fetching {package} {version} ({int(stanza.get('Size', 0)) >> 20} MiB) "
                    f"from {', '.join(sorted({u for u, _ in apt.sources}))}")
                with cache.staging(deb) as tmp:
                    apt.download([f"{package}={version}"], tmp)
                    got, _ = verified_deb(tmp, stanza)
                    os.rename(got, tmp.parent / (tmp.name + ".deb"))
                    shutil.rmtree(tmp)
                    os.rename(tmp.parent / (tmp.name + ".deb"), tmp)
    return deb, stanza


def dir_source(path: Path) -> Source:
    """A kernel tree on disk, copied (build outputs cleaned) so it stays untouched."""
    path = path.expanduser().resolve()
    if not path.is_dir():
        raise SpecError(f"kernel source {path} is not a directory")
    missing = [p for p in ("Makefile", "Kconfig", "scripts/kconfig/merge_config.sh")
               if not (path / p).exists()]
    if missing:
        raise SpecError(f"{path} is not a kernel source tree: it lacks {', '.join(missing)}")
    identity = _tree_identity(path)

    def unpack(dest: Path) -> None:
        run_step(["cp", "-a", "--reflink=auto", f"{path}/.", str(dest)], what=f"copying {path}",
             timeout=STEP_TIMEOUT)
        run_step(["make", "-s", "mrproper"], cwd=dest, what="make mrproper in the copy", timeout=STEP_TIMEOUT)

    return Source(label=str(path), identity=f"dir:{identity}", unpack=unpack)


def _tree_identity(path: Path) -> str:
    """git HEAD + the diff, or else (name, size, mtime) of every source file."""
    git = subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True)
    if git.returncode == 0 and (path / ".git").exists():
        diff = subprocess.run(["git", "-C", str(path), "diff", "HEAD"], capture_output=True).stdout
        return cache.digest(git.stdout.strip(), diff)
    parts = []
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith(".") or name.endswith((".o", ".ko", ".a", ".cmd", ".mod", ".mod.c")):
                continue
            st = os.lstat(os.path.join(dirpath, name))
            parts.append(f"{os.path.relpath(dirpath, path)}/{name}:{st.st_size}:{st.st_mtime_ns}")
    return cache.digest(*parts)


def resolve_source(text: str, log) -> Source:
    if text.startswith("debian-source:"):
        series = text.split(":", 1)[1]
        if not re.fullmatch(r"\d+(\.\d+)?", series):
            raise SpecError(f"malformed source {text!r}: expected debian-source:<series>, e.g. debian-source:6.1")
        return debian_source(series, log)
    return dir_source(Path(text))


def quote(path) -> str:
    import shlex
    return shlex.quote(str(path))


def run_step(cmd: list[str], *, what: str, cwd: Path | None = None, env: dict | None = None,
         timeout: float = STEP_TIMEOUT) -> str:
    try:
        proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True,
                              errors="replace", stdin=subprocess.DEVNULL, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise KernelBuildError(f"{what} did not finish in {timeout:.0f}s") from None
    if proc.returncode != 0:
        raise KernelBuildError(f"{what} failed (exit {proc.returncode})",
                               detail=(proc.stdout[-2000:] + proc.stderr[-2000:]))
    return proc.stdout
