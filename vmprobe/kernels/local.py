"""``local:PATH`` kernels: an image you built or got elsewhere, used as it is.

``PATH`` is one of

* a kernel image (x86 ``bzImage``, arm64 ``Image``/``Image.gz``), of any era
  (a 2.6 bzImage works): its release and architecture are read from the image;
* a kernel build tree (``make`` ran there): the image under ``arch/*/boot/``,
  the tree itself as the build directory for out-of-tree modules;
* a vmprobe cache entry holding a ``kernel.json`` (what ``vmprobe kernels build``
  prints).

Options follow a ``?``, ``&``-separated: ``build=DIR`` (a build tree for module
builds), ``vmlinux=FILE``, ``config=FILE``, ``modules=DIR`` (an installed
``lib/modules/<release>``), ``arch=amd64|i386|arm64`` (when the image cannot
tell). Next to an image in a Debian-like tree (``<root>/boot/vmlinuz-<rel>``),
``<root>/boot/config-<rel>``, ``<root>/lib/modules/<rel>`` and
``<root>/usr/src/linux-headers-<rel>`` are found by themselves; so is the
config built into the image (``CONFIG_IKCONFIG``).

The description (a few MB decompressed once) is cached as an ordinary
``kernel.json`` entry keyed by the files' paths, sizes and times, so the result
is the same ``Kernel`` record the Debian provider makes; paths in it are
absolute (the files stay where they are).
"""
from __future__ import annotations

import gzip
import lzma
import re
import shutil
import struct
import subprocess
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl

from vmprobe.arch import PROFILES, profile_where
from vmprobe.config import cache_dir
from vmprobe.errors import FetchError, SpecError
from vmprobe.host import cache
from vmprobe.kernels.kernel import ALL_BUILTIN, RECORD, Kernel

OPTIONS = ("build", "vmlinux", "config", "modules", "arch")
ARCHES = tuple(PROFILES)
#: What an out-of-tree module build needs from a build tree (``make modules_prepare`` + ``modules``).
BUILD_NEEDS = ("Makefile", ".config", "include/generated/autoconf.h", "include/config/auto.conf",
               "scripts/mod/modpost", "Module.symvers")
#: Where a build tree keeps its image: (Debian arch, path in the tree), per arch.
TREE_IMAGES = tuple((p.debian_arch, rel) for p in PROFILES.values() for rel in p.tree_images)
_COMPRESSORS = ((b"\x1f\x8b\x08", "gzip"), (b"\xfd7zXZ\x00", "xz"), (b"\x5d\x00\x00", "lzma"),
                (b"BZh", "bzip2"), (b"\x28\xb5\x2f\xfd", "zstd"), (b"\x02\x21\x4c\x18", "lz4"),
                (b"\x89LZO", "lzo"))


@dataclass(frozen=True)
class LocalSpec:
    """``local:PATH[?opt=value&…]`` (or ``built:<key>``, a built kernel's cache entry)."""

    path: Path
    options: dict = field(default_factory=dict, hash=False, compare=False)
    text: str = ""
    provider: str = "local"

    def __str__(self) -> str:
        return self.text or f"local:{self.path}"


def parse_local_spec(text: str) -> LocalSpec:
    """Parse and check a ``local:`` or ``built:`` spec (the files must exist)."""
    text = text.strip()
    if text.startswith("built:"):
        from vmprobe.kernels.built import built_entry
        key = text.split(":", 1)[1]
        if not re.fullmatch(r"[0-9a-f]{8,40}", key):
            raise SpecError(f"malformed spec {text!r}: expected built:<key> as `vmprobe kernels build` prints it")
        entry = built_entry(key)
        if not (entry / RECORD).exists():
            raise SpecError(f"no built kernel {key} in the cache ({entry}); build it with "
                            f"`vmprobe kernels build`")
        return LocalSpec(entry, {}, text, "built")
    if not text.startswith("local:"):
        raise SpecError(f"not a local kernel spec: {text!r}")
    body = text[len("local:"):]
    path_text, _, query = body.partition("?")
    if not path_text:
        raise SpecError(f"malformed spec {text!r}: expected local:PATH[?build=DIR&vmlinux=FILE&…]")
    options = {}
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key not in OPTIONS:
            raise SpecError(f"unknown option {key!r} in {text!r}; known: {', '.join(OPTIONS)}")
        options[key] = value
    if "arch" in options and options["arch"] not in ARCHES:
        raise SpecError(f"unknown arch {options['arch']!r} in {text!r}; known: {', '.join(ARCHES)}")
    path = Path(path_text).expanduser()
    if not path.exists():
        raise SpecError(f"{text!r}: {path} does not exist")
    for key in ("build", "vmlinux", "config", "modules"):
        if key in options:
            p = Path(options[key]).expanduser()
            if not p.exists():
                raise SpecError(f"{text!r}: {key}={p} does not exist")
            options[key] = str(p.resolve())
    return LocalSpec(path.resolve(), options, text)


# -- reading images ---------------------------------------------------------------------

@dataclass
class ImageFacts:
    release: str          # uname -r
    banner: str           # the version string as the image carries it
    arch: str | None      # Debian arch, None if the image cannot tell
    format: str           # "bzImage", "arm64 Image", …
    protocol: str = ""    # x86 boot protocol, e.g. "2.15"
    compression: str = ""


def decompress(data: bytes, kind: str) -> bytes:
    """Decompress a kernel payload (trailing bytes after the stream are ignored)."""
    if kind == "gzip":
        return zlib.decompressobj(31).decompress(data)
    if kind in ("xz", "lzma"):
        fmt = lzma.FORMAT_XZ if kind == "xz" else lzma.FORMAT_ALONE
        return lzma.LZMADecompressor(format=fmt).decompress(data)
    if kind == "bzip2":
        import bz2
        return bz2.BZ2Decompressor().decompress(data)
    tool = {"zstd": ["zstd", "-dcq"], "lz4": ["lz4", "-dcq"], "lzo": ["lzop", "-dcq"]}[kind]
    if not shutil.which(tool[0]):
        raise FetchError(f"the image's payload is {kind}-compressed and {tool[0]} is not installed "
                         f"(apt-get install {tool[0]})")
    proc = subprocess.run(tool, input=data, capture_output=True, timeout=120)
    if not proc.stdout:
        raise FetchError(f"{tool[0]} could not decompress the image's payload: {proc.stderr[-300:]!r}")
    return proc.stdout


def _sniff(data: bytes) -> str | None:
    for magic, kind in _COMPRESSORS:
        if data.startswith(magic):
            return kind
    return None


def _elf_arch(data: bytes) -> str | None:
    if data[:4] != b"\x7fELF":
        return None
    profile = profile_where(elf_machine=struct.unpack_from("<H", data, 18)[0])
    return profile.debian_arch if profile else None


def _banner(data: bytes) -> str | None:
    m = re.search(rb"Linux version (\S+) [ -~]*", data)
    return m[0].decode("ascii", "replace") if m else None


def x86_payload(data: bytes) -> tuple[bytes, str] | None:
    """The bzImage's compressed vmlinux and its compression (boot protocol ≥ 2.08), else None."""
    protocol, = struct.unpack_from("<H", data, 0x206)
    if protocol < 0x208:
        return None
    setup_sects = data[0x1F1] or 4
    offset, length = struct.unpack_from("<II", data, 0x248)
    start = (setup_sects + 1) * 512 + offset
    payload = data[start:start + length]
    kind = _sniff(payload)
    return (payload, kind) if kind else None


def read_image(path: Path, arch_hint: str | None = None) -> ImageFacts:
    """Release and architecture of a kernel image, from the image alone."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SpecError(f"cannot read kernel image {path}: {exc.strerror}") from None
    if data[:4] == b"\x7fELF":
        raise SpecError(f"{path} is an ELF vmlinux, not a bootable image: give the bzImage/Image "
                        f"(e.g. arch/x86/boot/bzImage) and the vmlinux as ?vmlinux={path}")
    if len(data) > 0x210 and data[0x202:0x206] == b"HdrS":
        return _read_bzimage(path, data, arch_hint)
    inner, compression = data, ""
    if _sniff(data) == "gzip":  # arm64 Image.gz
        inner, compression = decompress(data, "gzip"), "gzip"
    if len(inner) > 0x40 and inner[0x38:0x3C] == b"ARM\x64":
        arch = profile_where(image_kind="Image").debian_arch   # arm64's boot header
        banner = _banner(inner)
        if not banner:
            raise SpecError(f"{path}: an {arch} Image without a 'Linux version' banner")
        return ImageFacts(banner.split()[2], banner, arch, f"{arch} Image", compression=compression)
    raise SpecError(f"{path} is not a kernel image vmprobe can boot: no x86 boot header (HdrS at "
                    f"0x202) and no arm64 Image magic")


def _read_bzimage(path: Path, data: bytes, arch_hint: str | None) -> ImageFacts:
    protocol, = struct.unpack_from("<H", data, 0x206)
    proto = f"{protocol >> 8}.{protocol & 0xff:02d}"
    version_ptr, = struct.unpack_from("<H", data, 0x20E)
    banner = None
    if version_ptr:
        start = version_ptr + 0x200
        end = data.find(b"\0", start, start + 512)
        if end > start:
            banner = data[start:end].decode("ascii", "replace")
    arch = None
    if protocol >= 0x20C:
        xloadflags, = struct.unpack_from("<H", data, 0x236)
        if xloadflags & 1:  # XLF_KERNEL_64
            arch = profile_where(image_kind="bzImage", bits=64).debian_arch
    payload = x86_payload(data)
    compression = payload[1] if payload else ""
    if payload and (arch is None or not banner):
        try:
            inner = decompress(*payload)
        except (lzma.LZMAError, zlib.error, OSError, EOFError) as exc:
            raise SpecError(f"{path}: cannot decompress its {payload[1]} payload ({exc})") from None
        arch = arch or _elf_arch(inner)
        banner = banner or _banner(inner)
    arch = arch or arch_hint
    if not banner:
        raise SpecError(f"{path}: a bzImage (boot protocol {proto}) without a kernel_version string")
    if arch is None:
        raise SpecError(f"{path}: cannot tell whether this bzImage (boot protocol {proto}, "
                        f"{banner.split()[0]}) is 32- or 64-bit; add ?arch=i386 or ?arch=amd64")
    return ImageFacts(banner.split()[0], banner, arch, "bzImage", proto, compression)


def image_config(path: Path) -> bytes | None:
    """The .config built into the image (CONFIG_IKCONFIG), if it is there."""
    data = path.read_bytes()
    blobs = [data]
    payload = x86_payload(data) if data[0x202:0x206] == b"HdrS" else None
    if payload:
        blobs.append(decompress(*payload))
    elif _sniff(data) == "gzip":
        blobs.append(decompress(data, "gzip"))
    for blob in blobs:
        start = blob.find(b"IKCFG_ST")
        if start >= 0:
            with_gz = blob[start + 8:]
            try:
                return gzip.GzipFile(fileobj=_Bytes(with_gz)).read()
            except (OSError, EOFError):
                return zlib.decompressobj(31).decompress(with_gz)
    return None


class _Bytes:
    """A read-only file over bytes that stops gzip at the end of its stream."""

    def __init__(self, data: bytes):
        import io
        self._f = io.BytesIO(data)

    def read(self, n=-1):
        return self._f.read(n)

    def seek(self, *a):
        return self._f.seek(*a)

    def tell(self):
        return self._f.tell()


def vermagic_from_image(data: bytes, release: str) -> str | None:
    """The vermagic string as compiled into a kernel ('<release> SMP mod_unload …')."""
    m = re.search(rb"\0(" + re.escape(release.encode()) + rb" [ -~]*?mod_unload[ -~]*)\0", data)
    return m[1].decode() if m else None


def image_vermagic(kernel: Kernel) -> str | None:
    """A kernel's vermagic from its vmlinux or its (decompressed) image, for kernels without modules."""
    build = getattr(kernel, "build_path", None)
    for path in (getattr(kernel, "vmlinux_path", None), build / "vmlinux" if build else None):
        if path and path.is_file():
            found = vermagic_from_image(path.read_bytes(), kernel.release)
            if found:
                return found
    image = getattr(kernel, "image_path", None)
    if not image or not image.is_file():
        return None
    data = image.read_bytes()
    payload = x86_payload(data) if data[0x202:0x206] == b"HdrS" else None
    inner = decompress(*payload) if payload else data
    return vermagic_from_image(inner, kernel.release)


# -- build trees ------------------------------------------------------------------------

def check_build_dir(build: Path) -> None:
    """A build tree out-of-tree module builds can use, or a SpecError naming what is missing."""
    if not build.is_dir():
        raise SpecError(f"build directory {build} is not a directory")
    missing = [rel for rel in BUILD_NEEDS if not (build / rel).exists()]
    if missing:
        raise SpecError(f"{build} cannot build out-of-tree modules: it lacks {', '.join(missing)} "
                        f"(run `make modules_prepare && make modules` there)")


def _tree_image(tree: Path, arch: str | None) -> Path:
    for tarch, rel in TREE_IMAGES:
        if (arch is None or arch == tarch) and (tree / rel).is_file():
            return tree / rel
    raise SpecError(f"{tree} holds no built kernel image (looked for "
                    f"{', '.join(sorted({r for _, r in TREE_IMAGES}))}); run make there")


# -- the record ---------------------------------------------------------------------------

def _cc_for(config_text: str) -> str:
    """The compiler named in CONFIG_CC_VERSION_TEXT (gcc-12 for 'gcc-12 (Debian …) 12.2.0')."""
    m = re.search(r'^CONFIG_CC_VERSION_TEXT="(\S+)', config_text, re.M)
    major = re.search(r'^CONFIG_GCC_VERSION=(\d+?)\d{4}$', config_text, re.M)
    candidates = ([m[1]] if m else []) + ([f"gcc-{major[1]}"] if major else []) + ["gcc"]
    for cc in candidates:
        if shutil.which(cc):
            return cc
    return candidates[0]


def get_local_kernel(spec: LocalSpec | str, log=None) -> Kernel:
    """The Kernel record for a local spec (described once, then from the cache)."""
    if isinstance(spec, str):
        spec = parse_local_spec(spec)
    if (spec.path / RECORD).is_file():
        if spec.provider == "built":
            from vmprobe.kernels.built import load_built
            return load_built(spec.path)
        return Kernel.load(spec.path)
    opts = spec.options
    path = spec.path
    build = Path(opts["build"]) if "build" in opts else None
    if path.is_dir():
        build = build or path
        image = _tree_image(path, opts.get("arch"))
    else:
        image = path
    inputs = [image] + [Path(opts[k]) for k in ("build", "vmlinux", "config", "modules") if k in opts]
    if build:
        inputs += [build / ".config", build / "Module.symvers"]
    stamp = [f"{p}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in inputs if p.exists()]
    key = cache.digest("local-v1", str(spec.path), *sorted(f"{k}={v}" for k, v in opts.items()), *stamp)
    entry = cache_dir("kernels") / f"local-{key}"
    if (entry / RECORD).exists():
        try:
            return Kernel.load(entry)
        except FetchError:
            pass
    with cache.locked(entry):
        with cache.staging(entry) as tmp:
            _describe(tmp, spec, image, build)
    return Kernel.load(entry)


def _describe(tmp: Path, spec: LocalSpec, image: Path, build: Path | None) -> None:
    opts = spec.options
    facts = read_image(image, opts.get("arch"))
    arch = opts.get("arch") or facts.arch
    release = facts.release
    # A Debian-like layout around the image: <root>/boot/vmlinuz-<release>
    root = image.parent.parent if image.parent.name == "boot" else None
    if build is None and root and (root / "usr/src" / f"linux-headers-{release}" / "Makefile").exists():
        build = root / "usr/src" / f"linux-headers-{release}"
    if build is not None:
        check_build_dir(build)
    # config: given, the build tree's, beside the image, or inside it
    config = None
    for candidate in ([Path(opts["config"])] if "config" in opts else []) + \
            ([build / ".config"] if build else []) + [image.parent / f"config-{release}"]:
        if candidate.is_file():
            config = candidate
            break
    if config is None:
        text = image_config(image)
        config = tmp / "config"
        config.write_bytes(text or b"# no config known for this kernel (give ?config=FILE)\n")
    modules = None
    if "modules" in opts:
        modules = Path(opts["modules"])
    elif root and (root / "lib/modules" / release).is_dir():
        modules = root / "lib/modules" / release
    elif root and (root / "usr/lib/modules" / release).is_dir():
        modules = root / "usr/lib/modules" / release
    if modules is None:
        modules = tmp / "modules"  # none known: the guest gets no modules to load
        modules.mkdir()
        (modules / ALL_BUILTIN).write_text("vmprobe: no modules dir given; assuming the drivers "
                                          "the guest needs are built in\n")
    build_dir = build if build else tmp / "no-build-dir"
    if not build:
        build_dir.mkdir()
        (build_dir / "README").write_text(
            f"{spec} has no build directory: add ?build=DIR (a tree after `make modules_prepare "
            f"&& make modules`) to build modules for it\n")
    vmlinux = Path(opts["vmlinux"]) if "vmlinux" in opts else (build / "vmlinux" if build else None)
    m = re.match(r"^(\d+)\.(\d+)", release)
    kernel = Kernel(
        spec=str(spec), release=release, version=release, arch=arch or "", flavour="local",
        series=f"{m[1]}.{m[2]}" if m else release, cc=_cc_for(config.read_text(errors="replace")),
        root=tmp, image=str(image), config=_rel(config, tmp), modules_dir=_rel(modules, tmp),
        build_dir=_rel(build_dir, tmp),
        packages=[{"image": str(image), "banner": facts.banner, "format": facts.format,
                   "boot_protocol": facts.protocol, "compression": facts.compression}],
        vmlinux=str(vmlinux) if vmlinux and vmlinux.exists() else "")
    kernel.image_sha256 = cache.sha256_file(image)
    kernel.save()


def _rel(path: Path, tmp: Path) -> str:
    """Relative to the entry when inside it (it is renamed into place), else absolute."""
    try:
        return str(path.relative_to(tmp))
    except ValueError:
        return str(path)
