"""``python -m wersa`` runs the command line (see :mod:`wersa.cli`)."""

import sys

from .cli import main

sys.exit(main())
