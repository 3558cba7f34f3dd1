"""``python -m tinyformer.workshop ARGS`` = ``tinyformer workshop ARGS``."""

import sys

from tinyformer import cli

sys.exit(cli.main(["workshop", *sys.argv[1:]]))
