"""``python -m slidesim`` (floor L7): the command line."""

import sys

from .cli import main

sys.exit(main())
