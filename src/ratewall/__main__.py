"""``python -m ratewall``: the same command line as the ``ratewall`` script."""

import sys

from ratewall.cli import main

sys.exit(main())
