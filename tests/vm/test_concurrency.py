"""Four ``vmprobe probe`` runs at once on the same kernel, starting from a cold cache.

They race for everything the cache holds: the private apt lists, the kernel
download, the base initramfs, the built fork probe, the machines' runtime dirs
and the SSH ports. The cache's locks must make exactly one of them download
the kernel (its ``vmprobe: fetching …`` line is printed under the entry's lock,
right before ``apt-get download``) and apt update the lists once, while the
others wait and reuse the results; every run must pass. The CI variant starts
with the kernel in the cache (hard links) and only the builds cold; the slow
one starts from an empty cache and downloads the kernel.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import pytest
from cachecopy import copy_cache

from vmprobe.config import cache_dir

RUNS = 4
RUN_TIMEOUT = 600  # a cold fetch plus four TCG boots sharing two cores


@pytest.mark.parametrize("cold", [
    pytest.param("everything", marks=pytest.mark.slow, id="empty-cache"),   # downloads the kernel
    pytest.param("builds", id="kernel-cached"),   # the kernel hard-linked in; module and initramfs cold
])
def test_four_runs_at_once_build_each_thing_once_and_all_pass(kernel, accel, tmp_path, no_leaks, cold):
    cache = tmp_path / "cache"
    if cold == "everything":
        # the KVM verdict is a fact about the host, not a kernel's: kept, so `auto` does not add a
        # test boot to the race
        cache.mkdir()
        if cache_dir("accel").is_dir():
            shutil.copytree(cache_dir("accel"), cache / "accel", ignore=shutil.ignore_patterns("*.lock"))
    else:
        copy_cache(kernel, cache)
    env = dict(os.environ, VMPROBE_CACHE=str(cache))
    t0 = time.monotonic()
    procs = []
    for i in range(RUNS):
        out = tmp_path / f"run{i}"
        procs.append((out, subprocess.Popen(
            [sys.executable, "-m", "vmprobe", "probe", "--kernel", kernel.spec, "--accel", accel,
             "--no-sysrq", "--json", str(out.with_suffix(".json"))],
            stdout=out.with_suffix(".out").open("w"), stderr=out.with_suffix(".err").open("w"),
            stdin=subprocess.DEVNULL, env=env, start_new_session=True)))
    try:
        for _, p in procs:
            p.wait(RUN_TIMEOUT)
    finally:
        for _, p in procs:
            if p.poll() is None:
                os.killpg(p.pid, 9)
                p.wait()
    elapsed = time.monotonic() - t0
    errs = [out.with_suffix(".err").read_text() for out, _ in procs]
    outs = [out.with_suffix(".out").read_text() for out, _ in procs]
    print(f"\n{RUNS} runs at once, cold {cold}: {elapsed:.1f}s in all")
    for i, (out, p) in enumerate(procs):
        assert p.returncode == 0, f"run {i} exited {p.returncode}:\n{errs[i][-3000:]}\n{outs[i][-2000:]}"
        report = json.loads(out.with_suffix(".json").read_text())
        assert report["verdict"] == "pass"
        assert report["kernel"]["release"] == kernel.release
    lines = [line for e in errs for line in e.splitlines()]
    expect_downloads = 1 if cold == "everything" else 0
    fetches = [line for line in lines if line.startswith("vmprobe: fetching ")]
    assert len(fetches) == expect_downloads, f"expected {expect_downloads} download(s), saw {fetches}"
    updates = [line for line in lines if line.startswith("vmprobe: updating the package lists")]
    assert len(updates) == expect_downloads, f"expected {expect_downloads} apt update(s), saw {updates}"
    builds = [line for line in lines if line.startswith("vmprobe: building ")]
    assert len(builds) == 1, f"expected one module build, saw {builds}"
    # one of each entry, and no half-written staging dir left by anyone
    for kind in ("kernels", "modules", "rootfs"):
        names = [p.name for p in (cache / kind).iterdir()
                 if not p.name.endswith(".lock") and not p.name.startswith("recipe-")]
        assert len(names) == 1 and not names[0].startswith("."), (kind, names)
    # and the base image's recipe (its key, kept with its host files' stamps): one, whole
    recipes = [json.loads(p.read_text()) for p in (cache / "rootfs").glob("recipe-*.json")]
    assert len(recipes) == 1 and recipes[0]["key"] in names[0], recipes
