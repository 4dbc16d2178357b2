"""
Tenants on one data plane, over real sockets on 127.0.0.1: a target that
leads back to the process's own listener, local targets a rule may not
reach, and the per-rule connection cap.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

from twisted.internet import reactor as _reactor
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from portunus.dataplane import Forwarder
from portunus.dataplane.descriptors import DescriptorBudget
from portunus.dataplane.resolver import ResolverSettings, TargetResolver
from portunus.model import PortRange, Rule, Target
from portunus.model import Protocol as Proto
from tests._net import LOOPBACK, HeldClients, collect, echo_factory, free_port

reactor: Any = _reactor


def rule(name: str, listen: int, host: str, port: int, **options: Any) -> Rule:
    return Rule(
        name=name,
        protocol=Proto.TCP,
        listen=PortRange.single(listen),
        targets=(Target(host, PortRange.single(port)),),
        listen_addresses=(LOOPBACK,),
        **options,
    )


class TenantsIntegrationTests(TestCase):
    timeout = 60

    def forwarder(self, **options: Any) -> Forwarder:
        forwarder = Forwarder(reactor, splice=None, **options)
        self.addCleanup(forwarder.stop, 0.0)
        return forwarder

    def target(self) -> int:
        port = reactor.listenTCP(0, echo_factory(), interface=LOOPBACK)
        self.addCleanup(port.stopListening)
        return int(port.getHost().port)

    @inlineCallbacks
    def test_connection_back_to_own_listener_is_dropped(self) -> Any:
        """
        A rule whose target is its own listener (installed without the
        push-time check) dials itself once: that connection is dropped at
        the accept and counted on the rule, and nothing loops.
        """
        port = free_port()
        # A cap keeps a regression from looping until descriptors run out.
        forwarder = self.forwarder(budget=DescriptorBudget.for_limit(per_rule=16))
        looping = rule("loop", port, LOOPBACK, port)
        forwarder.install(looping)
        answer = yield collect(reactor, port, b"hello")
        self.assertEqual(answer, b"")
        stats = forwarder.stats_for(looping.id)
        self.assertEqual(stats.self_connections_dropped, 1)
        self.assertEqual(stats.total_connections, 1)
        self.assertEqual(stats.conn_cap_rejects, 0)
        self.assertEqual(forwarder.dialed.owners, {})

    @inlineCallbacks
    def test_connections_through_the_process_still_work(self) -> Any:
        """An ordinary target is relayed as before, and leaves nothing tracked."""
        forwarder = self.forwarder()
        port = free_port()
        plain = rule("plain", port, LOOPBACK, self.target())
        forwarder.install(plain)
        answer = yield collect(reactor, port, b"hello")
        self.assertEqual(answer, b"hello")
        self.assertEqual(forwarder.stats_for(plain.id).self_connections_dropped, 0)
        self.assertEqual(forwarder.dialed.owners, {})

    def _hosts_resolver(self, line: str) -> TargetResolver:
        fd, path = tempfile.mkstemp()
        with os.fdopen(fd, "w") as f:
            f.write(line + "\n")
        self.addCleanup(os.remove, path)
        # The name is in the hosts file: no query reaches this nameserver.
        settings = ResolverSettings(nameservers=[f"{LOOPBACK}:{free_port()}"])
        return TargetResolver(reactor, settings, hosts_file=path)

    @inlineCallbacks
    def test_name_resolving_to_loopback_is_refused_without_local_targets(self) -> Any:
        """
        A rule that may not reach local targets (a tenant's without the
        grant) is refused at dial time when its host name resolves to
        loopback: counted as a local refusal and a connect failure.
        """
        forwarder = self.forwarder(resolver=self._hosts_resolver("127.0.0.1 api.test"))
        port = free_port()
        tenant = rule("tenant", port, "api.test", self.target(), allow_local_targets=False)
        forwarder.install(tenant)
        answer = yield collect(reactor, port, b"GET /v1/users")
        self.assertEqual(answer, b"")
        stats = forwarder.stats_for(tenant.id)
        self.assertEqual(stats.local_target_refusals, 1)
        self.assertEqual(stats.connect_failures, 1)

    @inlineCallbacks
    def test_name_resolving_to_loopback_is_allowed_by_default(self) -> Any:
        """The same name is reached by a rule that may reach local targets."""
        forwarder = self.forwarder(resolver=self._hosts_resolver("127.0.0.1 api.test"))
        port = free_port()
        allowed = rule("admin", port, "api.test", self.target())
        forwarder.install(allowed)
        answer = yield collect(reactor, port, b"ping")
        self.assertEqual(answer, b"ping")
        self.assertEqual(forwarder.stats_for(allowed.id).local_target_refusals, 0)

    @inlineCallbacks
    def test_per_rule_cap_refuses_the_excess_and_spares_other_rules(self) -> Any:
        """
        A rule at its C{max_conns_per_rule} refuses new connections (counted
        as C{conn_cap_rejects}) while another rule keeps relaying.
        """
        forwarder = self.forwarder(budget=DescriptorBudget.for_limit(per_rule=4))
        flooded_port, other_port = free_port(), free_port()
        flooded = rule("flooded", flooded_port, LOOPBACK, self.target())
        other = rule("other", other_port, LOOPBACK, self.target())
        forwarder.install(flooded)
        forwarder.install(other)
        clients = HeldClients(reactor, LOOPBACK, flooded_port, 10)
        yield clients.settled
        self.assertEqual((clients.answered, clients.closed), (4, 6))
        answer = yield collect(reactor, other_port, b"still here")
        self.assertEqual(answer, b"still here")
        self.assertEqual(forwarder.stats_for(flooded.id).conn_cap_rejects, 6)
        self.assertEqual(forwarder.stats_for(other.id).conn_cap_rejects, 0)
        clients.close()
