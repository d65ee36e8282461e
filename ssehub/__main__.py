"""``python -m ssehub``: the same as the ``ssehub`` command."""

import sys

from ssehub.cli import main

sys.exit(main())
