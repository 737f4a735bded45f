import sys

from vmprobe.cli import main

sys.exit(main())
