"""Checks on a running machine: the probe check, its report, and the one run path every face uses (run.py)."""
