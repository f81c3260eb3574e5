#!/usr/bin/env python3
"""Run the runtime's own storage-related tests against each storage provider.

Why: the runtime (naylence-runtime) ships no tests, but its repository's
``tests/`` exercise the node, the delivery tracker, the key store and the
sinks on top of a ``StorageProvider``. Running them on our providers checks
that SQLCipher and the PostgreSQL shared state behave as the runtime expects
of the in-memory one. Slow (a few minutes), so it stays out of CI.

Usage::

    git clone https://github.com/naylence/naylence-runtime-python /tmp/naylence-runtime
    RUNTIME_REPO=/tmp/naylence-runtime .venv/bin/python scripts/runtime_storage_tests.py
    # or: ... scripts/runtime_storage_tests.py --runtime-repo PATH [--provider NAME ...]

How a test gets a provider: the runtime's tests hard-code it, as
``InMemoryStorageProvider()`` imported from the runtime (one root fixture,
``default_storage_provider``, exists but only a Docker-bound integration test
uses it). So the tests are copied out at the pinned commit into a temporary
directory, and in the copy only the line that imports that class is
re-pointed at :class:`ProviderUnderTest` below; the runtime's installed code
and its repository are untouched. ``ProviderUnderTest`` makes, on first use,
a fresh and empty provider of the chosen storage profile through the runtime's
public storage factory, the way a node does with ``FAME_STORAGE_PROFILE``.
This same file is the pytest plugin (``-p runtime_storage_tests``) that
provides it and closes every provider after its test.

Selection rule: every test module under ``tests/naylence`` whose text names
``StorageProvider`` (it makes a storage provider or takes one from a
fixture), all tests in it. ``tests/integration`` is left out: its conftest
imports the Docker SDK and drives a Docker engine.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import io
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, TypeVar

# The runtime installed in .venv is 0.4.13; its repository has no tag for it.
# v0.4.12 is the newest tag, and its src/naylence/fame is byte-identical to the
# 0.4.13 wheel's (0.4.13 only raised the naylence-core dependency).
PINNED_TAG = "v0.4.12"
PINNED_COMMIT = "44bab2c53a60a3217452e3950d092a34e580e064"
PROVIDERS = ("memory", "encrypted-sqlite", "encrypted-postgres")
# The class each profile must build: proves the profile reached our factory.
EXPECTED_CLASS = {
    "memory": "InMemoryStorageProvider",
    "encrypted-sqlite": "SQLCipherStorageProvider",
    "encrypted-postgres": "SharedStateStorageProvider",
}
SELECT_MARKER = "StorageProvider"
IMPORT_LINE = re.compile(
    r"^(\s*)from naylence\.fame\.storage\.in_memory_storage_provider "
    r"import InMemoryStorageProvider\s*$",
    re.MULTILINE,
)
REPLACEMENT = r"\1from runtime_storage_tests import ProviderUnderTest as InMemoryStorageProvider"
# The runtime's test dependencies that our venv lacks (versions of its poetry.lock),
# and pytest-timeout: the runtime's tests have no timeouts, and a provider that
# loses a write can leave one waiting forever.
EXTRA_TEST_DEPS = ("hypothesis==6.151.9", "pytest-timeout==2.4.0")
# The runtime's own [tool.pytest.ini_options], less its coverage options, plus
# a per-test timeout (the slowest test, the sink stress test, takes about 26 s).
PYTEST_INI = """\
[pytest]
timeout = 120
asyncio_mode = auto
asyncio_default_fixture_loop_scope = function
pythonpath = .
filterwarnings =
    ignore::DeprecationWarning:websockets.exceptions
    ignore::DeprecationWarning:websockets.legacy
    ignore::DeprecationWarning:uvicorn.protocols.websockets.websockets_impl
    ignore::pytest.PytestConfigWarning
    ignore:coroutine.*was never awaited:RuntimeWarning
"""

# Environment of the pytest process (set by the driver, read by the plugin).
PROVIDER_VAR = "RUNTIME_TESTS_PROVIDER"
WORK_VAR = "RUNTIME_TESTS_WORK"
USAGE_VAR = "RUNTIME_TESTS_USAGE"
PG_ROOT_VAR = "RUNTIME_TESTS_PG_ROOT"
PG_PORT_VAR = "RUNTIME_TESTS_PG_PORT"


# --------------------------------------------------------------- the plugin

import pytest  # noqa: E402
from naylence.fame.storage.key_value_store import KeyValueStore  # noqa: E402
from naylence.fame.storage.storage_provider import StorageProvider  # noqa: E402
from pydantic import BaseModel  # noqa: E402

V = TypeVar("V", bound=BaseModel)

_live: list[ProviderUnderTest] = []  # made during the current test, closed after it
# Per test that stored through a provider under test, the namespaces it used.
_used: dict[str, set[str]] = {}
_current_test = ""
_serial = itertools.count()


def _postgres_server() -> Any:
    """The driver's PostgreSQL server, rebuilt from its directory and port."""
    from persistent_agent.demo.postgres_server import PostgresServer, ServerTls

    root = Path(os.environ[PG_ROOT_VAR])
    return PostgresServer(
        root / "pg",
        root / "pg" / "superuser.password",
        ServerTls.in_access_dir(root / "access"),
        port=int(os.environ[PG_PORT_VAR]),
    )


def _profile_environment(profile: str, n: int) -> dict[str, str]:
    """The variables that point *profile* at fresh, empty storage of its own."""
    if profile == "memory":
        return {}
    work = Path(os.environ[WORK_VAR])
    env = {
        "FAME_STORAGE_DB_DIRECTORY": str(work / f"provider-{n}"),
        "FAME_STORAGE_MASTER_KEY_FILE": str(work / "master.key"),
    }
    if profile == "encrypted-postgres":
        server = _postgres_server()
        env["FAME_STORAGE_POSTGRES_DSN"] = server.create_database(f"rt_{n}")
        env["FAME_STORAGE_POSTGRES_PASSWORD_FILE"] = str(server.password_file)
    return env


async def _make_provider(profile: str) -> StorageProvider:
    """A new provider of *profile*, built as a node builds it (a storage profile).

    The variables are set and read with no suspension point in between (the
    config is evaluated before the factory first awaits I/O), so two
    providers made concurrently on one loop cannot see each other's.
    """
    from naylence.fame.factory import create_resource
    from naylence.fame.storage.storage_provider_factory import StorageProviderFactory

    os.environ.update(_profile_environment(profile, next(_serial)))
    provider: StorageProvider = await create_resource(
        StorageProviderFactory, {"type": "StorageProfile", "profile": profile}
    )
    if type(provider).__name__ != EXPECTED_CLASS[profile]:
        raise RuntimeError(f"profile {profile} built {type(provider).__name__}")
    return provider


class ProviderUnderTest(StorageProvider):
    """Stands in for ``InMemoryStorageProvider()`` in the copied tests.

    The tests construct it synchronously and expect it empty; our providers
    are built asynchronously, so the real one is made on the first
    ``get_kv_store`` (once, however many callers race for it) and each
    instance gets storage of its own.
    """

    def __init__(self) -> None:
        self._making: asyncio.Future[StorageProvider] | None = None
        _live.append(self)

    async def get_kv_store(self, model_cls: type[V], namespace: str) -> KeyValueStore[V]:
        if self._making is None:
            profile = os.environ.get(PROVIDER_VAR, "memory")
            self._making = asyncio.ensure_future(_make_provider(profile))
        provider = await self._making
        _used.setdefault(_current_test, set()).add(namespace)
        return await provider.get_kv_store(model_cls, namespace)

    async def aclose(self) -> None:
        """Close the real provider, if one was made (sync or async ``close``)."""
        making, self._making = self._making, None
        if making is None:
            return
        if not making.done():  # the test ended while it was being made
            making.cancel()
            return
        if making.exception() is not None:
            return
        close = getattr(making.result(), "close", None)
        if close is not None:
            result = close()
            if inspect.isawaitable(result):
                await result


@pytest.fixture(autouse=True)
async def _providers_closed_after_test(request: pytest.FixtureRequest) -> AsyncIterator[None]:
    """Note which test runs, and close the providers it made on its own loop.

    Autouse, so it is set up first and torn down last: after the test's own
    fixtures (trackers, nodes) are done with the storage.
    """
    global _current_test
    _current_test = request.node.nodeid
    yield
    made, _live[:] = list(_live), []
    for provider in made:
        await provider.aclose()


def pytest_sessionfinish(session: Any, exitstatus: int) -> None:
    if usage := os.environ.get(USAGE_VAR):
        Path(usage).write_text(json.dumps({test: sorted(ns) for test, ns in _used.items()}))


# --------------------------------------------------------------- the driver


def fail(message: str) -> None:
    """One line on stderr and exit 2: the run cannot start as asked."""
    print(f"runtime_storage_tests: {message}", file=sys.stderr)
    raise SystemExit(2)


def run(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[bytes]:
    """Run git, pip or pytest from an argument list we build (never a shell)."""
    return subprocess.run(argv, **kwargs)  # noqa: S603


def check_commit(repo: Path) -> None:
    """Stop in one line unless *repo* is a clone or mirror holding the pinned commit."""
    if not repo.is_dir():
        fail(f"--runtime-repo {repo}: no such directory")
    found = run(
        ["git", "-C", str(repo), "cat-file", "-e", f"{PINNED_COMMIT}^{{commit}}"],
        capture_output=True,
    )
    if found.returncode != 0:
        fail(f"{repo} has no commit {PINNED_COMMIT} ({PINNED_TAG}); clone the runtime's repository")


def export_tests(repo: Path, dest: Path) -> None:
    """The runtime's tests/ at the pinned commit, from a clone or mirror of its repository."""
    archive = run(
        ["git", "-C", str(repo), "archive", PINNED_COMMIT, "tests"], capture_output=True, check=True
    )
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(dest, filter="data")


def select_and_redirect(src: Path) -> tuple[list[str], int]:
    """The selected test modules (relative paths) and how many import lines were re-pointed."""
    selected, redirected = [], 0
    for path in sorted((src / "tests" / "naylence").rglob("test_*.py")):
        text = path.read_text()
        if SELECT_MARKER not in text:
            continue
        selected.append(str(path.relative_to(src)))
        text, n = IMPORT_LINE.subn(REPLACEMENT, text)
        path.write_text(text)
        redirected += n
    if not selected or not redirected:
        fail("no storage-related tests found at the pinned commit; has the layout changed?")
    return selected, redirected


def install_test_deps(deps: Path) -> None:
    """The runtime's extra test dependencies into *deps*, not into the project's venv."""
    run(
        [sys.executable, "-m", "pip", "install", "-q", "--target", str(deps), *EXTRA_TEST_DEPS],
        check=True,
    )


def start_postgres(root: Path) -> Any:
    """A TLS-only PostgreSQL server of the project's own, as tests/conftest.py makes it."""
    from persistent_agent.demo.postgres_server import PostgresServer

    server = PostgresServer.scratch(root)
    server.start()
    return server


def run_provider(
    profile: str, src: Path, tmp: Path, tests: list[str], extra: list[str]
) -> dict[str, Any]:
    """One pytest run of *tests* with *profile* behind every provider; its outcome."""
    from persistent_agent.keys.master_key import generate_master_key

    work = tmp / profile
    work.mkdir()
    key = work / "master.key"
    key.write_text(generate_master_key())
    key.chmod(0o600)
    junit, usage = work / "junit.xml", work / "usage.json"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("FAME_")},
        PROVIDER_VAR: profile,
        WORK_VAR: str(work),
        USAGE_VAR: str(usage),
        "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), str(tmp / "deps")]),
    }
    server = None
    if profile == "encrypted-postgres":
        server = start_postgres(work / "postgres")
        env |= {PG_ROOT_VAR: str(work / "postgres"), PG_PORT_VAR: str(server.port)}
    started = time.monotonic()
    try:
        with open(work / "pytest.log", "w") as log:
            run(
                [
                    sys.executable, "-m", "pytest", "-c", "pytest.ini", "--rootdir", ".",
                    "-p", "runtime_storage_tests", "-p", "no:cacheprovider",
                    "-q", f"--junitxml={junit}", *extra, *tests,
                ],
                cwd=src, env=env, stdout=log, stderr=subprocess.STDOUT, check=False,
            )  # fmt: skip
    finally:
        if server is not None:
            server.stop()
    outcome = read_junit(junit)
    outcome["seconds"] = time.monotonic() - started
    used: dict[str, list[str]] = json.loads(usage.read_text()) if usage.exists() else {}
    outcome["used"] = len(used)
    # Namespaces without the runtime's "__" prefix: encrypted-postgres keeps these
    # in PostgreSQL (the others in a replica's own SQLCipher files).
    outcome["plain"] = sum(any(not n.startswith("__") for n in ns) for ns in used.values())
    outcome["log"] = work / "pytest.log"
    return outcome


def read_junit(path: Path) -> dict[str, Any]:
    """Counts and failing test ids from pytest's JUnit XML."""
    counts = {"passed": 0, "failed": 0, "skipped": 0}
    failures: list[str] = []
    if not path.exists():
        return {**counts, "failures": ["(pytest wrote no report; see its log)"]}
    # Written a moment ago by our own pytest run, not untrusted input.
    for case in ET.parse(path).getroot().iter("testcase"):  # noqa: S314
        test_id = f"{case.get('classname')}::{case.get('name')}"
        if case.find("failure") is not None or case.find("error") is not None:
            counts["failed"] += 1
            failures.append(test_id)
        elif case.find("skipped") is not None:
            counts["skipped"] += 1
        else:
            counts["passed"] += 1
    return {**counts, "failures": failures}


def print_summary(results: dict[str, dict[str, Any]]) -> None:
    head = (
        f"{'provider':<20}{'passed':>8}{'failed':>8}{'skipped':>9}"
        f"{'used':>7}{'plain-ns':>10}{'time':>8}"
    )
    print(head)
    print("-" * len(head))
    for profile, r in results.items():
        print(
            f"{profile:<20}{r['passed']:>8}{r['failed']:>8}{r['skipped']:>9}"
            f"{r['used']:>7}{r['plain']:>10}{r['seconds']:>7.0f}s"
        )
    print(
        "used: tests that stored through the provider under test; plain-ns: those of them\n"
        "using a namespace without the runtime's __ prefix (PostgreSQL, for encrypted-postgres);\n"
        "failed includes errors"
    )
    for profile, r in results.items():
        if r["failures"]:
            print(f"\nfailed with {profile} (log: {r['log']}):")
            for test_id in r["failures"]:
                print(f"  {test_id}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--runtime-repo",
        default=os.environ.get("RUNTIME_REPO"),
        help="clone or mirror of naylence-runtime-python (default: $RUNTIME_REPO)",
    )
    parser.add_argument("--provider", action="append", choices=PROVIDERS, help="default: all")
    parser.add_argument(
        "--keep", action="store_true", help="keep the work directory (kept anyway on failures)"
    )
    parser.add_argument("pytest_args", nargs="*", help="passed to pytest (after --)")
    args = parser.parse_args(argv)
    if not args.runtime_repo:
        fail("set RUNTIME_REPO or --runtime-repo to a clone of naylence-runtime-python")
    repo = Path(args.runtime_repo)
    check_commit(repo)

    tmp = Path(tempfile.mkdtemp(prefix="runtime-tests-"))
    # Our PostgreSQL server runs as nobody, who must be able to reach its data.
    tmp.chmod(0o755)
    src = tmp / "src"
    src.mkdir()
    export_tests(repo, src)
    (src / "pytest.ini").write_text(PYTEST_INI)
    tests, redirected = select_and_redirect(src)
    install_test_deps(tmp / "deps")
    print(
        f"runtime tests at {PINNED_TAG} ({PINNED_COMMIT[:12]}): {len(tests)} modules "
        f"selected, {redirected} imports re-pointed; work dir {tmp}"
    )
    results = {}
    for profile in args.provider or PROVIDERS:
        print(f"running with {profile} ...", flush=True)
        results[profile] = run_provider(profile, src, tmp, tests, args.pytest_args)
    print_summary(results)
    failed = any(r["failures"] for r in results.values())
    if failed or args.keep:
        print(f"\nwork dir (logs, JUnit XML) kept: {tmp}")
    else:
        shutil.rmtree(tmp)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
