"""``python -m agents``: the ``natgrad-trpo`` command line (see :mod:`agents.cli`)."""

import sys

from agents.cli import main

sys.exit(main())
