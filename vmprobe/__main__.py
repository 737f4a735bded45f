"""``python -m vmprobe``: the same as the ``vmprobe`` command."""
from vmprobe.cli import run

if __name__ == "__main__":
    run()
