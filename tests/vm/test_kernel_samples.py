"""The kernel's own samples/kprobes, from Debian's linux-source of the fetched kernel's series,
checked as any user's module: discovered, proven, counted, unloaded clean.

Slow: the first run fetches linux-source (≈140 MB) through the private apt state and
streams the samples out of its tarball (≈1 min here); later runs use the verified cache.
Nothing about the samples is pinned: the target is read from each sample's own source
(the initial value of the string its module parameter sets), the kind from its
registration call.
"""
from __future__ import annotations

import pytest

from vmprobe.kernels.samples import default_target, kernel_samples

pytestmark = [pytest.mark.slow, pytest.mark.arch("x86_64")]


@pytest.fixture(scope="module")
def samples(kernel):
    return kernel_samples(kernel)


@pytest.mark.parametrize("name", ["kprobe_example", "kretprobe_example", "fprobe_example"])
def test_kernel_sample(vm, kernel, samples, probe_check, name):
    source = samples.find(name)
    if name == "fprobe_example" and (source is None or kernel.kconfig.get("CONFIG_FPROBE") != "y"):
        pytest.skip(f"{kernel.release} has no fprobes (CONFIG_FPROBE) or its samples have no {name}.c")
    assert source is not None, f"{samples.package} {samples.version} has no samples/kprobes/{name}.c"
    text = source.read_text()
    target = default_target(text)
    assert target, f"{name}.c sets no default target in a module_param_string"
    kind = next(k for k in ("kretprobe", "fprobe", "kprobe") if f"register_{k}" in text)

    report = probe_check(source)
    d = report.to_dict()
    assert d["verdict"] == "pass", report.summary()
    (p,) = d["probes"]
    assert (p["kind"], p["symbol"]) == (kind, target), p
    assert p["hits"] >= 1, p
    if kind == "kretprobe":
        assert p["entry_hits"] >= 1 and set(p["handlers"]) == {"entry", "return"}, p
        assert any(f"{target} returned" in line for line in d["module"]["kernel_lines"])
    elif kind == "fprobe":   # not in kprobes/list: found in enabled_functions, on the ftrace site
        assert p["entry_hits"] >= 1 and set(p["handlers"]) == {"entry", "return"}, p
        assert p["mechanism"] == "ftrace" and p["list_type"] == "f", p
        assert any(f"Enter <{target}+" in line for line in d["module"]["kernel_lines"])
    else:
        assert p["handlers"].get("pre"), p
        # "<kernel_clone> p->addr = …" on 6.x, "<kernel_clone> pre_handler: p->addr = …" on 5.10
        assert any(f"<{target}>" in line and "p->addr" in line for line in d["module"]["kernel_lines"])
    assert int(d["registers_at_hit"]["pc"], 16) == int(p["address"], 16)
    assert d["registers_at_hit"]["handler_at_stop"]["same_task"] is True
    # a clean unload: rmmod passed, the probe is gone, the site's bytes are back
    checks = {c["name"]: c["ok"] for c in d["checks"]}
    assert checks["rmmod"] is True and checks["gone from kprobes/list after rmmod"] is True, checks
    assert p["bytes"]["after"] == p["bytes"]["before"] != ""
    assert name not in vm.run("cat /proc/modules").stdout
    assert vm.run("cat /sys/kernel/debug/kprobes/list").stdout.strip() == ""
