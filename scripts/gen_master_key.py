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

from persistent_agent import config_files
from persistent_agent.errors import PersistentAgentError


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config-dir", type=Path, default=Path("config"))
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    parser.add_argument("--new-key", action="store_true",
                        help="replace the key (refused while encrypted databases exist)")
    args = parser.parse_args()
    try:
        result = config_files.init(args.config_dir, args.data_dir, new_key=args.new_key)
    except PersistentAgentError as error:
        print(f"init: error: {error}", file=sys.stderr)
        return error.exit_code
    print(config_files.describe(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
