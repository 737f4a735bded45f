"""The kernel's own probe samples (``samples/kprobes``, ``samples/fprobe``) for a fetched kernel.

They come from Debian's ``linux-source-<series>`` package of the kernel's
suite, fetched through the private apt state (kernels/source.py): the same
version as the kernel when the archive still has it, else the newest of its
series. Only the sample directories are extracted, streamed out of the
tarball inside the .deb, into a cache entry that records the .deb's sha256
and every extracted file's: an entry whose files no longer match is made
again, and a cached .deb is checked against the archive's sha256 before use.
"""
from __future__ import annotations

import json
import re
import subprocess
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

from vmprobe.config import cache_dir
from vmprobe.errors import FetchError
from vmprobe.host import cache

SAMPLE_DIRS = ("samples/kprobes", "samples/fprobe")
RECORD = "samples.json"
_MEMBER = re.compile(r"^(?:\./)?[^/]+/(samples/(?:kprobes|fprobe)/[A-Za-z0-9_.-]+)$")
EXTRACT_TIMEOUT = 900


@dataclass
class Samples:
    root: Path                 # holds samples/kprobes/…, samples/fprobe/…
    package: str               # linux-source-6.1
    version: str               # its Debian version
    deb_sha256: str
    kernel_version: str        # the fetched kernel's package version
    files: dict[str, str] = field(default_factory=dict)   # relative path → sha256

    @property
    def same_version(self) -> bool:
        return self.version == self.kernel_version

    def find(self, name: str) -> Path | None:
        """``kprobe_example.c`` (or ``kprobe_example``) among the samples, if this series has it."""
        name = name if name.endswith(".c") else f"{name}.c"
        rel = next((r for r in self.files if r.rsplit("/", 1)[-1] == name), None)
        return self.root / rel if rel else None


def default_target(source: str) -> str | None:
    """The function a sample probes unless told otherwise: the initial value of the string its
    ``module_param_string`` sets (``static char symbol[…] = "kernel_clone";``)."""
    for m in re.finditer(r"module_param_string\(\s*\w+\s*,\s*(\w+)\s*,", source):
        init = re.search(rf"\bchar\s+{m[1]}\s*\[[^\]]*\]\s*=\s*\"([A-Za-z_][\w.]*)\"", source)
        if init:
            return init[1]
    return None


def kernel_samples(kernel, log=lambda msg: None) -> Samples:
    """The probe samples of ``kernel``'s series, fetched, verified and cached on first use."""
    from vmprobe.kernels.catalog import load_catalog
    from vmprobe.kernels.source import fetch_linux_source

    suite = load_catalog().suites.get(kernel.suite)
    if suite is None:
        raise FetchError(f"kernel {kernel.release} is not from a Debian suite of the catalog "
                         f"({kernel.spec}): its samples come from Debian's linux-source package")
    package = f"linux-source-{suite.series}"
    deb, stanza = fetch_linux_source(suite, kernel.arch, kernel.version, log)
    entry = cache_dir("sources") / f"samples-{package}_{stanza['Version']}"
    found = _load(entry, kernel.version)
    if found:
        return found
    with cache.locked(entry):
        found = _load(entry, kernel.version)
        if found:
            return found
        digest = cache.sha256_file(deb)
        if stanza.get("SHA256") and digest != stanza["SHA256"]:
            deb.unlink()
            raise FetchError(f"the cached {deb.name} does not match the archive's sha256 "
                             f"({digest} ≠ {stanza['SHA256']}); it was removed, run again to fetch it anew")
        log(f"vmprobe: extracting {', '.join(SAMPLE_DIRS)} from {deb.name}")
        with cache.staging(entry) as tmp:
            files = _extract(deb, suite.series, tmp)
            if not any(r.startswith("samples/kprobes/") for r in files):
                raise FetchError(f"{deb.name} has no samples/kprobes in its source tarball")
            record = {"package": package, "version": stanza["Version"], "deb_sha256": digest, "files": files}
            (tmp / RECORD).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    found = _load(entry, kernel.version)
    if not found:
        raise FetchError(f"the samples extracted from {deb.name} into {entry} do not verify")
    return found


def _load(entry: Path, kernel_version: str) -> Samples | None:
    """The cache entry, if it is complete and every file still has its recorded sha256."""
    try:
        record = json.loads((entry / RECORD).read_text())
    except (OSError, ValueError):
        return None
    for rel, sha in record["files"].items():
        path = entry / rel
        if not path.is_file() or cache.sha256_file(path) != sha:
            return None
    return Samples(entry, record["package"], record["version"], record["deb_sha256"], kernel_version,
                   record["files"])


def _extract(deb: Path, series: str, dest: Path) -> dict[str, str]:
    """Stream the source tarball out of the .deb and write the sample files (names checked,
    regular files only); their sha256 by relative path."""
    inner = f"./usr/src/linux-source-{series}.tar.xz"
    proc = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    files: dict[str, str] = {}
    try:
        with tarfile.open(fileobj=proc.stdout, mode="r|") as outer:
            member = next((m for m in outer if m.name == inner), None)
            if member is None:
                raise FetchError(f"{deb.name} has no {inner}")
            with tarfile.open(fileobj=outer.extractfile(member), mode="r|xz") as tree:
                for m in tree:
                    match = _MEMBER.match(m.name)
                    if not (match and m.isfile()):
                        continue
                    data = tree.extractfile(m).read()
                    target = dest / match[1]
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(data)
                    files[match[1]] = cache.sha256_file(target)
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise FetchError(f"reading the source tarball in {deb.name} failed: {exc}") from None
    finally:
        proc.stdout.close()
        try:
            proc.wait(timeout=EXTRACT_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return files
