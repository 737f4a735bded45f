"""Debian kernels: resolve a spec in the archive, download, verify, extract, cache."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from vmprobe.config import cache_dir, settings
from vmprobe.errors import FetchError
from vmprobe.host import cache, progress
from vmprobe.host.interrupts import checkpoint
from vmprobe.kernels.apt import PrivateApt, host_debian_arch, mirrors
from vmprobe.kernels.catalog import Catalog, Suite
from vmprobe.kernels.debversion import sort_key
from vmprobe.kernels.kernel import Kernel
from vmprobe.kernels.spec import KernelSpec


class DebianProvider:
    def __init__(self, catalog: Catalog):
        self.catalog = catalog

    # -- archive -------------------------------------------------------------
    def apt(self, suite: Suite, arch: str, kind: str = "deb") -> PrivateApt:
        """The private apt state for a suite's binary packages of ``arch`` (``kind="deb-src"``:
        its source packages)."""
        m = mirrors()
        sources = [(m.debian, s) for s in suite.suites]
        if m.security:
            sources += [(m.security, s) for s in suite.security_suites]
        name = f"{suite.name}-{arch}" if kind == "deb" else f"{suite.name}-src"
        return PrivateApt(cache_dir("apt", name), arch, sources, m.keyring,
                          check_valid_until=suite.check_valid_until,
                          optional_suites=suite.security_suites, kind=kind)

    def _newest(self, apt: PrivateApt, package: str, version: str | None = None) -> dict:
        stanzas = apt.show(package)
        if version:
            stanzas = [s for s in stanzas if s["Version"] == version]
        if not stanzas:
            want = f"{package}={version}" if version else package
            raise FetchError(f"package {want} is not in the archive ({', '.join(s for _, s in apt.sources)})")
        return stanzas[0]

    def available_abis(self, apt: PrivateApt, suite: Suite, flavour: str) -> list[str]:
        out = apt.run("apt-cache", "pkgnames", f"linux-image-{suite.series}")
        abis = {m[1] for m in re.finditer(rf"^linux-image-(\S+?)-{re.escape(flavour)}(?:-unsigned)?$", out, re.M)}
        return sorted(abis, key=sort_key)

    def resolve(self, spec: KernelSpec, apt: PrivateApt) -> tuple[str, dict]:
        """(abi, image package stanza) for a spec."""
        suite = self.catalog.suites[spec.suite]
        abi = spec.abi
        if abi is None:
            meta = self._newest(apt, suite.packages.meta.format(**suite.names(spec.flavour, "")))
            m = re.search(rf"linux-image-(\S+?)-{re.escape(spec.flavour)}\b", meta.get("Depends", ""))
            if not m:
                raise FetchError(f"cannot tell the current ABI of {spec}: {meta['Package']} "
                                 f"depends on {meta.get('Depends')!r}")
            abi = m[1]
        choices = _alternatives(suite.packages.images[0], suite.names(spec.flavour, abi))
        for image_pkg in choices:
            if apt.show(image_pkg):
                return abi, self._newest(apt, image_pkg)
        known = self.available_abis(apt, suite, spec.flavour)
        raise FetchError(f"kernel ABI {abi} ({' or '.join(choices)}) is not in the archive for "
                         f"debian:{suite.name}/{spec.flavour}; available: {', '.join(known) or 'none'}")

    # -- cache ---------------------------------------------------------------
    @staticmethod
    def entry_dir(spec: KernelSpec, abi: str, version: str) -> Path:
        return cache_dir("kernels") / f"debian-{spec.suite}-{spec.flavour}-{abi}-{version}"

    @staticmethod
    def cached_entries(spec: KernelSpec) -> list[Path]:
        # ABIs start with a digit: "686-[0-9]*" must not also match the 686-pae entries
        pattern = f"debian-{spec.suite}-{spec.flavour}-{spec.abi or '[0-9]*'}-*"
        found = [p for p in cache_dir("kernels").glob(pattern)
                 if p.is_dir() and (p / "kernel.json").exists()]
        return sorted(found, key=lambda p: sort_key(p.name.rsplit("-", 2)[-2] + "-" + p.name.rsplit("-", 1)[-1]))

    def fetch(self, spec: KernelSpec, *, refresh: bool = False, log=None) -> Kernel:
        log = log or (lambda msg: print(msg, file=sys.stderr))
        suite = self.catalog.suites[spec.suite]
        arch = suite.flavours[spec.flavour].arch
        apt = self.apt(suite, arch)
        try:
            apt.update(0 if refresh else settings().apt_refresh_hours, log=log)
        except FetchError as exc:
            cached = self.cached_entries(spec)
            if not cached:
                raise
            log(f"vmprobe: warning: archive unreachable ({exc.message}); using cached {cached[-1].name}")
            return Kernel.load(cached[-1])
        for warning in apt.warnings:
            log(f"vmprobe: warning: {warning}")
        remembered = self._remembered(apt, spec)
        if remembered:
            try:
                return Kernel.load(remembered)
            except FetchError as exc:
                log(f"vmprobe: {exc.message}; fetching it again")
        abi, image = self.resolve(spec, apt)
        entry = self.entry_dir(spec, abi, image["Version"])
        if (entry / "kernel.json").exists() and entry != remembered:
            try:
                kernel = Kernel.load(entry)
                self._remember(apt, spec, entry)
                return kernel
            except FetchError as exc:
                log(f"vmprobe: {exc.message}; fetching it again")
        with cache.locked(entry):
            if (entry / "kernel.json").exists():
                try:
                    return Kernel.load(entry)
                except FetchError:
                    pass
            log(f"vmprobe: fetching {spec.provider}:{spec.suite}/{spec.flavour}@{abi} "
                f"({image['Version']}) from {', '.join(sorted({u for u, _ in apt.sources}))}")
            with cache.staging(entry) as tmp:
                checkpoint("fetch")
                self._download_and_extract(spec, suite, abi, image, apt, tmp)
        kernel = Kernel.load(entry)
        self._remember(apt, spec, entry)
        return kernel

    def _download_image(self, apt: PrivateApt, suite: Suite, spec: KernelSpec, abi: str,
                        image: dict, debs: Path) -> dict:
        """Download the image, falling back to its alternative name (e.g. the signed
        package) when a mirror lists a file it does not serve."""
        choices = _alternatives(suite.packages.images[0], suite.names(spec.flavour, abi))
        candidates = [image] + [s for name in choices if name != image["Package"]
                                for s in apt.show(name) if s["Version"] == image["Version"]][:1]
        errors = []
        for stanza in candidates:
            try:
                apt.download([f"{stanza['Package']}={stanza['Version']}"], debs, _size([stanza]))
                return stanza
            except FetchError as exc:
                errors.append(exc)
        raise errors[-1]

    # Resolving a spec costs several apt-cache runs (≈1.5 s); the answer only
    # changes when the package lists do, so it is remembered per lists update.
    @staticmethod
    def _resolutions(apt: PrivateApt) -> tuple[Path, dict, float]:
        path = apt.root / "resolved.json"
        stamp = apt.lists_stamp()
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            data = {}
        return path, (data if data.get("lists") == stamp else {"lists": stamp}), stamp

    def _remembered(self, apt: PrivateApt, spec: KernelSpec) -> Path | None:
        _, data, _ = self._resolutions(apt)
        name = data.get(str(spec))
        entry = cache_dir("kernels") / name if name else None
        return entry if entry and (entry / "kernel.json").exists() else None

    def _remember(self, apt: PrivateApt, spec: KernelSpec, entry: Path) -> None:
        path, data, _ = self._resolutions(apt)
        data[str(spec)] = entry.name
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, path)

    def _download_and_extract(self, spec: KernelSpec, suite: Suite, abi: str, image: dict,
                              apt: PrivateApt, tmp: Path) -> None:
        version = image["Version"]
        names = suite.names(spec.flavour, abi)
        rest = [self._newest(apt, p.format(**names), version)
                for p in suite.packages.images[1:] + suite.packages.headers]
        debs = tmp / "debs"
        debs.mkdir()
        apt.download([f"{s['Package']}={s['Version']}" for s in rest], debs, _size(rest))
        # kbuild's tools (fixdep, modpost…) run on the build host: a foreign kernel gets the
        # host-arch linux-kbuild (Multi-Arch: foreign), from the private state for that arch
        kapt = apt if apt.arch == host_debian_arch() else self.apt(suite, host_debian_arch())
        if kapt is not apt:
            kapt.update(settings().apt_refresh_hours)
        kbuild = self._newest(kapt, suite.packages.kbuild.format(**names), version)
        kapt.download([f"{kbuild['Package']}={kbuild['Version']}"], debs, _size([kbuild]))
        rest.append(kbuild)
        image = self._download_image(apt, suite, spec, abi, image, debs)
        wanted = [image] + rest
        root = tmp / "root"
        root.mkdir()
        packages = []
        for stanza in wanted:
            deb, digest = verified_deb(debs, stanza)
            packages.append({"name": stanza["Package"], "version": version, "sha256": digest})
            with progress.status(f"unpacking {stanza['Package']}"):
                _run(["dpkg-deb", "-x", str(deb), str(root)])
        for f in debs.iterdir():
            f.unlink()
        debs.rmdir()
        kernel = _describe_tree(root, spec, suite, abi, version, packages)
        # The record lives at the entry's top; paths in it are relative to it.
        kernel.root = tmp
        for attr in ("image", "config", "modules_dir", "build_dir"):
            setattr(kernel, attr, "root/" + getattr(kernel, attr))
        kernel.image_sha256 = cache.sha256_file(tmp / kernel.image)
        kernel.save()


def verified_deb(debs: Path, stanza: dict) -> tuple[Path, str]:
    """The .deb apt downloaded for a stanza, and its sha256 (checked against the archive's)."""
    files = list(debs.glob(f"{stanza['Package']}_*.deb"))
    if len(files) != 1:
        raise FetchError(f"apt did not deliver {stanza['Package']}={stanza['Version']}")
    digest = cache.sha256_file(files[0])
    if stanza.get("SHA256") and digest != stanza["SHA256"]:
        raise FetchError(f"{files[0].name}: sha256 {digest} does not match the archive's "
                         f"{stanza['SHA256']}")
    return files[0], digest


def _alternatives(template: str, names: dict[str, str]) -> list[str]:
    """``a|b`` in the catalog: package a, else b."""
    return [alt.format(**names) for alt in template.split("|")]


def _run(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise FetchError(f"{' '.join(cmd)} failed", detail=proc.stderr[-2000:])


def _describe_tree(root: Path, spec: KernelSpec, suite: Suite, abi: str, version: str,
                   packages: list[dict]) -> Kernel:
    """Find image/config/modules/build in an extracted tree and make it relocatable."""
    # /boot/vmlinuz-<rel> (≤ trixie), or /usr/lib/modules/<rel>/vmlinuz[.unsigned] (sid)
    images = sorted((root / "boot").glob("vmlinuz-*")) + sorted(root.glob("usr/lib/modules/*/vmlinuz*"))
    if not images:
        raise FetchError(f"no kernel image in the packages of {spec}")
    image = images[0]
    release = image.name[len("vmlinuz-"):] if image.parent.name == "boot" else image.parent.name
    config = next(p for p in (root / "boot" / f"config-{release}",
                              root / "usr/lib/modules" / release / "config") if p.exists())
    modules = next(p for p in (root / "lib/modules" / release, root / "usr/lib/modules" / release)
                   if p.exists())
    build = root / "usr/src" / f"linux-headers-{release}"
    if not (build / "Makefile").exists():
        raise FetchError(f"headers for {release} lack {build.relative_to(root)}/Makefile")
    _make_relocatable(root, build)
    return Kernel(spec=f"debian:{spec.suite}/{spec.flavour}@{abi}", release=release, version=version,
                  arch=suite.flavours[spec.flavour].arch, flavour=spec.flavour, series=suite.series,
                  cc=suite.toolchain.cc, suite=suite.name, toolchain=suite.toolchain.kind,
                  toolchain_packages=list(suite.toolchain.packages), root=root, image=str(image.relative_to(root)),
                  config=str(config.relative_to(root)), modules_dir=str(modules.relative_to(root)),
                  build_dir=str(build.relative_to(root)), packages=packages)


def _make_relocatable(root: Path, build: Path) -> None:
    """Headers hard-code ``/usr/src/...``; point includes and symlinks into the tree."""
    makefile = build / "Makefile"
    text = makefile.read_text()
    fixed = re.sub(r"^include /usr/src/(\S+)", lambda m: f"include ../{m[1]}", text, flags=re.M)
    # sid: KBUILD_OUTPUT=/usr/src/linux-headers-<rel> (the flavour dir itself; make runs -C there)
    fixed = re.sub(rf"/usr/src/{re.escape(build.name)}\b", "$(CURDIR)", fixed)
    makefile.write_text(fixed)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            link = Path(dirpath) / name
            if link.is_symlink():
                target = os.readlink(link)
                if target.startswith("/"):
                    link.unlink()
                    os.symlink(os.path.relpath(root / target.lstrip("/"), link.parent), link)


def _size(stanzas: list[dict]) -> int | None:
    """The bytes apt will download for these packages (their Size fields), if all say."""
    sizes = [s.get("Size", "") for s in stanzas]
    return sum(int(x) for x in sizes) if all(x.isdigit() for x in sizes) else None
