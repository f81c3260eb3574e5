"""Are the nodes running? Asked of the files, not of Docker or pid files.

Rotation and restore rewrite database files, so they must not run while a
sentinel or agent has them open, whether it runs as a local process or in a
container. Every such process is visible in /proc (Linux only); matching
open files by device and inode (not by path, as psutil's ``open_files`` would)
also sees through the containers' bind mounts.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import psutil

from persistent_agent.errors import ServicesRunningError
from persistent_agent.storage.layout import all_databases, sidecars


def processes_using(paths: Iterable[Path]) -> list[int]:
    """Pids (other than ours) with any of *paths* open."""
    wanted = set()
    for path in paths:
        try:
            st = path.stat()
        except OSError:
            continue
        wanted.add((st.st_dev, st.st_ino))
    if not wanted:
        return []
    found = []
    for pid in psutil.pids():
        if pid == os.getpid():
            continue
        try:
            fds = list(Path(f"/proc/{pid}/fd").iterdir())
        except OSError:
            continue  # gone, or another user's process we may not look into
        for fd in fds:
            try:
                st = fd.stat()
            except OSError:
                continue
            if (st.st_dev, st.st_ino) in wanted:
                found.append(pid)
                break
    return sorted(found)


def require_stopped(data_dir: Path, action: str) -> None:
    """Refuse *action* while any process has a database under *data_dir* open."""
    files = [f for db in all_databases(data_dir) for f in (db, *sidecars(db))]
    pids = processes_using(files)
    if pids:
        raise ServicesRunningError(
            f"{action} needs the services stopped, but process(es) "
            f"{', '.join(map(str, pids))} have databases under {data_dir} open; "
            "run `make stop` (Docker) or `make local-stop` first"
        )
