"""The serial transport on real guests: commands, uploads and the whole probe check with
no SSH at all (the guest's agent on the control port, rootfs/agent)."""
from __future__ import annotations

import hashlib
import json
import os

import pytest

from vmprobe.check.probe import ProbeOptions, run_probe_check
from vmprobe.errors import CommandTimeout
from vmprobe.vm.machine import Machine


@pytest.fixture(scope="module")
def serial_vm(request, kernel):
    """A VM on the test's own kernel (one per --vmprobe-kernel), controlled over the serial line only."""
    with Machine(kernel, accel=request.config.getoption("vmprobe_accel"), warm=True,
                 transport="serial") as m:
        yield m


def test_serial_commands_uploads_and_timeouts(serial_vm, tmp_path):
    m = serial_vm
    assert m.ssh.name == "serial" and m.ssh.ssh_available is True   # asked for serial, though SSH runs
    r = m.run("uname -r; echo to-stderr >&2; exit 5", 30)
    assert (r.status, r.stdout.strip(), r.stderr) == (5, m.kernel.release, "to-stderr\n")
    blob = tmp_path / "blob"
    blob.write_bytes(os.urandom(50_000))
    m.upload(blob, "/tmp/blob", 0o640)
    out = m.run("sha256sum /tmp/blob; stat -c %a /tmp/blob", 30).stdout.split()
    assert out[0] == hashlib.sha256(blob.read_bytes()).hexdigest() and out[-1] == "640"
    # kernel messages go to the console, never into a command's output
    r = m.run("echo vmprobe-kmsg-test > /dev/kmsg; echo done", 30)
    assert r.stdout == "done\n" and "vmprobe-kmsg-test" in m.console.text
    with pytest.raises(CommandTimeout, match="'sleep 60' did not finish within 2s"):
        m.run("sleep 60", 2)
    assert m.run("echo after", 30).stdout == "after\n"


def test_serial_answers_every_command_while_others_end(serial_vm):
    """Short commands back to back while started ones end at staggered moments: an ending
    command signals the agent while a request is half-way through the UART (the race
    that lost requests before rootfs/agent's spawner)."""
    m = serial_vm
    feeder = m.ssh.start("while read -r line; do echo \"$line\"; done")
    sleepers = []
    for i in range(100):
        sleepers.append(m.ssh.start(f"usleep {(i * 7919) % 40000}; echo {i}"))
        assert m.run(f"echo {i}", 10).stdout == f"{i}\n", f"command {i}"
        if i % 10 == 0:
            feeder.sendall(f"fed {i}\n".encode())
    for i, sleeper in enumerate(sleepers):
        assert m.ssh.wait(sleeper, f"sleeper {i}", 10).stdout == f"{i}\n"
    feeder.shutdown_write()
    fed = m.ssh.wait(feeder, "the echo loop", 10).stdout.splitlines()
    assert fed == [f"fed {i}" for i in range(0, 100, 10)]


def test_probe_check_over_serial(serial_vm, fork_module):
    report = run_probe_check(serial_vm, fork_module, ProbeOptions(offset=5, post_handler=True))
    d = report.to_dict()
    assert d["verdict"] == "pass", report.summary()
    assert d["probe"]["mechanism"] == "int3" and d["hits"] > 0
    assert d["sysrq"]["proc"] is True
    assert serial_vm.ssh.name == "serial"


@pytest.mark.slow
@pytest.mark.parametrize("spec", ["debian:bullseye", "debian:bookworm/686"])
def test_probe_cli_over_serial_on_other_kernels(spec, vmprobe_cli, accel, tmp_path):
    out = tmp_path / "report.json"
    res = vmprobe_cli("probe", "--kernel", spec, "--transport", "serial", "--accel", accel,
                      "--json", str(out), timeout=900)
    assert res.returncode == 0, res.stdout + res.stderr
    assert json.loads(out.read_text())["verdict"] == "pass"
