"""Warm starts for real: machines restored from a saved VM state (vmprobe/snapshot.py)."""
from __future__ import annotations

import json
import re
import secrets
import shutil
import time

import pytest

from vmprobe.errors import GuestCrash, SshError
from vmprobe.host.cache import sha256_file
from vmprobe.vm.gdb import Gdb
from vmprobe.vm.machine import Machine
from vmprobe.vm.ssh import GuestSsh


def _facts(m: Machine) -> dict:
    out = m.run("date +%s; cat /proc/sys/kernel/random/boot_id; head -c 16 /dev/urandom | od -An -tx1; "
                "grep -m1 ' kernel_clone$' /proc/kallsyms").stdout.splitlines()
    return {"epoch": int(out[0]), "boot_id": out[1].strip(), "random": out[2].strip(),
            "kernel_clone": out[3].split()[0]}


def test_restores_share_the_layout_but_not_keys_nonce_clock_or_randomness(kernel, accel, no_leaks):
    with Machine(kernel, accel=accel, warm=True) as a, Machine(kernel, accel=accel, warm=True) as b:
        assert a._incoming == b._incoming and a._incoming.is_file()   # one saved state, read by both
        assert a.nonce != b.nonce
        for m in (a, b):
            assert re.search(rf"\] VMPROBE-READY {m.nonce} ssh=1$", m.console.text, re.M)
            assert "VMPROBE-SNAPSHOT-POINT" not in m.console.text  # the console is this run's only
        fa, fb = _facts(a), _facts(b)
        now = time.time()
        for f in (fa, fb):  # the clock was set at restore, not frozen at save time
            assert abs(f["epoch"] - now) < 30, f
        assert fa["boot_id"] != fb["boot_id"] and fa["random"] != fb["random"]
        # documented: restores of one snapshot share the KASLR layout
        assert fa["kernel_clone"] == fb["kernel_clone"]
        # each restore has its own keys: a's keys do not open b (host key and client key differ)
        with pytest.raises(SshError):
            GuestSsh(b.ssh_port, a.ssh.keys).connect(5)
        # and its own gdbstub: the same kernel text, read from each, and each guest runs on after
        address = int(fa["kernel_clone"], 16)
        texts = []
        for m in (a, b):
            with Gdb() as gdb:
                gdb.attach(m.gdb_socket)
                texts.append(gdb.read_memory(address, 16))
                assert gdb.registers(["rip"])["rip"] > 0
        assert texts[0] == texts[1]
        assert a.run("echo still running").stdout.strip() == "still running"


def test_restored_ssh_servers_draw_their_own_random_keys(kernel, accel, monkeypatch, no_leaks):
    """dropbear starts before the snapshot point (rootfs/init): each restore's server must still make
    its own ephemeral key exchange key, not one drawn from a random state shared by the restores."""
    import struct

    import paramiko.kex_curve25519 as curve25519
    server_keys: list[bytes] = []
    real = curve25519.KexCurve25519._parse_kexecdh_reply

    def spy(self, m):   # the reply carries the host key, then the server's ephemeral key Q_S
        data = m.asbytes()
        rest = data[4 + struct.unpack(">I", data[:4])[0]:]
        server_keys.append(rest[4:4 + struct.unpack(">I", rest[:4])[0]])
        return real(self, m)

    monkeypatch.setattr(curve25519.KexCurve25519, "_parse_kexecdh_reply", spy)
    for _ in range(2):
        with Machine(kernel, accel=accel, warm=True) as m:
            assert m._incoming is not None
    assert len(server_keys) == 2, f"the key exchange was not curve25519 ({len(server_keys)} replies seen)"
    assert server_keys[0] != server_keys[1], "two restores' SSH servers drew the same ephemeral key"


def test_a_crash_in_a_restored_guest_is_reported(kernel, accel, no_leaks):
    with Machine(kernel, accel=accel, warm=True) as m:
        m.run("echo 1 > /proc/sys/kernel/sysrq")
        with pytest.raises(GuestCrash, match="sysrq triggered crash|Kernel panic|kernel panic"):
            m.run("echo c > /proc/sysrq-trigger", 30)


def test_snapshot_is_made_once_per_inputs_and_remade_when_damaged(kernel, accel, no_leaks):
    # an extra kernel argument nobody else uses: a snapshot of its own, removed at the end
    append = (f"vmprobe.test={secrets.token_hex(4)}",)
    made = None
    try:
        with Machine(kernel, accel=accel, warm=True, append=append) as m:
            made = m._incoming.parent
            assert m.timings["snapshot"] > 0
            assert append[0] in m.run("cat /proc/cmdline").stdout
        with Machine(kernel, accel=accel, warm=True, append=append) as m:
            assert m._incoming.parent == made and m.timings["snapshot"] == 0
        with (made / "state").open("r+b") as f:  # damage guest RAM in the saved state
            f.seek(30_000_000)
            f.write(b"\xa5" * 4096)
        with Machine(kernel, accel=accel, warm=True, append=append) as m:
            assert m.timings["snapshot"] > 0  # the damage was noticed and the state made again
            assert m.run("echo ok").stdout.strip() == "ok"
        (made / "state").write_bytes(b"QEVM")  # truncated
        with Machine(kernel, accel=accel, warm=True, append=append) as m:
            assert m.timings["snapshot"] > 0
            assert m.run("echo ok").stdout.strip() == "ok"
        # a state that passes the file checks but QEMU refuses to load: discarded, made again
        meta = json.loads((made / "meta.json").read_text())
        (made / "state").write_bytes(b"QEVM\0\0\0\3" + b"\xff" * 4096)
        meta.update(state_bytes=4104, state_sha256=sha256_file(made / "state"))
        (made / "meta.json").write_text(json.dumps(meta))
        (made / "verified").unlink()
        messages = []
        with Machine(kernel, accel=accel, warm=True, append=append, log=messages.append) as m:
            assert m.timings["snapshot"] > 0
            assert m.run("echo ok").stdout.strip() == "ok"
        # QEMU refused it (at start-up or while loading), and the machine said so
        assert any("making the snapshot again" in msg and "migration" in msg or "while loading" in msg
                   for msg in messages), messages
    finally:
        if made:
            shutil.rmtree(made, ignore_errors=True)


def test_cold_machines_do_not_use_snapshots(kernel, accel, no_leaks):
    with Machine(kernel, accel=accel, warm=False) as m:
        assert m._incoming is None and "snapshot" not in m.timings and "-incoming" not in m.command_line
        # a boot of the base image: the run's keys came over the control port, made while it booted
        assert m.command_line[m.command_line.index("-initrd") + 1].endswith(".cpio")
        assert f"vmprobe.warm={m.profile.control_port}" in m.run("cat /proc/cmdline").stdout
        assert m.run("cat /root/.ssh/authorized_keys").stdout.strip() == m.ssh.keys.authorized_key
