"""Kprobe modules that misbehave on purpose (vmprobe/templates/faults/), in real guests.

Each fault gets a fresh machine (the guest dies). The module is loaded on
kernel_clone, armed through /sys/module/<name>/parameters/armed, and a few
forks make its pre handler misbehave once. vmprobe must then end with a
*specific* error — the crash classifier's title, a panic told apart from a
clean poweroff, a timeout that names what it waited for — within a bounded
time, and leave no QEMU or temp dir behind.

The wait for the forks goes through ``Console.expect`` (as the probe check's
waits do): it fails as soon as a fatal report is on the console. A panic is
told from a clean poweroff by pvpanic's QMP event (vmprobe/panics.py), and
the guest gets to print all of it first, NMI-context panics included. After
the module's last test, ``leaves_nothing_behind`` (tests/vm/conftest.py)
checks that no process, socket or temp dir of the fault set remains.
"""
from __future__ import annotations

import re
import secrets
import time

import pytest

from vmprobe import modules
from vmprobe.check.probe import ProbeCheck, ProbeOptions
from vmprobe.config import TEMPLATES_DIR
from vmprobe.errors import CommandTimeout, GuestCrash, QemuError, VmprobeError
from vmprobe.formats.crash import find_crashes, first_fatal
from vmprobe.vm.machine import Machine
from vmprobe.vm.panics import PANIC_NOTE

FAULTS = TEMPLATES_DIR / "faults"
pytestmark = pytest.mark.usefixtures("leaves_nothing_behind")
FORKS = "for i in 1 2 3; do /bin/true; done"
#: Bounds on "how long until vmprobe says what happened", from the trigger on (TCG, a busy 2-core host).
FAIL_WITHIN = 30.0
EXIT_WITHIN = 15.0


@pytest.fixture(scope="module")
def faults(kernel):
    """The four fault modules, built together from the directory's Makefile."""
    built = {m.name.removeprefix("vmprobe_fault_"): m for m in modules.build(FAULTS, kernel)}
    assert set(built) == {"bug", "nullderef", "panic", "spin"}
    return built


def _load(machine: Machine, module, params: str = "") -> str:
    nonce = secrets.token_hex(4)
    machine.upload(module.path, "/tmp/fault.ko")
    res = machine.run(f"insmod /tmp/fault.ko symbol=kernel_clone nonce={nonce} {params}".strip(), 30)
    assert res.status == 0, res.output
    machine.console.expect(rf"vmprobe-armed nonce={nonce} ", 15, what="the fault module's 'armed' line")
    return nonce


def _arm(module) -> str:
    """Shell code arming the fault for this shell's own forks (another task's fork on another CPU
    must not take the one-shot fault: that made the 2-CPU RCU stall test flaky)."""
    params = f"/sys/module/{module.name}/parameters"
    return f"echo $$ > {params}/pid && echo 1 > {params}/armed"


def _fork_and_wait(machine: Machine, module, nonce: str,
                   timeout: float = FAIL_WITHIN) -> tuple[VmprobeError, float, str]:
    """Arm, fork, and wait on the console for the forks to be done.

    Returns (the error vmprobe raised, seconds from the trigger to the error, what it waited for).
    """
    done = f"vmprobe-forks-done-{nonce}"
    command = f"{_arm(module)}; {FORKS}; echo {done} > /dev/kmsg"
    what = f"the forks of {command!r}"
    mark = machine.console.mark()
    t0 = time.monotonic()
    machine.ssh.start(command)
    with pytest.raises(VmprobeError) as info:
        machine.console.expect(done, timeout, since=mark, what=what, error=CommandTimeout)
    elapsed = time.monotonic() - t0
    assert re.search(rf"vmprobe-fault nonce={nonce} fault=", machine.console.since(mark)), "the fault never fired"
    return info.value, elapsed, what


def _assert_pvpanic_exit(machine: Machine, title: str) -> None:
    """QEMU runs with pvpanic and -action panic=none: the guest prints its whole panic, reboots, and
    -no-reboot makes QEMU exit 0 — a panic, told from a poweroff by QMP's GUEST_PANICKED event."""
    assert machine.proc.wait(EXIT_WITHIN) == 0
    with pytest.raises(GuestCrash) as info:
        machine.check_alive()
    assert info.value.message.startswith(f"the guest kernel crashed ({title}); QEMU exited with status 0 "
                                         f"{PANIC_NOTE}"), info.value.message
    assert info.value.exit_code == 69
    assert machine.panic_watch.event["event"] == "GUEST_PANICKED"


@pytest.mark.parametrize("fault, append, title", [
    ("bug", ("oops=panic",), "kernel BUG in handler_pre"),
    ("nullderef", ("oops=panic",), "BUG: kernel NULL pointer dereference in handler_pre"),
    ("panic", (), "kernel panic: vmprobe test panic"),
])
def test_fatal_fault_is_a_guest_crash_named_after_the_handler(kernel, accel, faults, no_leaks, record_property,
                                                              fault, append, title):
    with Machine(kernel, accel=accel, append=append) as m:
        nonce = _load(m, faults[fault])
        err, elapsed, what = _fork_and_wait(m, faults[fault], nonce)
        record_property("seconds_to_fail", round(elapsed, 2))
        print(f"\n{fault}: {type(err).__name__} after {elapsed:.2f}s: {err.message}")
        assert isinstance(err, GuestCrash), err.render()
        assert err.exit_code == 69
        if fault == "panic":
            # The panic's title is on its first line, which may still be arriving when the
            # console is polled: the full title is checked once QEMU is gone (below).
            assert re.fullmatch(rf"the guest kernel crashed \(kernel panic: .*\) while waiting for "
                                rf"{re.escape(what)}", err.message), err.message
        else:
            assert err.message == f"the guest kernel crashed ({title}) while waiting for {what}"
        assert err.detail  # the console's tail comes with it (a panic's stack may still be arriving)
        assert fault == "panic" or "handler_pre" in err.detail
        assert elapsed < FAIL_WITHIN
        _assert_pvpanic_exit(m, title)
        crash = first_fatal(m.console.text)
        assert (crash.title, crash.function) == (title, "handler_pre")
    assert m.proc.returncode == 0 and not m.workdir.exists()


def test_clean_poweroff_is_not_a_crash(kernel, accel, no_leaks):
    """The contrast to the pvpanic exit: a poweroff is status 0 and a QemuError, not a GuestCrash."""
    with Machine(kernel, accel=accel) as m:
        m.ssh.start("poweroff -f")
        assert m.proc.wait(EXIT_WITHIN) == 0
        with pytest.raises(QemuError) as info:
            m.check_alive()
        assert not isinstance(info.value, GuestCrash)
        assert info.value.message == "QEMU exited with status 0 while waiting for the guest"
        assert find_crashes(m.console.text) == []
        assert not m.panic_watch.panicked


def test_spin_with_preemption_off_is_a_soft_lockup(kernel, accel, faults, no_leaks, record_property):
    """Spinning in the handler (an ftrace-based kprobe: preemption off, interrupts on) starves the
    watchdog thread; watchdog_thresh=2 reports it after 4 s and softlockup_panic=1 makes it fatal."""
    with Machine(kernel, accel=accel, append=("watchdog_thresh=2", "softlockup_panic=1")) as m:
        nonce = _load(m, faults["spin"], "seconds=0 irqs_off=0")
        err, elapsed, what = _fork_and_wait(m, faults["spin"], nonce)
        record_property("seconds_to_fail", round(elapsed, 2))
        print(f"\nspin (soft lockup): {type(err).__name__} after {elapsed:.2f}s: {err.message}")
        assert isinstance(err, GuestCrash), err.render()
        assert err.message == f"the guest kernel crashed (BUG: soft lockup in handler_pre) while waiting for {what}"
        assert 4 <= elapsed < FAIL_WITHIN
        _assert_pvpanic_exit(m, "BUG: soft lockup in handler_pre")


def test_spin_with_interrupts_off_on_one_cpu_is_a_command_timeout(kernel, accel, faults, no_leaks,
                                                                  record_property):
    """Interrupts off on the only CPU: no watchdog can run (the NMI watchdog is "permanently
    disabled" under TCG: no PMU), nothing reaches the console. vmprobe can only time out,
    and must say on what."""
    with Machine(kernel, accel=accel) as m:
        nonce = _load(m, faults["spin"], "seconds=0")
        command = f"{_arm(faults['spin'])}; {FORKS}"
        t0 = time.monotonic()
        with pytest.raises(CommandTimeout) as info:
            m.run(command, timeout=8)
        elapsed = time.monotonic() - t0
        record_property("seconds_to_fail", round(elapsed, 2))
        print(f"\nspin (irqs off, 1 CPU): CommandTimeout after {elapsed:.2f}s: {info.value.message}")
        assert info.value.message == f"{command!r} did not finish within 8s in the guest"
        assert 8 <= elapsed < 8 + 10
        assert re.search(rf"vmprobe-fault nonce={nonce} fault=spin .*irqs_off=1", m.console.text)
        assert m.proc.poll() is None  # QEMU runs on; the guest is stuck, not dead
    assert not m.workdir.exists()


@pytest.mark.slow
def test_spin_with_interrupts_off_is_an_rcu_stall_seen_from_the_other_cpu(kernel, accel, faults, no_leaks,
                                                                         record_property):
    """Two CPUs: the other one's RCU stall detector catches the stuck one (3 s), dumps its stack
    through an NMI, and panic_on_rcu_stall makes it fatal."""
    with Machine(kernel, accel=accel, smp=2,
                 append=("rcupdate.rcu_cpu_stall_timeout=3", "sysctl.kernel.panic_on_rcu_stall=1")) as m:
        nonce = _load(m, faults["spin"], "seconds=0")
        err, elapsed, what = _fork_and_wait(m, faults["spin"], nonce, timeout=60)
        record_property("seconds_to_fail", round(elapsed, 2))
        print(f"\nspin (irqs off, 2 CPUs): {type(err).__name__} after {elapsed:.2f}s: {err.message}")
        assert isinstance(err, GuestCrash), err.render()
        assert err.message == f"the guest kernel crashed (INFO: rcu detected stall in handler_pre) while waiting for {what}"
        assert elapsed < 60
        _assert_pvpanic_exit(m, "INFO: rcu detected stall in handler_pre")


@pytest.mark.slow
def test_non_fatal_oops_fails_the_probe_check_with_its_title(kernel, accel, faults, no_leaks):
    """Without oops=panic a NULL dereference in the handler kills only the forking shell: the
    guest lives on, and the probe check must stop and report the crash by its title."""
    module = faults["nullderef"]
    with Machine(kernel, accel=accel) as m:
        options = ProbeOptions(symbol="kernel_clone", builtin_template=False, sysrq=False, registers=False,
                               trigger=f"{_arm(module)}; {FORKS}")
        check = ProbeCheck(m, module, options)
        with pytest.raises(GuestCrash, match=re.escape("BUG: kernel NULL pointer dereference in handler_pre")):
            check.run()
        d = check.report.to_dict()
        assert d["verdict"] == "fail"
        assert [(c["title"], c["fatal"]) for c in d["crashes"]] == [
            ("BUG: kernel NULL pointer dereference in handler_pre", False)]
        assert "CRASH BUG: kernel NULL pointer dereference in handler_pre" in check.report.summary()


# -- what Machine.run (vmprobe exec, the probe check's steps) says ---------------------------
@pytest.mark.slow
@pytest.mark.parametrize("fault, append, title", [
    ("bug", ("oops=panic",), "kernel BUG in handler_pre"),
    ("panic", (), "kernel panic: vmprobe test panic"),
])
def test_machine_run_names_the_crash(kernel, accel, faults, no_leaks, fault, append, title):
    with Machine(kernel, accel=accel, append=append) as m:
        _load(m, faults[fault])
        with pytest.raises(GuestCrash, match=re.escape(f"crashed ({title})")):
            m.run(f"{_arm(faults[fault])}; {FORKS}", timeout=FAIL_WITHIN)


@pytest.mark.slow
def test_machine_run_reports_a_non_fatal_oops(kernel, accel, faults, no_leaks):
    with Machine(kernel, accel=accel) as m:
        _load(m, faults["nullderef"])
        command = f"{_arm(faults['nullderef'])}; {FORKS}"
        try:
            res = m.run(command, timeout=FAIL_WITHIN)
        except GuestCrash as exc:
            assert "BUG: kernel NULL pointer dereference in handler_pre" in exc.message
            return
        assert [c.title for c in find_crashes(m.console.text)] == [
            "BUG: kernel NULL pointer dereference in handler_pre"]
        m.check_alive()  # the guest lives on
        assert False, f"Machine.run returned {res.status} after the guest oopsed"


def test_nmi_on_a_stuck_guest_is_a_guest_crash(kernel, accel, faults, no_leaks, record_property):
    """A stuck guest (interrupts off, one CPU) still takes an NMI: with unknown_nmi_panic=1 the NMI
    panics. Its report is printed only after the panic notifiers (printk from NMI context is
    deferred to the final console flush): pvpanic lets the guest go on to print it (panics.py)."""
    with Machine(kernel, accel=accel, append=("unknown_nmi_panic=1",)) as m:
        _load(m, faults["spin"], "seconds=0")
        with pytest.raises(CommandTimeout):
            m.run(f"{_arm(faults['spin'])}; {FORKS}", timeout=5)
        t0 = time.monotonic()
        m.qmp.cmd("inject-nmi")
        m.proc.wait(EXIT_WITHIN)
        with pytest.raises(GuestCrash) as info:
            m.check_alive()
        elapsed = time.monotonic() - t0
        record_property("seconds_to_fail", round(elapsed, 2))
        print(f"\nNMI on a stuck guest: GuestCrash after {elapsed:.2f}s: {info.value.message}")
        assert info.value.message.startswith("the guest kernel crashed (kernel panic: NMI: Not continuing); "
                                             f"QEMU exited with status 0 {PANIC_NOTE}"), info.value.message
        assert "handler_pre" in info.value.detail  # the stuck handler's stack, printed after the notifiers
