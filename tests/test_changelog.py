"""CHANGELOG.md names every on-disk format version this code writes or reads, and
the module that spells each one out: a new format version fails here until the
changelog says what it is and how to upgrade."""

from __future__ import annotations

import re

import pytest

from persistent_agent.keys import keyring
from persistent_agent.node.agent import CustomAgentState
from persistent_agent.ops import access_backup, backup, shared_tools
from persistent_agent.storage import sealing

from .conftest import REPO

CHANGELOG = (REPO / "CHANGELOG.md").read_text()


@pytest.mark.parametrize(
    ("name", "versions"),
    [
        ("format", backup.FORMATS),  # backups: manifest.json
        ("keyring format", (keyring.FORMAT,)),
        ("shared keyring format", (sealing.KEYRING_FORMAT,)),
        ("format", (shared_tools.BACKUP_FORMAT,)),  # shared_state.json in a backup
        ("access backup format", (access_backup.FORMAT,)),
        ("agent state schema", tuple(range(1, CustomAgentState.SCHEMA_VERSION + 1))),
    ],
)
def test_each_format_version_in_the_code_is_in_the_changelog(
    name: str, versions: tuple[int, ...]
) -> None:
    words = r"\s+".join(name.split())  # a name may wrap across lines
    named = {int(n) for n in re.findall(rf"\*\*{words}\s+(\d+)\*\*", CHANGELOG)}
    assert set(versions) <= named, (name, versions, named)


def test_the_changelog_names_where_each_format_is_spelt_out() -> None:
    for module in ("storage/layout.py", "keys/keyring.py", "ops/backup.py",
                   "storage/sealing.py", "ops/access_backup.py", "node/state.py"):  # fmt: skip
        assert f"`{module}`" in CHANGELOG, module
        assert (REPO / "src" / "persistent_agent" / module).is_file(), module
    assert f"`FORMATS = {backup.FORMATS}`" in CHANGELOG


def test_the_changelog_has_an_upgrade_path() -> None:
    assert "## Upgrading" in CHANGELOG
    assert "make rotate-key" in CHANGELOG or "make restore" in CHANGELOG
