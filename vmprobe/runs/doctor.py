"""``vmprobe doctor``: is this host ready for vmprobe, and what to fix if not.

Each check gives one line, ``ok``, ``warn`` (vmprobe works, less well or not
for every kernel) or ``fail`` (vmprobe cannot do its main job), with what to
do about it. Nothing is taken on trust: KVM is judged by a real, time-bounded
test boot (the same one ``--accel auto`` uses, whose cached verdict it
refreshes), the accelerator that will be used is test-booted too, and the
archive is asked for a file over the network.
"""
from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

from vmprobe.arch import PROFILES, ArchProfile
from vmprobe.errors import ConfigError, VmprobeError
from vmprobe.host import progress
from vmprobe.vm import accel

OK, WARN, FAIL = "ok", "warn", "fail"
GiB = 1 << 30
DISK_WARN, DISK_FAIL = 5 * GiB, 1 * GiB   # a kernel ≈200 MB, a build chroot ≈350 MB, a source build ≈1.7 GB
HTTP_TIMEOUT = 10.0
TCG_BOOT_TIMEOUT = 90.0
TESTED_QEMU = (7, 2)


@dataclass
class Check:
    name: str
    status: str        # ok | warn | fail
    detail: str
    fix: str = ""


def _native_profile() -> ArchProfile | None:
    return next((p for p in PROFILES.values() if p.is_native), None)


# -- the checks -------------------------------------------------------------

def check_qemu() -> list[Check]:
    out = []
    native = _native_profile()
    for profile in PROFILES.values():
        binary = profile.qemu
        package = profile.qemu_package
        if not shutil.which(binary):
            status = FAIL if profile is native or native is None else WARN
            out.append(Check(binary, status, f"not found ({profile.debian_arch} guests need it)",
                             f"apt-get install {package}"))
            continue
        version = accel.qemu_version(binary)
        m = re.search(r"version (\d+)\.(\d+)", version)
        have = (int(m[1]), int(m[2])) if m else None
        if have and have < TESTED_QEMU:
            out.append(Check(binary, WARN, f"{version}: older than the QEMU vmprobe is tested with "
                                           f"({'.'.join(map(str, TESTED_QEMU))})",
                             f"upgrade {package} if VMs misbehave"))
        else:
            out.append(Check(binary, OK, version))
    return out


def _tool_version(binary: str) -> str:
    try:
        text = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=20,
                              stdin=subprocess.DEVNULL).stdout
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"(no version: {exc})"
    return text.splitlines()[0] if text else "(no version)"


def check_gdb() -> list[Check]:
    out = []
    if shutil.which("gdb"):
        out.append(Check("gdb", OK, _tool_version("gdb")))
    else:
        out.append(Check("gdb", FAIL, "not found: probe checks read the probed bytes through the gdbstub",
                         "apt-get install gdb"))
    if shutil.which("gdb-multiarch"):
        out.append(Check("gdb-multiarch", OK, _tool_version("gdb-multiarch")))
    else:
        out.append(Check("gdb-multiarch", WARN, "not found: needed for guests of another architecture",
                         "apt-get install gdb-multiarch"))
    return out


def _cached_image(profile: ArchProfile) -> tuple[str, Path] | None:
    """(what it is, image) of a cached kernel of the profile's architecture to test-boot (no
    network): the catalog's default kernel when cached, else the newest cached catalog
    (Debian) kernel, else the newest other one (``local:``, ``built:``). The first element
    names it with its release and image path, for the doctor's output."""
    from vmprobe.config import cache_dir
    from vmprobe.kernels import DEFAULT_SPEC, Kernel, parse_spec
    from vmprobe.kernels.catalog import load_catalog
    want = parse_spec(DEFAULT_SPEC, load_catalog())
    found = []
    for record in cache_dir("kernels").glob("*/kernel.json"):
        try:
            data = json.loads(record.read_text())
            if data.get("arch") != profile.debian_arch:
                continue
            image = Kernel.load(record.parent, verify=False).image_path
            mtime = record.stat().st_mtime
        except (OSError, ValueError, TypeError, VmprobeError):
            continue
        if not image.is_file():
            continue
        spec = str(data.get("spec", ""))
        is_default = (spec.startswith("debian:") and data.get("suite") == want.suite
                      and data.get("flavour") == want.flavour)
        rank = (0 if is_default else 1 if spec.startswith("debian:") else 2, -mtime)
        label = f"{spec or record.parent.name} ({data.get('release', '?')}, {image})"
        found.append((rank, label, image))
    if not found:
        return None
    _, label, image = min(found, key=lambda f: f[0])
    return label, image


def _one_line(text: str) -> str:
    return " / ".join(line.strip() for line in text.splitlines() if line.strip())


def check_accel(kvm_timeout: float = accel.PROBE_TIMEOUT, log=None) -> list[Check]:
    """KVM by a real test boot (its verdict refreshes the cached one), then a test boot under
    the accelerator ``--accel auto`` will pick."""
    profile = _native_profile()
    if profile is None:
        return [Check("kvm", WARN, f"no guest architecture of vmprobe runs natively on "
                                   f"{platform.machine()}: every guest uses TCG")]
    found = _cached_image(profile)
    entry, image = found if found else ("", None)
    kvm: Check
    verdict = None
    if not os.path.exists("/dev/kvm"):
        kvm = Check("kvm", WARN, "KVM unusable: /dev/kvm does not exist; TCG in use (several times slower)",
                    "enable virtualization (VT-x/AMD-V, or nested virtualization for a VM) and load "
                    "kvm_intel/kvm_amd")
        verdict = "tcg"
    elif not accel.kvm_device_usable():
        kvm = Check("kvm", WARN, f"KVM unusable: /dev/kvm is not readable and writable by uid {os.getuid()}; "
                                 f"TCG in use", "add the user to group kvm, or on a CI runner install a udev "
                                                "rule giving /dev/kvm mode 0666 (see ci/github-actions.yml)")
        verdict = "tcg"
    elif image is None:
        kvm = Check("kvm", WARN, "/dev/kvm is there, but there is no cached kernel to test-boot it with",
                    "run `vmprobe kernels fetch`, then `vmprobe doctor` again")
    else:
        if log:
            log(f"vmprobe doctor: test-booting {entry} under KVM "
                f"(at most {kvm_timeout:.0f}s)")
        with progress.status(f"test-booting {entry} under KVM"):
            works, why = accel.probe_kvm(profile, image, kvm_timeout)
        why = _one_line(why)
        verdict = "kvm" if works else "tcg"
        conclusive = works or accel.probe_kvm(profile, image, TCG_BOOT_TIMEOUT, accel="tcg")[0]
        if conclusive:
            accel.write_verdict(profile, verdict, why)   # what `--accel auto` reads
        if works:
            kvm = Check("kvm", OK, f"KVM usable: {why}; KVM in use (test kernel {entry})")
        elif conclusive:
            kvm = Check("kvm", WARN, f"KVM unusable: {why}; TCG in use (several times slower; "
                                     f"test kernel {entry})",
                        "nothing to do for vmprobe (TCG works); for speed, run on a host whose KVM "
                        "boots guests (bare metal, or a VM with working nested virtualization)")
        else:
            kvm = Check("kvm", WARN, f"KVM verdict inconclusive: the test kernel {entry} boots under "
                                     f"neither KVM nor TCG; TCG in use",
                        "fetch the default kernel (`vmprobe kernels fetch`) and run `vmprobe doctor` again")
    out = [kvm]
    forced = os.environ.get("VMPROBE_ACCEL", "")
    if forced == "kvm" and verdict == "tcg":
        out.append(Check("VMPROBE_ACCEL", FAIL, "VMPROBE_ACCEL=kvm forces KVM, which does not work here",
                         "unset VMPROBE_ACCEL (auto picks TCG) or set it to tcg"))
    use = forced if forced in ("kvm", "tcg") else (verdict or "tcg")
    if image is None:
        out.append(Check(f"{use} boot", WARN, "no cached kernel to test-boot",
                         "run `vmprobe kernels fetch`, then `vmprobe doctor` again"))
    elif use != "kvm" or verdict != "kvm":  # a working KVM was just booted: no need to repeat it
        if log:
            log(f"vmprobe doctor: test-booting {entry} under {use.upper()}")
        with progress.status(f"test-booting {entry} under {use.upper()}"):
            works, why = accel.probe_kvm(profile, image, TCG_BOOT_TIMEOUT, accel=use)
        why = _one_line(why)
        out.append(Check(f"{use} boot", OK if works else FAIL, f"{why} (test kernel {entry})",
                         "" if works else f"see whether {profile.qemu} can boot this kernel by hand"))
    return out


def check_disk() -> list[Check]:
    from vmprobe.config import settings
    path = settings().cache_dir
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    detail = f"{free / GiB:.1f} GiB free for the cache {path}"
    why = "a kernel takes ≈200 MB, a build chroot ≈350 MB, a kernel built from source ≈1.7 GB"
    fix = "free some space, or point VMPROBE_CACHE at a bigger disk"
    if free < DISK_FAIL:
        return [Check("disk", FAIL, f"{detail}: too little ({why})", fix)]
    if free < DISK_WARN:
        return [Check("disk", WARN, f"{detail}: tight ({why})", fix)]
    return [Check("disk", OK, detail)]


def _apt_proxy(scheme: str) -> str | None:
    """The proxy the host's apt uses for ``scheme`` (Acquire::http::Proxy), if any."""
    try:
        out = subprocess.run(["apt-config", "shell", "P", f"Acquire::{scheme}::Proxy"], capture_output=True,
                             text=True, timeout=10, stdin=subprocess.DEVNULL).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = re.search(r"^P='(.*)'$", out, re.M)
    return m[1] if m and m[1] and m[1].upper() != "DIRECT" else None


def _reach(base: str, suite: str) -> tuple[bool, str]:
    url = f"{base.rstrip('/')}/dists/{suite}/InRelease"
    if base.startswith("file:"):
        local = Path(urllib.parse.urlparse(url).path)
        return local.is_file(), f"{local} {'exists' if local.is_file() else 'is missing'}"
    scheme = base.split(":", 1)[0]
    if scheme not in ("http", "https"):
        return True, f"{scheme}: mirrors are not checked here (apt reaches them itself)"
    handlers = []
    proxy = _apt_proxy(scheme)
    if proxy:
        handlers.append(urllib.request.ProxyHandler({scheme: proxy}))
    opener = urllib.request.build_opener(*handlers)
    t0 = time.monotonic()
    try:
        with opener.open(urllib.request.Request(url, method="HEAD"), timeout=HTTP_TIMEOUT) as resp:
            status = resp.status
    except urllib.error.HTTPError as exc:
        return False, f"{url}: HTTP {exc.code}"
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return False, f"{url}: {reason}"
    via = f" via apt's proxy {proxy}" if proxy else ""
    return status == 200, f"{url}: HTTP {status} in {time.monotonic() - t0:.2f}s{via}"


def check_archive() -> list[Check]:
    from vmprobe.config import cache_dir
    from vmprobe.kernels import DEFAULT_SPEC, parse_spec
    from vmprobe.kernels.apt import mirrors
    from vmprobe.kernels.catalog import load_catalog
    try:
        found = mirrors()
    except ConfigError as exc:
        return [Check("archive", FAIL, exc.message, "set VMPROBE_DEBIAN_MIRROR to a Debian mirror URL")]
    catalog = load_catalog()
    suite = catalog.suites[parse_spec(DEFAULT_SPEC, catalog).suite]
    cached = any(cache_dir("kernels").glob("*/kernel.json"))
    out = []
    ok, detail = _reach(found.debian, suite.suites[0])
    if ok:
        out.append(Check("archive", OK, f"{found.debian} reachable ({detail})"))
    else:
        out.append(Check("archive", WARN if cached else FAIL,
                         f"{found.debian} unreachable ({detail})"
                         + ("; the cached kernels still work" if cached else "; no kernel can be fetched"),
                         "check the network or proxy (apt's Acquire::http::Proxy is used), or set "
                         "VMPROBE_DEBIAN_MIRROR to a mirror you can reach"))
    if found.security and suite.security_suites:
        ok, detail = _reach(found.security, suite.security_suites[0])
        out.append(Check("security archive", OK if ok else WARN,
                         f"{found.security} {'reachable' if ok else 'unreachable'} ({detail})",
                         "" if ok else "kernels from security updates cannot be fetched; set "
                                       "VMPROBE_DEBIAN_SECURITY_MIRROR to one you can reach"))
    return out


def check_compilers() -> list[Check]:
    from vmprobe.kernels import DEFAULT_SPEC, parse_spec
    from vmprobe.kernels.catalog import load_catalog
    catalog = load_catalog()
    default = parse_spec(DEFAULT_SPEC, catalog).suite
    out = []
    for tool, why in (("make", "module builds"),):
        out.append(Check(tool, OK, shutil.which(tool)) if shutil.which(tool)
                   else Check(tool, FAIL, f"not found: {why} need it", f"apt-get install {tool}"))
    host_cc: dict[str, list[str]] = {}
    chroot: list[str] = []
    for suite in catalog.suites.values():
        if suite.toolchain.kind == "host":
            host_cc.setdefault(suite.toolchain.cc, []).append(suite.name)
        else:
            chroot.append(f"{suite.name} ({suite.toolchain.cc})")
    for cc, suites in host_cc.items():
        if shutil.which(cc):
            out.append(Check(cc, OK, f"{_tool_version(cc)} (modules for {', '.join(suites)})"))
        else:
            out.append(Check(cc, FAIL if default in suites else WARN,
                             f"not found: modules for {', '.join(suites)} are built with it",
                             f"apt-get install {cc}"))
    if chroot:
        if shutil.which("debootstrap"):
            out.append(Check("debootstrap", OK, f"build chroots for {', '.join(chroot)} "
                                                f"(made on first use, ≈1 min and ≈350 MB each)"))
        else:
            out.append(Check("debootstrap", WARN, f"not found: modules for {', '.join(chroot)} are built "
                                                  f"in a chroot of their suite", "apt-get install debootstrap"))
    return out


def check_guest_userland() -> list[Check]:
    from vmprobe.guest.rootfs import GUEST_PROGRAMS, HOST_PACKAGES, _find_program
    out = []
    for name in GUEST_PROGRAMS:
        try:
            out.append(Check(name, OK, f"{_find_program(name)} (for the guest)"))
        except ConfigError as exc:
            out.append(Check(name, FAIL, exc.message, f"apt-get install {HOST_PACKAGES.replace(' and', ',')}"))
    # kernels before 3.2 get busybox built with musl (glibc refuses them): a warning, not a failure
    import shutil

    from vmprobe.guest import musl_busybox
    from vmprobe.kernels.apt import host_debian_arch
    try:
        musl_busybox.toolchain(host_debian_arch())
        if not shutil.which("dpkg-source"):
            raise ConfigError("dpkg-source not found (it unpacks Debian's busybox source)")
        out.append(Check("musl-gcc", OK, "the old-era guest userland (kernels before 3.2) can be built"))
    except ConfigError as exc:
        out.append(Check("musl-gcc", WARN, f"{exc.message}: kernels before 3.2 cannot get a guest",
                         f"apt-get install {musl_busybox.PACKAGES.replace(' and', '')}"))
    return out


def run_checks(kvm_timeout: float = accel.PROBE_TIMEOUT, log=None) -> list[Check]:
    checks: list[Check] = []
    for step in (check_qemu, check_gdb, lambda: check_accel(kvm_timeout, log), check_disk,
                 check_archive, check_compilers, check_guest_userland):
        try:
            checks += step()
        except Exception as exc:  # a check that breaks says so, and the others still run
            name = getattr(step, "__name__", "check").removeprefix("check_")
            checks.append(Check(name, FAIL, f"the check itself failed: {type(exc).__name__}: {exc}"))
    return checks


def format_checks(checks: list[Check]) -> str:
    width = max((len(c.name) for c in checks), default=0)
    lines = []
    for c in checks:
        lines.append(f"{c.status:4}  {c.name:{width}}  {c.detail}")
        if c.fix and c.status != OK:
            lines.append(f"{'':4}  {'':{width}}  → {c.fix}")
    fails = sum(c.status == FAIL for c in checks)
    warns = sum(c.status == WARN for c in checks)
    lines.append(f"{len(checks)} checks: {len(checks) - fails - warns} ok, {warns} warn, {fails} fail")
    return "\n".join(lines)


def exit_code(checks: list[Check]) -> int:
    """0 unless a check failed; then the host-configuration exit code."""
    return ConfigError.exit_code if any(c.status == FAIL for c in checks) else 0


def to_json(checks: list[Check]) -> str:
    return json.dumps([asdict(c) for c in checks], indent=2) + "\n"
