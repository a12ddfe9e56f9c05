"""`python -m rat` is the `rat` command."""

import sys

from rat.cli import main

sys.exit(main())
