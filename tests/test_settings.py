"""The settings registry: each kind parses and refuses in one line, secrets stay
out of messages, every variable read in src/ is declared, and every declared
one is read somewhere (or is a runtime's or a library's)."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from persistent_agent import settings
from persistent_agent.errors import ConfigError
from persistent_agent.storage import registry  # declares its backends' own settings

from .conftest import REPO

SRC = REPO / "src" / "persistent_agent"

# Modules that hand the runtime ``Expressions.env(name)`` for names taken from
# declared settings, in a loop (so the scan cannot resolve them).
BUILT_FROM_SETTINGS = {"storage/provider_factory.py"}
# By-name reads of os.environ that do not go through the registry, and why.
KEPT = {
    # errors.py sits below settings (which raises its ConfigError), so it reads
    # its one variable itself; settings declares it like every other.
    ("errors.py", "PERSISTENT_AGENT_DEBUG"),
}


# ---------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    ("setting", "raw", "expected"),
    [
        (settings.SENTINEL_PORT, "9000", 9000),
        (settings.PERSISTENT_AGENT_ISSUER_PORT, "0", 0),
        (settings.PERSISTENT_AGENT_MAX_WAIT_SECONDS, "0.5", 0.5),
        (settings.CLIENT_TIMEOUT_SECONDS, "-1", -1.0),
        (settings.PERSISTENT_AGENT_DEBUG, "Yes", True),
        (settings.PERSISTENT_AGENT_DEBUG, "off", False),
        (settings.FAME_STORAGE_DB_DIRECTORY, "/data", Path("/data")),
        (settings.FAME_STORAGE_PROFILE, "Encrypted-SQLite", "encrypted-sqlite"),
        (settings.SENTINEL_HOST, " 0.0.0.0 ", "0.0.0.0"),  # noqa: S104 - a value to parse
    ],
)
def test_each_kind_parses_its_text(setting: settings.Setting[Any], raw: str, expected: Any) -> None:
    assert setting.value({setting.name: raw}) == expected


def test_unset_and_blank_give_the_default() -> None:
    for env in ({}, {"SENTINEL_PORT": "  "}):
        assert settings.SENTINEL_PORT.value(env) == 8000
        assert not settings.SENTINEL_PORT.is_set(env)
    assert settings.FAME_STORAGE_TRANSIT_KEY.value({}) is None


@pytest.mark.parametrize(
    ("setting", "raw", "line"),
    [
        (settings.SENTINEL_PORT, "80x", "SENTINEL_PORT='80x' is not a port number (1-65535)"),
        (settings.SENTINEL_PORT, "70000", "SENTINEL_PORT='70000' is not a port number"),
        (
            settings.PERSISTENT_AGENT_TOKEN_TTL_SECONDS,
            "0",
            "PERSISTENT_AGENT_TOKEN_TTL_SECONDS must be a whole number from 1 to 86400, not '0'",
        ),
        (
            settings.PERSISTENT_AGENT_MAX_WAIT_SECONDS,
            "-2",
            "PERSISTENT_AGENT_MAX_WAIT_SECONDS must be a positive number of seconds, not '-2'",
        ),
        (
            settings.CLIENT_TIMEOUT_SECONDS,
            "soon",
            "CLIENT_TIMEOUT_SECONDS must be a number of seconds, not 'soon'",
        ),
        (settings.PERSISTENT_AGENT_DEBUG, "maybe", "PERSISTENT_AGENT_DEBUG='maybe': use one of"),
        (
            settings.FAME_STORAGE_PROFILE,
            "postgres",
            "FAME_STORAGE_PROFILE='postgres' is not one of the values it takes: "
            "encrypted-sqlite, encrypted-postgres, sqlite, memory",
        ),
    ],
)
def test_a_bad_value_is_one_line_naming_the_variable(
    setting: settings.Setting[Any], raw: str, line: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        setting.value({setting.name: raw})
    assert str(caught.value).startswith(line)
    assert "\n" not in str(caught.value)


def test_required_says_what_is_missing_and_the_fix() -> None:
    with pytest.raises(ConfigError, match=r"^PERSISTENT_AGENT_ACCESS_DIR is not set; run it$"):
        settings.PERSISTENT_AGENT_ACCESS_DIR.required({}, hint="run it")
    got = settings.PERSISTENT_AGENT_ACCESS_DIR.required({"PERSISTENT_AGENT_ACCESS_DIR": "/a"})
    assert got == Path("/a")


def test_the_process_environment_is_the_default_source(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ISSUER_PORT", "9443")
    assert settings.value(settings.ISSUER_PORT) == 9443
    assert settings.ISSUER_PORT.raw() == "9443"


def test_a_secret_is_a_file_and_never_quoted() -> None:
    for setting in settings.declared():
        if setting.secret:
            assert setting.kind == "path" or setting.name in settings._INLINE_SECRETS, setting
            assert setting.name.endswith("_FILE") or setting.name in settings._INLINE_SECRETS
    assert settings.FAME_STORAGE_MASTER_KEY.shown("ab" * 32) == "<redacted>"
    assert settings.FAME_STORAGE_MASTER_KEY_FILE.shown("/k") == "'/k'"


def test_a_secret_value_cannot_be_declared() -> None:
    with pytest.raises(ValueError, match="a secret is a"):
        settings.text("PERSISTENT_AGENT_TEST_TOKEN", "x", readers=(), default=None, secret=True)
    assert "PERSISTENT_AGENT_TEST_TOKEN" not in {s.name for s in settings.declared()}


def _in_backend_entries() -> set[str]:
    """Settings a backend declares in its own storage/registry.py entry
    (docs/extending.md), not as constants of settings: read through the entry
    (``BackendEntry.values``)."""
    return {
        s.name
        for entry in registry.BACKENDS.values()
        for s in entry.settings
        if getattr(settings, s.name, None) is not s
    }


def test_each_setting_is_the_constant_of_its_name() -> None:
    """settings.X is the variable X, declared once, with a doc and known readers;
    but a backend's own, declared in its registry entry."""
    declared = settings.declared()
    assert len(declared) >= 25
    in_entries = _in_backend_entries()
    for setting in declared:
        if setting.name not in in_entries:
            assert getattr(settings, setting.name) is setting
        assert settings.lookup(setting.name) is setting
        assert setting.doc and "\n" not in setting.doc
        assert set(setting.readers) <= set(settings.PROCESSES)
        assert setting.owner in settings.OWNERS
        if setting.default is not None:
            assert setting.value({}) == setting.default
    with pytest.raises(ValueError, match="declared twice"):
        settings.text("SENTINEL_HOST", "again", readers=(), default=None)


def test_it_imports_on_a_bare_python() -> None:
    """No site-packages: what `make init` has before anything is installed."""
    code = "import persistent_agent.settings as s; print(len(s.declared()))"
    result = subprocess.run(
        [sys.executable, "-I", "-S", "-c", f"import sys; sys.path.insert(0, 'src'); {code}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    # All but the backends' own, which storage.registry declares when imported.
    assert int(result.stdout) == len(settings.declared()) - len(_in_backend_entries())


# ---------------------------------------------------------------- the readers


class _Reads(ast.NodeVisitor):
    """Every by-name read of the environment in one module: ``os.environ.get(X)``,
    ``os.environ[X]``, ``X in os.environ`` and ``Expressions.env(X, …)``."""

    def __init__(self) -> None:
        self.found: list[tuple[int, ast.expr]] = []
        self.runtime: list[tuple[int, ast.expr]] = []  # Expressions.env: the runtime reads

    @staticmethod
    def _environ(node: ast.expr) -> bool:
        return isinstance(node, ast.Attribute) and node.attr == "environ"

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        if isinstance(func, ast.Attribute) and node.args:
            if func.attr == "get" and self._environ(func.value):
                self.found.append((node.lineno, node.args[0]))
            if func.attr == "env" and getattr(func.value, "id", "") == "Expressions":
                self.runtime.append((node.lineno, node.args[0]))
        self.generic_visit(node)

    def visit_Subscript(self, node: ast.Subscript) -> None:
        if self._environ(node.value) and isinstance(node.ctx, ast.Load):
            self.found.append((node.lineno, node.slice))
        self.generic_visit(node)

    def visit_Compare(self, node: ast.Compare) -> None:
        if any(self._environ(c) for c in node.comparators):
            self.found.append((node.lineno, node.left))
        self.generic_visit(node)


def _resolve(module: Any, node: ast.expr) -> str | None:
    """The variable name *node* stands for, if it is a literal or a module constant."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.Name):
        found = getattr(module, node.id, None)
    elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
        found = getattr(getattr(module, node.value.id, None), node.attr, None)
    else:
        return None
    return found if isinstance(found, str) else None


def _environment_reads(*, runtime: bool = False) -> list[tuple[str, int, str | None]]:
    """(file, line, variable or None when not a constant) for every by-name read in src/:
    ours, or with *runtime* the runtime's (config expressions we hand it)."""
    reads = []
    for path in sorted(SRC.rglob("*.py")):
        relative = path.relative_to(SRC).as_posix()
        if relative == "settings.py":
            continue
        visitor = _Reads()
        visitor.visit(ast.parse(path.read_text()))
        found = visitor.runtime if runtime else visitor.found
        if found:
            module = _module(relative)
            reads += [(relative, line, _resolve(module, node)) for line, node in found]
    return reads


def _module(relative: str) -> Any:
    dotted = "persistent_agent." + relative.removesuffix(".py").replace("/", ".")
    return importlib.import_module(dotted.removesuffix(".__init__"))


def test_every_variable_read_in_src_is_declared() -> None:
    declared = {s.name for s in settings.declared()}
    reads = _environment_reads() + _environment_reads(runtime=True)
    assert reads, "the scan finds nothing: it is broken"
    assert [r for r in reads if r[2] is not None and r[2] not in declared] == []
    # Every read names its variable (a literal or a module constant), but the
    # runtime's profiles, built from declared settings (test below).
    assert [r for r in reads if r[2] is None and r[0] not in BUILT_FROM_SETTINGS] == []


def test_the_storage_profiles_read_declared_settings_only() -> None:
    from persistent_agent.keys.custody import SETTINGS

    assert [name for name in SETTINGS if name not in {s.name for s in settings.declared()}] == []
    for entry in registry.BACKENDS.values():
        assert all(settings.lookup(s.name) is s for s in entry.settings)


def test_every_reader_goes_through_the_registry() -> None:
    """The environment is read by name only via settings, but for the KEPT reads."""
    direct = [
        (file, line, name) for file, line, name in _environment_reads() if (file, name) not in KEPT
    ]
    assert direct == []


def _referenced_settings() -> set[str]:
    """Names used as ``settings.X`` (or under the aliases ``registry``, ``declared``)
    anywhere in src/ but settings.py."""
    names: set[str] = set()
    for path in SRC.rglob("*.py"):
        if path.name == "settings.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and getattr(node.value, "id", "") in (
                "settings",
                "registry",
                "declared",
            ):
                names.add(node.attr)
    return names


def test_every_declared_variable_is_read_or_is_someone_elses() -> None:
    """A declaration nobody reads is a stale one, unless the runtime or a library reads it."""
    reads = _environment_reads() + _environment_reads(runtime=True)
    # A backend's settings are read through its registry entry (BackendEntry.values).
    used = _referenced_settings() | {name for _, _, name in reads if name} | _in_backend_entries()
    unread = [
        s.name
        for s in settings.declared()
        if s.name not in used and not (s.owner != "project" and not s.readers)
    ]
    assert unread == []


def test_a_process_is_named_only_if_it_reads() -> None:
    """Declared with no reader means someone else's (runtime, library), never ours."""
    assert [s.name for s in settings.declared() if not s.readers and s.owner == "project"] == []
