"""A running machine: QEMU and its lifecycle, the accelerator, warm-start snapshots, console, SSH, gdb."""
