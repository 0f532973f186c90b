"""``python -m coldchain`` runs the command line."""

import sys

from coldchain.cli import main

sys.exit(main())
