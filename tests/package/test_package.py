"""The built .mbp, as an operator uploads it: loadable by maubot's zip loader, and complete."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from tests.config import ROOT

# What a stock maubot 0.6 install ships besides the standard library.
RUNTIME_PACKAGES = {"maubot", "mautrix", "aiohttp", "yarl", "attr", "attrs", "ruamel", "commonmark"}


@pytest.fixture(scope="module")
def loaded(mbp: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    result = subprocess.run(
        [sys.executable, str(ROOT / "tests/package/load_mbp.py"), str(mbp)],
        cwd=tmp_path_factory.mktemp("clean"),
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(result.stdout)


def test_meta_is_valid(loaded: dict) -> None:
    meta = YAML().load((ROOT / "maubot.yaml").read_text())
    assert loaded["id"] == meta["id"] == "org.agentspaces.maubot"
    assert loaded["version"] == "0.1.0"
    assert meta["database"] is True and meta["database_type"] == "asyncpg"
    assert meta["config"] is True and meta["webapp"] is True
    assert meta["extra_files"] == ["base-config.yaml"]


def test_main_class_imports_from_the_archive(loaded: dict, mbp: Path) -> None:
    assert loaded["main_class"] == "AgentSpacesBot"
    assert loaded["is_plugin"] is True
    assert loaded["module_file"].startswith(str(mbp.resolve()))
    assert loaded["upgrade_versions"] >= 2


def test_every_module_is_in_the_archive_and_nothing_else(loaded: dict) -> None:
    sources = {p.relative_to(ROOT).as_posix() for p in (ROOT / "plugin").rglob("*.py")}
    files = set(loaded["files"])
    assert sources <= files
    assert not [f for f in files if f.endswith((".pyc", ".pyo")) or "__pycache__" in f]
    assert not [f for f in files if f.startswith("tests/")]
    assert files - sources == {"maubot.yaml", "base-config.yaml"}


def _leaf_keys(node: object, prefix: str = "") -> set[str]:
    if isinstance(node, dict):
        keys: set[str] = set()
        for key, value in node.items():
            keys |= _leaf_keys(value, f"{prefix}{key}.")
        return keys
    return {prefix.rstrip(".")}


def test_every_base_config_key_reaches_the_config(loaded: dict) -> None:
    base_keys = _leaf_keys(loaded["base"])
    assert base_keys == _leaf_keys(loaded["config"])
    assert {"command_prefix", "agents", "access.allowed", "web.token"} <= base_keys
    assert loaded["config"]["command_prefix"] == "ai"


def test_plugin_imports_only_what_maubot_ships() -> None:
    foreign = {}
    for path in (ROOT / "plugin").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in RUNTIME_PACKAGES and top not in sys.stdlib_module_names:
                    foreign.setdefault(str(path.relative_to(ROOT)), []).append(name)
    assert foreign == {}
