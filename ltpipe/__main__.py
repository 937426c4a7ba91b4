"""``python -m ltpipe``: the same as the ``ltpipe`` console script."""

import sys

from ltpipe.cli import main

sys.exit(main())
