"""Shared fixtures: real SQLCipher files under tmp_path, and plaintext scanning."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import structlog

from persistent_agent.access import pki
from persistent_agent.keys.master_key import MasterKey, generate_master_key, parse_master_key
from persistent_agent.ops import config_files
from persistent_agent.ops.postgres_server import PostgresServer, ServerTls, binaries
from persistent_agent.storage.layout import LOCK_FILE

from . import writers

REPO = Path(__file__).resolve().parents[1]


def bare_copy(dest: Path) -> Path:
    """Copy this checkout as a fresh clone would hold it: tracked files and new,
    unignored ones; no .venv, no generated config, no data."""
    listed = (
        subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=REPO,
            capture_output=True,
            check=True,
        )
        .stdout.decode()
        .split("\0")
    )
    for name in filter(None, listed):
        if (REPO / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, dest / name)
    return dest


@pytest.fixture
def master_key_hex() -> str:
    return generate_master_key()


@pytest.fixture
def master_key(master_key_hex: str) -> MasterKey:
    return parse_master_key(master_key_hex)


@pytest.fixture
def db_dir(tmp_path: Path) -> Path:
    return tmp_path / "db"


def wait_until(condition: Callable[[], object], what: str, timeout: float = 120) -> None:
    """Poll *condition* until it is true; fail naming *what* after a generous *timeout*.

    Tests wait for what they need to see, never for a fixed time: the
    deadline only stops a broken run from hanging, it is not a measurement.
    """
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.005)


def checksums(directory: Path) -> dict[str, str]:
    """sha256 of every file under *directory*, by relative path.

    The one-writer lock file is left out: it names its current holder, which
    every node start, restore and rotate-key rewrites; it holds no data.
    """
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.name != LOCK_FILE
    }


def plaintext_hits(directory: Path, needles: list[bytes]) -> list[str]:
    """Which needles appear in the raw bytes of which files under *directory*."""
    hits = []
    for path in sorted(directory.rglob("*")):
        if path.is_file():
            raw = path.read_bytes()
            hits += [f"{path.name}: {n!r}" for n in needles if n in raw]
    return hits


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    """tmp_path/config holding the committed templates, as in a fresh clone."""
    target = tmp_path / "config"
    target.mkdir()
    for example in (REPO / "config").glob(".env.*.example"):
        shutil.copy(example, target / example.name)
    return target


@pytest.fixture
def initialised(config_dir: Path) -> Path:
    """A project root after `make init` and `make access`: config/ with a key and
    config/access (CA, certificates, credentials), empty data/."""
    from persistent_agent.ops import access

    config_files.init(config_dir, config_dir.parent / "data")
    access.ensure(config_dir)
    return config_dir.parent


ROWS = 25


@pytest.fixture
def tree(initialised: Path) -> Path:
    """A project root after `make init` whose nodes hold databases with ROWS rows each."""
    asyncio.run(writers.fill(initialised, ["__node_meta", "agent_state", "extra"], ROWS))
    return initialised


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """Tests that start a fabric or filter levels leave structlog and logging as found."""
    config = structlog.get_config()
    levels = {name: logging.getLogger(name).level for name in ("", "naylence")}
    yield
    structlog.configure(**config)
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


@contextlib.contextmanager
def running(argv: list[str]) -> Iterator[subprocess.Popen[str]]:
    """A background process, started once it printed its first line, killed on exit."""
    with subprocess.Popen(
        argv, cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as proc:
        assert proc.stdout is not None
        proc.stdout.readline()
        try:
            yield proc
        finally:
            proc.kill()


def node_writing(root: Path) -> contextlib.AbstractContextManager[subprocess.Popen[str]]:
    """A separate process with the agent's storage open and writing, as a running node."""
    return running(
        [sys.executable, "-m", "tests.writers", "live", str(root / "config"), str(root / "data")]
    )


# ---------------------------------------------------------------- PostgreSQL


@pytest.fixture(scope="session")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    """One real PostgreSQL server for the session (the project's own, on loopback).

    pytest's temporary directories are owner-only, so run as root this also
    exercises the way the server reaches its data as an unprivileged user.
    """
    root = tmp_path_factory.mktemp("postgres")
    pki.ensure_ca(root / "access")
    pki.ensure_server_cert(root / "access", "postgres")
    server = PostgresServer(
        root / "pg", root / "pg" / "superuser.password", ServerTls.in_access_dir(root / "access")
    )
    server.start()
    yield server
    server.stop()


@pytest.fixture
def shared_dsn(postgres: PostgresServer, request: pytest.FixtureRequest) -> str:
    """A fresh database of its own for each test."""
    name = "t_" + hashlib.sha256(request.node.nodeid.encode()).hexdigest()[:16]
    return postgres.create_database(name, fresh=True)


def pg_dump(server: PostgresServer, dsn: str) -> str:
    """The whole database as `pg_dump` prints it (schema and data).

    The random token of pg_dump's ``\\restrict`` lines (16.10 and later) differs
    on every run; those lines are left out so that two dumps compare.
    """
    import psycopg

    info = psycopg.conninfo.conninfo_to_dict(dsn)
    dump = subprocess.run(
        [
            str(binaries() / "pg_dump"),
            "-h", str(info["host"]), "-p", str(info["port"]), "-U", str(info["user"]),
            "--no-owner", str(info["dbname"]),
        ],
        env={"PGPASSWORD": server.password(), "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return "\n".join(
        line for line in dump.splitlines() if not line.startswith(("\\restrict", "\\unrestrict"))
    )
