"""Whole runs built on the checks: the kernel matrix, repro of a report, vmprobe gdb, doctor, JUnit output."""
