"""``python -m ringkit``: the ``ringkit`` command."""

import sys

from ringkit.cli import main

sys.exit(main())
