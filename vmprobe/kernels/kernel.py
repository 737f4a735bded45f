"""A fetched kernel: where its image, modules and build tree are, and what it is."""
from __future__ import annotations

import contextlib
import json
import os
import re
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path

from vmprobe.errors import FetchError
from vmprobe.host.cache import sha256_file

RECORD = "kernel.json"
#: In a kernel's modules dir: it ships no modules, treat every module the guest wants as built in.
ALL_BUILTIN = ".vmprobe-all-builtin"


@dataclass
class Kernel:
    spec: str          # canonical spec, e.g. debian:bookworm/cloud-amd64@6.1.0-56
    release: str       # uname -r, e.g. 6.1.0-56-cloud-amd64
    version: str       # package version, e.g. 6.1.192-2
    arch: str          # Debian arch: amd64, i386, arm64
    flavour: str
    series: str        # e.g. 6.1
    cc: str            # compiler for out-of-tree modules
    root: Path         # extracted tree
    image: str         # paths relative to root
    config: str
    modules_dir: str
    build_dir: str
    packages: list[dict] = field(default_factory=list)
    image_sha256: str = ""
    suite: str = ""
    toolchain: str = "host"      # "host", or "chroot": build inside a chroot of `suite`
    toolchain_packages: list[str] = field(default_factory=list)
    vmlinux: str = ""            # an uncompressed vmlinux with symbols, if known (local/built kernels)

    # -- paths ---------------------------------------------------------------
    @property
    def image_path(self) -> Path:
        return self.root / self.image

    @property
    def config_path(self) -> Path:
        return self.root / self.config

    @property
    def modules_path(self) -> Path:
        return self.root / self.modules_dir

    @property
    def build_path(self) -> Path:
        return self.root / self.build_dir

    @property
    def vmlinux_path(self) -> Path | None:
        return self.root / self.vmlinux if self.vmlinux else None

    # -- facts ---------------------------------------------------------------
    @cached_property
    def kconfig(self) -> dict[str, str]:
        values = {}
        for line in self.config_path.read_text(errors="replace").splitlines():
            m = re.match(r"^(CONFIG_\w+)=(.*)$", line)
            if m:
                values[m[1]] = m[2].strip('"')
        return values

    # -- persistence ---------------------------------------------------------
    def save(self) -> None:
        data = asdict(self)
        data["root"] = "."
        write_manifest(self.root)
        (self.root / RECORD).write_text(json.dumps(data, indent=2) + "\n")

    @classmethod
    def load(cls, root: Path, *, verify: bool = True) -> "Kernel":
        """Load a cache entry; with ``verify``, check it is whole (raises FetchError)."""
        try:
            data = json.loads((root / RECORD).read_text())
            data["root"] = root
            kernel = cls(**data)
        except (OSError, ValueError, TypeError) as exc:
            raise FetchError(f"cache entry {root} is unreadable ({exc})") from None
        if verify:
            kernel.verify()
        return kernel

    def verify(self) -> None:
        """Cheap integrity check: key files exist, image checksum matches."""
        for rel in (self.image, self.config, self.modules_dir, self.build_dir):
            if not (self.root / rel).exists():
                raise FetchError(f"cache entry for {self.spec} is incomplete: {rel} is missing")
        if self.image_sha256 and sha256_file(self.image_path) != self.image_sha256:
            raise FetchError(f"cache entry for {self.spec} is corrupted: "
                             f"{self.image} does not match its recorded sha256")
        problem = check_manifest(self.root)
        if problem:
            raise FetchError(f"cache entry for {self.spec} is corrupted: {problem}")


# Every file's size, recorded when the entry is made: a truncated or missing file (a full disk,
# a killed copy, a stray edit) is found with a stat per file (≈14 000 files, tens of ms), where
# hashing the whole tree (≈190 MB) on every run would not be cheap. The image is hashed as well.
MANIFEST = "files.json"


def _sizes(root: Path) -> dict[str, int]:
    sizes = {}
    for dirpath, _, filenames in os.walk(root / "root"):
        for name in filenames:
            path = os.path.join(dirpath, name)
            if not os.path.islink(path):
                sizes[os.path.relpath(path, root)] = os.stat(path).st_size
    return sizes


def write_manifest(root: Path) -> None:
    tmp = root / f".{MANIFEST}.tmp{os.getpid()}"
    tmp.write_text(json.dumps(_sizes(root), sort_keys=True))
    os.replace(tmp, root / MANIFEST)


def check_manifest(root: Path) -> str | None:
    """What is wrong with the entry's files, or None. An entry from before manifests gets one now
    (its image checksum has just been verified)."""
    try:
        recorded = json.loads((root / MANIFEST).read_text())
    except FileNotFoundError:
        with contextlib.suppress(OSError):
            write_manifest(root)
        return None
    except (OSError, ValueError) as exc:
        return f"its file list {MANIFEST} is unreadable ({exc})"
    base = os.fspath(root)
    for rel, size in recorded.items():
        try:
            have = os.stat(os.path.join(base, rel)).st_size
        except OSError:
            return f"{rel} is missing"
        if have != size:
            return f"{rel} has {have} bytes, {size} when fetched"
    return None
