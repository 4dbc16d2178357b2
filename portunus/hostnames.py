"""
One host-name grammar for every place a name is typed: rule targets,
server.toml's advertised endpoint, enroll URIs.
"""

from __future__ import annotations

import re
from typing import Final

__all__ = ["is_host_name"]

_LABEL: Final = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
#: Docker and Compose service names may hold underscores.
_LABEL_UNDERSCORE: Final = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")


def is_host_name(host: str, allow_underscore: bool = False) -> bool:
    """
    Whether C{host} is an RFC 1123 host name (one trailing dot allowed).
    An all-numeric dotted name ("999.1.1.1") is refused: it is always a
    mistyped address, never a name.
    """
    name = host[:-1] if host.endswith(".") else host
    if not name or len(name) > 253:
        return False
    label = _LABEL_UNDERSCORE if allow_underscore else _LABEL
    labels = name.split(".")
    if not all(label.fullmatch(part) for part in labels):
        return False
    return not all(part.isdigit() for part in labels)
