"""
The forwarder a standalone config needs: in this process, or in worker
processes (C{--workers N}).
"""

from __future__ import annotations

from portunus.dataplane.descriptors import DescriptorBudget
from portunus.dataplane.forwarder import Forwarder
from portunus.dataplane.resolver import ResolverConfigError, TargetResolver
from portunus.dataplane.workers.forwarder import WorkerForwarder
from portunus.errors import PortunusError
from portunus.reactors import IDataplaneReactor
from portunus.standalone.config import StandaloneConfig

__all__ = ["StandaloneForwarder", "forwarder_for"]

StandaloneForwarder = Forwarder | WorkerForwarder


def forwarder_for(
    config: StandaloneConfig,
    reactor: IDataplaneReactor,
    workers: int = 1,
    log_level: str = "warn",
    log_format: str = "json",
) -> StandaloneForwarder:
    """
    The forwarder for a config: with C{workers} above 1, served by that
    many worker processes, else by this one.  Either way with a DNS
    resolver (from its [resolver] table) only when some target is a host
    name, so configs of IP addresses never read /etc/resolv.conf nor send
    a DNS query.

    @raise PortunusError: C{config_invalid}, the [resolver] table cannot
        work (no nameserver anywhere ...); checked here even for workers,
        so the service fails at start rather than in every worker.
    """
    names = any(not t.is_ip_literal for rule in config.rules for t in rule.targets)
    resolver = None
    if names:
        try:
            resolver = TargetResolver(reactor, config.resolver)
        except ResolverConfigError as e:
            raise PortunusError(
                "config_invalid", f"{config.source}: resolver: {e}", field="resolver"
            ) from e
    if workers > 1:
        return WorkerForwarder(
            reactor,
            workers,
            event_prefix="standalone",
            drain_secs=config.shutdown_drain_secs,
            # Only rule totals are logged (standalone.stats).
            port_stats=False,
            resolver=config.resolver if names else None,
            log_level=log_level,
            log_format=log_format,
            reserve_fds=config.reserve_fds,
            max_conns_per_rule=config.max_conns_per_rule,
        )
    budget = DescriptorBudget.for_limit(
        reserve=config.reserve_fds, per_rule=config.max_conns_per_rule
    )
    return Forwarder(reactor, resolver=resolver, budget=budget)
