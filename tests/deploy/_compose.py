"""
Reading the Compose files the way Compose does for the parts the tests
use: YAML, then C{${VAR}}, C{${VAR:-default}} and C{$$} interpolation.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

import yaml

from tests.deploy._support import CONTRIB

COMPOSE_DIR = os.path.join(CONTRIB, "container")

_VARIABLE = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def interpolate(value: Any, env: Mapping[str, str]) -> Any:
    """C{value} with Compose's variable syntax replaced, recursively."""
    if isinstance(value, str):

        def replace(match: re.Match[str]) -> str:
            if match.group(0) == "$$":
                return "$"
            return env.get(match.group(1)) or match.group(2) or ""

        return _VARIABLE.sub(replace, value)
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    return value


def load(name: str, env: Mapping[str, str] = {}) -> dict[str, Any]:
    """C{contrib/container/compose.<name>.yml}, interpolated with C{env}."""
    with open(os.path.join(COMPOSE_DIR, f"compose.{name}.yml")) as f:
        document = yaml.safe_load(f)
    return dict(interpolate(document, env))
