"""The docker-compose demo, driven through the Makefile against a real engine.

Runs in a bare copy of the repository (so a developer's own data/ and config/
are never touched) with its own compose project, image tag and sentinel port.
The image is built once (tests/docker/conftest.py); every test then starts
from `make clean` and brings up what it checks itself, so the tests hold in
any order. `make test-docker` runs them with whichever compose the Makefile
finds (COMPOSE= overrides); CI runs them with both compose v1.29 and v2.
Without an engine they fail, never skip.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
from pathlib import Path

import psutil
import pytest

from persistent_agent.keys.master_key import generate_master_key, write_key_file
from persistent_agent.ops import config_files

from ..conftest import checksums, plaintext_hits
from ..e2e.test_local_flow import PYTHON_RUNTIME_EXTRAS, SEED_LISTING
from .conftest import (
    client_lines,
    compose_command,
    compose_env,
    container,
    docker,
    env,
    leaked,
    make,
    project_containers,
    run,
    secret_values,
)

pytestmark = pytest.mark.docker


def _stored(project: Path) -> str:
    """start and run once; the value the run stored."""
    make(project, "start")
    return client_lines(make(project, "run"))[1].removeprefix("Updated state: ")


def test_the_seed_flow_persists_across_stop_and_start(project: Path) -> None:
    """start, run, stop, start, run: the second run reads the first value."""
    make(project, "start")
    first = client_lines(make(project, "run"))
    assert first[0] == "Previous state: null"
    assert re.fullmatch(r'Updated state: \{"value":"\d{13}"\}', first[1])
    make(project, "stop")
    make(project, "start")
    second = client_lines(make(project, "run"))
    assert second[0] == "Previous state: " + first[1].removeprefix("Updated state: ")


def test_the_sentinel_is_published_on_loopback_only(project: Path) -> None:
    """On the host, the sentinel's port listens on 127.0.0.1 alone (compose publishes it there)."""
    make(project, "start")
    port = int(env()["SENTINEL_PORT"])
    addresses = {
        c.laddr[0]
        for c in psutil.net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr[1] == port
    }
    assert addresses == {"127.0.0.1"}


def test_nodes_are_restarted_on_failure_a_bounded_number_of_times(project: Path) -> None:
    """Both nodes run with restart on-failure, at most 5 times (storage failures exit 75)."""
    make(project, "start")
    for service in ("sentinel", "persistent-agent"):
        policy = docker(
            "inspect",
            "-f",
            "{{.HostConfig.RestartPolicy.Name}}:{{.HostConfig.RestartPolicy.MaximumRetryCount}}",
            container(service),
        )
        assert policy == "on-failure:5", service


def test_data_on_the_host_is_the_users_and_opaque(project: Path) -> None:
    """After stop: the seed's listing, owned by the user, 0600/0700, no plaintext."""
    value = _stored(project)
    make(project, "stop")
    data = project / "data"
    assert {str(p.relative_to(data)) for p in data.rglob("*.db")} == (
        SEED_LISTING | PYTHON_RUNTIME_EXTRAS
    )
    for path in [data, *data.rglob("*")]:
        assert path.stat().st_uid == os.getuid(), path
        expected = 0o700 if path.is_dir() else 0o600
        assert path.stat().st_mode & 0o777 == expected, path
    needles = [
        b"SQLite format 3",
        b"storage@fame.fabric",
        b"CREATE TABLE",
        value.split('"')[3].encode(),
    ]
    assert plaintext_hits(data, needles) == []


def test_wrong_key_stops_the_agent_and_changes_nothing(project: Path) -> None:
    """A wrong key in config/master.key: start fails, logs hold the one-line error naming
    the keyring and the key setting, no data file changes; the right key brings it back."""
    value = _stored(project)
    make(project, "stop")
    key_file = project / "config" / config_files.KEY_FILE
    good_key = key_file.read_text()
    before = checksums(project / "data")
    write_key_file(key_file, generate_master_key())

    failed = make(project, "start", check=False)
    assert failed.returncode != 0
    # Both nodes share the key: the sentinel fails first, and make says why.
    assert "error: sentinel exited: sentinel: error: the keyring" in failed.stderr
    logs = make(project, "logs").stdout
    assert "error: the keyring /work/data/" in logs
    assert "was made under master key" in logs
    assert "FAME_STORAGE_MASTER_KEY_FILE" in logs
    assert "Traceback" not in logs
    assert checksums(project / "data") == before

    make(project, "stop")
    write_key_file(key_file, good_key.strip())
    make(project, "start")
    assert client_lines(make(project, "run"))[0] == f"Previous state: {value}"


def _key(project: Path) -> str:
    return (project / "config" / config_files.KEY_FILE).read_text().strip()


def test_master_key_never_reaches_make_output_or_logs(project: Path) -> None:
    """Neither make's output nor any container log shows the master key, a
    credential's secret or a private key."""
    outputs = [make(project, t) for t in ("start", "run", "status", "logs", "stop")]
    secrets = secret_values(project)
    assert {"master.key", "persistent-agent.secret", "client.secret", "issuer.key"} <= set(secrets)
    for result in outputs:
        assert leaked(result.stdout + result.stderr, secrets) == []


def test_the_key_is_a_secret_file_not_an_environment_variable(project: Path) -> None:
    """After make start, neither `docker inspect` of a node container nor its process
    environment (/proc/1/environ) holds the key; the node reads it from /run/secrets,
    owner-only; under config/ only the key file holds it."""
    make(project, "start")
    key = _key(project)
    for service in ("sentinel", "persistent-agent"):
        cid = container(service)
        inspect = docker("inspect", cid)
        assert key not in inspect
        assert "FAME_STORAGE_MASTER_KEY_FILE=/run/secrets/master_key" in inspect
        environ = docker("exec", cid, "cat", "/proc/1/environ")
        assert "FAME_STORAGE_MASTER_KEY_FILE=/run/secrets/master_key" in environ
        assert key not in environ
        assert docker("exec", cid, "stat", "-c", "%a", "/run/secrets/master_key") == "600"
    holders = [
        p.name for p in (project / "config").iterdir() if p.is_file() and key in p.read_text()
    ]
    assert holders == [config_files.KEY_FILE]
    make(project, "stop")


def test_clean_removes_data_config_and_keys_without_root(project: Path) -> None:
    """clean: containers down; data/, generated config and keys gone; nothing foreign left."""
    _stored(project)
    make(project, "clean")
    assert not (project / "data").exists()
    assert [p.name for p in (project / "config").glob(".env.*") if p.suffix != ".example"] == []
    assert not (project / "config" / config_files.KEY_FILE).exists()
    foreign = [p for p in project.rglob("*") if p.stat().st_uid != os.getuid()]
    assert foreign == []
    assert project_containers() == []


def test_run_with_nothing_started_says_so_at_once(project: Path) -> None:
    """`make run` while the stack is down: one line naming `make start`, not a 30 s wait."""
    failed = make(project, "run", check=False)
    assert failed.returncode != 0
    errors = [line for line in failed.stderr.splitlines() if line.startswith("client:")]
    # The client asks the token issuer first: that is what cannot be found.
    assert errors == [
        "client: error: nothing is running at https://issuer:8443 (unknown host); "
        "start it with `make start`"
    ]


def test_stop_status_and_logs_in_a_never_started_checkout(project: Path) -> None:
    """Without config: stop has nothing to do, status and logs say why they cannot answer."""
    assert "nothing to stop" in make(project, "stop").stdout
    for target in ("status", "logs"):
        failed = make(project, target, check=False)
        assert failed.returncode != 0
        assert "the compose demo was never started here (make start)" in failed.stderr


def test_build_without_a_registry_says_how_to_build_a_base(built: Path) -> None:
    """A base image that cannot be pulled: one line pointing at `make base-image`."""
    failed = make(built, "build", "PYTHON_IMAGE=registry.invalid/python:3.12-slim", check=False)
    assert failed.returncode != 0
    [line] = [s for s in failed.stderr.splitlines() if s.startswith("error:")]
    assert line.startswith(
        "error: the base image registry.invalid/python:3.12-slim could not be pulled ("
    )
    assert "`sudo make base-image`, then `make start PYTHON_IMAGE=" in line


# What each process finds under /run/secrets: its own credential and files only.
OWN_SECRETS = {
    "issuer": {"issuer"},
    "sentinel": {"master_key", "ca_cert", "sentinel_cert", "sentinel_key"},
    "persistent-agent": {"master_key", "ca_cert", "agent_secret"},
    "client": {"ca_cert", "client_secret"},
}
ISSUER_FILES = {"ca.crt", "issuer.crt", "issuer.key", "issuer-signing.key", "clients.json"}


def _start_idle_client(project: Path) -> str:
    """A client container as `make run` makes it, idle, so that it can be inspected."""
    idle = ["python", "-c", "import time; time.sleep(600)"]
    command = [*compose_command(project), "run", "-d", "client", *idle]
    run(command, project, env_vars=compose_env(), timeout=120)
    return container("client")


def _attach_failure(url: str, ca_file: Path | None = None) -> BaseException:
    """What an attach handshake to *url* ends with (it must not succeed)."""
    import ssl

    from websockets.asyncio.client import connect

    async def attempt() -> None:
        tls = ssl.create_default_context(cafile=str(ca_file)) if ca_file else None
        async with connect(url, ssl=tls, open_timeout=10):
            pass

    try:
        asyncio.run(attempt())
    except Exception as exc:  # the failure is what is checked
        return exc
    raise AssertionError(f"an attach to {url} without a token succeeded")


def test_the_secured_flow_holds_no_secret_in_sight_and_publishes_the_sentinel_only(
    project: Path,
) -> None:
    """start and run (the seed's two lines), then: no container's `docker inspect` (Env,
    Cmd, anything) holds a secret; each process sees only its own files under
    /run/secrets; only the sentinel publishes a port, and it speaks TLS only: a
    plain ws:// attach gets no HTTP answer, the same over wss:// is refused for
    want of a token."""
    make(project, "start")
    lines = client_lines(make(project, "run"))
    assert lines[0] == "Previous state: null"
    assert re.fullmatch(r'Updated state: \{"value":"\d{13}"\}', lines[1])

    client = _start_idle_client(project)
    try:
        secrets = secret_values(project)
        containers = project_containers()
        assert len(containers) == len(OWN_SECRETS)
        published = {}
        for cid in containers:
            raw = docker("inspect", cid)
            assert leaked(raw, secrets) == [], cid
            info = json.loads(raw)[0]
            service = info["Config"]["Labels"]["com.docker.compose.service"]
            assert leaked(json.dumps([info["Config"]["Env"], info["Config"]["Cmd"]]), secrets) == []
            mounted = set(docker("exec", cid, "ls", "/run/secrets").split())
            assert mounted == OWN_SECRETS[service], service
            published[service] = {
                port: [(b["HostIp"], b["HostPort"]) for b in bindings or []]
                for port, bindings in (info["HostConfig"]["PortBindings"] or {}).items()
                if bindings
            }
        issuer_dir = set(docker("exec", container("issuer"), "ls", "/run/secrets/issuer").split())
        assert issuer_dir == ISSUER_FILES
    finally:
        docker("rm", "-f", client)

    port = env()["SENTINEL_PORT"]
    assert published == {
        "issuer": {},
        "sentinel": {"8000/tcp": [("127.0.0.1", port)]},
        "persistent-agent": {},
        "client": {},
    }
    from websockets.exceptions import InvalidMessage, InvalidStatus

    path = "/fame/v1/attach/ws/downstream"
    plain = _attach_failure(f"ws://127.0.0.1:{port}{path}")
    assert isinstance(plain, InvalidMessage), repr(plain)
    tls = _attach_failure(f"wss://127.0.0.1:{port}{path}", project / "config/access/ca.crt")
    assert isinstance(tls, InvalidStatus), repr(tls)
    assert tls.response.status_code in (401, 403)


# Asks the issuer for a token once per stdin line "<client id> <secret>" and prints
# only each answer's HTTP status: the secrets travel on stdin, never in argv or env.
_ISSUER_PROBE = """
import ssl, sys, urllib.error, urllib.parse, urllib.request
tls = ssl.create_default_context(cafile="/tmp/ca.crt")
for line in sys.stdin.read().splitlines():
    client_id, secret = line.split(" ", 1)
    body = urllib.parse.urlencode({"grant_type": "client_credentials",
        "client_id": client_id, "client_secret": secret}).encode()
    try:
        status = urllib.request.urlopen(
            "https://issuer:8443/oauth/token", body, context=tls, timeout=30).status
    except urllib.error.HTTPError as refused:
        status = refused.code
    print(status)
"""


def _token_statuses(project: Path, attempts: list[tuple[str, str]]) -> list[int]:
    """The issuer's HTTP status for each (client id, secret), asked from inside the
    compose network (the issuer publishes no port), trusting the project CA only."""
    issuer = container("issuer")
    [network] = docker(
        "inspect", "-f", "{{range $k, $v := .NetworkSettings.Networks}}{{$k}}{{end}}", issuer
    ).split()
    ca = project / "config/access/ca.crt"
    command = ["docker", "run", "--rm", "-i", "--network", network]
    command += ["--user", compose_env()["UID_GID"], "-v", f"{ca}:/tmp/ca.crt:ro"]
    command += [env()["IMAGE"], "python", "-c", _ISSUER_PROBE]
    answer = subprocess.run(
        command,
        input="".join(f"{cid} {secret}\n" for cid, secret in attempts),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert answer.returncode == 0, answer.stderr[-2000:]
    return [int(line) for line in answer.stdout.split()]


def _started_at(service: str) -> tuple[str, str]:
    """The id of *service*'s running container and when that container last started."""
    cid = container(service)
    return cid, docker("inspect", "-f", "{{.State.StartedAt}}", cid)


def test_rotate_credentials_in_compose_restarts_the_holder_and_refuses_the_old_secret(
    project: Path,
) -> None:
    """start and run; rotate the agent's credential: its container restarts, its secret
    file changes and the next run reads the stored value; rotate the client's: the next
    run works with the new secret; the issuer refuses the old secrets (401) and grants
    the new ones (200); no secret, old or new, shows in make's output or the logs."""
    outputs = [make(project, "start")]
    outputs.append(make(project, "run"))
    first = client_lines(outputs[-1])
    assert first[0] == "Previous state: null"
    assert re.fullmatch(r'Updated state: \{"value":"\d{13}"\}', first[1])

    access = project / "config" / "access"
    old = {
        cid: (access / f"{cid}.secret").read_text().strip()
        for cid in ("client", "persistent-agent")
    }
    agent_before = _started_at("persistent-agent")

    outputs.append(make(project, "rotate-credentials", "CLIENT=persistent-agent"))
    agent_after = _started_at("persistent-agent")
    assert agent_after[0] == agent_before[0], "the agent was recreated, not restarted"
    assert agent_after[1] != agent_before[1], "the agent container was not restarted"
    # Compared to a bool first: pytest would show both values of a failed `!=`.
    changed = (access / "persistent-agent.secret").read_text().strip() != old["persistent-agent"]
    assert changed, "the agent's secret file did not change"
    outputs.append(make(project, "run"))
    second = client_lines(outputs[-1])
    assert second[0] == "Previous state: " + first[1].removeprefix("Updated state: ")

    outputs.append(make(project, "rotate-credentials", "CLIENT=client"))
    changed = (access / "client.secret").read_text().strip() != old["client"]
    assert changed, "the client's secret file did not change"
    outputs.append(make(project, "run"))
    third = client_lines(outputs[-1])
    assert third[0] == "Previous state: " + second[1].removeprefix("Updated state: ")

    new = {cid: (access / f"{cid}.secret").read_text().strip() for cid in old}
    attempts = [(cid, old[cid]) for cid in old] + [(cid, new[cid]) for cid in new]
    assert _token_statuses(project, attempts) == [401, 401, 200, 200]

    outputs.append(make(project, "logs"))
    secrets = secret_values(project)
    assert {"client.secret", "persistent-agent.secret"} <= set(secrets)
    secrets.update({f"old {cid}.secret": value for cid, value in old.items()})
    for result in outputs:
        assert leaked(result.stdout + result.stderr, secrets) == []
