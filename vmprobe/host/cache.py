"""Cache entries that are either complete or absent.

Every cached artefact (kernel tree, initramfs, built module, toolchain) is
produced in a temporary sibling and renamed into place under a file lock, so a
parallel run waits instead of racing, and an interrupted run leaves at most a
temp dir that the next run removes.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from vmprobe.errors import CacheBusy

LOCK_TIMEOUT = 1800  # a cold kernel fetch or toolchain build, with margin


@contextlib.contextmanager
def locked(target: Path, timeout: float = LOCK_TIMEOUT) -> Iterator[None]:
    """Hold the lock that guards ``target`` (a file beside it)."""
    from filelock import FileLock, Timeout   # here: ≈30 ms to import, and a warm run takes no lock

    target.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(target) + ".lock")
    try:
        lock.acquire(timeout=timeout)
    except Timeout:
        raise CacheBusy(f"timed out after {timeout:.0f}s waiting for the cache lock "
                           f"{target}.lock (another vmprobe run is building it)") from None
    try:
        yield
    finally:
        lock.release()


@contextlib.contextmanager
def staging(target: Path, *, is_dir: bool = True) -> Iterator[Path]:
    """Yield a temp path beside ``target``; rename it onto ``target`` on success.

    The caller holds ``locked(target)``. Stale temp siblings from interrupted
    runs are removed first. On error the temp path is removed.
    """
    parent = target.parent
    parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{target.name}.tmp-"
    for stale in parent.glob(prefix + "*"):
        _remove(stale)
    if is_dir:
        tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    else:
        fd, name = tempfile.mkstemp(prefix=prefix, dir=parent)
        os.close(fd)
        tmp = Path(name)
    try:
        yield tmp
        if target.exists():
            _remove(target)
        os.rename(tmp, target)
    except BaseException:
        _remove(tmp)
        raise


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def digest(*parts: bytes | str) -> str:
    """A short stable hash of the given inputs (cache keys)."""
    h = hashlib.sha256()
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()[:20]
