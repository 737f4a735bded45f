"""The pure parts of --repeat: the leak verdict and kmemleak's report (no VM)."""
from __future__ import annotations

from vmprobe.check.repeat import leak_verdict, parse_kmemleak, slope


def test_slope():
    assert slope([]) == 0 and slope([5]) == 0
    assert slope([0, 10, 20, 30]) == 10
    assert slope([7, 7, 7]) == 0


def _cycles(values):
    return [{"cycle": i + 1, "sunreclaim_kb": v, "mem_available_kb": 900000 - v} for i, v in enumerate(values)]


def test_a_steady_slab_is_no_leak_and_the_first_cycle_does_not_count():
    v = leak_verdict(_cycles([6800, 6832, 6832, 6848, 6848, 6848]), 16)
    assert v["verdict"] == "no leak" and v["growth_kb_per_cycle"] < 16
    # a big first-load step (caches warming up) is not a leak
    assert leak_verdict(_cycles([6000, 7000, 7000, 7004, 7000]), 16)["verdict"] == "no leak"


def test_growth_per_cycle_over_the_threshold_is_a_leak():
    v = leak_verdict(_cycles([6800 + 70 * i for i in range(10)]), 16)
    assert v["verdict"] == "leak" and v["growth_kb_per_cycle"] == 70 and v["growth_kb"] == 560
    assert "threshold 16 KiB/cycle" in v["detail"]


def test_too_few_cycles_give_no_verdict():
    assert leak_verdict(_cycles([1, 2]), 16)["verdict"] == "unknown"


KMEMLEAK = """unreferenced object 0xffff888003a4c000 (size 8192):
  comm "sh", pid 123, jiffies 4294893000 (age 12.340s)
  hex dump (first 32 bytes):
    5a 5a 5a 5a 5a 5a 5a 5a 5a 5a 5a 5a 5a 5a 5a 5a  ZZZZZZZZZZZZZZZZ
  backtrace:
    [<ffffffff812c1a00>] __kmem_cache_alloc_node+0x1d3/0x2f0
    [<ffffffff812c1a2b>] kmalloc_trace+0x26/0x90
    [<ffffffffc0201040>] handler_pre+0x20/0x40 [vmprobe_splat_leak]
    [<ffffffff81123456>] kprobe_ftrace_handler+0x100/0x180
    [<ffffffff81045678>] kernel_clone+0x5/0x3c0
unreferenced object 0xffff888003a50000 (size 8192):
  comm "sh", pid 124, jiffies 4294893100 (age 12.000s)
  backtrace:
    [<ffffffff812c1a2b>] __kmalloc+0x4b/0x140
    [<ffffffffc0201040>] handler_pre+0x20/0x40 [vmprobe_splat_leak]
"""


def test_kmemleak_objects_are_findings_per_function():
    (f,) = parse_kmemleak(KMEMLEAK, "vmprobe_splat_leak")
    assert (f["title"], f["kind"], f["count"], f["module"]) == (
        "kmemleak: memory leak in handler_pre", "kmemleak", 2, True)
    assert parse_kmemleak("") == []


def test_kmemleak_after_the_module_is_gone_says_so():
    text = KMEMLEAK.replace("handler_pre+0x20/0x40 [vmprobe_splat_leak]", "0xffffffffc0201040")
    (f,) = parse_kmemleak(text, "vmprobe_splat_leak")
    assert (f["title"], f["function"], f["count"]) == ("kmemleak: memory leak in unloaded module code", None, 2)
