"""Where vmprobe keeps things and what the user overrode.

Settings come, in order of precedence, from environment variables, then the
user's ``~/.config/vmprobe/config.toml`` (``$VMPROBE_CONFIG``), then defaults.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

#: The checkout (or install) root: data files live beside the package.
PROJECT_ROOT = Path(__file__).resolve().parent.parent
CATALOG_DIR = PROJECT_ROOT / "kernels"
ROOTFS_DIR = PROJECT_ROOT / "rootfs"
TEMPLATES_DIR = Path(__file__).resolve().parent / "modules" / "templates"
#: The kernel spec used when none is given (here so the command line needs no kernel code).
DEFAULT_SPEC = "debian:bookworm"


@dataclass(frozen=True)
class Settings:
    cache_dir: Path
    debian_mirror: str | None          # None: read the host's apt configuration
    debian_security_mirror: str | None
    apt_refresh_hours: float


@lru_cache(maxsize=1)
def _config_file() -> dict:
    path = Path(os.environ.get("VMPROBE_CONFIG", "~/.config/vmprobe/config.toml")).expanduser()
    if not path.is_file():
        return {}
    import tomllib  # here: the command line's fast paths read no config

    with path.open("rb") as f:
        return tomllib.load(f)


def settings() -> Settings:
    """The effective settings (environment first, then the config file)."""
    cfg = _config_file()
    debian = cfg.get("debian", {})
    cache = os.environ.get("VMPROBE_CACHE") or cfg.get("cache_dir") or "~/.cache/vmprobe"
    return Settings(
        cache_dir=Path(cache).expanduser(),
        debian_mirror=os.environ.get("VMPROBE_DEBIAN_MIRROR") or debian.get("mirror"),
        debian_security_mirror=(os.environ.get("VMPROBE_DEBIAN_SECURITY_MIRROR")
                                or debian.get("security_mirror")),
        apt_refresh_hours=float(os.environ.get("VMPROBE_APT_REFRESH_HOURS")
                                or debian.get("refresh_hours", 12)),
    )


def cache_dir(*parts: str) -> Path:
    """A directory under the cache, created on demand."""
    path = settings().cache_dir.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path
