"""Readers and writers of the formats vmprobe meets: ELF modules, newc cpio, kernel crash reports, the kprobes list. Pure: no I/O beyond their arguments."""
