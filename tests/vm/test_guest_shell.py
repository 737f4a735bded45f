"""The long-lived guest shell (vm/guest_shell.py) answers as an SSH exec of its own would."""
from __future__ import annotations

import io
import time

import pytest

from vmprobe.errors import CommandTimeout

COMMANDS = [
    "echo hello",
    "printf 'no newline'",
    "echo out; echo err >&2; exit 7",
    "echo only-err >&2",
    "x='it'\"'\"'s'; echo \"$x\"  # a comment at the end",
    "for i in 1 2 3; do\n  echo \"line $i\"\ndone",
    "cd /proc; pwd",
    "sh -c 'kill -9 $$'",          # killed by a signal
    "false",
]


@pytest.mark.parametrize("command", COMMANDS)
def test_same_answer_as_an_ssh_exec(vm, command):
    shell = vm.run(command, 30)
    exec_ = vm.ssh.run(command, 30)
    if "kill -9" in command:
        # the subshell that waited for the killed command says so (an exec'd `sh -c` has no such
        # parent); an exec killed by a signal has no exit status (255, as ssh(1) says), the shell 128+9
        assert shell.stderr == "Killed\n" and shell.status == 137 and exec_.status in (137, 255)
        return
    assert (shell.status, shell.stdout, shell.stderr) == (exec_.status, exec_.stdout, exec_.stderr)


def test_dollar_dollar_is_the_commands_own_shell(vm):
    """As in an SSH exec's ``sh -c``: a script that arms a probe for "this shell's forks" (echo $$ >
    …/pid) must see its forks' parent pid (tests/vm/test_faults.py does)."""
    out = vm.run("echo $$; cat /proc/self/stat; :", 30).stdout.splitlines()   # `; :`: cat is forked
    assert out[0] == out[1].split()[3], out


def test_stdin_is_dev_null_not_the_shells_command_stream(vm):
    assert vm.run("cat; echo after", 30).stdout == "after\n"


def test_one_shell_serves_many_commands_and_keeps_no_state_between_them(vm):
    vm.run("true")
    channel = vm._shell.channel
    assert vm.run("cd /proc; X=1; exit 3").status == 3
    assert vm.run("pwd; echo \"[$X]\"").stdout == vm.ssh.run("pwd; echo \"[$X]\"").stdout
    assert vm._shell.channel is channel          # exit in a command does not end the shell


def test_a_command_that_times_out_takes_its_shell_and_the_next_gets_a_new_one(vm):
    vm.run("true")
    old = vm._shell.channel
    t0 = time.monotonic()
    with pytest.raises(CommandTimeout, match="sleep 30"):
        vm.run("sleep 30", 1)
    assert time.monotonic() - t0 < 10
    assert vm.run("echo again").stdout == "again\n"
    assert vm._shell.channel is not old
    vm.run("pkill -f 'sleep 30' || true")


def test_a_busy_shell_leaves_others_to_an_ssh_exec(vm):
    started = vm.prepare("read -t 5 x </dev/null; echo first")
    try:
        assert vm.run("echo meanwhile").stdout == "meanwhile\n"   # through an SSH exec of its own
        started.go()
        assert started.wait(30).stdout == "first\n"
    except BaseException:
        started.abandon()
        raise
    assert vm.run("echo after").stdout == "after\n"


def test_output_is_streamed_without_the_marker(vm):
    out, err = io.BytesIO(), io.BytesIO()
    result = vm.run("seq 1 2000; echo done >&2", 60, stdout=out, stderr=err)
    assert out.getvalue().decode() == result.stdout and result.stdout.endswith("2000\n")
    assert err.getvalue() == b"done\n"
    assert b"vmprobe-sh-" not in out.getvalue() + err.getvalue()
