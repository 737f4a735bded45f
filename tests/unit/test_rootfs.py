"""vmprobe.guest.rootfs: the per-run layer, module dependency order, ldd closures."""
from __future__ import annotations

import gzip
import lzma
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from vmprobe.errors import ConfigError
from vmprobe.formats.elf import modinfo
from vmprobe.guest.rootfs import ldd_closure, required_modules, run_layer

needs_gcc = pytest.mark.skipif(not shutil.which("gcc"), reason="gcc not installed")

#: name → .modinfo depends= value (a fake kernel's modules)
DEPENDS = {
    "virtio": "", "virtio_ring": "", "virtio_pci": "virtio,virtio_ring",
    "failover": "", "net_failover": "failover", "virtio_net": "net_failover,virtio,virtio_ring",
    "crc32c_intel": "", "libcrc32c": "crc32c-intel",
    "cyc_a": "cyc_b", "cyc_b": "cyc_c", "cyc_c": "cyc_a",
    "orphan": "not_shipped", "nodeps": None,
}


def _source(name: str, depends: str | None) -> str:
    strings = [f"name={name}", "license=GPL", "vermagic=6.1.0-13-cloud-amd64 SMP mod_unload "]
    if depends is not None:
        strings.insert(1, f"depends={depends}")
    return "".join(f'static const char m{i}[] __attribute__((section(".modinfo"), used, aligned(1))) = "{s}";\n'
                   for i, s in enumerate(strings))


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Path]:
    """One gcc-made object per fake module (compiled in parallel)."""
    out = tmp_path_factory.mktemp("kos")
    procs = {}
    for name, deps in DEPENDS.items():
        procs[name] = subprocess.Popen(["gcc", "-c", "-x", "c", "-", "-o", str(out / f"{name}.ko")],
                                       stdin=subprocess.PIPE, stderr=subprocess.PIPE)
        procs[name].stdin.write(_source(name, deps).encode())
        procs[name].stdin.close()
    for name, proc in procs.items():
        assert proc.wait() == 0, proc.stderr.read()
    return {name: out / f"{name}.ko" for name in DEPENDS}


def _tree(root: Path, built: dict[str, Path], files: dict[str, str], builtin: list[str] = ()) -> Path:
    """modules_dir with kernel/<relpath> for each name → relpath (.ko / .ko.xz)."""
    for name, rel in files.items():
        dest = root / "kernel" / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        data = built[name].read_bytes()
        dest.write_bytes(lzma.compress(data) if rel.endswith(".xz") else data)
    if builtin:
        (root / "modules.builtin").write_text("".join(f"{b}\n" for b in builtin))
    return root


VIRTIO_FILES = {
    "virtio": "drivers/virtio/virtio.ko.xz",
    "virtio_ring": "drivers/virtio/virtio_ring.ko",
    "virtio_pci": "drivers/virtio/virtio_pci.ko.xz",
    "failover": "net/core/failover.ko",
    "net_failover": "drivers/net/net_failover.ko",
    "virtio_net": "drivers/net/virtio_net.ko.xz",
}


def _names(result) -> list[str]:
    return [n for n, _ in result]


@needs_gcc
def test_dependency_order(tmp_path, built):
    mods = _tree(tmp_path, built, VIRTIO_FILES)
    result = required_modules(mods, ["virtio_pci", "virtio_net"])
    assert _names(result) == ["virtio.ko", "virtio_ring.ko", "virtio_pci.ko",
                              "failover.ko", "net_failover.ko", "virtio_net.ko"]
    # bytes are the uncompressed objects, whatever the file's compression
    data = dict(result)
    assert data["virtio.ko"] == built["virtio"].read_bytes()
    assert modinfo(data["virtio_net.ko"])["depends"] == ["net_failover,virtio,virtio_ring"]


@needs_gcc
def test_each_module_once_and_after_its_deps(tmp_path, built):
    mods = _tree(tmp_path, built, VIRTIO_FILES)
    names = _names(required_modules(mods, ["virtio_net", "virtio_pci", "virtio_net", "failover"]))
    assert len(names) == len(set(names)) == 6
    for name in names:
        for dep in filter(None, DEPENDS[name[:-3]].split(",")):
            assert names.index(f"{dep}.ko") < names.index(name), (dep, name)


@needs_gcc
def test_optional_entries(tmp_path, built):
    mods = _tree(tmp_path, built, VIRTIO_FILES)
    result = required_modules(mods, ["virtio_blk?", "virtio_ring?", "e1000?"])
    assert _names(result) == ["virtio_ring.ko"]


@needs_gcc
def test_builtin_modules_are_skipped(tmp_path, built):
    files = {k: v for k, v in VIRTIO_FILES.items() if k not in ("virtio", "virtio_ring")}
    mods = _tree(tmp_path, built, files,
                 builtin=["kernel/drivers/virtio/virtio.ko", "kernel/drivers/virtio/virtio_ring.ko"])
    assert _names(required_modules(mods, ["virtio_pci", "virtio"])) == ["virtio_pci.ko"]


@needs_gcc
def test_builtin_wins_over_a_file(tmp_path, built):
    mods = _tree(tmp_path, built, {"failover": "net/core/failover.ko", "net_failover": "drivers/net/net_failover.ko"},
                 builtin=["kernel/net/core/failover.ko"])
    assert _names(required_modules(mods, ["net_failover"])) == ["net_failover.ko"]


@needs_gcc
def test_dash_underscore_normalisation(tmp_path, built):
    mods = _tree(tmp_path, built, {"crc32c_intel": "arch/x86/crypto/crc32c-intel.ko.xz",
                                   "libcrc32c": "lib/libcrc32c.ko"})
    assert _names(required_modules(mods, ["libcrc32c"])) == ["crc32c_intel.ko", "libcrc32c.ko"]
    assert _names(required_modules(mods, ["crc32c-intel"])) == ["crc32c_intel.ko"]


@needs_gcc
def test_dash_in_builtin_list(tmp_path, built):
    mods = _tree(tmp_path, built, {"libcrc32c": "lib/libcrc32c.ko"},
                 builtin=["kernel/arch/x86/crypto/crc32c-intel.ko"])
    assert _names(required_modules(mods, ["libcrc32c"])) == ["libcrc32c.ko"]


@needs_gcc
def test_missing_required_module(tmp_path, built):
    mods = _tree(tmp_path, built, VIRTIO_FILES)
    with pytest.raises(ConfigError) as info:
        required_modules(mods, ["virtio_net", "virtio_blk"])
    msg = str(info.value)
    assert "virtio_blk" in msg and str(mods) in msg
    assert "needed by" not in msg


@needs_gcc
def test_missing_dependency_names_its_user(tmp_path, built):
    mods = _tree(tmp_path, built, {"orphan": "extra/orphan.ko"})
    with pytest.raises(ConfigError, match=r"not_shipped .*\(needed by orphan\)"):
        required_modules(mods, ["orphan"])
    # a missing dependency of an optional module is still an error: the module exists but cannot load
    with pytest.raises(ConfigError, match="not_shipped"):
        required_modules(mods, ["orphan?"])


@needs_gcc
def test_cycle(tmp_path, built):
    mods = _tree(tmp_path, built, {n: f"misc/{n}.ko" for n in ("cyc_a", "cyc_b", "cyc_c")})
    with pytest.raises(ConfigError) as info:
        required_modules(mods, ["cyc_a"])
    assert "cycle" in str(info.value)
    assert "cyc_a -> cyc_b -> cyc_c -> cyc_a" in str(info.value)


@needs_gcc
def test_module_without_depends_field(tmp_path, built):
    mods = _tree(tmp_path, built, {"nodeps": "misc/nodeps.ko"})
    assert _names(required_modules(mods, ["nodeps"])) == ["nodeps.ko"]


def test_empty_modules_dir(tmp_path):
    assert required_modules(tmp_path, []) == []
    assert required_modules(tmp_path, ["virtio_net?"]) == []
    with pytest.raises(ConfigError, match="virtio_net"):
        required_modules(tmp_path, ["virtio_net"])


# -- the per-run layer ---------------------------------------------------------------

_LINE = re.compile(r"^(?P<mode>\S{10})\s+\d+\s+(?P<uid>\d+)\s+(?P<gid>\d+)\s+(?P<size>\d+)\s+\w{3}\s+\d+\s+\d{4}\s+(?P<name>.+)$")


@pytest.mark.skipif(not shutil.which("cpio"), reason="cpio not installed")
def test_run_layer_contents():
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExample vmprobe"
    host_key = bytes(range(83))
    raw = run_layer(key, host_key)   # uncompressed: the guest unpacks it fastest
    proc = subprocess.run(["cpio", "-itvn", "--quiet"], input=raw, capture_output=True,
                          env=dict(os.environ, TZ="UTC", LC_ALL="C"))
    assert proc.returncode == 0 and proc.stderr == b"", proc.stderr
    entries = {m["name"]: m for m in map(_LINE.match, proc.stdout.decode().splitlines())}
    assert {n: (e["mode"], e["size"]) for n, e in entries.items()} == {
        "root": ("drwxr-xr-x", "0"),
        "root/.ssh": ("drwx------", "0"),
        "root/.ssh/authorized_keys": ("-rw-------", str(len(key) + 1)),
        "etc": ("drwxr-xr-x", "0"),
        "etc/dropbear": ("drwxr-xr-x", "0"),
        "etc/dropbear/host_key": ("-rw-------", "83"),
    }
    assert all(e["uid"] == e["gid"] == "0" for e in entries.values())
    cat = subprocess.run(["cpio", "-i", "--to-stdout", "--quiet", "root/.ssh/authorized_keys",
                          "etc/dropbear/host_key"], input=raw, capture_output=True, check=True)
    assert cat.stdout == key.encode() + b"\n" + host_key


def test_run_layer_is_reproducible_and_keyed():
    assert run_layer("ssh-ed25519 AAAA a", b"k1") == run_layer("ssh-ed25519 AAAA a", b"k1")
    assert run_layer("ssh-ed25519 AAAA a", b"k1") != run_layer("ssh-ed25519 AAAA a", b"k2")


# -- ldd -------------------------------------------------------------------------------

@pytest.mark.skipif(not Path("/usr/sbin/dropbear").exists() or not shutil.which("ldd"),
                    reason="dropbear or ldd not installed")
def test_ldd_closure_dropbear():
    libs = ldd_closure(Path("/usr/sbin/dropbear"))
    assert libs, "dropbear is dynamically linked"
    assert all(p.is_absolute() and p.exists() for p in libs), libs
    assert any(p.name == "libc.so.6" for p in libs)
    assert any(p.name.startswith("ld-linux") for p in libs)  # the loader, from its own '(0x...)' line
    assert not any("vdso" in str(p) for p in libs)
    assert len(libs) == len(set(libs))


@pytest.mark.skipif(not shutil.which("ldd"), reason="ldd not installed")
def test_ldd_closure_static_binary(tmp_path):
    static = next((Path(p) for p in ("/bin/busybox", "/usr/bin/busybox") if Path(p).exists()), None)
    if static is None or subprocess.run(["ldd", str(static)], capture_output=True).returncode == 0:
        pytest.skip("no static busybox here")
    assert ldd_closure(static) == []


@needs_gcc
@pytest.mark.skipif(not shutil.which("ldd"), reason="ldd not installed")
def test_ldd_closure_missing_library(tmp_path):
    (tmp_path / "lib.c").write_text("int vmprobe_lib(void) { return 1; }\n")
    (tmp_path / "main.c").write_text("int vmprobe_lib(void); int main(void) { return vmprobe_lib(); }\n")
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", "libvmprobetest.so", "lib.c"], cwd=tmp_path, check=True)
    subprocess.run(["gcc", "-o", "prog", "main.c", "-L.", "-lvmprobetest"], cwd=tmp_path, check=True)
    (tmp_path / "libvmprobetest.so").unlink()
    with pytest.raises(ConfigError, match=r"prog needs libvmprobetest\.so, which the host lacks"):
        ldd_closure(tmp_path / "prog")


def test_a_kernel_without_initrd_support_is_refused_by_name(tmp_path):
    from types import SimpleNamespace

    from vmprobe.errors import ConfigError
    from vmprobe.guest.rootfs import embeds_guest, refuse_without_initrd
    no_initrd = SimpleNamespace(release="2.6.11", spec="local:/src/linux-2.6.11/arch/x86_64/boot/bzImage",
                                kconfig={"CONFIG_KPROBES": "y"})
    with pytest.raises(ConfigError, match=r"2\.6\.11 has no initrd support \(CONFIG_BLK_DEV_INITRD") as err:
        refuse_without_initrd(no_initrd)
    # the way out is named, with the kernel's own spec
    assert (f"vmprobe rootfs export --kernel {no_initrd.spec} -o guest.cpio" in err.value.message
            and "CONFIG_INITRAMFS_SOURCE=guest.cpio" in err.value.message)
    assert not embeds_guest(no_initrd)
    for config in ({"CONFIG_BLK_DEV_INITRD": "y"}, {"CONFIG_INITRAMFS_SOURCE": "/x/guest.cpio"}, {}):
        refuse_without_initrd(SimpleNamespace(release="r", kconfig=config))   # allowed (or unknown)
    # built in where no initrd can come: the guest's secrets then come over the control port
    assert embeds_guest(SimpleNamespace(kconfig={"CONFIG_INITRAMFS_SOURCE": "/x/guest.cpio"}))
    assert not embeds_guest(SimpleNamespace(kconfig={"CONFIG_BLK_DEV_INITRD": "y",
                                                     "CONFIG_INITRAMFS_SOURCE": "/x/guest.cpio"}))
    assert not embeds_guest(SimpleNamespace(kconfig={}))


def test_export_writes_the_guest_even_for_a_kernel_without_initrd_support(tmp_path, monkeypatch):
    """The way out of the refusal: export does not refuse; the archive is the base image, no secrets."""
    import stat as st
    from types import SimpleNamespace

    from vmprobe.errors import ConfigError
    from vmprobe.formats.cpio import read_newc
    from vmprobe.guest import rootfs
    from vmprobe.kernels.apt import host_debian_arch

    monkeypatch.setenv("VMPROBE_CACHE", str(tmp_path / "cache"))
    program = tmp_path / "busybox"
    program.write_bytes(b"\x7fELF stand-in")
    asked = []
    monkeypatch.setattr(rootfs, "_base_inputs",
                        lambda kernel, userland, log=None: asked.append(userland) or ([("/bin/busybox", program)], []))
    kernel = SimpleNamespace(arch=host_debian_arch(), release="2.6.11", spec="local:/src/bzImage",
                             image_sha256="0" * 64, kconfig={"CONFIG_KPROBES": "y"})
    with pytest.raises(ConfigError, match="vmprobe rootfs export"):
        rootfs.build_base(kernel)
    plain, packed = tmp_path / "guest.cpio", tmp_path / "guest.cpio.gz"
    base = rootfs.export(kernel, plain)
    rootfs.export(kernel, packed)
    assert asked == ["old"] and base.userland == "old"   # 2.6.11: the era table's userland; the second
    # export took the key from the recipe the first left (its host files unchanged)
    assert plain.read_bytes() == gzip.decompress(packed.read_bytes()) == base.path.read_bytes()   # the base is kept plain
    entries = read_newc(plain.read_bytes())
    assert entries["bin/busybox"][1] == program.read_bytes() and "init" in entries and "bin/vmprobe-agent" in entries
    assert st.S_ISCHR(entries["dev/ttyS1"][0]) and entries["dev/ttyS1"][1] == b"4:65"   # no devtmpfs before 2.6.32
    assert not [p for p in entries if p.startswith(("root/.ssh/", "etc/dropbear/"))]
    assert rootfs.export(kernel, tmp_path / "modern.cpio", "modern").userland == "modern" and asked[-1] == "modern"


def test_the_base_recipe_stands_while_its_host_files_do(tmp_path, monkeypatch):
    """The base image's key is kept with each host file's size and mtime: reused while they stand,
    worked out again (inputs read, hashed) once one changes or goes."""
    from types import SimpleNamespace

    from vmprobe.guest import rootfs
    from vmprobe.kernels.apt import host_debian_arch

    monkeypatch.setenv("VMPROBE_CACHE", str(tmp_path / "cache"))
    program = tmp_path / "busybox"
    program.write_bytes(b"\x7fELF one")
    asked = []
    monkeypatch.setattr(rootfs, "_base_inputs",
                        lambda kernel, userland, log=None: asked.append(1) or ([("/bin/busybox", program)], []))
    kernel = SimpleNamespace(arch=host_debian_arch(), release="6.1.0-57-cloud-amd64", spec="debian:bookworm",
                             image_sha256="0" * 64, kconfig={"CONFIG_BLK_DEV_INITRD": "y"})
    first = rootfs.build_base(kernel, "modern")
    assert rootfs.build_base(kernel, "modern") == first and len(asked) == 1
    program.write_bytes(b"\x7fELF two, longer")           # a host package upgraded
    second = rootfs.build_base(kernel, "modern")
    assert len(asked) == 2 and second.key != first.key and second.path.exists()
    program.unlink()
    with pytest.raises(OSError):                          # gone: worked out again, and refused there
        rootfs.build_base(kernel, "modern")
    assert len(asked) == 3


def test_the_module_list_is_per_arch():
    """rootfs/modules.txt's ``only=`` entries: an x86 guest loads no arm64-only driver (each
    module a cold boot loads costs ≈10 ms under TCG), and an untagged entry goes everywhere."""
    from vmprobe.guest.rootfs import wanted_modules
    common = ["virtio_pci", "virtio_net", "virtio_rng?"]
    assert wanted_modules("amd64") == wanted_modules("i386") == [*common, "pvpanic_mmio?"]
    assert wanted_modules("arm64") == [*common, "pvpanic_pci?", "virtio_input?", "virtio_console?"]
    assert wanted_modules("riscv64", "a\nb? only=arm64  # c\n# d\n\nc only=riscv64,arm64\n") == ["a", "c"]
