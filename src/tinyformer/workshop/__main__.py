"""``python -m tinyformer.workshop ARGS`` = ``tinyformer workshop ARGS``, also before the command is listed
in tinyformer.cli.COMMAND_MODULES."""

import sys

from tinyformer import cli

if "tinyformer.workshop.cli" not in cli.COMMAND_MODULES:
    cli.COMMAND_MODULES = (*cli.COMMAND_MODULES, "tinyformer.workshop.cli")
sys.exit(cli.main(["workshop", *sys.argv[1:]]))
