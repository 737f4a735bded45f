"""Kernels: specs, the catalog, and fetching them into the cache."""
from __future__ import annotations

from vmprobe.kernels.catalog import load_catalog
from vmprobe.kernels.debian import DebianProvider
from vmprobe.kernels.kernel import Kernel
from vmprobe.kernels.spec import DEFAULT_SPEC, KernelSpec, parse_spec

__all__ = ["DEFAULT_SPEC", "Kernel", "KernelSpec", "get_kernel", "list_kernels", "parse_spec"]


def get_kernel(spec_text: str = DEFAULT_SPEC, *, refresh: bool = False, log=None) -> Kernel:
    """Resolve a spec to a complete, verified kernel in the cache (fetching it if needed)."""
    if spec_text.strip().startswith(("local:", "built:")):
        from vmprobe.kernels.local import get_local_kernel
        return get_local_kernel(spec_text, log=log)
    catalog = load_catalog()
    spec = parse_spec(spec_text, catalog)
    return DebianProvider(catalog).fetch(spec, refresh=refresh, log=log)


def list_kernels() -> list[dict]:
    """Catalog entries with what is cached for each (no network)."""
    catalog = load_catalog()
    provider = DebianProvider(catalog)
    rows = []
    for suite in catalog.suites.values():
        for flavour in suite.flavours.values():
            spec = KernelSpec("debian", suite.name, flavour.name)
            cached = [p.name for p in provider.cached_entries(spec)]
            rows.append({"spec": str(spec), "series": suite.series, "arch": flavour.arch,
                         "default": flavour.name == suite.default_flavour, "cached": cached})
    from vmprobe.kernels.built import built_kernels
    for kernel in built_kernels():  # `vmprobe kernels build` results
        rows.append({"spec": kernel.spec, "series": kernel.series, "arch": kernel.arch,
                     "default": False, "cached": [kernel.root.name]})
    return rows
