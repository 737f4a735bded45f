"""The old-kernel boot quirk table (vmprobe/arch/eras.py), its application to the QEMU
command line, and the likely cause named by a boot timeout."""
from __future__ import annotations

from pathlib import Path

import pytest

from vmprobe.arch import PROFILES
from vmprobe.arch.eras import QUIRKS, USERLANDS, boot_settings, diagnose_boot, guest_userland, kernel_version
from vmprobe.errors import BootTimeout, ConfigError
from vmprobe.vm.console import Console
from vmprobe.vm.qemu_command import QemuInputs, qemu_command

AMD64, I386, ARM64 = PROFILES["amd64"], PROFILES["i386"], PROFILES["arm64"]


@pytest.mark.parametrize("release, version", [
    ("2.6.11", (2, 6, 11)), ("2.6.11-smp", (2, 6, 11)), ("2.6.8.1", (2, 6, 8)),
    ("6.1.0-57-cloud-amd64", (6, 1, 0)), ("3.0", (3, 0)), ("", None), ("local", None),
])
def test_kernel_version(release, version):
    assert kernel_version(release) == version


def test_every_row_says_why_and_has_a_range():
    assert len({q.name for q in QUIRKS}) == len(QUIRKS)
    for q in QUIRKS:
        assert q.why and (q.until or q.since), q


def test_2_6_11_gets_every_measured_quirk():
    s = boot_settings(AMD64, "2.6.11")
    assert s.cpu_tcg == "qemu64,vendor=GenuineIntel"
    assert s.panic == "1"
    assert "nopti" not in s.append and "earlyprintk=serial,ttyS0,115200" in s.append
    assert s.nic == "e1000"
    assert set(s.quirks) == {q.name for q in QUIRKS}


@pytest.mark.parametrize("release, nic, nopti, quirks", [
    ("2.6.24", "virtio-net-pci", False, {"i440fx-machine", "intel-vendor-cpu", "panic-reboots-after-1s",
                                         "no-nopti", "earlyprintk", "musl-userland"}),
    ("3.1.10", "virtio-net-pci", False, {"no-nopti", "musl-userland"}),
    ("3.16.0", "virtio-net-pci", False, {"no-nopti"}),
    ("4.4.0", "virtio-net-pci", True, set()),
    ("6.1.0-57-cloud-amd64", "virtio-net-pci", True, set()),
])
def test_ranges_are_half_open(release, nic, nopti, quirks):
    s = boot_settings(AMD64, release)
    assert (s.nic, "nopti" in s.append, set(s.quirks)) == (nic, nopti, quirks)
    assert s.machine == ("pc" if "i440fx-machine" in quirks else "q35")


def test_modern_and_unreadable_releases_keep_the_profile():
    for profile in (AMD64, I386, ARM64):
        for release in ("6.1.0-57-amd64", ""):
            s = boot_settings(profile, release)
            assert (s.cpu_tcg, s.machine, s.panic, s.append, s.nic, s.quirks) == (
                profile.cpu_tcg, profile.machine, "-1", profile.append, "virtio-net-pci", ())


def test_rows_are_per_arch():
    assert boot_settings(ARM64, "2.6.11").quirks == ()
    assert boot_settings(I386, "2.6.8").cpu_tcg == "qemu64,vendor=GenuineIntel"


def _line(release: str, accel: str = "tcg", profile=AMD64) -> list[str]:
    p = Path("/run/x")
    return qemu_command(QemuInputs(profile=profile, accel=accel, smp=1, memory="1G", image=p, initrd=p,
                                   nonce="n", ssh_port=2222, console_log=p, qmp_socket=p, gdb_socket=p,
                                   control_socket=p, release=release))


def test_quirks_reach_the_qemu_command_line():
    old = _line("2.6.11")
    append = old[old.index("-append") + 1].split()
    assert old[old.index("-cpu") + 1] == "qemu64,vendor=GenuineIntel"
    assert "panic=1" in append and "panic=-1" not in append and "nopti" not in append
    assert "earlyprintk=serial,ttyS0,115200" in append
    assert "e1000,netdev=net0,romfile=" in old
    new = _line("6.1.0-57-cloud-amd64")
    append = new[new.index("-append") + 1].split()
    assert new[new.index("-cpu") + 1] == AMD64.cpu_tcg and "panic=-1" in append and "nopti" in append
    assert "virtio-net-pci,netdev=net0,romfile=" in new
    assert _line("2.6.11", accel="kvm")[old.index("-cpu") + 1] == AMD64.cpu_kvm   # the host's CPU under KVM


def test_the_control_port_and_agent_are_always_there_when_the_arch_has_one():
    line = _line("6.1.0")
    assert "vmprobe.agent=ttyS1" in line[line.index("-append") + 1]
    assert line.count("-serial") == 2
    # arm64's virt machine has one UART: its control port is a virtio console
    arm = _line("6.1.0", profile=ARM64)
    assert "vmprobe.agent=hvc0" in arm[arm.index("-append") + 1] and arm.count("-serial") == 1
    assert "virtconsole,chardev=ctl0,bus=ctl.0" in arm and "virtio-serial-pci,id=ctl" in arm


@pytest.mark.parametrize("console, cause", [
    ("", "console stayed empty"),
    ("Linux version 2.6.11\nCannot find space for the kernel page tables\n", "AMD-vendor CPU"),
    ("Freeing unused kernel memory: 140k freed\nFATAL: kernel too old\n", "refuses kernels older than 3.2"),
    ("VFS: Cannot open root device\nKernel panic - not syncing: VFS: Unable to mount root fs on "
     "unknown-block(0,0)\n", "CONFIG_BLK_DEV_INITRD"),
    ("Freeing unused kernel image (initmem) memory: 2000K\nRun /init as init process\n"
     "vmprobe-init: no eth0 (virtio-net missing?)\n", "no network driver"),
    ("Freeing unused kernel image (initmem) memory: 2000K\nRun /init as init process\n",
     "never reached its READY marker"),
    ("[    1.0] pci 0000:00:01.0: something\n", "still booting"),
])
def test_diagnose_boot_names_the_likely_cause(console, cause):
    assert cause in diagnose_boot(console, AMD64, "2.6.11")


def test_empty_console_suggests_earlyprintk_when_not_already_on():
    assert "earlyprintk" in diagnose_boot("", AMD64, "6.1.0")
    assert "add --append earlyprintk" not in diagnose_boot("", AMD64, "2.6.11")   # the quirk has it on


def test_a_boot_timeout_shows_the_tail_and_the_cause(tmp_path):
    log = tmp_path / "console.log"
    log.write_text("Linux version 2.6.11\nCannot find space for the kernel page tables\n")
    console = Console(log, diagnose=lambda text: diagnose_boot(text, AMD64, "2.6.11"))
    with pytest.raises(BootTimeout) as info:
        console.expect("VMPROBE-READY", 0.05, what="the READY marker")
    assert "likely cause: an old kernel on an AMD-vendor CPU model" in str(info.value)
    assert "Cannot find space" in info.value.detail
    log.write_text("")
    with pytest.raises(BootTimeout) as info:
        Console(log, diagnose=lambda t: diagnose_boot(t, AMD64, "6.1.0")).expect("X", 0.05, what="x")
    assert "console stayed empty" in str(info.value) and info.value.detail == "(the console is empty)"


# -- the guest userland by era ---------------------------------------------------------

@pytest.mark.parametrize("profile, release, userland", [
    (AMD64, "2.6.11", "old"), (AMD64, "2.6.8.1", "old"), (I386, "2.6.8", "old"),
    (AMD64, "3.1.10", "old"),            # glibc's floor is 3.2: just below it
    (AMD64, "3.2", "modern"), (AMD64, "3.2.0-4-amd64", "modern"), (I386, "6.1.0-50-686", "modern"),
    (AMD64, "6.1.0-57-cloud-amd64", "modern"), (ARM64, "6.12.48+deb13-arm64", "modern"),
    (AMD64, "", "modern"), (AMD64, "local", "modern"),   # a version that cannot be read: the default
])
def test_userland_follows_the_era_table(profile, release, userland):
    assert guest_userland(profile, release) == userland
    assert boot_settings(profile, release).userland == userland


def test_userland_row_is_in_the_table_with_its_reason():
    rows = [q for q in QUIRKS if q.userland]
    assert [(q.name, q.userland, q.until) for q in rows] == [("musl-userland", "old", (3, 2))]
    assert "kernel too old" in rows[0].why and set(rows[0].arches) == {"x86_64", "i386"}
    assert all(q.userland in USERLANDS for q in rows)


@pytest.mark.parametrize("requested", USERLANDS)
def test_a_forced_userland_wins_over_the_era(requested):
    for release in ("2.6.11", "6.1.0-57-cloud-amd64", ""):
        assert guest_userland(AMD64, release, requested) == requested


def test_an_unknown_userland_is_refused():
    with pytest.raises(ConfigError, match="unknown guest userland 'glibc'.*auto, modern, old"):
        guest_userland(AMD64, "6.1.0", "glibc")
