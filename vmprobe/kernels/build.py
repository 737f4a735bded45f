"""Kernels built from source: ``vmprobe kernels build``.

A source (a kernel tree on disk, or ``debian-source:<series>`` — Debian's
``linux-source-<series>`` package fetched through the private apt state, never
installed on the host) is unpacked into a staging directory, patched with
``patch -p1``, configured from ``make tinyconfig`` plus a config fragment merged
with the kernel's own ``scripts/kconfig/merge_config.sh``, checked (every
option the fragment asks for must have stuck), and built: the image, then
``modules_prepare`` and ``modules`` (so ``Module.symvers`` exists for
out-of-tree module builds), then ``modules_install`` into the entry (so
``modules.builtin`` tells the rootfs builder what is built in).

The result is a cache entry ``kernels/built-<key>`` keyed by a hash of the
source, the patches, the fragment and this recipe; it is built under the
entry's lock in a staging directory renamed into place, and its ``kernel.json``
is the same record the Debian provider writes, so ``built:<key>`` (or
``local:<entry>``) is a kernel spec like any other.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from vmprobe.arch import PROFILES
from vmprobe.config import PROJECT_ROOT
from vmprobe.errors import ConfigError, FetchError, KernelBuildError, SpecError
from vmprobe.host import cache
from vmprobe.kernels.built import built_entry, load_built
from vmprobe.kernels.kernel import Kernel
from vmprobe.kernels.source import STEP_TIMEOUT, Source, resolve_source, run_step

RECIPE = "kbuild-v1"
DEFAULT_FRAGMENT = PROJECT_ROOT / "kernels" / "config" / "vmprobe.config"
#: ``--debug``: KASAN, lockdep, DEBUG_ATOMIC_SLEEP, kmemleak… merged after the other fragments
DEBUG_FRAGMENT = PROJECT_ROOT / "kernels" / "config" / "debug.config"
PATCHES_DIR = PROJECT_ROOT / "kernels" / "patches"
BUILD_TIMEOUT = 4 * 3600  # a cold build on a loaded 2-core machine, with a wide margin
#: Debian architecture → its profile, for the arches whose kernels vmprobe can build
ARCHES = {name: p for name, p in PROFILES.items() if p.kernel_build_arch}


# -- the build --------------------------------------------------------------------

def build_key(source: Source, patches: list[Path], fragments: list[Path], arch: str) -> str:
    return cache.digest(RECIPE, source.identity, arch,
                        *[b"patch:" + p.read_bytes() for p in patches],
                        *[b"fragment:" + f.read_bytes() for f in fragments])


def build_kernel(source_text: str, patches: list[Path] = (), fragments: list[Path] = (), *,
                 arch: str = "amd64", jobs: int | None = None, log=None) -> Kernel:
    """Build (or find in the cache) a kernel; returns its record."""
    log = log or (lambda msg: print(msg, file=sys.stderr))
    if arch not in ARCHES:
        raise ConfigError(f"building kernels for {arch} is not supported (only {', '.join(ARCHES)})")
    patches = [Path(p).expanduser().resolve() for p in patches]
    fragments = [Path(f).expanduser().resolve() for f in (fragments or [DEFAULT_FRAGMENT])]
    for what, paths in (("patch", patches), ("config fragment", fragments)):
        for p in paths:
            if not p.is_file():
                raise SpecError(f"{what} {p} does not exist")
    for tool in ("make", "patch", "bc", "bison", "flex"):
        if not shutil.which(tool):
            raise ConfigError(f"{tool} not found: building a kernel needs make, patch, bc, bison, "
                              f"flex, libelf-dev and libssl-dev")
    source = resolve_source(source_text, log)
    key = build_key(source, patches, fragments, arch)
    entry = built_entry(key)
    if (entry / "kernel.json").exists():
        try:
            return load_built(entry)
        except FetchError as exc:
            log(f"vmprobe: {exc.message}; building it again")
    with cache.locked(entry, timeout=BUILD_TIMEOUT):
        if (entry / "kernel.json").exists():
            try:
                return load_built(entry)
            except FetchError:
                pass
        log(f"vmprobe: building {source.label}"
            + (f" with {', '.join(p.name for p in patches)}" if patches else "")
            + f" into {entry}")
        with cache.staging(entry) as tmp:
            _build(tmp, key, source, patches, fragments, arch, jobs or os.cpu_count() or 1, log)
    return load_built(entry)


def _build(tmp: Path, key: str, source: Source, patches: list[Path], fragments: list[Path],
           arch: str, jobs: int, log) -> None:
    profile = ARCHES[arch]
    karch, image = profile.kernel_build_arch, profile.tree_images[0]
    tree = tmp / "linux"
    tree.mkdir()
    timings: dict[str, float] = {}
    t = time.monotonic()
    source.unpack(tree)
    timings["unpack"] = time.monotonic() - t
    for p in patches:
        fuzzy = apply_patch(tree, p)
        log(f"vmprobe: applied {p.name}" + (f" (with fuzz: {'; '.join(fuzzy)})" if fuzzy else ""))
    t = time.monotonic()
    env = dict(os.environ, ARCH=karch, LC_ALL="C", KBUILD_BUILD_USER="vmprobe",
               KBUILD_BUILD_HOST="vmprobe")
    make = ["make", f"ARCH={karch}", f"CC={source.cc}", f"HOSTCC={source.cc}"]
    run_step(make + ["tinyconfig"], cwd=tree, env=env, what="make tinyconfig", timeout=STEP_TIMEOUT)
    run_step(["sh", "scripts/kconfig/merge_config.sh", "-m", ".config", *map(str, fragments)],
         cwd=tree, env=env, what="merge_config.sh", timeout=STEP_TIMEOUT)
    run_step(make + ["olddefconfig"], cwd=tree, env=env, what="make olddefconfig", timeout=STEP_TIMEOUT)
    dropped = check_config(tree / ".config", fragments)
    if dropped:
        raise KernelBuildError(
            "kconfig dropped options the config fragment asks for (a dependency is missing or the "
            "option does not exist in this kernel): " + ", ".join(dropped),
            detail="\n".join(f"{f}" for f in fragments))
    timings["config"] = time.monotonic() - t
    for target in (profile.image_kind, "modules_prepare", "modules"):
        t = time.monotonic()
        run_make(make + [f"-j{jobs}", target], tree, env, f"make {target}", log)
        timings[target] = time.monotonic() - t
    release = run_step(make + ["-s", "kernelrelease"], cwd=tree, env=env, what="make kernelrelease",
                   timeout=STEP_TIMEOUT).strip()
    run_step(make + ["-s", "modules_install", f"INSTALL_MOD_PATH={tmp / 'modroot'}", "DEPMOD=true"],
         cwd=tree, env=env, what="make modules_install", timeout=STEP_TIMEOUT)
    modules = tmp / "modroot" / "lib" / "modules" / release
    if not modules.is_dir():  # nothing to install: still say what is built in
        modules.mkdir(parents=True)
        for name in ("modules.builtin", "modules.order"):
            if (tree / name).exists():
                shutil.copy2(tree / name, modules / name)
    for link in ("build", "source"):  # absolute links into the staging dir
        (modules / link).unlink(missing_ok=True)
    m = re.match(r"^(\d+)\.(\d+)", release)
    kernel = Kernel(
        spec=f"built:{key}", release=release, version=source.version or release, arch=arch,
        flavour="built", series=f"{m[1]}.{m[2]}" if m else release, cc=source.cc, root=tmp,
        image=f"linux/{image}", config="linux/.config",
        modules_dir=str(modules.relative_to(tmp)), build_dir="linux", suite=source.suite,
        vmlinux="linux/vmlinux",
        packages=[{"source": source.identity, "patches": [p.name for p in patches],
                   "fragments": [f.name for f in fragments]}])
    kernel.image_sha256 = cache.sha256_file(tmp / kernel.image)
    kernel.save()
    (tmp / "build-timings.json").write_text(
        "{" + ", ".join(f'"{k}": {v:.1f}' for k, v in timings.items()) + "}\n")
    log("vmprobe: build times: " + ", ".join(f"{k} {v:.0f}s" for k, v in timings.items()))


def apply_patch(tree: Path, patch: Path) -> list[str]:
    """``patch -p1`` (dry run first, so a failing patch leaves nothing half-applied).

    Returns patch's "Hunk #N succeeded at L with fuzz F" lines, worth a look.
    """
    proc = None
    for dry in (True, False):
        cmd = ["patch", "-p1", "--forward", "--batch", "--no-backup-if-mismatch", "-i", str(patch)]
        proc = subprocess.run(cmd + (["--dry-run"] if dry else []), cwd=tree, capture_output=True,
                              text=True, stdin=subprocess.DEVNULL, timeout=STEP_TIMEOUT)
        if proc.returncode != 0:
            raise KernelBuildError(f"{patch.name} does not apply: {failed_hunks(proc.stdout)}",
                                   detail=proc.stdout[-3000:] + proc.stderr[-1000:])
    return [line.strip().rstrip(".") for line in proc.stdout.splitlines() if "with fuzz" in line]


def failed_hunks(output: str) -> str:
    """'file: hunk #2 at 120, …' from patch's output (or its last line)."""
    failures, current = [], None
    for line in output.splitlines():
        m = re.match(r"^(?:checking|patching) file '?([^']+?)'?$", line)
        if m:
            current = m[1]
            continue
        m = re.match(r"^Hunk #(\d+) FAILED at (\d+)", line)
        if m:
            failures.append(f"{current}: hunk #{m[1]} at line {m[2]}")
            continue
        m = re.match(r"^can't find file to patch|^No file to patch", line)
        if m:
            failures.append(f"{current or 'a file'}: file to patch not found")
        if "Reversed (or previously applied) patch detected" in line:
            failures.append(f"{current}: already applied")
    if failures:
        return "; ".join(dict.fromkeys(failures))
    lines = [l for l in output.splitlines() if l.strip()]
    return lines[-1] if lines else "patch failed"


def parse_fragment(text: str) -> dict[str, str]:
    """CONFIG_X=v and '# CONFIG_X is not set' (→ 'n') lines of a fragment."""
    wanted = {}
    for line in text.splitlines():
        line = line.strip()
        m = re.match(r"^(CONFIG_\w+)=(.*)$", line)
        if m:
            wanted[m[1]] = m[2].strip('"')
            continue
        m = re.match(r"^# (CONFIG_\w+) is not set$", line)
        if m:
            wanted[m[1]] = "n"
    return wanted


def check_config(config: Path, fragments: list[Path]) -> list[str]:
    """Fragment options whose value kconfig did not keep, as 'X=want (got)' strings."""
    have = parse_fragment(config.read_text())
    dropped = []
    for frag in fragments:
        for name, value in parse_fragment(frag.read_text()).items():
            got = have.get(name, "n")
            if got != value:
                dropped.append(f"{name}={value} (is {'not set' if got == 'n' else got})")
    return dropped


# -- running make with progress --------------------------------------------------------

def run_make(cmd: list[str], cwd: Path, env: dict, what: str, log, interval: float = 15) -> None:
    """Run make, showing progress (files compiled, the latest, elapsed time) every ``interval``."""
    t0 = time.monotonic()
    tail: list[str] = []
    count = 0
    last = ""
    from vmprobe.host.processes import die_with_parent  # make (and so its jobs) stops if vmprobe is killed
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, text=True, errors="replace", start_new_session=True,
                            preexec_fn=die_with_parent)
    done = threading.Event()
    tty = sys.stderr.isatty()

    def ticker() -> None:
        while not done.wait(interval):
            text = f"vmprobe: {what}: {count} steps, {time.monotonic() - t0:.0f}s, at {last}"
            if tty:
                print("\r" + text[:150].ljust(150), end="", file=sys.stderr, flush=True)
            else:
                log(text)

    thread = threading.Thread(target=ticker, daemon=True)
    thread.start()
    try:
        for line in proc.stdout:
            tail.append(line)
            if len(tail) > 200:
                del tail[:100]
            m = re.match(r"^\s+([A-Z0-9_]+)\s+(\S+)", line)
            if m:
                count += 1
                last = m[2]
        proc.wait(timeout=BUILD_TIMEOUT)
    except BaseException:
        _kill(proc)
        raise
    finally:
        done.set()
        thread.join()
        if tty:
            print("", file=sys.stderr)
    if proc.returncode != 0:
        errors = [l for l in tail if re.search(r"error|Error \d", l)]
        first = errors[0].strip() if errors else f"exit {proc.returncode}"
        raise KernelBuildError(f"{what} failed: {first}", detail="".join(tail[-40:]))
    log(f"vmprobe: {what}: done in {time.monotonic() - t0:.0f}s ({count} steps)")


def _kill(proc: subprocess.Popen) -> None:
    import signal
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(10)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


# -- the command line ------------------------------------------------------------------

def add_build_arguments(ksub) -> None:
    """``vmprobe kernels build`` (wired in cli.py)."""
    kb = ksub.add_parser(
        "build", help="build a kernel from source (patched, configured for vmprobe), cached",
        description="Unpack a kernel source, apply patches (patch -p1), configure it from "
                    "tinyconfig plus a config fragment (merge_config.sh), build the image and what "
                    "out-of-tree module builds need. Prints the kernel spec to use (built:<key>).")
    kb.add_argument("--source", required=True,
                    help="a kernel source tree, or debian-source:<series> (Debian's linux-source "
                         "package, e.g. debian-source:6.1)")
    kb.add_argument("--patch", action="append", default=[], type=Path,
                    help=f"a patch to apply with patch -p1 (repeatable; shipped: {PATCHES_DIR}/)")
    kb.add_argument("--config-fragment", action="append", default=[], type=Path,
                    help=f"config fragment(s) to merge (default {DEFAULT_FRAGMENT})")
    kb.add_argument("--debug", action="store_true",
                    help=f"also merge the debug fragment ({DEBUG_FRAGMENT.name}: KASAN, lockdep, "
                         f"DEBUG_ATOMIC_SLEEP, kmemleak, lockup and hung-task detectors): splats in "
                         f"handlers that a production kernel lets pass")
    kb.add_argument("--jobs", "-j", type=int, default=None, help="make -j (default: CPUs)")
    kb.add_argument("--json", action="store_true", help="print the kernel record as JSON")


def cmd_build(args, log) -> int:
    import json
    t0 = time.monotonic()
    fragments = list(args.config_fragment)
    if getattr(args, "debug", False):
        fragments = (fragments or [DEFAULT_FRAGMENT]) + [DEBUG_FRAGMENT]
    kernel = build_kernel(args.source, args.patch, fragments, jobs=args.jobs, log=log)
    if args.json:
        data = json.loads((kernel.root / "kernel.json").read_text())
        data["root"] = str(kernel.root)
        print(json.dumps(data, indent=2))
    else:
        print(f"{kernel.spec} {kernel.release} -> {kernel.root}")
    log(f"vmprobe: kernel ready in {time.monotonic() - t0:.0f}s; use it as --kernel {kernel.spec} "
        f"(or local:{kernel.root})")
    return 0
