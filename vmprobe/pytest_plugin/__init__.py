"""vmprobe's pytest plugin (entry point ``pytest11: vmprobe`` → :mod:`.hooks`).

:mod:`.hooks` holds pytest's hooks and the fixtures, thin; the work is in
ordinary modules: :mod:`.options` (options and their defaults), :mod:`.markers`
(the ``kernel``/``arch`` marker grammar), :mod:`.pool` (the session's VMs, one
per kernel, reused while clean), :mod:`.procscan` (leftover QEMU processes and
machine dirs, from ``/proc``), :mod:`.probes` (what ``kprobe_module`` and
``probe_check`` do), :mod:`.artefacts` (failure sections, files and JUnit
output) and :mod:`.shard` (``--vmprobe-shard I/N``). Importing this package
imports none of them, so the pure parts load without pytest's hooks.
"""
