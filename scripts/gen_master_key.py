#!/usr/bin/env python3
"""Generate config/.env.{sentinel,agent,client} with a 256-bit master key (`make init`).

Idempotent: an existing key is kept. `--new-key` replaces it, and is refused
while encrypted databases exist under data/. The key is never printed.
"""

import sys

from persistent_agent.admin import main

if __name__ == "__main__":
    sys.exit(main(["init", *sys.argv[1:]]))
