"""The docs match the code: every target and command documented, generated
text current, every module named where the architecture is described."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from persistent_agent.demo.local_nodes import free_port
from persistent_agent.ops import admin

from .conftest import REPO, bare_copy
from .test_makefile import documented_targets

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
# Every file with a cog block (the variable tables in README.md included).
GENERATED = [
    REPO / "README.md",
    REPO / "docs" / "operations.md",
    REPO / "docs" / "metrics.md",
    REPO / "docs" / "architecture.md",
]


def _all_docs() -> str:
    return "\n".join(p.read_text() for p in DOCS)


def _modules() -> list[str]:
    """Every module of the package, dotted from the package root (e.g. ``ops.admin``)."""
    package = REPO / "src" / "persistent_agent"
    return sorted(
        ".".join(p.relative_to(package).with_suffix("").parts)
        for p in package.rglob("*.py")
        if p.name != "__init__.py"
    )


def test_every_make_target_is_documented() -> None:
    """Each `## `-documented Makefile target appears as `make <target>` in README or docs/."""
    text = _all_docs()
    targets = documented_targets()
    assert len(targets) > 25
    assert [t for t in targets if f"make {t}`" not in text and f"make {t} " not in text] == []


def test_every_admin_command_has_help_with_an_example_and_a_make_target() -> None:
    """Each persistent-agent-admin subcommand has help, an example and a documented front door."""
    text = _all_docs()
    for name, registered in admin._COMMANDS.items():
        assert registered.doc, name
        assert registered.example.startswith("persistent-agent-admin "), name
        assert f"make {name}" in text, name


def test_generated_text_in_the_docs_is_current() -> None:
    """The target table, the CLI help and the variable tables are what `make docs` writes."""
    result = subprocess.run(
        [sys.executable, "-m", "cogapp", "--check", *map(str, GENERATED)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, "run `make docs`: " + result.stdout + result.stderr


def test_every_cog_block_is_checked() -> None:
    """A doc with generated text (a ``[[[cog`` block) is one the check above runs on."""
    with_blocks = [p for p in DOCS if "[[[cog" in p.read_text()]
    assert REPO / "README.md" in with_blocks
    assert [p for p in with_blocks if p not in GENERATED] == []


def _registered_backends() -> set[str]:
    """The modules of the registered backends (dotted from the package root): the
    registry lists them, and docs/architecture.md's backends table is generated from it."""
    from persistent_agent.storage import registry

    return {entry.module.removeprefix("persistent_agent.") for entry in registry.BACKENDS.values()}


def test_the_package_docstring_names_every_module() -> None:
    """persistent_agent.__doc__ lists each module by its dotted name; a registered
    backend's module is listed by storage.registry, which the docstring says."""
    import persistent_agent

    doc = persistent_agent.__doc__ or ""
    assert "a backend added there is listed by it" in doc
    unnamed = [m for m in _modules() if f"``{m}``" not in doc]
    assert [m for m in unnamed if m not in _registered_backends()] == []


def test_the_architecture_tree_names_every_module() -> None:
    """docs/architecture.md's tree shows every module file under its wing, but a
    registered backend's, which its generated backends table lists."""
    text = (REPO / "docs" / "architecture.md").read_text()
    tree = text[: text.index("## Storage backends")]
    names = {m.rsplit(".", 1)[-1] + ".py" for m in _modules() if m not in _registered_backends()}
    assert [n for n in sorted(names) if not re.search(rf"\b{re.escape(n)}\b", tree)] == []
    table = text[text.index("## Storage backends") :]
    listed = [m for m in sorted(_registered_backends()) if f"/{m.replace('.', '/')}.py`" in table]
    assert listed == sorted(_registered_backends())


def test_the_docs_say_what_integrity_checks_do_not_detect() -> None:
    """No claim that every flipped byte is caught; the WAL and rollback limits are stated."""
    text = _all_docs()
    assert "a flipped byte anywhere" not in text
    operations = (REPO / "docs" / "operations.md").read_text()
    assert "### What is not detected" in operations
    assert "A damaged WAL frame is discarded, not reported" in operations
    assert "A whole file replaced by an older copy of itself is not detected" in operations


FIRST_RUN_MARK = "<!-- first-run:"
# What differs from one machine and run to the next: the interpreter found, the
# ports (the test picks free ones), the stored values (milliseconds).
_VARIABLE = (
    (re.compile(r"^Using \S+ \(Python [0-9.]+, "), "Using <python> (Python <version>, "),
    (re.compile(r"127\.0\.0\.1:\d+"), "127.0.0.1:<port>"),
    (re.compile(r'\{"value":"\d+"\}'), '{"value":"<n>"}'),
)


def _normalised(lines: list[str]) -> list[str]:
    for pattern, replacement in _VARIABLE:
        lines = [pattern.sub(replacement, line) for line in lines]
    return lines


def readme_first_run() -> list[str]:
    """The README's block of what a first `make demo` prints (after its marker comment)."""
    text = (REPO / "README.md").read_text()
    after = text[text.index(FIRST_RUN_MARK) :]
    block = re.search(r"```\n(.*?)```", after, re.DOTALL)
    assert block is not None
    return block.group(1).splitlines()


def test_the_readme_first_run_block_is_the_demo_s_shape() -> None:
    """Fast check: install, init, access, then the demo's own lines, in that order."""
    lines = readme_first_run()
    assert lines[0].startswith("Using ")
    assert lines[1].startswith("init: master key generated; wrote config/master.key")
    assert lines[2].startswith("access: ")
    assert lines[3].startswith("== starting: token issuer on https://")
    assert lines[-1].startswith("demo: the value stored before the restart")
    assert "Previous state: null" in lines


@pytest.mark.e2e
def test_the_readme_shows_what_a_first_make_demo_prints(tmp_path: Path) -> None:
    """`make demo` in a bare clone (no .venv, no config, no data) prints the README's block,
    line for line, up to the interpreter, the ports and the stored values."""
    root = bare_copy(tmp_path / "clone")
    drop = ("PYTHON", "VENV", "SENTINEL_PORT", "ISSUER_PORT", "PERSISTENT_AGENT_DEBUG")
    env = {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("FAME_")}
    env |= {"SENTINEL_PORT": str(free_port()), "ISSUER_PORT": str(free_port())}
    result = subprocess.run(
        ["make", "--no-print-directory", "demo"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert _normalised(result.stdout.splitlines()) == _normalised(readme_first_run())
