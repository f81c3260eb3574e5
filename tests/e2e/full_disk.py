"""A full disk under a running agent, inside a mount namespace of its own.

``unshare -m --propagation private python -m tests.e2e.full_disk ROOT`` mounts a
small tmpfs over ROOT/data/agent (gone with the namespace, whatever happens),
runs the sentinel and the agent there, fills the disk, and prints one JSON
document: what was acknowledged, how the agent ended, and what it served
after space came back.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from persistent_agent.demo.local_nodes import LocalNodes

from .conftest import free_port


def driver(nodes: LocalNodes, *args: str) -> Any:
    result = subprocess.run(
        [sys.executable, "-m", "tests.e2e.driver", *args],
        env=nodes.env("client"),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    lines = result.stdout.strip().splitlines()
    return json.loads(lines[-1]) if lines else {"error": result.stderr[-300:]}


def main(root: Path) -> None:
    agent_dir = root / "data" / "agent"
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", str(agent_dir)], check=True
    )
    nodes = LocalNodes(
        root / "config", root / "data", root / "run", port=free_port(), issuer_port=free_port()
    )
    report: dict[str, Any] = {}
    try:
        nodes.start_all()
        report["before"] = driver(nodes, "store", '"before the disk filled"')
        filler = agent_dir / "filler"
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            while os.write(fd, b"\0" * 4096):
                pass
        except OSError:  # ENOSPC: the disk is full
            pass
        finally:
            os.close(fd)
        # Writes now fail; the first store the agent cannot commit ends it.
        report["while_full"] = [driver(nodes, "store", f'"value {i}"') for i in range(3)]
        report["exit_code"] = nodes.wait("agent")
        report["log"] = nodes.last_line("agent")
        filler.unlink()
        nodes.start("agent")
        report["after"] = driver(nodes, "retrieve")
    finally:
        nodes.stop_all()
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    os.umask(0o077)
    main(Path(sys.argv[1]))
