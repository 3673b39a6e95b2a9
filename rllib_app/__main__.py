"""``python -m rllib_app ...``: the same program as ``toolagent``."""

import sys

from rllib_app.cli.main import main

sys.exit(main())
