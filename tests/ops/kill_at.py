"""Run persistent-agent-admin, killing it with SIGKILL just before its N-th rename.

``python -m tests.ops.kill_at N <admin arguments>``: every atomic step of
rotate-key (a key file, a keyring, a manifest, a database swapped in) and of
restore (a copy, its journal, a directory parked or swapped in) ends in a
rename, and Python raises an ``os.rename`` audit event before each one
(os.replace too; restore's directory exchange raises its own,
``persistent_agent.rename_exchange``). Killing there is a crash between two
steps, found by what the process did rather than by the clock. N = 0 never
kills.
"""

from __future__ import annotations

import os
import signal
import sys

from persistent_agent.ops import admin


def main() -> int:
    target, argv = int(sys.argv[1]), sys.argv[2:]
    seen = 0

    def hook(event: str, _args: tuple[object, ...]) -> None:
        nonlocal seen
        if event in ("os.rename", "persistent_agent.rename_exchange"):
            seen += 1
            if seen == target:
                os.kill(os.getpid(), signal.SIGKILL)

    sys.addaudithook(hook)
    return admin.main(argv)


if __name__ == "__main__":
    sys.exit(main())
