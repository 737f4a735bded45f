"""Four ``vmprobe probe`` runs at once on the same kernel, starting from an empty cache.

They race for everything the cache holds: the private apt lists, the kernel
download, the base initramfs, the built fork probe, the machines' runtime dirs
and the SSH ports. The cache's locks must make exactly one of them download
the kernel (its ``vmprobe: fetching …`` line is printed under the entry's lock,
right before ``apt-get download``) and apt update the lists once, while the
others wait and reuse the results; every run must pass.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vmprobe.config import cache_dir

RUNS = 4
RUN_TIMEOUT = 600  # a cold fetch plus four TCG boots sharing two cores


@pytest.mark.slow
def test_four_runs_on_a_cold_cache_download_once_and_all_pass(kernel, accel, tmp_path, no_leaks):
    cold = tmp_path / "cache"
    cold.mkdir()
    # The KVM verdict is a fact about the host, not about kernels: keep it, so `auto` does not
    # add a test boot to the race (the race for it is covered by its own lock).
    if (cache_dir("accel")).is_dir():
        shutil.copytree(cache_dir("accel"), cold / "accel")
    env = dict(os.environ, VMPROBE_CACHE=str(cold))
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
    print(f"\n{RUNS} cold runs at once: {elapsed:.1f}s in all")
    for i, (out, p) in enumerate(procs):
        assert p.returncode == 0, f"run {i} exited {p.returncode}:\n{errs[i][-3000:]}\n{outs[i][-2000:]}"
        report = json.loads(out.with_suffix(".json").read_text())
        assert report["verdict"] == "pass"
        assert report["kernel"]["release"] == kernel.release
    fetch_lines = [line for e in errs for line in e.splitlines() if line.startswith("vmprobe: fetching ")]
    assert len(fetch_lines) == 1, f"expected one download, saw {fetch_lines}"
    build_lines = [line for e in errs for line in e.splitlines() if line.startswith("vmprobe: building ")]
    assert len(build_lines) == 1, f"expected one module build, saw {build_lines}"
    # one entry, no half-written staging dir left by the losers
    entries = sorted(p.name for p in (cold / "kernels").iterdir() if not p.name.endswith(".lock"))
    assert len(entries) == 1 and not entries[0].startswith("."), entries
    # apt updated the lists once: the lists dir holds one Release per source, fetched once
    apt_updates = [line for e in errs for line in e.splitlines() if line.startswith("vmprobe: updating ")]
    assert len(apt_updates) == 1, f"expected one apt update, saw {apt_updates}"
