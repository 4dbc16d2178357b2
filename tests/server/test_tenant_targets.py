"""
What a pushed rule's targets may be, judged by the server (with the
addresses the edge reported in its Hello) and by the edge at activation:
never the rule's own listener, local targets only when allowed.  Server
and edge joined in memory (the control-session harness).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import ensureDeferred
from twisted.trial.unittest import SynchronousTestCase

from portunus.client.agent import EdgeAgent
from portunus.dataplane import Forwarder
from portunus.errors import PortunusError
from portunus.model import PortRange, Protocol, Rule, Target
from tests._net import LOOPBACK, free_port
from tests.server.test_control_session import Harness

#: An address the edge reports as its own.
EDGE_ADDRESS = "192.0.2.7"


def rule(listen: int, host: str, port: int, addresses: tuple[str, ...] = (LOOPBACK,)) -> Rule:
    return Rule(
        name="web",
        protocol=Protocol.TCP,
        listen=PortRange.single(listen),
        targets=(Target(host, PortRange.single(port)),),
        listen_addresses=addresses,
    )


class TenantTargetTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.h = Harness(self)
        self.own = frozenset({EDGE_ADDRESS})
        self.h.agent = EdgeAgent(
            Forwarder(self.h.edge_reactor), drain_timeout=1.0, local=lambda: self.own
        )
        self.addCleanup(self.h.agent.stop)
        bundle = self.h.enroll()["bundle"]
        self.client_id = bundle.client_id
        _, _, self.session, _ = self.h.edge(bundle.token)

    def push(self, pushed: Rule, allow_local_targets: bool = True) -> Any:
        d = ensureDeferred(
            self.h.plane.push_rule(
                self.client_id, pushed, 2.0, allow_local_targets=allow_local_targets
            )
        )
        self.h.settle(self.h.pump)
        return d

    def refused(self, d: Any, code: str) -> PortunusError:
        error: PortunusError = self.failureResultOf(d, PortunusError).value
        self.assertEqual(error.code, code, error.message)
        return error

    def stored(self) -> list[Any]:
        return list(self.h.successful(self.h.plane.list_rules(None)))

    def test_hello_carries_the_edge_addresses(self) -> None:
        """The edge reports its interface addresses in Hello; the server keeps them."""
        self.assertEqual(self.session.addresses, frozenset({EDGE_ADDRESS}))

    def test_target_on_loopback_same_port_is_refused_at_push(self) -> None:
        """A target that is the rule's own listener through loopback is refused, not stored."""
        port = free_port()
        error = self.refused(self.push(rule(port, LOOPBACK, port)), "validation.target_is_listener")
        self.assertEqual(error.fields["field"], "targets[0]")
        self.assertIn("own listener", error.message)
        self.assertEqual(self.stored(), [])

    def test_unspecified_and_localhost_targets_are_the_listener_too(self) -> None:
        """0.0.0.0 and localhost reach a listener on 0.0.0.0 of the same port."""
        port = free_port()
        for host in ("0.0.0.0", "localhost"):
            self.refused(
                self.push(rule(port, host, port, ("0.0.0.0",))), "validation.target_is_listener"
            )

    def test_edge_own_address_is_the_listener_too(self) -> None:
        """The address the edge reported reaches its 0.0.0.0 listener: refused at push."""
        port = free_port()
        self.refused(
            self.push(rule(port, EDGE_ADDRESS, port, ("0.0.0.0",))),
            "validation.target_is_listener",
        )

    def test_same_port_elsewhere_is_fine(self) -> None:
        """Another host on the same port, or loopback on another port, is not a loop."""
        port = free_port()
        view = self.h.successful(self.push(rule(port, "10.0.0.5", port)))
        self.assertEqual(view.state, "active")

    def test_edge_refuses_what_the_server_could_not_see(self) -> None:
        """
        When the server did not know an address (an edge too old to report
        it, or one added since), the edge refuses the rule at activation
        with the same code: a failed push.
        """
        self.session.addresses = frozenset()
        port = free_port()
        error = self.refused(
            self.push(rule(port, EDGE_ADDRESS, port, ("0.0.0.0",))), "activation_failed"
        )
        self.assertEqual(error.fields["reason"], "validation.target_is_listener")
        [stored] = self.stored()
        self.assertEqual(stored.state_reason, "validation.target_is_listener")
        self.assertEqual(self.h.agent.forwarder.rules, ())

    def test_tenant_cannot_target_the_servers_loopback_api(self) -> None:
        """
        A tenant whose grant does not allow local targets cannot publish
        127.0.0.1:7080 (the operator API): local_target_not_granted.
        """
        error = self.refused(
            self.push(rule(free_port(), LOOPBACK, 7080), allow_local_targets=False),
            "local_target_not_granted",
        )
        self.assertIn("loopback", error.message)
        self.assertEqual(self.stored(), [])

    def test_tenant_cannot_target_link_local_or_edge_addresses(self) -> None:
        """Link-local (cloud metadata) and the edge's own addresses are local too."""
        for host in ("169.254.169.254", EDGE_ADDRESS, "::ffff:127.0.0.1", "localhost"):
            self.refused(
                self.push(rule(free_port(), host, 80), allow_local_targets=False),
                "local_target_not_granted",
            )

    def test_tenant_with_the_grant_may_target_loopback(self) -> None:
        """With allow_local_targets the same push is activated."""
        view = self.h.successful(self.push(rule(free_port(), LOOPBACK, 7080)))
        self.assertEqual(view.state, "active")
        self.assertTrue(view.rule.allow_local_targets)

    def test_tenant_rule_tells_the_edge_to_refuse_local_names(self) -> None:
        """A tenant's rule with a name target reaches the edge marked: no local targets."""
        view = self.h.successful(
            self.push(rule(free_port(), "api.example", 443), allow_local_targets=False)
        )
        self.assertFalse(view.rule.allow_local_targets)
        [installed] = self.h.agent.forwarder.rules
        self.assertFalse(installed.allow_local_targets)

    def test_edge_without_the_policy_gets_no_named_tenant_targets(self) -> None:
        """An edge that cannot refuse resolved local addresses is not sent such a rule."""
        self.session.features = self.session.features - {"local_target_policy"}
        self.refused(
            self.push(rule(free_port(), "api.example", 443), allow_local_targets=False),
            "local_target_policy_unsupported_by_client",
        )
