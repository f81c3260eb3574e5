"""The README documents every make target and every admin command."""

from __future__ import annotations

import re

from persistent_agent.ops import admin

from .conftest import REPO


def test_every_make_target_is_in_the_readme() -> None:
    """Each `## `-documented Makefile target appears as `make <target>` in README.md."""
    targets = re.findall(r"^([a-z-]+):.*## ", (REPO / "Makefile").read_text(), re.MULTILINE)
    readme = (REPO / "README.md").read_text()
    assert len(targets) > 20
    assert [t for t in targets if f"make {t}" not in readme] == []


def test_every_admin_command_has_help_with_an_example_and_a_make_target() -> None:
    """Each persistent-agent-admin subcommand has an example and a documented front door."""
    parser = admin.build_parser()
    readme = (REPO / "README.md").read_text()
    commands = parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    for name, sub in commands.items():
        assert "Example:" in (sub.epilog or ""), name
        assert f"make {name}" in readme or name == "init", name
