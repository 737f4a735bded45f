"""What a warm start's saved state is keyed by: the machine and CPU the boot really uses."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from vmprobe.arch import profile_for
from vmprobe.arch.eras import boot_settings
from vmprobe.vm import snapshot


@pytest.mark.parametrize("release", ["2.6.32-5-686", "6.1.0-57-cloud-amd64"])
def test_snapshot_inputs_name_the_eras_machine_and_cpu(release, monkeypatch):
    monkeypatch.setattr(snapshot, "qemu_version", lambda binary: "QEMU emulator version 7.2.22")
    p = profile_for("amd64")
    m = SimpleNamespace(profile=p, accel="tcg", memory="1G", smp=1, extra_append=(), qemu_args=(),
                        kernel=SimpleNamespace(spec="local:/x", release=release, image_sha256="0" * 64))
    inputs = snapshot.snapshot_inputs(m, SimpleNamespace(key="base"))
    era = boot_settings(p, release)
    assert (inputs["machine"], inputs["cpu"]) == (era.machine, era.cpu_tcg)
    if release.startswith("2.6"):   # the era table's quirks, not the profile's defaults
        assert (inputs["machine"], inputs["cpu"]) != (p.machine, p.cpu_tcg)
