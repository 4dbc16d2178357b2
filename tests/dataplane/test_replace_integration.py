"""
Replacing a rule with a new version of itself on the same port, over real
sockets on 127.0.0.1, as an edge does when a pushed rule's spec changed.

The old version stops accepting and drains; the new one serves the same
kernel socket at once, so the push answers C{activated} (not
C{port_in_use}), nothing waiting in the accept queue or the receive buffer
is lost, and a connection opened before the replace completes through the
old target.  Every wait is for an event; the class C{timeout} bounds them.
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.protocol import Factory
from twisted.internet.threads import deferToThread
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import TestCase

from portunus.client.agent import ACTIVATED, FAILED, EdgeAgent
from portunus.dataplane import Forwarder
from portunus.model import PortRange, Rule, Target
from portunus.model import Protocol as Proto
from portunus.rulejson import rule_to_dict
from tests._net import (
    LOOPBACK,
    CollectingClient,
    OneShotClientFactory,
    free_port,
    tagged_factory,
)
from tests.dataplane.test_sni import client_hello
from tests.dataplane.test_udp_integration import Client as UdpClient
from tests.dataplane.test_udp_integration import Echo as UdpEcho

reactor: Any = _reactor


def blocking_exchange(sock: socket.socket, payload: bytes) -> Deferred[bytes]:
    """Send, half-close and read to EOF on an already connected socket, in a thread."""

    def run() -> bytes:
        with sock:
            sock.settimeout(10)
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
            return b"".join(chunks)

    return deferToThread(run)


class ReplaceTestCase(TestCase):
    timeout = 60

    def setUp(self) -> None:
        self.forwarder = Forwarder(reactor)
        self.agent = EdgeAgent(self.forwarder, drain_timeout=30.0)
        self.agent.begin_session()
        self.addCleanup(self.forwarder.stop, 1.0)

    def target(self, tag: bytes) -> tuple[int, Factory]:
        factory = tagged_factory(tag)
        port = reactor.listenTCP(0, factory, interface=LOOPBACK)
        self.addCleanup(port.stopListening)
        return int(port.getHost().port), factory

    def rule(self, listen: int, target: int, protocol: Proto = Proto.TCP, **kw: Any) -> Rule:
        return Rule(
            id=kw.pop("id", 1),
            name=kw.pop("name", "replaced"),
            protocol=protocol,
            listen=PortRange.single(listen),
            targets=(Target(LOOPBACK, PortRange.single(target)),),
            listen_addresses=(LOOPBACK,),
            **kw,
        )

    def push(self, rule: Rule) -> None:
        self.assertEqual(self.agent.push(rule_to_dict(rule)), (ACTIVATED, None))

    def exchange(self, port: int, payload: bytes) -> Deferred[bytes]:
        sock = socket.create_connection((LOOPBACK, port), timeout=10)
        return blocking_exchange(sock, payload)

    @inlineCallbacks
    def hold(self, port: int, first: bytes, target: Factory) -> Any:
        """A connection through C{port} whose first bytes reached C{target}."""
        arrived: Deferred[None] = Deferred()
        target.arrived.append(arrived)  # type: ignore[attr-defined]
        client = CollectingClient(first)
        reactor.connectTCP(LOOPBACK, port, OneShotClientFactory(client), timeout=10)
        yield arrived
        return client

    def removed(self, rule_name: str) -> Deferred[dict[str, Any]]:
        """Fires with the next rule.removed event for C{rule_name}."""
        d: Deferred[dict[str, Any]] = Deferred()

        def observe(event: dict[str, Any]) -> None:
            if event.get("event") == "rule.removed" and event.get("rule") == rule_name:
                globalLogPublisher.removeObserver(observe)
                d.callback(event)

        globalLogPublisher.addObserver(observe)
        self.addCleanup(lambda: None if d.called else globalLogPublisher.removeObserver(observe))
        return d


class TcpReplaceTests(ReplaceTestCase):
    @inlineCallbacks
    def test_new_target_on_the_same_port(self) -> Any:
        """
        A changed target on the same port activates; new connections reach
        the new target, one waiting in the accept queue during the swap
        included; a connection opened before keeps its old target until
        it ends, and then the old version's drain completes with nothing cut.
        """
        port = free_port()
        old_target, old_factory = self.target(b"A")
        new_target, _ = self.target(b"B")
        self.push(self.rule(port, old_target, name="web"))
        self.assertEqual((yield self.exchange(port, b"before")), b"A:got before")
        held = yield self.hold(port, b"held", old_factory)
        # Connected by the kernel, not yet accepted: it sits in the queue.
        queued = socket.create_connection((LOOPBACK, port), timeout=10)
        drained = self.removed("web")

        self.push(self.rule(port, new_target, name="web"))

        self.assertEqual((yield blocking_exchange(queued, b"queued")), b"B:got queued")
        self.assertEqual((yield self.exchange(port, b"after")), b"B:got after")
        assert held.transport is not None
        held.transport.loseWriteConnection()
        self.assertEqual((yield held.done), b"A:got held")
        self.assertEqual((yield drained)["cut"], 0)

    @inlineCallbacks
    def test_moving_to_another_port_frees_the_old_one(self) -> Any:
        """The pairs the new version no longer listens on are closed; new ones are bound."""
        first, second = free_port(), free_port()
        target, _ = self.target(b"A")
        self.push(self.rule(first, target))
        self.push(self.rule(second, target))
        self.assertEqual((yield self.exchange(second, b"x")), b"A:got x")
        for _ in range(50):
            yield turn()
        with socket.socket() as probe:
            self.assertNotEqual(probe.connect_ex((LOOPBACK, first)), 0)

    def test_a_port_taken_by_someone_else_still_fails(self) -> None:
        """
        A replacement that needs a port somebody else holds answers
        port_in_use; the old version is gone (as before) and its port too.
        """
        port = free_port()
        target, _ = self.target(b"A")
        self.push(self.rule(port, target))
        blocker = socket.socket()
        self.addCleanup(blocker.close)
        blocker.bind((LOOPBACK, 0))
        blocker.listen(1)
        taken = self.rule(blocker.getsockname()[1], target)
        self.assertEqual(self.agent.push(rule_to_dict(taken)), (FAILED, "port_in_use"))
        self.assertEqual(self.forwarder.rules, ())
        self.assertEqual(self.agent.rules, {})


class UdpReplaceTests(ReplaceTestCase):
    def udp_target(self, label: bytes) -> int:
        port = reactor.listenUDP(0, UdpEcho(label), interface=LOOPBACK)
        self.addCleanup(port.stopListening)
        return int(port.getHost().port)

    @inlineCallbacks
    def test_new_target_on_the_same_port(self) -> Any:
        """
        A changed UDP target on the same port activates; a datagram sent
        just before the swap, still in the socket's buffer, is forwarded by
        the new version, and replies keep coming from the same listener.
        """
        port = free_port(socket.SOCK_DGRAM)
        old_target, new_target = self.udp_target(b"A:"), self.udp_target(b"B:")
        self.push(self.rule(port, old_target, Proto.UDP))
        client = UdpClient()
        listening = reactor.listenUDP(0, client, interface=LOOPBACK)
        self.addCleanup(listening.stopListening)
        client.send(b"one", port)
        self.assertEqual((yield client.wait_for(1)), [b"A:one"])

        client.send(b"queued", port)
        self.push(self.rule(port, new_target, Proto.UDP))

        self.assertEqual((yield client.wait_for(2)), [b"A:one", b"B:queued"])
        client.send(b"two", port)
        self.assertEqual((yield client.wait_for(3))[2], b"B:two")
        self.assertEqual(client.senders, {(LOOPBACK, port)})

    @inlineCallbacks
    def test_tcp_to_udp_on_the_same_port(self) -> Any:
        """A new protocol binds its own socket; the old protocol's is closed."""
        port = free_port()
        target, _ = self.target(b"A")
        self.push(self.rule(port, target))
        udp_target = self.udp_target(b"U:")
        self.push(self.rule(port, udp_target, Proto.UDP))
        client = UdpClient()
        listening = reactor.listenUDP(0, client, interface=LOOPBACK)
        self.addCleanup(listening.stopListening)
        client.send(b"x", port)
        self.assertEqual((yield client.wait_for(1)), [b"U:x"])


class SniReplaceTests(ReplaceTestCase):
    def sni_rule(self, rule_id: int, listen: int, target: int, pattern: str) -> Rule:
        return self.rule(listen, target, id=rule_id, name=f"sni-{rule_id}", sni_pattern=pattern)

    @inlineCallbacks
    def test_replacing_the_only_rule_on_a_port(self) -> Any:
        """
        The only SNI rule of a port is replaced: its listener carries on
        for the new version, and a connection routed before still completes.
        """
        port = free_port()
        (old_target, old_factory), (new_target, _) = self.target(b"A"), self.target(b"B")
        self.push(self.sni_rule(1, port, old_target, "a.example"))
        hello = client_hello(b"a.example")
        held = yield self.hold(port, hello, old_factory)
        queued = socket.create_connection((LOOPBACK, port), timeout=10)
        drained = self.removed("sni-1")

        self.push(self.sni_rule(1, port, new_target, "a.example"))

        reply = yield blocking_exchange(queued, hello)
        self.assertEqual(reply, b"B:got " + hello)
        self.assertEqual((yield self.exchange(port, hello)), b"B:got " + hello)
        assert held.transport is not None
        held.transport.loseWriteConnection()
        self.assertEqual((yield held.done), b"A:got " + hello)
        self.assertEqual((yield drained)["cut"], 0)

    @inlineCallbacks
    def test_replacing_one_of_several_rules_on_a_port(self) -> Any:
        """
        Replacing one SNI rule of a shared port binds nothing: the port's
        listener stays, the other rule is untouched, the new version routes.
        """
        port = free_port()
        (a, _), (b, _), (c, _) = self.target(b"A"), self.target(b"B"), self.target(b"C")
        self.push(self.sni_rule(1, port, a, "a.example"))
        self.push(self.sni_rule(2, port, b, "b.example"))
        self.push(self.sni_rule(1, port, c, "a.example"))
        hello_a, hello_b = client_hello(b"a.example"), client_hello(b"b.example")
        self.assertEqual((yield self.exchange(port, hello_a)), b"C:got " + hello_a)
        self.assertEqual((yield self.exchange(port, hello_b)), b"B:got " + hello_b)


def turn() -> Deferred[None]:
    """One reactor turn."""
    d: Deferred[None] = Deferred()
    reactor.callLater(0, d.callback, None)
    return d
