#!/usr/bin/env python3
"""Generate config/.env.{sentinel,agent,client} with a 256-bit master key (`make init`).

Idempotent: an existing key is kept. `--new-key` replaces it, and is refused
while encrypted databases exist under data/. The key is never printed.
Runs on any Python 3.9+ without installing the project (stdlib only), so the
Docker demo needs no Python 3.12 on the host.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from persistent_agent.errors import PersistentAgentError, report
from persistent_agent.ops import config_files


def main() -> int:
    parser = argparse.ArgumentParser(prog="init", description=config_files.INIT_HELP)
    config_files.add_directory_options(parser)
    config_files.add_init_options(parser)
    try:
        return config_files.run_init(parser.parse_args())
    except PersistentAgentError as error:
        return report("init", error)


if __name__ == "__main__":
    sys.exit(main())
