"""The guest's initramfs: busybox, an SSH server, the kernel modules it needs.

Its userland comes in two kinds (``arch/eras.py`` picks one per kernel):
"modern", Debian's busybox-static with dropbear; "old", for kernels before 3.2
that glibc refuses, Debian's busybox built with musl (``musl_busybox``) and no
SSH server (commands go over the serial agent).

Built in two layers. The base (busybox, dropbear + its ldd closure, the sftp
server, the init, the kernel's virtio modules in dependency order) depends only
on its inputs and is cached by their hash. A guest of another architecture
than the host's gets those programs from its own arch's packages
(:mod:`vmprobe.guest.userland`). The per-run layer holds this run's
authorized key and host key; the kernel unpacks concatenated archives in
order, so the run's initrd is simply base + layer.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from vmprobe.arch import profile_for
from vmprobe.arch.eras import guest_userland as era_userland
from vmprobe.config import ROOTFS_DIR, cache_dir
from vmprobe.errors import ConfigError, ModuleBuildError
from vmprobe.formats.cpio import NewcArchive
from vmprobe.formats.elf import modinfo, read_module
from vmprobe.guest import musl_busybox
from vmprobe.guest import userland as guest_userland
from vmprobe.guest.loader import SOURCE as LOADER_SOURCE
from vmprobe.guest.loader import loader_for
from vmprobe.host import cache
from vmprobe.host.interrupts import checkpoint
from vmprobe.kernels import Kernel
from vmprobe.kernels.apt import host_debian_arch
from vmprobe.kernels.kernel import ALL_BUILTIN

#: Where each host program goes in the guest (dropbear finds the SFTP server there).
GUEST_PROGRAMS = {
    "busybox": ("/bin/busybox", ["/bin/busybox", "/usr/bin/busybox"]),
    "dropbear": ("/bin/dropbear", ["/usr/sbin/dropbear", "/sbin/dropbear"]),
    "sftp-server": ("/usr/lib/sftp-server", ["/usr/lib/openssh/sftp-server", "/usr/libexec/sftp-server",
                                             "/usr/lib/sftp-server"]),
}
HOST_PACKAGES = "busybox-static, dropbear-bin and openssh-sftp-server"
GUEST_MODULE_DIR = "lib/modules/vmprobe"
#: static device nodes (name, major, minor, mode); devtmpfs covers them where it exists
DEV_NODES = (("console", 5, 1, 0o600), ("null", 1, 3, 0o666), ("zero", 1, 5, 0o666), ("kmsg", 1, 11, 0o644),
             ("random", 1, 8, 0o666), ("urandom", 1, 9, 0o666), ("tty", 5, 0, 0o666),
             ("ttyS0", 4, 64, 0o600), ("ttyS1", 4, 65, 0o600))


def _find_program(name: str) -> Path:
    for candidate in GUEST_PROGRAMS[name][1]:
        if Path(candidate).is_file():
            return Path(candidate)
    raise ConfigError(f"{name} not found on the host (looked in {', '.join(GUEST_PROGRAMS[name][1])}); "
                      f"install {HOST_PACKAGES}")


def ldd_closure(binary: Path) -> list[Path]:
    """The shared libraries (and loader) a host binary needs, as ldd resolves them."""
    proc = subprocess.run(["ldd", str(binary)], capture_output=True, text=True)
    if proc.returncode != 0:
        return []  # static binary ("not a dynamic executable")
    libs = []
    for line in proc.stdout.splitlines():
        m = re.search(r"=>\s*(/\S+)", line) or re.match(r"\s*(/\S+)\s+\(", line)
        if m:
            libs.append(Path(m[1]))
        elif "not found" in line:
            raise ConfigError(f"{binary} needs {line.split()[0]}, which the host lacks")
    return libs


# -- kernel modules -----------------------------------------------------------

def _module_index(modules: Path) -> dict[str, Path]:
    index = {}
    for path in (modules / "kernel").rglob("*.ko*"):
        name = path.name.split(".ko")[0].replace("-", "_")
        index[name] = path
    return index


def _builtin(modules: Path) -> set[str]:
    path = modules / "modules.builtin"
    if not path.exists():
        return set()
    return {Path(line.strip()).name.split(".ko")[0].replace("-", "_")
            for line in path.read_text().splitlines() if line.strip()}


def required_modules(modules_dir: Path, wanted: list[str]) -> list[tuple[str, bytes]]:
    """Modules to load, dependencies first, as (file name, uncompressed bytes).

    A ``name?`` entry is optional. Built-in modules are skipped. A required
    module the kernel has neither built in nor as a file is an error.
    """
    index, builtin = _module_index(modules_dir), _builtin(modules_dir)
    if (modules_dir / ALL_BUILTIN).exists():
        return []  # a local: kernel that ships no modules: everything it needs is built in
    ordered: list[tuple[str, bytes]] = []
    done: set[str] = set()

    def visit(name: str, optional: bool, chain: tuple[str, ...]) -> None:
        name = name.replace("-", "_")
        if name in done or name in builtin:
            return
        if name in chain:
            raise ConfigError(f"module dependency cycle: {' -> '.join(chain + (name,))}")
        if name not in index:
            if optional:
                return
            raise ConfigError(f"kernel module {name} is neither built in nor shipped in {modules_dir}"
                              + (f" (needed by {chain[-1]})" if chain else ""))
        data = read_module(index[name])
        for dep in ",".join(modinfo(data).get("depends", [])).split(","):
            if dep:
                visit(dep, False, chain + (name,))
        done.add(name)
        ordered.append((name + ".ko", data))

    for entry in wanted:
        visit(entry.rstrip("?"), entry.endswith("?"), ())
    return ordered


def wanted_modules(arch: str, text: str | None = None) -> list[str]:
    """The entries of rootfs/modules.txt for guests of ``arch`` (Debian's name): an entry with
    ``only=ARCH,...`` is for those alone (each module loaded costs a cold boot ≈10 ms)."""
    text = (ROOTFS_DIR / "modules.txt").read_text() if text is None else text
    wanted = []
    for line in text.splitlines():
        name, *tags = line.split("#")[0].split() or [""]
        only = [t.removeprefix("only=").split(",") for t in tags if t.startswith("only=")]
        if name and (not only or arch in only[0]):
            wanted.append(name)
    return wanted


# -- the archive ----------------------------------------------------------------

@dataclass(frozen=True)
class BaseImage:
    path: Path
    key: str
    userland: str = "modern"


def _base_inputs(kernel: Kernel, userland: str, log=None) -> tuple[list[tuple[str, Path]], list[tuple[str, bytes]]]:
    files: list[tuple[str, Path]] = []
    if userland == "old":   # built for the guest's arch (a cross gcc for a foreign one)
        files = [("/bin/busybox", musl_busybox.busybox(kernel.arch, log=log))]
    elif kernel.arch != host_debian_arch():  # the guest's own programs, from its arch's packages
        files = guest_userland.foreign_programs(kernel)
    for name, (guest_path, _) in GUEST_PROGRAMS.items() if not files else ():
        host = _find_program(name)
        files.append((guest_path, host))
        for lib in ldd_closure(host):
            files.append((str(lib), lib))
    try:   # one freestanding binary: the guest's insmod without retries, and a restore's clock and RNG
        tool = loader_for(profile_for(kernel.arch))
        files += [("/bin/vmprobe-insmod", tool), ("/bin/vmprobe-restored", tool)]
    except (ConfigError, ModuleBuildError) as exc:
        if log:
            log(f"vmprobe: the guest goes without vmprobe-insmod/vmprobe-restored ({exc.message}): "
                f"a restore then seeds the RNG by a write to /dev/urandom alone")
    modules = required_modules(kernel.modules_path, wanted_modules(kernel.arch))
    return list(dict(files).items()), modules   # a library two programs need goes in once


def build_base(kernel: Kernel, userland: str = "auto", *, refuse: bool = True, log=None) -> BaseImage:
    """The cached base initramfs for a kernel (built if missing), with the userland asked for
    (``auto``: the era table's). It holds no per-run secret (those are in ``run_layer``)."""
    if refuse:
        refuse_without_initrd(kernel)
    userland = era_userland(profile_for(kernel.arch), kernel.release, userland)
    init = (ROOTFS_DIR / "init").read_bytes()
    inittab = (ROOTFS_DIR / "inittab").read_bytes()
    agent = (ROOTFS_DIR / "agent").read_bytes()
    recipe = cache_dir("rootfs") / f"recipe-{_recipe(kernel, userland, init, inittab, agent)}.json"
    if known := _known_base(recipe, userland):
        return known
    files, modules = _base_inputs(kernel, userland, log)
    key = cache.digest("rootfs-v3", userland, init, inittab, agent, FSTAB, kernel.release, kernel.image_sha256,
                       *[f"{g}:{cache.sha256_file(h)}" for g, h in files],
                       *[f"{n}:{cache.digest(d)}" for n, d in modules])
    target = cache_dir("rootfs") / f"{key}.cpio"
    if not target.exists():
        with cache.locked(target):
            if not target.exists():
                archive = _base_archive(files, modules, init, inittab, agent)
                with cache.staging(target, is_dir=False) as tmp:
                    tmp.write_bytes(archive)
    _remember(recipe, key, files)
    return BaseImage(target, key, userland)


# The base image's key needs the host programs' libraries (ldd, a process each), their hashes
# and the kernel's modules read and decompressed: ≈0.1 s on every machine. A recipe file keeps
# the key with each host file's size and mtime; while they stand, the key does (what decides the
# file list, vmprobe's own guest code included, is in the recipe's name).
_RECIPE_CODE = ("rootfs.py", "loader.py", "musl_busybox.py", "userland.py")


def _recipe(kernel: Kernel, userland: str, *texts: bytes) -> str:
    code = [(Path(__file__).parent / name).read_bytes() for name in _RECIPE_CODE]
    compilers = [str(shutil.which(cc)) for cc in profile_for(kernel.arch).static_cc]   # the loader's
    return cache.digest("rootfs-recipe-v1", userland, kernel.arch, kernel.release, kernel.image_sha256,
                        (ROOTFS_DIR / "modules.txt").read_bytes(), LOADER_SOURCE.read_bytes(),
                        *compilers, *code, *texts)


def _stat(path: str) -> list[int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


def _known_base(recipe: Path, userland: str) -> BaseImage | None:
    try:
        data = json.loads(recipe.read_text())
        target = cache_dir("rootfs") / f"{data['key']}.cpio"
        if target.exists() and all(_stat(host) == stamp for host, stamp in data["files"]):
            return BaseImage(target, data["key"], userland)
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


def _remember(recipe: Path, key: str, files: list[tuple[str, Path]]) -> None:
    stamps = [(str(host), _stat(str(host))) for _, host in files]
    with contextlib.suppress(OSError):
        tmp = recipe.with_name(f".{recipe.name}.tmp{os.getpid()}")
        tmp.write_text(json.dumps({"key": key, "files": stamps}))
        os.replace(tmp, recipe)


def embeds_guest(kernel: Kernel) -> bool:
    """A kernel that cannot take an initrd but has an initramfs built in: vmprobe's exported
    guest (``export``), which takes its secrets over the control port."""
    try:
        config = kernel.kconfig or {}
    except OSError:
        return False
    return config.get("CONFIG_BLK_DEV_INITRD") != "y" and bool(config.get("CONFIG_INITRAMFS_SOURCE"))


def export(kernel: Kernel, dest: Path, userland: str = "auto", log=None) -> BaseImage:
    """Write the guest vmprobe would boot for ``kernel`` to ``dest``, for building into the kernel
    (CONFIG_INITRAMFS_SOURCE): a newc archive, gzipped if ``dest`` ends in .gz. It is the base
    image: no key, no nonce; a guest booted from it waits on the control port for them."""
    import gzip
    base = build_base(kernel, userland, refuse=False, log=log)
    data = base.path.read_bytes()
    dest.write_bytes(gzip.compress(data, compresslevel=6, mtime=0) if dest.name.endswith(".gz") else data)
    return base


def refuse_without_initrd(kernel: Kernel) -> None:
    """A kernel without CONFIG_BLK_DEV_INITRD ignores -initrd: the boot would time out with no
    guest. Refused up front, unless its config says an initramfs is built into the image."""
    try:
        config = kernel.kconfig
    except OSError:   # no config known: let the boot tell
        return
    if config and config.get("CONFIG_BLK_DEV_INITRD") != "y" and not config.get("CONFIG_INITRAMFS_SOURCE"):
        raise ConfigError(f"{kernel.release} has no initrd support (CONFIG_BLK_DEV_INITRD is not set): "
                          f"it would ignore vmprobe's guest. Rebuild it with CONFIG_BLK_DEV_INITRD=y, "
                          f"or with vmprobe's guest built in: `vmprobe rootfs export --kernel {kernel.spec} "
                          f"-o guest.cpio`, then CONFIG_INITRAMFS_SOURCE=guest.cpio (its secrets come over "
                          f"the control port)")


#: What init's ``mount -a`` mounts, in order (devpts and tracefs it mounts itself: devpts needs
#: a directory made in devtmpfs, tracefs is missing before 4.1 and its error is not shown).
FSTAB = b"""proc /proc proc defaults 0 0
sysfs /sys sysfs defaults 0 0
devtmpfs /dev devtmpfs defaults 0 0
tmpfs /tmp tmpfs defaults 0 0
tmpfs /run tmpfs defaults 0 0
debugfs /sys/kernel/debug debugfs defaults 0 0
"""


def _base_archive(files: list[tuple[str, Path]], modules: list[tuple[str, bytes]],
                  init: bytes, inittab: bytes, agent: bytes = b"") -> bytes:
    a = NewcArchive()
    for d in ("bin", "dev", "proc", "sys", "tmp", "run", "root", "etc/dropbear", "etc/vmprobe",
              GUEST_MODULE_DIR, "usr/lib", "var"):
        a.dir(d)
    a.dir("root/.ssh", 0o700)
    for link in ("sbin", "usr/bin", "usr/sbin"):
        a.symlink(link, "/bin")
    a.symlink("var/run", "/run")
    for name, major, minor, mode in DEV_NODES:   # kernels before devtmpfs (2.6.32) have only these
        a.chardev(f"dev/{name}", major, minor, mode)
    for guest, host in files:
        a.file(guest, host.read_bytes(), 0o755)
    busybox = next(h for g, h in files if g == "/bin/busybox")
    try:
        applets = subprocess.run([str(busybox), "--list"], capture_output=True, text=True).stdout.split()
    except OSError:  # a foreign-arch busybox: /init runs `busybox --install -s` in the guest
        applets = ["sh"]
    for applet in applets:
        if applet not in ("busybox", "init") and applet:
            a.symlink(f"bin/{applet}", "busybox")
    a.file("init", init, 0o755)
    a.file("etc/inittab", inittab)
    if agent:  # the serial transport's guest side (rootfs/agent)
        a.file("bin/vmprobe-agent", agent, 0o755)
    a.file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n")
    a.file("etc/group", b"root:x:0:\ntty:x:5:\n")
    a.file("etc/shells", b"/bin/sh\n/bin/ash\n")
    a.file("etc/hosts", b"127.0.0.1 localhost vmprobe\n")
    a.file("etc/fstab", FSTAB)   # init mounts these with one exec
    for name, data in modules:
        a.file(f"{GUEST_MODULE_DIR}/{name}", data)
    a.file("etc/vmprobe/modules", "".join(n + "\n" for n, _ in modules).encode())
    return a.plain()


def run_layer(authorized_key: str, host_key: bytes) -> bytes:
    """The per-run archive: this run's client key and host key."""
    a = NewcArchive()
    a.dir("root/.ssh", 0o700)
    a.file("root/.ssh/authorized_keys", authorized_key.encode() + b"\n", 0o600)
    a.dir("etc/dropbear", 0o755)
    a.file("etc/dropbear/host_key", host_key, 0o600)
    return a.plain()


def assemble(base: BaseImage, layer: bytes, dest: Path) -> Path:
    """Write base + run layer as one initrd file for QEMU."""
    with dest.open("wb") as out, base.path.open("rb") as src:
        shutil.copyfileobj(src, out)
        checkpoint("rootfs")
        out.write(layer)
    return dest
