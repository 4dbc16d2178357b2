"""
The Forwarder a standalone config needs.
"""

from __future__ import annotations

from portunus.dataplane.forwarder import Forwarder
from portunus.dataplane.resolver import ResolverConfigError, TargetResolver
from portunus.errors import PortunusError
from portunus.reactors import IDataplaneReactor
from portunus.standalone.config import StandaloneConfig

__all__ = ["forwarder_for"]


def forwarder_for(config: StandaloneConfig, reactor: IDataplaneReactor) -> Forwarder:
    """
    The Forwarder for a config: with a DNS resolver (from its [resolver]
    table) only when some target is a host name, so configs of IP
    addresses never read /etc/resolv.conf nor send a DNS query.
    """
    names = any(not t.is_ip_literal for rule in config.rules for t in rule.targets)
    if not names:
        return Forwarder(reactor)
    try:
        resolver = TargetResolver(reactor, config.resolver)
    except ResolverConfigError as e:
        raise PortunusError(
            "config_invalid", f"{config.source}: resolver: {e}", field="resolver"
        ) from e
    return Forwarder(reactor, resolver=resolver)
