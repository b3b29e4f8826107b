"""`python -m ossrun`: the same command line as the `ossrun` script (see ossrun.cli)."""

import sys

from .cli import main

sys.exit(main())
