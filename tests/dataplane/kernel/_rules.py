"""Plain rules for the kernel backend's tests."""

from __future__ import annotations

from typing import Any

from portunus.model import PortRange, Protocol, Rule, Target


def plain(target: str = "198.18.1.1", **fields: Any) -> Rule:
    targets = fields.pop("targets", (Target(target, PortRange.single(9000)),))
    return Rule(
        name=fields.pop("name", "web"),
        protocol=fields.pop("protocol", Protocol.TCP),
        listen=fields.pop("listen", PortRange.single(8000)),
        targets=targets,
        **fields,
    )
