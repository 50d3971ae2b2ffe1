"""``python -m sgru_ros.cli``: the same as ``sgru-stereo``."""

import sys

from . import main

sys.exit(main())
