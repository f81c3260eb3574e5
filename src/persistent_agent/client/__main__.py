"""``python -m persistent_agent.client``: the same as ``persistent-agent-client``."""

import sys

from persistent_agent.client import main

sys.exit(main())
