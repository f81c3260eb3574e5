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

from persistent_agent.demo.postgres_server import PostgresServer, binaries
from persistent_agent.keys.master_key import MasterKey, generate_master_key, parse_master_key
from persistent_agent.ops import config_files
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
    from persistent_agent.access import project

    config_files.init(config_dir, config_dir.parent / "data")
    project.ensure(config_dir)
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
    server = PostgresServer.scratch(tmp_path_factory.mktemp("postgres"))
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


# ---------------------------------------------------------------- speed tiers
# Every test's tier markers are set here, in one place, from where it lives and
# what it uses, so that no test file has to carry them (pyproject.toml declares
# them; `make help` and README's "Tests" name the targets):
#
#   e2e       a test under tests/e2e/ (and the few elsewhere marked in their
#             files): real sentinel and agent processes.
#   docker    a test under tests/docker/: a real Docker engine.
#   bench     a test under tests/bench/: measures speed (none yet; `make bench`
#             runs bench/ itself).
#   postgres  a test that uses the session's real PostgreSQL server: it asks for
#             the `postgres` or `shared_dsn` fixture, or one of its parameters is
#             a PostgreSQL backend (POSTGRES_PARAMS: the backend-parametrised
#             fixtures ask for the server with request.getfixturevalue). A test
#             that reaches `shared_dsn` unmarked fails, naming what to add.
#   slow      a test named in SLOW: measured at SLOW_SECONDS or more (setup,
#             call and teardown, all its parameters together) with
#             `pytest --durations=0`.
#
# `make test-unit` runs what carries none of these; `make test` all but docker.
TIER_DIRECTORIES = {"e2e": "e2e", "docker": "docker", "bench": "bench"}
POSTGRES_FIXTURES = frozenset({"postgres", "shared_dsn"})
POSTGRES_PARAMS = frozenset({"postgres", "encrypted-postgres"})
SLOW_SECONDS = 1.0
# Measured on the 2-core test machine, loaded (`make test`, load average ~3);
# module::function, every parameter of it. Remeasure and update when a test
# outside the other tiers grows past SLOW_SECONDS: a stale entry fails the run.
SLOW = frozenset({
    "tests/access/test_issuer.py::test_a_restart_keeps_the_key_and_old_tokens_verify",
    "tests/access/test_issuer.py::test_aiohttp_pins_the_ca_through_ssl_cert_file",
    "tests/access/test_issuer.py::test_bad_settings_and_missing_files_are_one_line_exit_2",
    "tests/client/test_cli.py::test_an_out_of_range_by_is_refused_before_connecting",
    "tests/metrics/test_listener.py::test_series_stay_flat_while_ten_thousand_keys_are_written",
    "tests/ops/test_admin_cli.py::test_a_bad_port_setting_is_one_line",
    "tests/ops/test_admin_cli.py::test_debug_prints_the_chain_the_one_line_hides",
    "tests/ops/test_admin_cli.py::test_debug_reaches_the_client_local_run_starts",
    "tests/ops/test_admin_cli.py::test_local_status_with_nothing_running_is_not_an_error",
    "tests/ops/test_admin_cli.py::test_shared_options_work_after_the_command_too",
    "tests/ops/test_backup.py::test_restore_refuses_while_a_node_runs",
    "tests/ops/test_inspection.py::test_verify_and_inspect_after_a_crash_change_no_file",
    "tests/ops/test_restore_interrupted.py::test_an_unfinished_restore_comes_first_and_finishes_without_an_exchange",
    "tests/ops/test_restore_interrupted.py::test_restore_killed_at_every_step_refuses_until_a_rerun_finishes_it",
    "tests/ops/test_rotation.py::test_rotate_key_killed_at_every_step_finishes_on_a_rerun",
    "tests/ops/test_rotation.py::test_rotate_key_refuses_a_database_lost_from_its_keyring",
    "tests/ops/test_rotation.py::test_rotate_key_refuses_while_a_node_runs",
    "tests/storage/test_backend_conformance.py::test_the_protocol_the_sealing_and_the_agent_state_load_no_database_driver",
    "tests/storage/test_crash_leftovers.py::test_wrong_key_after_a_crash_changes_no_file",
    "tests/storage/test_shared_state.py::test_an_unreachable_server_is_one_clear_line",
    "tests/test_docs.py::test_generated_text_in_the_docs_is_current",
    "tests/test_makefile.py::test_local_run_with_nothing_running_names_the_target_that_starts_it",
    "tests/test_makefile.py::test_local_status_with_nothing_running_ends_without_makes_error",
    "tests/test_packaging.py::test_a_deployment_runs_without_the_demo_extra",
    "tests/test_scripts.py::test_find_error_digs_through_wrapping",
})  # fmt: skip


def tier_markers(item: pytest.Item) -> set[str]:
    """The tier markers *item* earns by the rules above."""
    tests = REPO / "tests"
    where = item.path.relative_to(tests).parts[0] if item.path.is_relative_to(tests) else ""
    tiers = {tier for tier, top in TIER_DIRECTORIES.items() if where == top}
    fixtures = set(getattr(item, "fixturenames", ()))
    callspec = getattr(item, "callspec", None)
    params = callspec.params.values() if callspec is not None else ()
    if fixtures & POSTGRES_FIXTURES or any(
        isinstance(p, str) and p in POSTGRES_PARAMS for p in params
    ):
        tiers.add("postgres")
    if item.nodeid.split("[")[0] in SLOW:
        tiers.add("slow")
    return tiers


def stale_slow_entries(config: pytest.Config, items: list[pytest.Item]) -> list[str]:
    """SLOW entries that name no test: their file is gone, or it was collected
    without them. Checked only when pytest collects tests/ as a whole (`make
    test`, `make test-unit`): a run of one file or one test cannot tell."""
    if config.args_source is not pytest.Config.ArgsSource.TESTPATHS:
        return []
    collected = {item.nodeid.split("[")[0] for item in items}
    modules = {name.split("::")[0] for name in collected}
    return sorted(
        entry
        for entry in SLOW - collected
        if entry.split("::")[0] in modules or not (REPO / entry.split("::")[0]).is_file()
    )


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test with its tiers before `-m` selects among them."""
    stale = stale_slow_entries(config, items)
    if stale:
        raise pytest.UsageError(f"tests/conftest.py SLOW names no test: {', '.join(stale)}")
    for item in items:
        for tier in sorted(tier_markers(item)):
            item.add_marker(tier)


def pytest_fixture_setup(
    fixturedef: pytest.FixtureDef[object], request: pytest.FixtureRequest
) -> None:
    """A test that reaches PostgreSQL without the `postgres` marker fails at once:
    the rules above missed it (a new backend parameter's name, say), and the
    fast tier would start the server."""
    if fixturedef.argname == "shared_dsn" and request.node.get_closest_marker("postgres") is None:
        pytest.fail(
            f"{request.node.nodeid} uses PostgreSQL without the postgres marker: name its"
            " parameter in POSTGRES_PARAMS (tests/conftest.py)",
            pytrace=False,
        )
