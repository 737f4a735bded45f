"""vmprobe kernels build: patching, fragment checks, cache keys (no kernel compile here)."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from vmprobe.errors import KernelBuildError, SpecError
from vmprobe.kernels.build import (
    DEFAULT_FRAGMENT,
    PATCHES_DIR,
    apply_patch,
    build_key,
    check_config,
    failed_hunks,
    parse_fragment,
)
from vmprobe.kernels.source import Source, dir_source, resolve_source

needs_patch = pytest.mark.skipif(not shutil.which("patch"), reason="patch(1) not installed")


def _tree(tmp_path: Path) -> Path:
    tree = tmp_path / "linux"
    (tree / "kernel").mkdir(parents=True)
    (tree / "kernel" / "a.c").write_text("".join(f"int line{i};\n" for i in range(40)))
    return tree


def _patch(tmp_path: Path, tree: Path, edit) -> Path:
    """A real unified diff (diff -u) of a copy of the tree changed by ``edit``."""
    new = tmp_path / "new"
    shutil.copytree(tree, new)
    edit(new)
    out = subprocess.run(["diff", "-ruN", "linux", "new"], cwd=tmp_path, capture_output=True, text=True).stdout
    shutil.rmtree(new)
    path = tmp_path / "fix.patch"
    path.write_text(out.replace("--- linux/", "--- a/").replace("+++ new/", "+++ b/"))
    return path


@needs_patch
def test_patch_applies_and_a_second_time_names_the_problem(tmp_path):
    tree = _tree(tmp_path)
    patch = _patch(tmp_path, tree, lambda t: (t / "kernel" / "a.c").write_text(
        (t / "kernel" / "a.c").read_text().replace("int line5;", "int line5_patched;")))
    apply_patch(tree, patch)
    assert "line5_patched" in (tree / "kernel" / "a.c").read_text()
    with pytest.raises(KernelBuildError, match=r"fix.patch does not apply: kernel/a.c: already applied"):
        apply_patch(tree, patch)


@needs_patch
def test_failing_hunk_is_named_and_nothing_is_half_applied(tmp_path):
    tree = _tree(tmp_path)

    def edit(t):
        text = (t / "kernel" / "a.c").read_text()
        (t / "kernel" / "a.c").write_text(text.replace("int line2;", "int two;").replace("int line30;", "int thirty;"))
    patch = _patch(tmp_path, tree, edit)
    # the tree drifted under the second hunk only
    (tree / "kernel" / "a.c").write_text((tree / "kernel" / "a.c").read_text().replace(
        "int line30;", "int line30_changed;").replace("int line29;", "int x29;"))
    before = (tree / "kernel" / "a.c").read_text()
    with pytest.raises(KernelBuildError) as info:
        apply_patch(tree, patch)
    assert "kernel/a.c: hunk #2 at line" in info.value.message
    assert (tree / "kernel" / "a.c").read_text() == before  # the dry run stopped it
    assert not list(tree.rglob("*.rej")) and not list(tree.rglob("*.orig"))


def test_failed_hunks_parsing():
    out = ("checking file kernel/kprobes.c\nHunk #2 FAILED at 2773.\n1 out of 2 hunks FAILED\n"
           "checking file drivers/tty/sysrq.c\nHunk #1 FAILED at 500.\n")
    assert failed_hunks(out) == "kernel/kprobes.c: hunk #2 at line 2773; drivers/tty/sysrq.c: hunk #1 at line 500"
    assert failed_hunks("can't find file to patch at input line 5\n") == "a file: file to patch not found"
    assert failed_hunks("something odd\n") == "something odd"


@needs_patch
def test_shipped_patch_is_a_clean_p1_patch():
    patch = PATCHES_DIR / "0001-sysrq-show-kprobes.patch"
    text = patch.read_text()
    assert "--- a/kernel/kprobes.c" in text and "+++ b/kernel/kprobes.c" in text
    assert "register_sysrq_key('K'" in text
    assert '"[<%px>] %pS\\t%pS\\n"' in text  # the 2.6-era line format
    assert "mutex_lock" not in "".join(l for l in text.splitlines() if l.startswith("+"))


def test_fragment_parsing_and_dropped_options(tmp_path):
    assert parse_fragment("CONFIG_A=y\n# CONFIG_B is not set\nCONFIG_C=\"x y\"\n# comment\n") == {
        "CONFIG_A": "y", "CONFIG_B": "n", "CONFIG_C": "x y"}
    frag = tmp_path / "f.config"
    frag.write_text("CONFIG_KPROBES=y\nCONFIG_KALLSYMS_ALL=y\n# CONFIG_ACPI is not set\nCONFIG_HZ=250\n")
    config = tmp_path / ".config"
    config.write_text("CONFIG_KPROBES=y\n# CONFIG_KALLSYMS_ALL is not set\nCONFIG_HZ=100\n")
    assert check_config(config, [frag]) == ["CONFIG_KALLSYMS_ALL=y (is not set)", "CONFIG_HZ=250 (is 100)"]


def test_shipped_fragment_asks_for_what_vmprobe_needs():
    wanted = parse_fragment(DEFAULT_FRAGMENT.read_text())
    for name in ("KPROBES", "MAGIC_SYSRQ", "KALLSYMS", "KALLSYMS_ALL", "DEBUG_FS", "DEBUG_KERNEL",
                 "VIRTIO_PCI", "VIRTIO_NET", "HW_RANDOM_VIRTIO", "SERIAL_8250_CONSOLE",
                 "BLK_DEV_INITRD", "MODULES", "MODULE_UNLOAD", "PROC_SYSCTL", "UNIX98_PTYS",
                 "KEYBOARD_ATKBD", "SERIO_I8042", "64BIT"):
        assert wanted.get(f"CONFIG_{name}") == "y", name


def test_cache_key_follows_patches_and_fragment(tmp_path):
    src = Source("s", "id-1", unpack=lambda d: None)
    p1, p2, frag = tmp_path / "1.patch", tmp_path / "2.patch", tmp_path / "f.config"
    p1.write_text("a")
    p2.write_text("b")
    frag.write_text("CONFIG_X=y\n")
    base = build_key(src, [p1], [frag], "amd64")
    assert base == build_key(src, [p1], [frag], "amd64")
    assert base != build_key(src, [p2], [frag], "amd64")
    assert base != build_key(src, [p1, p2], [frag], "amd64")
    assert base != build_key(Source("s", "id-2", unpack=lambda d: None), [p1], [frag], "amd64")
    frag.write_text("CONFIG_X=n\n")
    assert base != build_key(src, [p1], [frag], "amd64")


def test_source_errors(tmp_path):
    with pytest.raises(SpecError, match="is not a directory"):
        resolve_source(str(tmp_path / "nope"), print)
    with pytest.raises(SpecError, match="not a kernel source tree: it lacks Makefile, Kconfig"):
        dir_source(tmp_path)
    with pytest.raises(SpecError, match="malformed source"):
        resolve_source("debian-source:six", print)
    with pytest.raises(SpecError, match="no Debian suite in the catalog ships a 2.4 kernel"):
        resolve_source("debian-source:2.4", print)


def test_dir_source_identity_follows_the_tree(tmp_path):
    tree = tmp_path / "linux"
    (tree / "scripts" / "kconfig").mkdir(parents=True)
    for name in ("Makefile", "Kconfig", "scripts/kconfig/merge_config.sh"):
        (tree / name).write_text(name)
    first = dir_source(tree).identity
    (tree / "init.o").write_text("a build output")  # outputs do not count
    assert dir_source(tree).identity == first
    (tree / "Kconfig").write_text("changed source")
    assert dir_source(tree).identity != first


@needs_patch
def test_fuzzy_application_is_reported(tmp_path):
    tree = _tree(tmp_path)
    patch = _patch(tmp_path, tree, lambda t: (t / "kernel" / "a.c").write_text(
        (t / "kernel" / "a.c").read_text().replace("int line20;", "int line20;\nint added;")))
    (tree / "kernel" / "a.c").write_text((tree / "kernel" / "a.c").read_text().replace(
        "int line18;", "int line18_drifted;"))  # the outermost context line drifted
    fuzzy = apply_patch(tree, patch)
    assert len(fuzzy) == 1 and "with fuzz 1" in fuzzy[0]
    assert "int added;" in (tree / "kernel" / "a.c").read_text()


def test_run_make_progress_and_failure(tmp_path):
    """make's ' CC file' lines are counted for the progress line; a failure names the first error."""
    from vmprobe.kernels.build import run_make
    (tmp_path / "Makefile").write_text(
        "all:\n\t@echo '  CC      init/main.o'\n\t@sleep 0.3\n\t@echo '  LD      vmlinux'\n"
        "bad:\n\t@echo '  CC      kernel/kprobes.o'\n"
        "\t@echo 'kernel/kprobes.c:10:2: error: expected expression'\n\t@false\n")
    logged = []
    run_make(["make", "all"], tmp_path, None, "make all", logged.append, interval=0.1)
    assert any(m.startswith("vmprobe: make all: 1 steps") and "init/main.o" in m for m in logged)
    assert logged[-1].startswith("vmprobe: make all: done in") and "(2 steps)" in logged[-1]
    with pytest.raises(KernelBuildError) as info:
        run_make(["make", "bad"], tmp_path, None, "make bad", logged.append)
    assert info.value.message == "make bad failed: kernel/kprobes.c:10:2: error: expected expression"
    assert "kernel/kprobes.o" in info.value.detail
