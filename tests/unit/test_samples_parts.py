"""The kernel samples' parts that need no archive: the default target read from a sample's source,
and which tarball members are extracted."""
from __future__ import annotations

from vmprobe.kernels.samples import _MEMBER, default_target

KPROBE_6_1 = '''static char symbol[KSYM_NAME_LEN] = "kernel_clone";
module_param_string(symbol, symbol, KSYM_NAME_LEN, 0644);
'''
KRETPROBE_6_1 = '''static char func_name[KSYM_NAME_LEN] = "kernel_clone";
module_param_string(func, func_name, KSYM_NAME_LEN, 0644);
'''
FPROBE = '''#define MAX_SYMBOL_LEN 4096
static char symbol[MAX_SYMBOL_LEN] = "kernel_clone";
module_param_string(symbol, symbol, sizeof(symbol), 0644);
static char nosymbol[MAX_SYMBOL_LEN] = "";
module_param_string(nosymbol, nosymbol, sizeof(nosymbol), 0644);
'''
OLD = '''static char symbol[MAX_SYMBOL_LEN] = "_do_fork";
module_param_string(symbol, symbol, sizeof(symbol), 0644);
'''


def test_default_target_is_the_parameter_strings_initial_value():
    assert default_target(KPROBE_6_1) == "kernel_clone"
    assert default_target(KRETPROBE_6_1) == "kernel_clone"
    assert default_target(FPROBE) == "kernel_clone"
    assert default_target(OLD) == "_do_fork"
    assert default_target('static char s[8] = "x";\n') is None    # not a module parameter


def test_only_sample_files_are_extracted():
    assert _MEMBER.match("linux-source-6.1/samples/kprobes/kprobe_example.c")[1] == "samples/kprobes/kprobe_example.c"
    assert _MEMBER.match("./linux-source-6.12/samples/fprobe/Makefile")[1] == "samples/fprobe/Makefile"
    assert _MEMBER.match("linux-source-6.1/samples/kprobes/../../etc/passwd") is None
    assert _MEMBER.match("linux-source-6.1/samples/bpf/x.c") is None
    assert _MEMBER.match("linux-source-6.1/kernel/kprobes.c") is None


def test_a_cache_entry_whose_file_changed_is_not_used(tmp_path):
    import json

    from vmprobe.host.cache import sha256_file
    from vmprobe.kernels.samples import RECORD, _load

    sample = tmp_path / "samples/kprobes/kprobe_example.c"
    sample.parent.mkdir(parents=True)
    sample.write_text("int x;\n")
    record = {"package": "linux-source-6.1", "version": "6.1.1-1", "deb_sha256": "ab",
              "files": {"samples/kprobes/kprobe_example.c": sha256_file(sample)}}
    (tmp_path / RECORD).write_text(json.dumps(record))
    found = _load(tmp_path, "6.1.1-1")
    assert found is not None and found.same_version and found.find("kprobe_example") == sample
    assert found.find("fprobe_example") is None
    sample.write_text("int y;\n")
    assert _load(tmp_path, "6.1.1-1") is None
