"""``python -m agvi``: the ``agvi`` command (see :mod:`agvi.cli`)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
