"""The project root and the config helpers that every kind of test uses, in one place.

Overrides replace keys of `base-config.yaml`, dotted for nested ones (`"limits.daily_tokens"`),
as an operator would edit them in the admin UI.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML

ROOT = Path(__file__).resolve().parents[1]
SERVER = "example.org"


def config_data(overrides: dict[str, Any] | None = None) -> Any:
    """base-config.yaml as a round-trip YAML mapping, with the overrides applied."""
    data = YAML().load((ROOT / "base-config.yaml").read_text())
    for key, value in (overrides or {}).items():
        node = data
        *parents, last = key.split(".")
        for parent in parents:
            node = node[parent]
        node[last] = value
    return data


def config_yaml(overrides: dict[str, Any] | None = None) -> str:
    """The config text an operator would save in the admin UI."""
    buf = io.StringIO()
    YAML().dump(config_data(overrides), buf)
    return buf.getvalue()


def settings(overrides: dict[str, Any] | None = None, server: str = SERVER) -> Any:
    """The typed settings of that config, validated like the admin UI's config."""
    from plugin.ops.config import parse_settings

    return parse_settings(config_data(overrides), server)


def agent_settings(agent: dict[str, Any]) -> Any:
    """The typed settings of one agent, from its config entry (as `FakeOpenAI.agent()` gives)."""
    only = settings({"agents": [agent], "default_agent": agent["id"], "onboarding.rooms": []})
    return only.agents[agent["id"]]
