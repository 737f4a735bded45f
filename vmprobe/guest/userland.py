"""The guest's own programs for a foreign architecture, from Debian packages of that arch.

A 64-bit busybox cannot run in a 32-bit guest (exec fails with -ENOEXEC, and
the kernel panics with error -8 when it is init), and an amd64 dropbear cannot
run on arm64. For a guest whose architecture is not the host's, busybox-static,
dropbear-bin and openssh-sftp-server come from the kernel's suite *for the
guest's architecture*, fetched as .debs through the private apt state for that
architecture (the host's dpkg never learns of it), and extracted. The shared
libraries the programs need are the DT_NEEDED closure read from the extracted
ELF files themselves (the host's ldd cannot run foreign binaries), found among
the extracted library packages (the library-package closure of the programs'
``Depends``). The result is cached per (suite, arch, package versions).
"""
from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

from vmprobe.arch import ArchProfile, profile_for, profile_where
from vmprobe.config import cache_dir, settings
from vmprobe.errors import ConfigError, FetchError
from vmprobe.formats.elf import dynamic, e_machine
from vmprobe.host import cache
from vmprobe.kernels import Kernel

#: Debian package → (guest path, path inside the package)
PROGRAMS = {
    "busybox": ("busybox-static", "/bin/busybox", "bin/busybox"),
    "dropbear": ("dropbear-bin", "/bin/dropbear", "usr/sbin/dropbear"),
    "sftp-server": ("openssh-sftp-server", "/usr/lib/sftp-server", "usr/lib/openssh/sftp-server"),
}
LIB_DIRS = ("lib/{triplet}", "usr/lib/{triplet}", "lib", "usr/lib")


def _depends(stanza: dict) -> list[str]:
    """Package names in Depends/Pre-Depends (first alternative, no versions or arch quals)."""
    names = []
    for fieldname in ("Pre-Depends", "Depends"):
        for clause in stanza.get(fieldname, "").split(","):
            first = clause.split("|")[0].strip()
            if first:
                names.append(re.split(r"[\s(:]", first, maxsplit=1)[0])
    return names


def _package_closure(apt, roots: list[str]) -> list[dict]:
    """The packages' stanzas plus the library packages (Section ``libs``) they depend on,
    recursively (openssh-sftp-server's dependency on the whole client is not followed)."""
    seen: dict[str, dict] = {}
    skipped: set[str] = set()
    todo = [(name, True) for name in roots]
    while todo:
        name, root = todo.pop()
        if name in seen or name in skipped:
            continue
        stanzas = apt.show(name)
        if not stanzas:
            if not root:
                skipped.add(name)  # a virtual package: what provides it is not a library we need
                continue
            raise FetchError(f"package {name} ({apt.arch}) is not in the archive "
                             f"({', '.join(s for _, s in apt.sources)})")
        if not root and stanzas[0].get("Section") != "libs":
            skipped.add(name)
            continue
        seen[name] = stanzas[0]
        todo += [(d, False) for d in _depends(stanzas[0]) if d not in seen and d not in skipped]
    return list(seen.values())


def _remembered_closure(apt) -> list[dict]:
    """The package closure, remembered per package-lists update (apt-cache runs are slow)."""
    path = apt.root / "userland.json"
    stamp = apt.lists_stamp()
    try:
        data = json.loads(path.read_text())
        if data.get("lists") == stamp and stamp:
            return data["stanzas"]
    except (OSError, ValueError, KeyError):
        pass
    stanzas = _package_closure(apt, [pkg for pkg, _, _ in PROGRAMS.values()])
    keep = ("Package", "Version", "SHA256", "Depends", "Pre-Depends")
    stanzas = [{k: s[k] for k in keep if k in s} for s in stanzas]
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps({"lists": stamp, "stanzas": stanzas}))
    os.replace(tmp, path)
    return stanzas


def _resolve_in(root: Path, guest_path: str) -> Path:
    """A guest path inside the extracted tree, following symlinks within the tree."""
    path = root / guest_path.lstrip("/")
    for _ in range(40):
        if not path.is_symlink():
            return path
        target = os.readlink(path)
        path = (root / target.lstrip("/")) if target.startswith("/") else (path.parent / target)
    raise FetchError(f"symlink loop at {guest_path} in the extracted guest packages")


def library_closure(root: Path, programs: list[str], profile: ArchProfile) -> list[str]:
    """Guest paths of the loader and shared libraries ``programs`` (guest paths) need, as
    DT_NEEDED says, looked up in ``root`` the way the guest's loader would. Every file
    must be for the ``profile``'s arch."""
    arch_name = profile.name
    dirs = [d.format(triplet=profile.multiarch) for d in LIB_DIRS]
    wanted: list[str] = []
    todo = list(programs)
    done: set[str] = set()
    while todo:
        guest = todo.pop(0)
        if guest in done:
            continue
        done.add(guest)
        data = _resolve_in(root, guest).read_bytes()
        number = e_machine(data)
        if number != profile.elf_machine:
            got = profile_where(elf_machine=number)
            raise ConfigError(f"{guest} in the {arch_name} guest packages is built for "
                              f"{got.name if got else f'em{number}'}")
        interp, needed = dynamic(data)
        deps = [interp] if interp else []
        for soname in needed:
            found = next((f"/{d}/{soname}" for d in dirs if _resolve_in(root, f"/{d}/{soname}").is_file()), None)
            if found is None:
                raise ConfigError(f"{guest} needs {soname}, which no extracted {arch_name} package "
                                  f"provides (looked in {', '.join('/' + d for d in dirs)})")
            deps.append(found)
        for dep in deps:
            if not _resolve_in(root, dep).is_file():
                raise ConfigError(f"{guest} needs {dep}, which the {arch_name} packages lack")
            if dep not in done and dep not in todo:
                wanted.append(dep)
                todo.append(dep)
    return list(dict.fromkeys(wanted))


def foreign_programs(kernel: Kernel, log=None) -> list[tuple[str, Path]]:
    """(guest path, file) for the guest's programs and libraries, from ``kernel.arch`` packages."""
    from vmprobe.kernels import load_catalog
    from vmprobe.kernels.debian import DebianProvider

    profile = profile_for(kernel.arch)
    catalog = load_catalog()
    suite = catalog.suites[kernel.suite]
    apt = DebianProvider(catalog).apt(suite, kernel.arch)
    apt.update(settings().apt_refresh_hours)
    stanzas = _remembered_closure(apt)
    key = cache.digest("userland-v1", kernel.arch,
                       *sorted(f"{s['Package']}={s['Version']}" for s in stanzas))
    entry = cache_dir("userland") / f"{kernel.suite}-{kernel.arch}-{key[:16]}"
    record = entry / "files.json"
    if not record.exists():
        with cache.locked(entry):
            if not record.exists():
                if log:
                    log(f"vmprobe: fetching the {kernel.arch} guest userland "
                        f"({', '.join(p for p, _, _ in PROGRAMS.values())} + {len(stanzas) - 3} libraries)")
                with cache.staging(entry) as tmp:
                    _fetch_and_extract(apt, stanzas, tmp, profile)
    files = json.loads(record.read_text())
    return [(guest, entry / "root" / rel) for guest, rel in files]


def _fetch_and_extract(apt, stanzas: list[dict], tmp: Path, profile: ArchProfile) -> None:
    debs, root = tmp / "debs", tmp / "root"
    debs.mkdir()
    root.mkdir()
    apt.download([f"{s['Package']}={s['Version']}" for s in stanzas], debs)
    for s in stanzas:
        found = list(debs.glob(f"{s['Package']}_*.deb"))
        if len(found) != 1:
            raise FetchError(f"apt did not deliver {s['Package']}={s['Version']} ({apt.arch})")
        proc = subprocess.run(["dpkg-deb", "-x", str(found[0]), str(root)], capture_output=True, text=True)
        if proc.returncode != 0:
            raise FetchError(f"dpkg-deb -x {found[0].name} failed", detail=proc.stderr[-2000:])
        found[0].unlink()
    debs.rmdir()
    files: list[tuple[str, str]] = []
    for _, guest, inside in PROGRAMS.values():
        if not (root / inside).is_file():
            raise FetchError(f"the {apt.arch} packages lack /{inside}")
        files.append((guest, inside))
    for lib in library_closure(root, ["/" + inside for _, _, inside in PROGRAMS.values()], profile):
        files.append((lib, str(_resolve_in(root, lib).relative_to(root))))
    (tmp / "files.json").write_text(json.dumps(files, indent=1) + "\n")
