"""``python -m mer.cli``: the ``mer`` command without its console script."""

import sys

from mer.cli import main

sys.exit(main())
