"""``python -m ltpipe``: the same as the ``ltpipe`` console script, except that ``classify``
goes through a warm worker where one can be reached or started (:mod:`ltpipe.worker`; the
client imports nothing heavy), and runs in this process otherwise."""

import sys

if sys.argv[1:2] == ["classify"]:
    from ltpipe.worker import client_main

    rc = client_main(sys.argv[1:])
    if rc is not None:
        sys.exit(rc)

from ltpipe.cli import main  # noqa: E402

sys.exit(main())
