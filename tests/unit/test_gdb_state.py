"""The gdb run/stop state machine, fed MI output recorded from a real gdb on QEMU's gdbstub.

``data/gdb_mi_hot_site.json`` holds what gdb 13 wrote, read by read, in a
session with a hardware breakpoint on ``vfs_read`` in a busy guest, including
the read where ``*stopped`` (the breakpoint) arrives together with the
``^running`` of the continue that caused it.
"""
from __future__ import annotations

import json
import re
import struct
import time
from collections import deque
from pathlib import Path

import pytest
from pygdbmi.gdbmiparser import parse_response

from vmprobe.errors import GdbError
from vmprobe.formats import btf
from vmprobe.vm import gdb as gdb_module
from vmprobe.vm.gdb import Gdb, MiLog, State
from vmprobe.vm.hits import count_hits, first_hit
from vmprobe.vm.tasks import NoTaskInfo, TaskLayout, current_task, layout_from_btf, percpu_from_kallsyms

RECORDED = json.loads((Path(__file__).parent / "data" / "gdb_mi_hot_site.json").read_text())["responses"]
HIT_PC = 0xFFFFFFFFB9F4CC55   # where the recorded breakpoint was
SIGTRAP_STOP = ('*stopped,reason="signal-received",signal-name="SIGTRAP",signal-meaning="Trace/breakpoint trap",'
                'frame={addr="0xffffffff81001234",func="??",args=[],arch="i386:x86-64"},thread-id="1",'
                'stopped-threads="all"')


def parsed(lines: list[str]) -> list[dict]:
    return [parse_response(line) for line in lines]


def resp(key: str) -> list[list[str]]:
    return RECORDED[key]


class ReplayGdb:
    """Stands in for pygdbmi's GdbController: answers each command with recorded reads.

    ``script[prefix]`` is a queue of responses, each a list of reads (lists of
    MI lines). A command with no response left gets no answer at all. Result
    tokens are rewritten to the command's own token.
    """
    def __init__(self, **handlers):
        self.script: dict[str, deque] = {}
        self.handlers = handlers          # prefix → callable(command) → list of reads
        self.reads: deque[list[str]] = deque()
        self.commands: list[str] = []
        for key in ("-gdb-set mi-async on", "-gdb-set pagination off", "-gdb-set architecture"):
            self.answer(key, resp(key))

    def answer(self, prefix: str, *responses: list[list[str]]) -> "ReplayGdb":
        self.script.setdefault(prefix, deque()).extend(responses)
        return self

    def write(self, text: str, read_response: bool = False) -> None:
        token, command = re.fullmatch(r"(\d+)(.*)", text, re.S).groups()
        self.commands.append(command)
        handler = next((h for p, h in self.handlers.items() if command.startswith(p)), None)
        if handler:
            reads = handler(command)
        else:
            prefix = max((p for p in self.script if command.startswith(p) and self.script[p]),
                         key=len, default=None)
            reads = self.script[prefix].popleft() if prefix else []
        for read in reads:
            self.reads.append([re.sub(r"^\d+(?=\^)", token, line) for line in read])

    def later(self, *reads: list[str]) -> None:
        """Output gdb writes on its own (async records), after what is queued."""
        self.reads.extend(reads)

    def get_gdb_response(self, timeout_sec: float = 0, raise_error_on_timeout: bool = False) -> list[dict]:
        if self.reads:
            return parsed(self.reads.popleft())
        time.sleep(min(timeout_sec, 0.002))
        return []

    def exit(self) -> None:
        pass

    def sent(self, prefix: str) -> int:
        return sum(c.startswith(prefix) for c in self.commands)


def attached(fake: ReplayGdb) -> Gdb:
    fake.answer("-target-select remote", resp("-target-select remote"))
    g = Gdb(arch="i386:x86-64", controller=fake)
    g.attach("/nonexistent/gdb.sock")
    return g


def running(fake: ReplayGdb) -> Gdb:
    fake.answer("-exec-continue", resp("-exec-continue"))
    g = attached(fake)
    g.cont()
    return g


# -- the log alone -----------------------------------------------------------

def test_stop_in_the_same_read_as_running_leaves_the_target_stopped():
    log = MiLog()
    log.feed(parsed(resp("-target-select remote")[0]))
    mark = log.seq
    log.feed(parsed(resp("-exec-continue (hot breakpoint)")[0]))
    assert log.state is State.STOPPED
    stop = log.stop_after(mark)
    assert stop.reason == "breakpoint-hit" and stop.bkptno == "1" and stop.address == HIT_PC
    assert stop.thread == "1"


def test_attach_means_stopped_and_records_keep_their_order():
    log = MiLog()
    assert log.state is State.UNATTACHED
    log.feed(parsed(resp("-target-select remote")[0]))
    assert log.state is State.STOPPED
    first, second = resp("-exec-continue (breakpoint hit in a later read)")
    mark = log.seq
    log.feed(parsed(first))
    assert log.state is State.RUNNING and log.stop_after(mark) is None
    log.feed(parsed(second))
    assert log.state is State.STOPPED and log.stop_after(mark).reason == "breakpoint-hit"
    seqs = [s for s, _ in log.records]
    assert seqs == sorted(seqs) and len(seqs) == len(set(seqs))
    assert "*stopped,reason=breakpoint-hit" in log.tail()


def test_an_old_stop_is_not_taken_for_a_new_one():
    log = MiLog()
    log.feed(parsed(resp("-target-select remote")[0]))
    log.feed(parsed(resp("-exec-continue")[0]))
    log.feed(parsed(resp("-exec-interrupt")[0]))
    mark = log.seq
    assert log.stop_after(0).reason is None          # the attach stop
    assert log.stop_after(mark) is None
    log.feed(parsed(resp("-exec-continue (hot breakpoint)")[0]))
    assert log.stop_after(mark).reason == "breakpoint-hit"


def test_results_are_kept_by_token_until_taken():
    log = MiLog()
    log.feed(parsed(["7^done", '*running,thread-id="all"', "8^done,value=\"3\""]))
    assert log.take_result(8)["payload"] == {"value": "3"}
    assert log.take_result(7)["message"] == "done"
    assert log.take_result(7) is None


def test_detach_and_exited_target_are_gone():
    log = MiLog()
    log.feed(parsed(resp("-target-select remote")[0]))
    log.sent(115, "-target-detach")
    log.feed(parsed(["115^done"]))
    assert log.state is State.GONE
    log = MiLog()
    log.feed(parsed(resp("-target-select remote")[0]))
    log.feed(parsed(resp("-target-detach")[0]))  # =thread-group-exited comes with it
    assert log.state is State.GONE


# -- Gdb on replayed output ----------------------------------------------------

def test_continue_into_a_hot_breakpoint_then_no_interrupt_is_sent():
    """The bug: cont() said 'running' after the breakpoint had already stopped the guest,
    and the next read interrupted a stopped guest and waited 10 s for a stop."""
    fake = ReplayGdb()
    g = running(fake)
    fake.answer("-exec-interrupt", resp("-exec-interrupt"))
    fake.answer("-break-insert", resp("-break-insert"))
    fake.answer("-exec-continue", resp("-exec-continue (hot breakpoint)"))
    fake.answer("-data-list-register-names", resp("-data-list-register-names"))
    fake.answer("-data-list-register-values", resp("-data-list-register-values"))
    fake.answer("-break-delete", resp("-break-delete"))
    assert g.hbreak(HIT_PC) == "1"
    assert g.state is State.STOPPED and not g.running
    stop = g.wait_stopped(1, "the breakpoint")
    assert stop.reason == "breakpoint-hit"
    t0 = time.monotonic()
    assert g.registers(["rip", "eflags"]) == {"rip": HIT_PC, "eflags": 0x293}
    g.delete("1")
    assert time.monotonic() - t0 < 1
    assert fake.sent("-exec-interrupt") == 1   # the one that stopped the running guest


def test_interrupting_a_stopped_guest_is_a_no_op():
    fake = ReplayGdb()
    g = attached(fake)
    assert g.interrupt() is None
    assert fake.sent("-exec-interrupt") == 0


def test_resuming_a_running_guest_is_a_no_op():
    fake = ReplayGdb()
    g = running(fake)
    mark = g.resumed_at
    assert g.cont() == mark
    assert fake.sent("-exec-continue") == 1


def test_a_lost_interrupt_is_sent_again(monkeypatch):
    monkeypatch.setattr(gdb_module, "INTERRUPT_RETRY", 0.05)
    fake = ReplayGdb()
    g = running(fake)
    fake.answer("-exec-interrupt", resp("-exec-interrupt (already stopped)"), resp("-exec-interrupt"))
    stop = g.interrupt(5)
    assert stop.reason == "signal-received" and g.state is State.STOPPED
    assert fake.sent("-exec-interrupt") == 2


def test_an_interrupt_overtaken_by_a_breakpoint_returns_that_stop():
    fake = ReplayGdb()
    g = running(fake)
    hit = [line for line in resp("-exec-continue (hot breakpoint)")[0] if not re.match(r"\d+\^|\*running", line)]
    fake.answer("-exec-interrupt", [hit, resp("-exec-interrupt (already stopped)")[0]])
    assert g.interrupt(2).reason == "breakpoint-hit"
    assert fake.sent("-exec-interrupt") == 1


def test_an_interrupt_that_never_stops_the_guest_says_so(monkeypatch):
    monkeypatch.setattr(gdb_module, "INTERRUPT_RETRY", 0.05)
    fake = ReplayGdb()
    g = running(fake)
    for _ in range(50):
        fake.answer("-exec-interrupt", resp("-exec-interrupt (already stopped)"))
    with pytest.raises(GdbError, match=r"timed out after 0.3s waiting for the guest to stop after an "
                                       r"interrupt \(sent \d+ times; last MI records: .*\^done"):
        g.interrupt(0.3)


def test_every_wait_is_bounded_and_says_what_it_waited_for():
    fake = ReplayGdb()
    g = running(fake)
    with pytest.raises(GdbError, match=r"timed out after 0.2s waiting for the breakpoint at 0x10 to hit "
                                       r"\(the guest is running; last MI records: .*\*running"):
        g.wait_stopped(0.2, "the breakpoint at 0x10 to hit")
    with pytest.raises(GdbError, match=r"gdb did not answer '-break-delete 9' within 0.2s"):
        g.command("-break-delete 9", 0.2)


def test_waiting_for_a_stop_on_a_stopped_guest_fails_at_once():
    fake = ReplayGdb()
    g = attached(fake)
    t0 = time.monotonic()
    with pytest.raises(GdbError, match="the guest is stopped since before it was resumed"):
        g.wait_stopped(10, "a stop")
    assert time.monotonic() - t0 < 1


def test_a_stop_between_a_result_and_the_next_read_is_not_lost():
    fake = ReplayGdb()
    g = running(fake)
    mark = g.log.seq
    fake.later(resp("-exec-continue (breakpoint hit in a later read)")[1])
    fake.answer("-data-list-register-names", resp("-data-list-register-names"))
    g.register_names()      # reads the stop while waiting for its own result
    assert g.state is State.STOPPED
    assert g.wait_stopped(0, "the stop", since=mark).reason == "breakpoint-hit"


def test_a_target_that_goes_away_ends_the_wait():
    fake = ReplayGdb()
    g = running(fake)
    fake.later(['=thread-exited,id="1",group-id="i1"', '=thread-group-exited,id="i1"'])
    with pytest.raises(GdbError, match="the target went away while waiting for a stop"):
        g.wait_stopped(5, "a stop")


# -- the first hit -------------------------------------------------------------

def hot(fake: ReplayGdb, cont_response: str = "-exec-continue (hot breakpoint)") -> ReplayGdb:
    fake.answer("-exec-interrupt", resp("-exec-interrupt"))
    fake.answer("-break-insert", resp("-break-insert"))
    fake.answer("-exec-continue", resp(cont_response), resp("-exec-continue (no breakpoint)"))
    fake.answer("-data-list-register-names", resp("-data-list-register-names"))
    fake.answer("-data-list-register-values", resp("-data-list-register-values"))
    fake.answer("-break-delete", resp("-break-delete"))
    return fake


@pytest.mark.parametrize("cont_response", ["-exec-continue (hot breakpoint)",
                                           "-exec-continue (breakpoint hit in a later read)"])
def test_first_hit_then_the_breakpoint_is_gone_and_the_guest_runs(cont_response):
    fake = ReplayGdb()
    g = running(fake)
    hot(fake, cont_response)
    went = []
    hit = first_hit(g, HIT_PC, ["rip", "eflags"], go=lambda: went.append(g.state), no_layout="no BTF here")
    assert hit.registers["rip"] == HIT_PC and hit.stop.reason == "breakpoint-hit"
    assert hit.task is None and hit.to_dict()["task_error"] == "no BTF here"
    assert went, "go() was not called"
    assert g.state is State.RUNNING
    assert fake.commands[4:] == ["-exec-continue", "-exec-interrupt", f"-break-insert -h *{HIT_PC:#x}",
                                 "-exec-continue", "-data-list-register-names",
                                 "-data-list-register-values x 16 17", "-break-delete 1", "-exec-continue"]


def test_first_hit_resumes_past_other_stops():
    fake = ReplayGdb()
    g = running(fake)
    hot(fake)
    fake.script["-exec-continue"].appendleft([["1^running", '*running,thread-id="all"'], [SIGTRAP_STOP]])
    hit = first_hit(g, HIT_PC, ["rip"])
    assert hit.other_stops == ["signal-received at 0xffffffff81001234"]
    assert hit.registers["rip"] == HIT_PC and g.state is State.RUNNING


def test_first_hit_that_never_comes_cleans_up():
    fake = ReplayGdb()
    g = running(fake)
    fake.answer("-exec-interrupt", resp("-exec-interrupt"), resp("-exec-interrupt"))
    fake.answer("-break-insert", resp("-break-insert"))
    fake.answer("-exec-continue", resp("-exec-continue"), resp("-exec-continue"))
    fake.answer("-break-delete", resp("-break-delete"))
    with pytest.raises(GdbError, match=rf"timed out after 0.3s waiting for the hardware breakpoint at "
                                       rf"{HIT_PC:#x} to hit"):
        first_hit(g, HIT_PC, ["rip"], timeout=0.3)
    assert fake.commands[-3:] == ["-exec-interrupt", "-break-delete 1", "-exec-continue"]
    assert g.state is State.RUNNING


# -- the current task ------------------------------------------------------------

def memory_handler(memory: dict[int, bytes]):
    def read(command: str) -> list[list[str]]:
        addr, length = re.search(r"(0x[0-9a-f]+) (\d+)", command).groups()
        addr, length = int(addr, 16), int(length)
        for base, blob in memory.items():
            if base <= addr and addr + length <= base + len(blob):
                data = blob[addr - base:addr - base + length]
                return [[f'1^done,memory=[{{begin="{addr:#x}",offset="0x0",end="{addr + length:#x}",'
                         f'contents="{data.hex()}"}}]']]
        return [['1^error,msg="Cannot access memory at address ' + f'{addr:#x}"']]
    return read


def test_current_task_is_read_through_the_per_cpu_base():
    layout = TaskLayout("gs_base", current=0x1FB80, pid=2416, tgid=2420, comm=2976, flags=44)
    gs_base, task = 0xFF22F875BE800000, 0xFF22F8758277A0C0
    blob = bytearray(3000)
    struct.pack_into("<I", blob, 44, 0x00200040)   # PF_KTHREAD
    struct.pack_into("<ii", blob, 2416, 17, 17)
    blob[2976:2992] = b"kworker/0:1\0\0\0\0\0"
    fake = ReplayGdb(**{"-data-read-memory-bytes": memory_handler(
        {gs_base + 0x1FB80: struct.pack("<Q", task), task: bytes(blob)})})
    fake.answer("-data-list-register-names", resp("-data-list-register-names"))
    fake.answer("-data-list-register-values", [[line.replace("0xff22f875be800000", f"{gs_base:#x}")
                                                for line in resp("-data-list-register-values")[0]]])
    g = attached(fake)
    t = current_task(g, layout)
    assert (t.pid, t.tgid, t.comm, t.kernel_thread) == (17, 17, "kworker/0:1", True)
    assert t.to_dict()["task_struct"] == f"{task:#x}"


# -- BTF -----------------------------------------------------------------------

def btf_blob(percpu_var: str = "current_task") -> bytes:
    """A small BTF: int, char[16], struct task_struct {flags; anon union {pid}; tgid; comm}, a per-CPU var."""
    strings = b"\0int\0char\0task_struct\0flags\0pid\0tgid\0comm\0" + percpu_var.encode() + b"\0.data..percpu\0"
    off = {name: strings.index(b"\0" + name.encode() + b"\0") + 1
           for name in ("int", "char", "task_struct", "flags", "pid", "tgid", "comm", percpu_var, ".data..percpu")}
    types = b""

    def t(name_off: int, kind: int, vlen: int, size: int, extra: bytes = b"", kflag: int = 0) -> bytes:
        return struct.pack("<III", name_off, (kflag << 31) | (kind << 24) | vlen, size) + extra
    types += t(off["int"], 1, 0, 4, struct.pack("<I", 32))                      # 1 int
    types += t(off["char"], 1, 0, 1, struct.pack("<I", 8))                      # 2 char
    types += t(0, 3, 0, 0, struct.pack("<III", 2, 1, 16))                       # 3 char[16]
    types += t(0, 5, 1, 4, struct.pack("<III", off["pid"], 1, 0))               # 4 union { int pid; }
    types += t(off["task_struct"], 4, 4, 3000, struct.pack("<III", off["flags"], 1, 44 * 8)
               + struct.pack("<III", 0, 4, 2416 * 8) + struct.pack("<III", off["tgid"], 1, 2420 * 8)
               + struct.pack("<III", off["comm"], 3, 2976 * 8))                 # 5 task_struct
    types += t(0, 2, 0, 5)                                                      # 6 struct task_struct *
    types += t(off[percpu_var], 14, 0, 6, struct.pack("<I", 1))                 # 7 var
    types += t(off[".data..percpu"], 15, 1, 0x30000, struct.pack("<III", 7, 0x1FB80, 8))  # 8 datasec
    header = struct.pack("<HBBIIIII", btf.MAGIC, 1, 0, 24, 0, len(types), len(types), len(strings))
    return header + types + strings


def test_btf_gives_the_task_layout():
    layout = layout_from_btf(btf_blob())
    assert layout == TaskLayout("gs_base", 0x1FB80, 2416, 2420, 2976, 44)


def test_btf_without_current_task_is_a_reason_not_a_crash():
    with pytest.raises(NoTaskInfo, match="no per-CPU current_task"):
        layout_from_btf(btf_blob(percpu_var="something_else"))
    with pytest.raises(btf.BtfError):
        btf.parse(b"\x00" * 32)


def test_per_cpu_offsets_missing_from_btf_come_from_kallsyms():
    """bullseye's 5.10 BTF has no per-CPU variables; /proc/kallsyms lists them zero-based."""
    kallsyms = ("ffffffff81000000 T _text\n000000000001fbc0 A current_task\n"
                "0000000000016d00 D pcpu_hot_other\n")
    layout = layout_from_btf(btf_blob(percpu_var="something_else"), percpu_from_kallsyms(kallsyms))
    assert layout.current == 0x1FBC0 and layout.pid == 2416
    with pytest.raises(NoTaskInfo, match="BTF or kallsyms has no per-CPU current_task"):
        layout_from_btf(btf_blob(percpu_var="something_else"), {})


def test_first_hit_names_the_task_from_the_same_register_read():
    layout = TaskLayout("gs_base", current=0x1FB80, pid=2416, tgid=2420, comm=2976, flags=44)
    gs_base, task = 0xFF22F875BE800000, 0xFF22F8758277A0C0    # gs_base as recorded
    blob = bytearray(3000)
    struct.pack_into("<ii", blob, 2416, 321, 320)
    blob[2976:2980] = b"dd\0\0"
    fake = ReplayGdb(**{"-data-read-memory-bytes": memory_handler(
        {gs_base + 0x1FB80: struct.pack("<Q", task), task: bytes(blob)})})
    g = running(fake)
    hot(fake)
    hit = first_hit(g, HIT_PC, ["rip", "eflags"], layout=layout)
    assert hit.registers == {"rip": HIT_PC, "eflags": 0x293}
    assert hit.to_dict()["task"] == {"pid": 321, "tgid": 320, "comm": "dd", "kernel_thread": False,
                                     "task_struct": f"{task:#x}"}
    assert "-data-list-register-values x 16 17 156" in fake.commands
    assert fake.sent("-data-read-memory-bytes") == 2 and g.state is State.RUNNING


# -- counting hits with a breakpoint -------------------------------------------

def counting(fake: ReplayGdb, hits: int) -> ReplayGdb:
    """The next ``hits`` continues stop at once at the breakpoint; the one after runs on."""
    fake.answer("-exec-interrupt", resp("-exec-interrupt"), resp("-exec-interrupt"))
    fake.answer("-break-insert", resp("-break-insert"))
    fake.answer("-exec-continue", *[resp("-exec-continue (hot breakpoint)")] * hits,
                resp("-exec-continue (no breakpoint)"), resp("-exec-continue"))
    fake.answer("-break-delete", resp("-break-delete"))
    return fake


def test_count_hits_counts_each_stop_until_the_work_is_done():
    fake = ReplayGdb()
    g = running(fake)
    counting(fake, 3)
    started = []
    got = count_hits(g, [HIT_PC], start=lambda: started.append(1), finished=lambda: True)
    assert got.counts == {HIT_PC: 3} and not got.capped and started == [1]
    assert g.state is State.RUNNING
    assert fake.commands[-3:] == ["-exec-interrupt", "-break-delete 1", "-exec-continue"]


def test_count_hits_stops_at_the_cap_and_without_finished_waits_for_quiet():
    fake = ReplayGdb()
    g = running(fake)
    counting(fake, 2)
    got = count_hits(g, [HIT_PC], start=lambda: None, finished=None, cap=2)
    assert got.counts == {HIT_PC: 2} and got.capped
    assert fake.commands[-2:] == ["-break-delete 1", "-exec-continue"] and g.state is State.RUNNING
    fake = ReplayGdb()
    g = running(fake)
    counting(fake, 1)
    t0 = time.monotonic()
    got = count_hits(g, [HIT_PC], start=lambda: None, finished=None, quiet=0.5)
    assert got.counts == {HIT_PC: 1} and not got.capped and time.monotonic() - t0 >= 0.5
