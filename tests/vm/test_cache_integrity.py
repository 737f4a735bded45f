"""A damaged kernel cache entry is detected and fetched again; a killed run's staging dir is ignored.

Works on a copy of the cache: the apt state is copied, the kernel entry is
hard-linked (cheap) and every file the test damages is first replaced by a
private copy, so the shared cache is never touched. ``vmprobe kernels fetch``
then has to notice the damage (the image's sha256, the recorded file sizes),
say so, download the kernel again (a real download) and end with an entry
that verifies.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cachecopy import copy_cache, private

from vmprobe.host.cache import sha256_file
from vmprobe.kernels import Kernel
from vmprobe.kernels.kernel import check_manifest

FETCH_TIMEOUT = 300


def _fetch(kernel: Kernel, cache: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vmprobe", "kernels", "fetch", kernel.spec],
                          capture_output=True, text=True, timeout=FETCH_TIMEOUT, stdin=subprocess.DEVNULL,
                          env=dict(os.environ, VMPROBE_CACHE=str(cache)))


@pytest.mark.slow  # downloads the kernel again (≈40 MB, ≈23 s here)
def test_flipped_image_and_truncated_file_are_detected_and_fetched_again(kernel, tmp_path):
    Kernel.load(kernel.root)  # the shared entry is whole (and has its file list from now on)
    entry = copy_cache(kernel, tmp_path / "cache")
    image = entry / kernel.image
    private(image)
    data = bytearray(image.read_bytes())
    data[len(data) // 2] ^= 0xFF
    image.write_bytes(bytes(data))
    victim = next(p for p in sorted((entry / kernel.modules_dir).rglob("*.ko*")) if p.stat().st_size > 4096)
    private(victim)
    os.truncate(victim, victim.stat().st_size // 2)
    # and a half-written staging dir from a run that was killed while fetching this entry
    stale = entry.parent / f".{entry.name}.tmp-killed"
    (stale / "debs").mkdir(parents=True)
    (stale / "debs" / "partial.deb").write_bytes(b"!<arch>\n")

    with pytest.raises(Exception, match="is corrupted"):
        Kernel.load(entry)
    res = _fetch(kernel, tmp_path / "cache")
    print(f"\n{res.stderr.strip()}")
    assert res.returncode == 0, res.stderr
    assert f"cache entry for {kernel.spec} is corrupted: {kernel.image} does not match its recorded sha256; " \
           f"fetching it again" in res.stderr
    assert "vmprobe: fetching " in res.stderr
    fixed = Kernel.load(entry)
    assert sha256_file(fixed.image_path) == kernel.image_sha256
    assert check_manifest(entry) is None
    assert victim.stat().st_size == (kernel.root / victim.relative_to(entry)).stat().st_size
    assert not stale.exists(), "the killed run's staging dir was not cleaned"
    assert sha256_file(kernel.image_path) == kernel.image_sha256  # the shared cache was not touched


def test_truncated_file_alone_is_detected_by_its_size(kernel, tmp_path):
    Kernel.load(kernel.root)
    entry = copy_cache(kernel, tmp_path / "cache")
    header = entry / kernel.build_dir / "Makefile"
    private(header)
    os.truncate(header, 10)
    with pytest.raises(Exception) as info:
        Kernel.load(entry)
    assert info.value.message == (f"cache entry for {kernel.spec} is corrupted: {kernel.build_dir}/Makefile "
                                  f"has 10 bytes, {(kernel.build_path / 'Makefile').stat().st_size} when fetched")


def test_staging_dir_of_a_killed_run_is_ignored(kernel, tmp_path, vmprobe_cli):
    """A killed fetch leaves ``.<entry>.tmp-*`` (no kernel.json at its top): it is never taken for
    the entry, and the whole entry beside it is used as it is."""
    entry = copy_cache(kernel, tmp_path / "cache")
    stale = entry.parent / f".{entry.name}.tmp-killed"
    (stale / "root").mkdir(parents=True)
    (stale / "kernel.json").write_text(json.dumps({"spec": "half-written"}))
    res = _fetch(kernel, tmp_path / "cache")
    assert res.returncode == 0, res.stderr
    assert "fetching" not in res.stderr
    assert res.stdout.split()[-1] == str(entry)
