"""`python -m replay`: the same as the `replay` command."""

import sys

from replay._cli import main

sys.exit(main())
