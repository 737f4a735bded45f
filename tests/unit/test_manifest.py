"""A kernel cache entry's file sizes, recorded and checked (vmprobe/kernels/kernel.py)."""
from __future__ import annotations

import json
import os

from vmprobe.kernels.kernel import MANIFEST, check_manifest, write_manifest


def _tree(tmp_path):
    (tmp_path / "root/usr/src/h").mkdir(parents=True)
    (tmp_path / "root/usr/src/h/Makefile").write_text("include ../common/Makefile\n" * 10)
    (tmp_path / "root/boot").mkdir()
    (tmp_path / "root/boot/vmlinuz").write_bytes(b"\x00" * 4096)
    os.symlink("h", tmp_path / "root/usr/src/link")  # links are not files of their own
    return tmp_path


def test_whole_entry_passes_and_records_every_file(tmp_path):
    root = _tree(tmp_path)
    write_manifest(root)
    assert json.loads((root / MANIFEST).read_text()) == {"root/boot/vmlinuz": 4096,
                                                         "root/usr/src/h/Makefile": 270}
    assert check_manifest(root) is None


def test_truncated_and_missing_files_are_named(tmp_path):
    root = _tree(tmp_path)
    write_manifest(root)
    os.truncate(root / "root/usr/src/h/Makefile", 5)
    assert check_manifest(root) == "root/usr/src/h/Makefile has 5 bytes, 270 when fetched"
    (root / "root/boot/vmlinuz").unlink()
    assert check_manifest(root) == "root/boot/vmlinuz is missing"


def test_entry_from_before_manifests_gets_one(tmp_path):
    root = _tree(tmp_path)
    assert check_manifest(root) is None
    assert (root / MANIFEST).exists()
    (root / MANIFEST).write_text("{not json")
    assert check_manifest(root).startswith(f"its file list {MANIFEST} is unreadable")
