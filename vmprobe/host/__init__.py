"""Processes, signals, runtime dirs, the cache and progress: what every layer above needs of the host."""
