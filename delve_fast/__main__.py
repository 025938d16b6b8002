"""``python -m delve_fast``: the same command line as the ``delve-fast`` script."""

import sys

from delve_fast.cli import main

if __name__ == "__main__":
    sys.exit(main())
