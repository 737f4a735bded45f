"""What the ``kprobe_module`` and ``probe_check`` fixtures do: build a user's module for the
current kernel, and run vmprobe's probe check with it on the current VM.

A test names its module the way that is handiest (a path beside the test, or the
C text inline); these classes turn that into a :class:`~vmprobe.modules.Module`
and a check run through the same path as ``vmprobe probe`` (``check/run.py``),
so a test's report is the CLI's report.
"""
from __future__ import annotations

import hashlib
import os
import re
import time
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from vmprobe.check.findings import AllowRule
    from vmprobe.check.report import ProbeReport
    from vmprobe.kernels import Kernel
    from vmprobe.modules import Module
    from vmprobe.vm.machine import Machine


def module_source(source: "str | os.PathLike[str]", name: str | None, test_dir: Path,
                  scratch: Path) -> Path:
    """The module source to build: ``source`` as a path (relative ones looked up in
    ``test_dir``, then the current dir), or, for module text, a ``.c`` file written under
    ``scratch`` (named ``name``, default ``vmprobe_user_<hash>``)."""
    if isinstance(source, os.PathLike) or (isinstance(source, str) and "\n" not in source
                                           and not source.lstrip().startswith("#")):
        path = Path(source)
        candidates = [path] if path.is_absolute() else [test_dir / path, Path.cwd() / path]
        for candidate in candidates:
            if candidate.exists():
                return candidate
        raise FileNotFoundError(f"kprobe_module: no module source at {source} "
                                f"(looked in {', '.join(str(c) for c in candidates)})")
    text = str(source)
    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    name = name or f"vmprobe_user_{digest}"
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise ValueError(f"kprobe_module: {name!r} is not a valid module name")
    directory = scratch / "vmprobe-modules" / f"{name}-{digest}"
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.c"
    if not path.exists():
        path.write_text(text)
    return path


class ModuleBuilder:
    """``kprobe_module(source, name=None) -> Module``: a module built (and cached by sources
    and kernel) for ``kernel``."""

    def __init__(self, kernel: "Kernel", test_dir: Path, scratch: Path):
        self.kernel, self.test_dir, self.scratch = kernel, test_dir, scratch

    def __call__(self, source: "str | os.PathLike[str]", name: str | None = None) -> "Module":
        from vmprobe import modules
        path = module_source(source, name, self.test_dir, self.scratch)
        return modules.build(path, self.kernel)[0]


class ProbeChecker:
    """``probe_check(module=None, expect_mechanism=None, scenario=None, **ProbeOptions fields) -> ProbeReport``
    on ``vm``: the built-in fork probe by default, else a user's module (a Module, a path or
    source text built with ``build_module``), for which ``builtin_template`` defaults to False.
    ``scenario="modify-register"`` etc. runs a built-in scenario instead (check/scenarios/).
    vmprobe's own failures raise; a check that ran and failed returns its report.
    ``on_report`` sees each report as its check starts (so a failing test can show it)."""

    def __init__(self, vm: "Machine", kernel: "Kernel", build_module: Callable[..., "Module"],
                 on_report: Callable[["ProbeReport"], None], allow: "list[AllowRule] | tuple" = ()):
        self.vm, self.kernel, self.build_module, self.on_report = vm, kernel, build_module, on_report
        self.allow = list(allow)   # splat allow rules: the test's markers, then [tool.vmprobe]

    def __call__(self, module: "Module | str | os.PathLike[str] | None" = None, *,
                 expect_mechanism: str | None = None, scenario: str | None = None, repeat: int = 1,
                 **options) -> "ProbeReport":
        from vmprobe import modules
        from vmprobe.check.probe import ProbeOptions
        from vmprobe.check.run import run_check
        from vmprobe.modules import Module
        known = {f.name for f in fields(ProbeOptions)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise TypeError(f"probe_check: unknown option(s) {', '.join(unknown)}; "
                            f"ProbeOptions has {', '.join(sorted(known))}")
        if scenario not in (None, "fork"):   # a built-in scenario: its own module, no options
            from vmprobe.check.scenarios import get_scenario
            get_scenario(scenario)   # an unknown name raises ValueError here
            if module is not None or options:
                raise TypeError(f"probe_check: scenario {scenario!r} takes no module or options")
            run = run_check(self.vm, None, ProbeOptions(), scenario=scenario,
                            on_start=lambda check: self.on_report(check.report), allow=self.allow)
            if run.error:
                raise run.error
            return run.report
        t0 = time.monotonic()
        source = None
        if module is None:
            mod = modules.build(modules.FORK_PROBE, self.kernel)[0]
        elif isinstance(module, Module):
            mod, source = module, module.path
            options.setdefault("builtin_template", False)
        else:
            mod = self.build_module(module)
            source = mod.path
            options.setdefault("builtin_template", False)
        build_time = time.monotonic() - t0
        run = run_check(self.vm, mod, ProbeOptions(**options), source=source,
                        expect_mechanism=expect_mechanism, build_seconds=build_time,
                        on_start=lambda check: self.on_report(check.report), allow=self.allow,
                        repeat=repeat)
        if run.error:
            raise run.error
        return run.report
