"""Kernel specs: ``debian:<suite>[/<flavour>][@<abi>]``, ``local:PATH[?opts]``, ``built:<key>``."""
from __future__ import annotations

import re
from dataclasses import dataclass

from vmprobe.config import DEFAULT_SPEC
from vmprobe.errors import SpecError
from vmprobe.kernels.catalog import Catalog, load_catalog

_DEBIAN = re.compile(r"^debian:(?P<suite>[a-z0-9-]+)(?:/(?P<flavour>[a-z0-9-]+))?"
                     r"(?:@(?P<abi>[0-9][0-9a-z.+~-]*))?$")


@dataclass(frozen=True)
class KernelSpec:
    provider: str
    suite: str
    flavour: str
    abi: str | None = None  # None: the newest in the archive

    def __str__(self) -> str:
        text = f"{self.provider}:{self.suite}/{self.flavour}"
        return f"{text}@{self.abi}" if self.abi else text


def parse_spec(text: str, catalog: Catalog | None = None):
    """Parse and validate a spec against the catalog; errors say what exists.

    ``local:``/``built:`` specs give a :class:`~vmprobe.kernels.local.LocalSpec`.
    """
    text = text.strip()
    if text.startswith(("local:", "built:")):
        from vmprobe.kernels.local import parse_local_spec
        return parse_local_spec(text)
    catalog = catalog or load_catalog()
    if not text.startswith("debian:"):
        raise SpecError(f"unknown kernel spec {text!r}: expected 'debian:<suite>[/<flavour>][@<abi>]', "
                        f"'local:PATH' or 'built:<key>', e.g. {DEFAULT_SPEC!r}")
    m = _DEBIAN.match(text)
    if not m:
        raise SpecError(f"malformed kernel spec {text!r}: expected 'debian:<suite>[/<flavour>][@<abi>]'")
    suite = catalog.suites.get(m["suite"])
    if suite is None:
        raise SpecError(f"unknown Debian suite {m['suite']!r} in {text!r}; "
                        f"known suites: {', '.join(sorted(catalog.suites))}")
    flavour = m["flavour"] or suite.default_flavour
    if flavour not in suite.flavours:
        raise SpecError(f"unknown flavour {flavour!r} for debian:{suite.name} in {text!r}; "
                        f"known flavours: {', '.join(sorted(suite.flavours))}")
    abi = m["abi"]
    if abi and not re.match(rf"{re.escape(suite.series)}[.-]", abi):
        raise SpecError(f"ABI {abi!r} in {text!r} is not a {suite.series} kernel "
                        f"(debian:{suite.name} ships {suite.series}.x)")
    return KernelSpec("debian", suite.name, flavour, abi)
