"""``python -m edgekit.cli``: the `edgekit` command."""
import sys

from edgekit.cli.main import main

sys.exit(main())
