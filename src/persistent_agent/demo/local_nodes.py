"""The sentinel and the agent as local background processes (no Docker).

Used by ``make local-start`` / ``local-stop`` / ``local-run`` / ``demo`` and by
the end-to-end tests, so the tests drive exactly what users run. Pid files,
ready files and logs live in a git-ignored run directory; ``stop`` signals
only a process whose pid file it wrote and whose command line is still ours.

The package's own processes started from here (the nodes, the client) run
with PYTHONSAFEPATH=1: ``python -m`` would put the working directory first on
the import path, and a ``persistent_agent.py`` there (the upstream example's
agent has that name) would shadow the package.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from persistent_agent import settings
from persistent_agent.access import fabric
from persistent_agent.access.project import CLIENT_IDS, access_dir
from persistent_agent.client.failures import START_HINT_VAR
from persistent_agent.errors import LocalNodeError
from persistent_agent.node.sentinel import HOST_VAR
from persistent_agent.node.serving import (
    ENV_FILE_VAR,
    HEARTBEAT_SECONDS,
    READY_FILE_VAR,
    RESTART_VAR,
)
from persistent_agent.storage.layout import env_file

_NODE_SETTINGS = ("FAME_", "PERSISTENT_AGENT_")
HOST_SETTING = settings.SENTINEL_HOST.name  # the user's one setting, for local and Docker alike
MODULES = {
    "issuer": "persistent_agent.access.issuer",
    "sentinel": "persistent_agent.node.sentinel",
    "agent": "persistent_agent",
}
# The roles that keep storage (the issuer keeps its keys in config/access).
STORAGE_ROLES = ("sentinel", "agent")
ATTACH_PATH = "/fame/v1/attach/ws/downstream"
DEFAULT_ISSUER_PORT = settings.ISSUER_PORT.default
# Set for every process started here (see the module's docstring).
SAFE_PATH_VAR = settings.PYTHONSAFEPATH.name
# The running nodes' /metrics addresses, labelled by role, in Prometheus'
# file_sd format: config/prometheus/prometheus.yml reads it (docs/metrics.md).
TARGETS_FILE = "prometheus-targets.json"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on now, on *host* (for a sentinel or a server)."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


@dataclass
class LocalNodes:
    config_dir: Path
    data_dir: Path
    run_dir: Path
    port: int = 8000
    # Loopback unless the user asks otherwise.
    host: str = field(default_factory=lambda: settings.SENTINEL_HOST.value())
    issuer_port: int = DEFAULT_ISSUER_PORT
    # Secure unless the user opts out (PERSISTENT_AGENT_FABRIC_SECURITY=off, loopback only).
    secure: bool = field(default_factory=fabric.secure)
    python: str = sys.executable
    extra_env: dict[str, str] = field(default_factory=dict)
    # Each node serves /metrics on a free loopback port (docs/metrics.md), unless
    # PERSISTENT_AGENT_LOCAL_METRICS=off; its backup-age gauge reads backups_dir
    # (default: backups/ beside the data directory).
    metrics: bool = field(default_factory=lambda: settings.PERSISTENT_AGENT_LOCAL_METRICS.value())
    backups_dir: Path | None = None
    # Popen handles of the processes this object started, kept so that they
    # are reaped (and do not warn) when stopped.
    _children: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict, repr=False)

    def _reach(self) -> str:
        # A server listening on every address is reached on loopback.
        return "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host  # noqa: S104

    def admission_url(self) -> str:
        return f"{'wss' if self.secure else 'ws'}://{self._reach()}:{self.port}{ATTACH_PATH}"

    def issuer_url(self) -> str:
        return f"https://{self._reach()}:{self.issuer_port}"

    def access_env(self, role: str, client_id: str | None = None) -> dict[str, str]:
        """The fabric settings of *role* (access/fabric.py), files in config/access."""
        access = access_dir(self.config_dir).resolve()
        if not self.secure:
            return {fabric.SECURITY_VAR: "off"}
        env = {
            fabric.SECURITY_VAR: "on",
            fabric.CA_FILE_VAR: str(access / "ca.crt"),
            # Pinned from the start (fabric.pin_ca does it again): aiohttp builds
            # its default TLS context when it is imported.
            **fabric.pinned_roots(access / "ca.crt"),
            fabric.ISSUER_VAR: self.issuer_url(),
            fabric.AUDIENCE_VAR: fabric.DEFAULT_AUDIENCE,
        }
        if role == "issuer":
            env["PERSISTENT_AGENT_ACCESS_DIR"] = str(access)
            env["PERSISTENT_AGENT_ISSUER_HOST"] = self.host
            env["PERSISTENT_AGENT_ISSUER_PORT"] = str(self.issuer_port)
        elif role == "sentinel":
            env[fabric.TLS_CERT_VAR] = str(access / "sentinel.crt")
            env[fabric.TLS_KEY_VAR] = str(access / "sentinel.key")
        else:
            client_id = client_id or CLIENT_IDS[role]
            if role == "agent":
                # A configured id, so that the runtime's token-subject policy
                # gives the agent the same node id at every start.
                env["FAME_NODE_ID"] = client_id
            env[fabric.TOKEN_URL_VAR] = f"{self.issuer_url()}/oauth/token"
            env[fabric.CLIENT_ID_VAR] = client_id
            env[fabric.SECRET_FILE_VAR] = str(access / f"{client_id}.secret")
        return env

    def pid_file(self, role: str) -> Path:
        return self.run_dir / f"{role}.pid"

    def ready_file(self, role: str) -> Path:
        return self.run_dir / f"{role}.ready"

    def log_file(self, role: str) -> Path:
        return self.run_dir / f"{role}.log"

    def metrics_port_file(self, role: str) -> Path:
        return self.run_dir / f"{role}.metrics-port"

    def metrics_url(self, role: str) -> str | None:
        """Where *role*, running, serves /metrics; None if it does not run or serves none."""
        try:
            port = int(self.metrics_port_file(role).read_text())
        except (OSError, ValueError):
            return None
        return f"http://127.0.0.1:{port}/metrics" if self.pid(role) is not None else None

    def targets_file(self) -> Path:
        return self.run_dir / TARGETS_FILE

    def write_targets(self) -> None:
        """Rewrite the file_sd targets file: one entry per running node that serves
        /metrics, labelled ``role``. Replaced whole, so Prometheus never reads half."""
        targets = []
        for role in STORAGE_ROLES:
            try:
                port = int(self.metrics_port_file(role).read_text())
            except (OSError, ValueError):
                continue
            if self.pid(role) is not None:
                targets.append({"targets": [f"127.0.0.1:{port}"], "labels": {"role": role}})
        if not targets and not self.targets_file().exists():
            return
        partial = self.run_dir / f".{TARGETS_FILE}.partial"
        partial.write_text(json.dumps(targets, indent=2) + "\n")
        partial.replace(self.targets_file())

    def env(self, role: str) -> dict[str, str]:
        """The process environment for *role*: its env file, pointed at loopback and data/.

        Settings come from the config files and this object only: inherited
        FAME_* and PERSISTENT_AGENT_* variables are dropped, so that a stray
        ``export FAME_SHOW_ENVELOPES=true`` (values in the logs) or
        ``FAME_STORAGE_PROFILE=sqlite`` (plaintext files) from the shell cannot
        reach the nodes. PATH, HOME and the like pass through.
        """
        env = {k: v for k, v in os.environ.items() if not k.startswith(_NODE_SETTINGS)}
        if role != "issuer":
            env[ENV_FILE_VAR] = str(env_file(self.config_dir, role).resolve())
            env[settings.FAME_DIRECT_ADMISSION_URL.name] = self.admission_url()
        env.update(self.access_env(role))
        if role in STORAGE_ROLES:
            env[settings.FAME_STORAGE_DB_DIRECTORY.name] = str((self.data_dir / role).resolve())
            backups = self.backups_dir or self.data_dir.parent / "backups"
            env[settings.PERSISTENT_AGENT_BACKUPS_DIR.name] = str(backups.resolve())
        if role in MODULES:
            env[READY_FILE_VAR] = str(self.ready_file(role).resolve())
        if role == "agent":
            # No supervisor stays behind local-start: a node that must restart
            # (detached from a ready sentinel for too long) does it in place.
            env[RESTART_VAR] = "exec"
        if role == "sentinel":
            env[settings.FAME_LISTENER_PORT.name] = str(self.port)
            env[HOST_VAR] = self.host
        if role == "client":
            env[START_HINT_VAR] = "make local-start"
        env.update(self.extra_env)
        return env

    def pid(self, role: str) -> int | None:
        """The pid of our running *role* process, or None (stale pid files are ignored).

        A pid file holds the pid and the module it runs; the pid counts only
        while a live process with that pid still runs that module, so a
        recycled pid is never signalled. A child this object started and has not
        reaped is ours whatever its command line says: for an instant after it
        starts, the kernel shows that line empty.
        """
        try:
            pid_text, module = self.pid_file(role).read_text().split()
            child = self._children.get(int(pid_text))
            if child is not None and child.poll() is None:
                return child.pid
            process = psutil.Process(int(pid_text))
            alive = process.status() != psutil.STATUS_ZOMBIE
            ours = module in process.cmdline()
        except (OSError, ValueError, psutil.Error):
            return None
        return process.pid if alive and ours else None

    def command_prefix(self, role: str) -> list[str]:
        """What *role*'s command runs under (a network namespace, say); nothing here."""
        return []

    def launch(self, role: str, module: str | None = None) -> subprocess.Popen[bytes]:
        """Start *role* in the background and return at once (see :meth:`start`).

        *module* replaces the role's usual entry point (tests serve other agents).
        The package's own modules run without the working directory on their
        import path (PYTHONSAFEPATH); another module is found as ``python -m``
        finds it, from where the caller runs.
        """
        module = module or MODULES[role]
        env = self.env(role)
        if module.partition(".")[0] == "persistent_agent":
            env[SAFE_PATH_VAR] = "1"
        # Owner-only: logs can hold node ids, addresses and errors about the data.
        self.run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.run_dir, 0o700)
        self.ready_file(role).unlink(missing_ok=True)
        self.metrics_port_file(role).unlink(missing_ok=True)
        if self.metrics and role in STORAGE_ROLES:  # a port of its own, recorded for metrics_url
            port = env.setdefault(settings.PERSISTENT_AGENT_METRICS_PORT.name, str(free_port()))
            self.metrics_port_file(role).write_text(f"{port}\n")
        log_fd = os.open(self.log_file(role), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.fchmod(log_fd, 0o600)
        with open(log_fd, "ab") as log:
            process = subprocess.Popen(
                [*self.command_prefix(role), self.python, "-m", module],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        self._children[process.pid] = process
        self.pid_file(role).write_text(f"{process.pid} {module}\n")
        self.write_targets()
        return process

    def start(self, role: str, timeout: float = 120.0, module: str | None = None) -> int:
        """Start *role* in the background and return once it is serving.

        On the secured fabric every node needs the token issuer (the sentinel for
        its keys, the others for tokens): it is started first if nothing serves
        its port yet.
        """
        if (running := self.pid(role)) is not None:
            return running
        if self.secure and role != "issuer" and not self._answers(self.issuer_port):
            self.start("issuer", timeout)
        process = self.launch(role, module)
        deadline = time.monotonic() + timeout
        while not self.ready_file(role).exists():
            code = process.poll()
            if code is not None:
                self._children.pop(process.pid, None)
                self.pid_file(role).unlink(missing_ok=True)
                self.write_targets()
                raise LocalNodeError(
                    f"{role} exited with code {code}: {self.last_line(role)} "
                    f"(log: {self.log_file(role)})"
                )
            if time.monotonic() > deadline:
                raise LocalNodeError(
                    f"{role} not ready after {timeout:g}s (log: {self.log_file(role)})"
                )
            time.sleep(0.05)
        return process.pid

    def _answers(self, port: int) -> bool:
        """Whether something accepts connections on *port* where this object reaches it."""
        with socket.socket() as probe:
            probe.settimeout(2.0)
            return probe.connect_ex((self._reach(), port)) == 0

    def serving(self, role: str) -> bool:
        """Whether *role* says it is serving now: its ready file is fresh.

        A node rewrites it every HEARTBEAT_SECONDS while it serves (the agent:
        while it is attached to the sentinel) and removes it when it is not.
        """
        try:
            age = time.time() - self.ready_file(role).stat().st_mtime
        except OSError:
            return False
        return age < 5 * HEARTBEAT_SECONDS

    def last_line(self, role: str) -> str:
        try:
            lines = self.log_file(role).read_text(errors="replace").strip().splitlines()
        except OSError:
            return "(no log)"
        return lines[-1] if lines else "(empty log)"

    def stop(self, role: str, timeout: float = 15.0, sig: int = signal.SIGINT) -> bool:
        """Stop *role* if we started it; True if a process was stopped."""
        pid = self.pid(role)
        self.pid_file(role).unlink(missing_ok=True)
        if pid is None:
            return False
        self.write_targets()  # Prometheus stops scraping it: a stop, not an outage
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + timeout
        while self._alive(pid):
            if time.monotonic() > deadline:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.05)
        self.ready_file(role).unlink(missing_ok=True)
        self.metrics_port_file(role).unlink(missing_ok=True)
        return True

    def wait(self, role: str, timeout: float = 120.0) -> int:
        """Wait for *role*, started by this object, to exit by itself; its exit code."""
        try:  # the pid file, not pid(): the process may be a zombie already
            pid = int(self.pid_file(role).read_text().split()[0])
        except (OSError, ValueError, IndexError):
            pid = None
        child = self._children.get(pid) if pid is not None else None
        if child is None:
            raise LocalNodeError(f"{role} is not a running process started here")
        code = child.wait(timeout)
        del self._children[child.pid]
        self.pid_file(role).unlink(missing_ok=True)
        self.write_targets()
        return code

    def kill(self, role: str) -> bool:
        """SIGKILL *role*: a crash, for the fault tests."""
        return self.stop(role, timeout=0, sig=signal.SIGKILL)

    def roles(self) -> tuple[str, ...]:
        """The processes of the local fabric, in start order (no issuer when unsecured)."""
        return tuple(MODULES) if self.secure else STORAGE_ROLES

    def start_all(self) -> None:
        """Start every role; if one fails, stop those this call started."""
        started: list[str] = []
        try:
            for role in self.roles():
                if self.pid(role) is None:
                    started.append(role)
                self.start(role)
        except BaseException:
            for role in reversed(started):
                self.stop(role)
            raise

    def stop_all(self) -> list[str]:
        return [role for role in reversed(MODULES) if self.stop(role)]

    def client_command(self, verbose: bool = False) -> tuple[list[str], dict[str, str]]:
        """The client's command and environment (without the working directory on its
        import path: PYTHONSAFEPATH)."""
        env = {**self.env("client"), SAFE_PATH_VAR: "1"}
        if verbose:
            env[settings.FAME_SHOW_ENVELOPES.name] = "true"
        return [self.python, "-m", "persistent_agent.client"], env

    def _alive(self, pid: int) -> bool:
        """True while *pid* runs; reaps our own children (a zombie is not alive)."""
        child = self._children.get(pid)
        if child is not None:
            if child.poll() is None:
                return True
            del self._children[pid]
            return False
        try:
            return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False
