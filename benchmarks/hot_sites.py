#!/usr/bin/env python3
"""Probes on hot functions (hit all the time): pass count and timings, through the CLI.

Each run is a whole ``vmprobe probe --kernel SPEC --symbol S --offset O
--trigger T --json FILE`` process. Per (kernel, symbol) it prints runs × passes,
the exit codes, the median / max of the ``registers`` phase and of the whole
process, whether the ``after`` bytes were read and equal ``before``, and the
task that hit the hardware breakpoint. Usage:

benchmarks/hot_sites.py [--runs 3] [--kernels debian:bookworm] [--symbols do_sys_openat2:5,vfs_read:after-entry]
                        [--python .venv/bin/python] [--cwd DIR] [--against DIR] [--json hot.json]

``--cwd DIR`` runs another checkout's vmprobe instead of this one; ``--against DIR``
runs both, alternating run by run (so a shared machine's load falls on both alike),
e.g. a copy of main for a before/after: ``git archive main vmprobe kernels rootfs | tar -x -C DIR``.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DEFAULT_SYMBOLS = "do_sys_openat2:5,vfs_read:after-entry,ksys_write:after-entry"
TRIGGER = "cat /proc/version"


def one(python: str, cwd: str, spec: str, symbol: str, offset: str, accel: str, label: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "r.json"
        cmd = [python, "-m", "vmprobe", "probe", "--kernel", spec, "--symbol", symbol, "--offset", offset,
               "--trigger", TRIGGER, "--accel", accel, "--json", str(out)]
        t0 = time.monotonic()
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=900,
                              stdin=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": cwd})
        wall = time.monotonic() - t0
        report = json.loads(out.read_text()) if out.exists() else {}
    b = report.get("bytes", {})
    last = (proc.stdout + proc.stderr).strip().splitlines()[-1:] or [""]
    return {"code": label, "kernel": spec, "symbol": symbol, "offset": offset, "rc": proc.returncode,
            "wall": round(wall, 2),
            "verdict": report.get("verdict"), "registers": report.get("timings", {}).get("registers"),
            "after_ok": bool(b.get("after")) and b.get("after") == b.get("before"),
            "after": b.get("after", ""), "hit_by": report.get("registers_at_hit", {}).get("task"),
            "error": report.get("error") or (last[0] if proc.returncode else None)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--kernels", default="debian:bookworm")
    ap.add_argument("--symbols", default=DEFAULT_SYMBOLS, help="SYMBOL:OFFSET,...")
    ap.add_argument("--accel", default="tcg")
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--cwd", default=str(Path(__file__).resolve().parents[1]))
    ap.add_argument("--against", default=None, help="another checkout, run alternately with this one")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    rows = []
    codes = [("this" if not args.against else Path(args.cwd).name, args.cwd)]
    if args.against:
        codes.append((Path(args.against).name, args.against))
    for spec in [s for s in args.kernels.split(",") if s]:
        for i in range(args.runs):
            for item in [s for s in args.symbols.split(",") if s]:
                symbol, _, offset = item.partition(":")
                for label, cwd in codes:
                    row = one(args.python, cwd, spec, symbol, offset or "after-entry", args.accel, label)
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    print()
    print(f"{'code':12} {'kernel':18} {'symbol':16} {'offset':11} {'pass':>6} {'rc':>10} {'registers med/max':>18} "
          f"{'whole med/max':>15} {'after ok':>8}")
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["code"], row["kernel"], row["symbol"], row["offset"]), []).append(row)
    for (code, spec, symbol, offset), rs in sorted(groups.items()):
        regs = [r["registers"] for r in rs if r["registers"] is not None]
        walls = [r["wall"] for r in rs]
        passes = sum(r["verdict"] == "pass" and r["rc"] == 0 for r in rs)
        rcs = ",".join(sorted({str(r["rc"]) for r in rs}))
        reg = f"{statistics.median(regs):.1f}/{max(regs):.1f}" if regs else "-"
        whole = f"{statistics.median(walls):.1f}/{max(walls):.1f}"
        print(f"{code:12} {spec:18} {symbol:16} {offset:11} {passes:>3}/{len(rs):<2} {rcs:>10} {reg:>18} "
              f"{whole:>15} {sum(r['after_ok'] for r in rs):>5}/{len(rs)}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
