"""``python -m tuner.cli`` = the ``tuner`` command (tests and ``ray job submit`` use it)."""

import sys

from tuner.cli import main

sys.exit(main())
