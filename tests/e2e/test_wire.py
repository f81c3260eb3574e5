"""What crosses the wire: a real packet capture (tcpdump on loopback) of the client's hops.

Taken while the real client runs against the secured local fabric: its token
request to the issuer and its websocket to the sentinel. The capture must hold
TLS and nothing readable: no HTTP upgrade, no stored value, no token, no
secret. Needs tcpdump and root; skipped without them, except under CI=true
(where .ci/run installs tcpdump), where it fails.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from persistent_agent.access.project import access_dir
from persistent_agent.demo.local_nodes import LocalNodes

from ..conftest import wait_until
from .conftest import run_client, stored_value

pytestmark = pytest.mark.e2e


def _tcpdump() -> str:
    tcpdump = shutil.which("tcpdump")
    why = "tcpdump is not installed" if tcpdump is None else "capturing needs root"
    if tcpdump is None or os.geteuid() != 0:
        if os.environ.get("CI") == "true":
            pytest.fail(why)
        pytest.skip(why)
    return tcpdump


def _capture(nodes: LocalNodes, pcap: Path, secure: bool) -> tuple[bytes, str]:
    """The bytes captured on loopback while the client runs once, and the value it stored."""
    ports = f"tcp port {nodes.port}" + (f" or tcp port {nodes.issuer_port}" if secure else "")
    dump = subprocess.Popen(
        [_tcpdump(), "-i", "lo", "--immediate-mode", "-U", "-Z", "root", "-w", str(pcap), ports],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        said = dump.stderr
        assert said is not None
        # tcpdump says "listening on lo" once it captures.
        wait_until(lambda: "listening on" in said.readline(), "tcpdump to listen")
        result = run_client(nodes)
        assert result.returncode == 0, result.stderr
    finally:
        dump.terminate()
        dump.communicate(timeout=60)
    return pcap.read_bytes(), stored_value(result.stdout)


def test_the_clients_hops_carry_nothing_readable(nodes: LocalNodes, tmp_path: Path) -> None:
    nodes.start_all()
    captured, stored = _capture(nodes, tmp_path / "secure.pcap", secure=True)
    value = stored.split('"value":"')[1].split('"')[0].encode()
    secrets = [p.read_bytes().strip() for p in access_dir(nodes.config_dir).glob("*.secret")]
    assert len(captured) > 4000, "the capture holds the client's traffic"
    assert b"\x16\x03" in captured, "TLS handshakes on the wire"
    for needle in (b"Upgrade: websocket", b"HTTP/1.1", b"storage@fame.fabric", value, b"eyJ"):
        assert needle not in captured, needle
    assert not [s for s in secrets if s in captured]


def test_the_same_capture_unsecured_shows_everything(nodes: LocalNodes, tmp_path: Path) -> None:
    """The control: with the opt-out, the very same capture shows the HTTP upgrade, so the
    check above would catch a hop left in plaintext. (The frames that follow are
    compressed, permessage-deflate, so a value need not show even then: the upgrade is
    the tell.)"""
    nodes.secure = False
    nodes.start_all()
    captured, _stored = _capture(nodes, tmp_path / "plain.pcap", secure=False)
    assert b"Upgrade: websocket" in captured
    assert b"GET /fame/v1/attach/ws/downstream/" in captured
