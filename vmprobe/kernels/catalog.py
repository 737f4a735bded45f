"""The kernel catalog: data files under the top-level ``kernels/`` directory."""
from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from vmprobe.config import CATALOG_DIR
from vmprobe.errors import ConfigError


@dataclass(frozen=True)
class Flavour:
    name: str
    arch: str  # Debian architecture: amd64, i386, arm64
    matrix: bool = False  # also in `vmprobe matrix`'s default kernels (besides each suite's default)


@dataclass(frozen=True)
class Packages:
    meta: str
    images: tuple[str, ...]   # the first one's version pins the others
    headers: tuple[str, ...]
    kbuild: str


@dataclass(frozen=True)
class Toolchain:
    """How modules are built: with the host's compiler, or inside a chroot of
    the kernel's own suite (when the kernel's compiler or kbuild's glibc is
    newer than the host's)."""

    kind: str                    # "host" | "chroot"
    cc: str                      # compiler passed as CC=
    packages: tuple[str, ...] = ()  # installed into the chroot


@dataclass(frozen=True)
class Suite:
    name: str
    series: str
    suites: tuple[str, ...]
    security_suites: tuple[str, ...]
    default_flavour: str
    toolchain: Toolchain
    packages: Packages
    flavours: dict[str, Flavour] = field(default_factory=dict)
    check_valid_until: bool = True

    def names(self, flavour: str, abi: str) -> dict[str, str]:
        """Template values for package names."""
        return {"abi": abi, "flavour": flavour, "series": self.series}


@dataclass(frozen=True)
class Catalog:
    suites: dict[str, Suite]


def _suite(name: str, raw: dict, source: Path) -> Suite:
    try:
        pk = raw["packages"]
        tc = raw["toolchain"]
        return Suite(
            name=name,
            series=raw["series"],
            suites=tuple(raw["suites"]),
            security_suites=tuple(raw.get("security_suites", ())),
            default_flavour=raw["default_flavour"],
            toolchain=Toolchain(tc.get("kind", "host"), tc["cc"], tuple(tc.get("packages", ()))),
            packages=Packages(pk["meta"], tuple(pk["images"]), tuple(pk["headers"]), pk["kbuild"]),
            flavours={fl: Flavour(fl, v["arch"], bool(v.get("matrix", False)))
                      for fl, v in raw["flavours"].items()},
            check_valid_until=raw.get("check_valid_until", True),
        )
    except KeyError as exc:
        raise ConfigError(f"catalog {source}: suite {name!r} lacks key {exc}") from None


@lru_cache(maxsize=4)
def load_catalog(directory: Path = CATALOG_DIR) -> Catalog:
    suites: dict[str, Suite] = {}
    for path in sorted(directory.glob("*.toml")):
        with path.open("rb") as f:
            data = tomllib.load(f)
        for name, raw in data.items():
            suites[name] = _suite(name, raw, path)
    if not suites:
        raise ConfigError(f"no kernel catalog found under {directory}")
    return Catalog(suites)


def matrix_specs(catalog: Catalog) -> list[str]:
    """``vmprobe matrix``'s default kernels: each suite's default flavour, then the
    flavours marked ``matrix = true`` (the other architectures)."""
    specs = [f"debian:{name}" for name in catalog.suites]
    specs += [f"debian:{name}/{fl.name}" for name, suite in catalog.suites.items()
              for fl in suite.flavours.values() if fl.matrix and fl.name != suite.default_flavour]
    return specs
