"""``python -m parley.bench``: the same as ``parley bench``."""

import sys

from parley.bench.cli import main

sys.exit(main(sys.argv[1:]))
