"""apt with a private state: reach any Debian suite without touching the host.

The mirror is read from the host's own apt configuration (one-line ``.list``
and deb822 ``.sources`` files), so no archive host name is written anywhere in
vmprobe; ``VMPROBE_DEBIAN_MIRROR`` / ``VMPROBE_DEBIAN_SECURITY_MIRROR`` (or the
config file) override it. apt keeps verifying the Release signature and the
package checksums; we only give it its own sources list, lists and cache dirs.
"""
from __future__ import annotations

import functools
import os
import re
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from vmprobe.arch import profile_by_name
from vmprobe.config import settings
from vmprobe.errors import ConfigError, FetchError
from vmprobe.host import cache, progress

DEFAULT_KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
APT_TIMEOUT = 600

_DEBIAN_CODENAMES = {"buster", "bullseye", "bookworm", "trixie", "forky", "duke", "sid",
                     "unstable", "testing", "stable", "oldstable", "experimental"}


@dataclass(frozen=True)
class SourceEntry:
    uri: str
    suites: tuple[str, ...]
    signed_by: str | None = None
    components: tuple[str, ...] = field(default=(), compare=False)


@dataclass(frozen=True)
class Mirrors:
    debian: str
    security: str | None
    keyring: str


def parse_one_line(text: str) -> list[SourceEntry]:
    """``deb [opts] URI suite comp…`` lines (``deb-src`` and comments skipped)."""
    entries = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        kind, _, rest = line.replace("\t", " ").partition(" ")
        if kind != "deb":
            continue
        rest = rest.strip()
        signed_by = None
        if rest.startswith("["):
            opts, _, rest = rest[1:].partition("]")
            for opt in opts.split():
                key, _, value = opt.partition("=")
                if key == "signed-by":
                    signed_by = value
        fields = rest.split()
        if len(fields) >= 2:
            entries.append(SourceEntry(fields[0], (fields[1],), signed_by, tuple(fields[2:])))
    return entries


def parse_deb822(text: str) -> list[SourceEntry]:
    """deb822 ``.sources`` stanzas with ``Types: deb``."""
    entries = []
    for stanza in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        key = None
        for line in stanza.splitlines():
            if line.startswith("#") or not line.strip():
                continue
            if line[0] in " \t" and key:
                fields[key] = (fields[key] + " " + line.strip()).strip()
                continue
            key, _, value = line.partition(":")
            key = key.strip().lower()
            fields[key] = value.strip()
        if "deb" not in fields.get("types", "").split():
            continue
        if fields.get("enabled", "yes").lower() == "no":
            continue
        signed_by = fields.get("signed-by")
        if signed_by and not signed_by.startswith("/"):
            signed_by = None  # an inline key block: fall back to the keyring
        for uri in fields.get("uris", "").split():
            entries.append(SourceEntry(uri, tuple(fields.get("suites", "").split()), signed_by,
                                       tuple(fields.get("components", "").split())))
    return entries


def host_source_entries(etc: Path = Path("/etc/apt")) -> list[SourceEntry]:
    entries: list[SourceEntry] = []
    main = etc / "sources.list"
    if main.is_file():
        entries += parse_one_line(main.read_text(errors="replace"))
    parts = etc / "sources.list.d"
    if parts.is_dir():
        for path in sorted(parts.iterdir()):
            if path.suffix == ".list":
                entries += parse_one_line(path.read_text(errors="replace"))
            elif path.suffix == ".sources":
                entries += parse_deb822(path.read_text(errors="replace"))
    return entries


def _is_debian_archive(entry: SourceEntry) -> bool:
    """Debian's own archive: signed by Debian's keyring (or unsigned-by), with a main component.

    A third-party repository can use a Debian codename as its suite (Docker
    uses ``bookworm stable``); its own keyring or components give it away.
    """
    keyring_ok = entry.signed_by is None or "debian-archive" in entry.signed_by
    components_ok = not entry.components or "main" in entry.components
    return keyring_ok and components_ok


def pick_mirrors(entries: list[SourceEntry]) -> tuple[SourceEntry | None, SourceEntry | None]:
    """The host's Debian archive entry and its security entry, if any."""
    debian = security = None
    for entry in entries:
        if not _is_debian_archive(entry):
            continue
        for suite in entry.suites:
            base = suite.split("/")[0].split("-")[0]
            if base not in _DEBIAN_CODENAMES:
                continue
            if suite.endswith("-security") or suite.endswith("/updates"):
                security = security or entry
            else:
                debian = debian or entry
    return debian, security


def mirrors(etc: Path = Path("/etc/apt")) -> Mirrors:
    """Mirrors from settings overrides, else from the host's apt configuration."""
    cfg = settings()
    debian_entry, security_entry = pick_mirrors(host_source_entries(etc))
    debian = cfg.debian_mirror or (debian_entry.uri if debian_entry else None)
    if not debian:
        raise ConfigError(
            f"no Debian archive found in the host's apt configuration ({etc}/sources.list, "
            f"{etc}/sources.list.d/); set VMPROBE_DEBIAN_MIRROR to a Debian mirror URL")
    security = cfg.debian_security_mirror or (security_entry.uri if security_entry else None)
    keyring = (debian_entry.signed_by if debian_entry and debian_entry.signed_by else DEFAULT_KEYRING)
    return Mirrors(debian.rstrip("/"), security.rstrip("/") if security else None, keyring)


@functools.lru_cache(maxsize=1)
def host_debian_arch() -> str:
    """The build host's Debian architecture (dpkg's, else from the machine name)."""
    try:
        out = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True,
                             timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        out = ""
    if out:
        return out
    import platform
    profile = profile_by_name(platform.machine())
    return profile.debian_arch if profile else platform.machine()


def failed_suites(apt_output: str) -> list[str]:
    """Suites named in apt-get update's ``E: Failed to fetch …/dists/<suite>/…`` lines."""
    return re.findall(r"^E: Failed to fetch \S+/dists/([^/\s]+)/", apt_output, re.M)


class PrivateApt:
    """An apt state of our own for one architecture and one set of suites."""

    def __init__(self, root: Path, arch: str, sources: list[tuple[str, str]], keyring: str,
                 check_valid_until: bool = True, optional_suites: tuple[str, ...] = (), kind: str = "deb"):
        self.root = root
        self.kind = kind   # "deb": binary packages; "deb-src": source packages (apt-get source)
        #: suites whose index may fail to download (a mirror mid-sync) without failing
        #: the update: the others are still used, and the next run tries again
        self.optional_suites = tuple(optional_suites)
        self.warnings: list[str] = []
        self.arch = arch
        self.sources = sources
        self.keyring = keyring
        self.check_valid_until = check_valid_until
        for sub in ("lists/partial", "cache/archives/partial", "parts", "prefs"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        self.status = root / "status"
        self.status.touch()
        self.sources_list = root / "sources.list"

    def _sources_text(self) -> str:
        return "".join(f"{self.kind} [signed-by={self.keyring}] {uri} {suite} main\n"
                       for uri, suite in self.sources)

    def options(self) -> list[str]:
        r = self.root
        opts = {
            "Dir::Etc::sourcelist": self.sources_list,
            "Dir::Etc::sourceparts": r / "parts",
            "Dir::Etc::preferences": r / "prefs" / "none",
            "Dir::Etc::preferencesparts": r / "prefs",
            "Dir::State::Lists": r / "lists",
            "Dir::State::status": self.status,
            "Dir::Cache": r / "cache",
            "APT::Architecture": self.arch,
            "APT::Architectures": self.arch,
            "APT::Sandbox::User": "root",
            "Acquire::Languages": "none",
            "Acquire::Retries": "3",
            "Acquire::Check-Valid-Until": "true" if self.check_valid_until else "false",
        }
        out = []
        for key, value in opts.items():
            out += ["-o", f"{key}={value}"]
        return out

    def run(self, tool: str, *args: str, cwd: Path | None = None, timeout: float = APT_TIMEOUT) -> str:
        cmd = [tool, *self.options(), *args]
        env = dict(os.environ, LC_ALL="C", DEBIAN_FRONTEND="noninteractive")
        try:
            proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True,
                                  timeout=timeout, stdin=subprocess.DEVNULL)
        except FileNotFoundError:
            raise ConfigError(f"{tool} not found: vmprobe fetches Debian kernels with apt") from None
        except subprocess.TimeoutExpired:
            raise FetchError(f"{tool} {' '.join(args)} did not finish in {timeout:.0f}s") from None
        if proc.returncode != 0:
            raise FetchError(f"{tool} {' '.join(args)} failed (exit {proc.returncode})",
                             detail=(proc.stderr or proc.stdout)[-3000:])
        return proc.stdout

    def _fresh(self, max_age_hours: float) -> bool:
        stamp = self.root / "updated"
        return (stamp.exists() and self.sources_list.exists()
                and self.sources_list.read_text() == self._sources_text()
                and time.time() - stamp.stat().st_mtime < max_age_hours * 3600)

    def update(self, max_age_hours: float, log=None) -> None:
        """Refresh the package lists when stale or when the sources changed.

        Checked again under the lock: runs that raced here wait for the one
        that updates, then use its lists (one ``apt-get update``, not one each).
        """
        if self._fresh(max_age_hours):
            return
        with cache.locked(self.root / "state"):
            if self._fresh(max_age_hours):
                return
            if log:
                log(f"vmprobe: updating the package lists in {self.root}")
            self.sources_list.write_text(self._sources_text())
            with progress.status(f"refreshing the {self.sources[0][1]} package lists"):
                try:
                    out = self.run("apt-get", "update")
                except FetchError as exc:
                    failed = failed_suites(exc.detail or "")
                    if not failed or not set(failed) <= set(self.optional_suites):
                        raise
                    self.warnings.append(f"the index of {', '.join(sorted(set(failed)))} ({self.arch}) failed "
                                         f"to download (mirror mid-sync?); using the other suites")
                    out = ""
            if re.search(r"^(W|E): .*(NO_PUBKEY|not signed|Release.*expired)", out, re.M):
                raise FetchError("apt refused the archive's signature", detail=out[-2000:])
            (self.root / "updated").touch()

    def lists_stamp(self) -> float:
        """When the package lists were last refreshed (0 if never)."""
        try:
            return (self.root / "updated").stat().st_mtime
        except FileNotFoundError:
            return 0.0

    def show(self, package: str) -> list[dict[str, str]]:
        """All versions of a package as dicts of control fields (newest first)."""
        try:
            out = self.run("apt-cache", "show", package)
        except FetchError:
            return []
        stanzas = []
        for block in out.split("\n\n"):
            fields: dict[str, str] = {}
            for line in block.splitlines():
                if line and not line[0].isspace() and ":" in line:
                    k, _, v = line.partition(":")
                    fields[k] = v.strip()
            if fields.get("Package"):
                stanzas.append(fields)
        from vmprobe.kernels.debversion import sort_key
        return sorted(stanzas, key=lambda f: sort_key(f["Version"]), reverse=True)

    def download(self, packages: list[str], dest: Path, size: int | None = None) -> None:
        """``apt-get download name=version…`` into dest (apt checks each hash); ``size``, the
        bytes expected, sizes the progress bar."""
        names = [p.split("=")[0] for p in packages]
        more = f" (+{len(names) - 1} more)" if len(names) > 1 else ""
        with progress.transfer(f"downloading {names[0] if names else ''}{more}", dest, size):
            self.run("apt-get", "download", *packages, cwd=dest)

    def source(self, package: str, dest: Path) -> None:
        """``apt-get source --download-only`` (a deb-src state): the .dsc and its files into
        dest, each checked by apt against the hashes of the signed index."""
        with progress.transfer(f"downloading the {package} source package", dest, None):
            self.run("apt-get", "source", "--download-only", package, cwd=dest)
