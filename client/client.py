"""The seed's `client.py`: run the demo's client from a checkout.

`make run` and `make local-run` start it as the ``persistent-agent-client``
console script; this file is the same thing for ``python client/client.py``.
"""

import sys

from persistent_agent.client import main

if __name__ == "__main__":
    sys.exit(main())
