"""The `replay` command.

`_main` parses arguments and runs commands, `_format` renders output, `_source` reads
from the live engine's channel or from the file, and `_resume` runs `replay resume`.
"""

from replay._cli._main import main

__all__ = ["main"]
