"""Entry point for `python -m infra.rehearsal`."""

import sys

from infra.rehearsal.cli import main

sys.exit(main())
