"""
The UDP data plane over real sockets on 127.0.0.1 (and ::1 where present).

Every wait is for an event (a datagram, a log event, a process line) with
a bounded count; the class C{timeout} is the only upper bound on time.
"""

from __future__ import annotations

import os
import resource
import shutil
import socket
from typing import Any

from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred, DeferredSemaphore, gatherResults, inlineCallbacks
from twisted.internet.protocol import DatagramProtocol, ProcessProtocol
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from portunus.dataplane import Forwarder
from portunus.dataplane.udp import MAX_DATAGRAM
from portunus.model import PortRange, Protocol, Rule, Target
from tests._net import LOOPBACK, free_port, free_port_range

reactor: Any = _reactor

#: The largest UDP payload IPv4 can carry: 65,535 - 20 (IP) - 8 (UDP).
MAX_IPV4_PAYLOAD = 65507


def udp_rule(name: str, listen: PortRange, target: Target, listen_address: str = LOOPBACK) -> Rule:
    return Rule(
        name=name,
        protocol=Protocol.UDP,
        listen=listen,
        targets=(target,),
        listen_addresses=(listen_address,),
    )


def free_udp_range(count: int, address: str = LOOPBACK) -> int:
    """The first of C{count} consecutive UDP ports free on C{address}."""
    return free_port_range(count, socket.SOCK_DGRAM, address)


class Echo(DatagramProtocol):
    """Sends every datagram back, prefixed with C{label}."""

    noisy = False

    def __init__(self, label: bytes = b"") -> None:
        self.label = label

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        assert self.transport is not None
        self.transport.write(self.label + datagram, addr)


class Client(DatagramProtocol):
    """A client socket that records replies and who sent them."""

    noisy = False

    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.senders: set[tuple[str, int]] = set()
        self._waiters: list[tuple[int, Deferred[list[bytes]]]] = []

    def send(self, datagram: bytes, port: int, host: str = LOOPBACK) -> None:
        assert self.transport is not None
        self.transport.write(datagram, (host, port))

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        self.received.append(datagram)
        self.senders.add((addr[0], addr[1]))
        ready = [w for w in self._waiters if len(self.received) >= w[0]]
        for waiter in ready:
            self._waiters.remove(waiter)
            waiter[1].callback(list(self.received))

    def wait_for(self, count: int) -> Deferred[list[bytes]]:
        """Fires with everything received once C{count} datagrams have arrived."""
        d: Deferred[list[bytes]] = Deferred()
        if len(self.received) >= count:
            d.callback(list(self.received))
        else:
            self._waiters.append((count, d))
        return d


class UdpForwardingTestCase(TestCase):
    timeout = 60

    def setUp(self) -> None:
        self.forwarder = Forwarder(reactor)
        self.addCleanup(self.forwarder.stop, 1.0)

    def listen(self, protocol: DatagramProtocol, port: int = 0, address: str = LOOPBACK) -> int:
        listening = reactor.listenUDP(port, protocol, interface=address, maxPacketSize=MAX_DATAGRAM)
        self.addCleanup(listening.stopListening)
        return int(listening.getHost().port)

    def client(self, address: str = LOOPBACK) -> Client:
        client = Client()
        self.listen(client, address=address)
        return client

    def echo_rule(self, name: str = "echo") -> tuple[Rule, int]:
        target_port = self.listen(Echo())
        listen_port = free_port(socket.SOCK_DGRAM)
        rule = udp_rule(
            name, PortRange.single(listen_port), Target(LOOPBACK, PortRange.single(target_port))
        )
        self.forwarder.install(rule)
        return rule, listen_port


def _wait_for_event(case: TestCase, name: str) -> Deferred[dict[str, Any]]:
    """Fires with the first log event called C{name} from now on."""
    d: Deferred[dict[str, Any]] = Deferred()

    def observe(event: dict[str, Any]) -> None:
        if event.get("event") == name and not d.called:
            globalLogPublisher.removeObserver(observe)
            d.callback(event)

    globalLogPublisher.addObserver(observe)
    case.addCleanup(lambda: globalLogPublisher.removeObserver(observe) if not d.called else None)
    return d


def _raise_nofile(case: TestCase, needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return
    if hard != resource.RLIM_INFINITY and hard < needed:
        case.skipTest(f"needs {needed} open files, hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    case.addCleanup(resource.setrlimit, resource.RLIMIT_NOFILE, (soft, hard))


class IsolationTests(UdpForwardingTestCase):
    @inlineCallbacks
    def test_1000_sources_each_get_only_their_own_replies(self) -> Any:
        """1,000 client sockets through one rule each get exactly their own replies."""
        sources, per_source = 1000, 2
        # Each source costs a client socket here and an upstream socket in the forwarder.
        _raise_nofile(self, 2 * sources + 256)
        rule, port = self.echo_rule()
        clients = [self.client() for _ in range(sources)]
        # At most 50 sources in flight keeps every socket buffer far from full.
        window = DeferredSemaphore(50)

        def exchange(index: int) -> Deferred[list[bytes]]:
            for n in range(per_source):
                clients[index].send(b"source-%d/%d" % (index, n), port)
            return clients[index].wait_for(per_source)

        yield gatherResults([window.run(exchange, i) for i in range(sources)])
        for index, client in enumerate(clients):
            self.assertEqual(
                sorted(client.received), [b"source-%d/%d" % (index, n) for n in range(per_source)]
            )
            self.assertEqual(client.senders, {(LOOPBACK, port)})
        stats = self.forwarder.stats_for(rule.id)
        self.assertEqual(stats.active_flows, sources)
        self.assertEqual((stats.datagrams_in, stats.datagrams_out), (sources * per_source,) * 2)
        self.assertEqual(stats.flows_dropped_overflow, 0)


class SizeTests(UdpForwardingTestCase):
    @inlineCallbacks
    def test_largest_ipv4_datagram_round_trips_unchanged(self) -> Any:
        """A 65,507-byte datagram goes through and back byte for byte."""
        rule, port = self.echo_rule()
        client = self.client()
        payload = os.urandom(MAX_IPV4_PAYLOAD)
        client.send(payload, port)
        [reply] = yield client.wait_for(1)
        self.assertEqual(reply, payload)
        stats = self.forwarder.stats_for(rule.id)
        self.assertEqual((stats.bytes_in, stats.bytes_out), (len(payload), len(payload)))


class IcmpTests(UdpForwardingTestCase):
    @inlineCallbacks
    def test_refused_target_evicts_then_rebuilds_when_it_listens(self) -> Any:
        """A flow to a closed port is evicted on the ICMP error; the next datagram rebuilds."""
        target_port = free_port(socket.SOCK_DGRAM)
        listen_port = free_port(socket.SOCK_DGRAM)
        rule = udp_rule(
            "icmp", PortRange.single(listen_port), Target(LOOPBACK, PortRange.single(target_port))
        )
        self.forwarder.install(rule)
        client = self.client()
        evicted = _wait_for_event(self, "rule.udp_flow_evicted_icmp")
        client.send(b"anyone?", listen_port)
        yield evicted
        stats = self.forwarder.stats_for(rule.id)
        self.assertEqual((stats.icmp_evictions, stats.active_flows), (1, 0))

        self.listen(Echo(b"now: "), port=target_port)
        client.send(b"hello", listen_port)
        [reply] = yield client.wait_for(1)
        self.assertEqual(reply, b"now: hello")
        self.assertEqual((stats.icmp_evictions, stats.active_flows), (1, 1))


class Ipv6Tests(UdpForwardingTestCase):
    @inlineCallbacks
    def test_ipv6_loopback_round_trip(self) -> Any:
        """A rule listening on ::1 forwards to an IPv6 target and back."""
        try:
            with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as probe:
                probe.bind(("::1", 0))
        except OSError:
            self.skipTest("::1 is not available here")
        target_port = self.listen(Echo(b"v6 "), address="::1")
        listen_port = free_udp_range(1, "::1")
        rule = udp_rule(
            "v6",
            PortRange.single(listen_port),
            Target("::1", PortRange.single(target_port)),
            listen_address="::1",
        )
        self.forwarder.install(rule)
        client = self.client(address="::1")
        for n in range(3):
            client.send(b"ping %d" % n, listen_port, host="::1")
        replies = yield client.wait_for(3)
        self.assertEqual(sorted(replies), [b"v6 ping %d" % n for n in range(3)])
        self.assertEqual(client.senders, {("::1", listen_port)})


class PortRangeTests(UdpForwardingTestCase):
    @inlineCallbacks
    def test_each_listen_port_reaches_its_offset_target(self) -> Any:
        """Listen port A+i reaches target port C+i, with per-port counters."""
        count = 4
        listen_start = free_udp_range(count)
        target_start = free_udp_range(count)
        for i in range(count):
            self.listen(Echo(b"target-%d " % i), port=target_start + i)
        rule = udp_rule(
            "range",
            PortRange(listen_start, listen_start + count - 1),
            Target(LOOPBACK, PortRange(target_start, target_start + count - 1)),
        )
        self.forwarder.install(rule)
        client = self.client()
        for i in range(count):
            client.send(b"port-%d" % i, listen_start + i)
        replies = yield client.wait_for(count)
        self.assertEqual(sorted(replies), [b"target-%d port-%d" % (i, i) for i in range(count)])
        stats = self.forwarder.stats_for(rule.id)
        self.assertEqual(stats.active_flows, count)
        for i in range(count):
            port_stats = stats.ports[listen_start + i]
            self.assertEqual((port_stats.datagrams_in, port_stats.datagrams_out), (1, 1))


class DrainTests(UdpForwardingTestCase):
    @inlineCallbacks
    def test_remove_closes_flows_and_releases_the_port(self) -> Any:
        """Removing a UDP rule closes its flows and frees its port for a new bind."""
        rule, port = self.echo_rule()
        client = self.client()
        client.send(b"q", port)
        yield client.wait_for(1)
        closed = yield self.forwarder.remove(rule.id)
        self.assertEqual(closed, 1)
        self.assertEqual(self.forwarder.connection_count(), 0)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind((LOOPBACK, port))


class _Socat(ProcessProtocol):
    """A socat child: C{ready} fires once it listens, C{ended} when it exits."""

    def __init__(self) -> None:
        self.ready: Deferred[None] = Deferred()
        self.ended: Deferred[None] = Deferred()
        self.stderr = b""

    def errReceived(self, data: bytes) -> None:
        self.stderr += data
        if not self.ready.called and b"listening on" in self.stderr:
            self.ready.callback(None)

    def processEnded(self, reason: Failure) -> None:
        if not self.ready.called:
            self.ready.errback(
                RuntimeError(f"socat exited: {self.stderr.decode(errors='replace')}")
            )
        self.ended.callback(None)


class RealPeerTests(UdpForwardingTestCase):
    @inlineCallbacks
    def test_socat_echo_target(self) -> Any:
        """socat as the UDP target echoes every datagram back through the rule."""
        socat = shutil.which("socat")
        if socat is None:
            self.skipTest("socat is not installed (apt-get install socat)")
        target_port = free_port(socket.SOCK_DGRAM)
        peer = _Socat()
        process = reactor.spawnProcess(
            peer,
            socat,
            [
                socat,
                "-d",
                "-d",
                "-b",
                "65536",
                f"UDP4-LISTEN:{target_port},bind={LOOPBACK}",
                "PIPE",
            ],
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
        )

        def stop() -> Deferred[None]:
            if not peer.ended.called:
                process.signalProcess("KILL")
            return peer.ended

        self.addCleanup(stop)
        yield peer.ready
        listen_port = free_port(socket.SOCK_DGRAM)
        rule = udp_rule(
            "socat",
            PortRange.single(listen_port),
            Target(LOOPBACK, PortRange.single(target_port)),
        )
        self.forwarder.install(rule)
        client = self.client()
        payloads = [os.urandom(size) for size in (1, 100, 1400, 4000, 512, 3)]
        for n, payload in enumerate(payloads, start=1):
            # One at a time: a pipe keeps datagram boundaries only when not queued.
            client.send(payload, listen_port)
            received = yield client.wait_for(n)
            self.assertEqual(received[-1], payload)
        stats = self.forwarder.stats_for(rule.id)
        self.assertEqual((stats.datagrams_in, stats.datagrams_out), (len(payloads),) * 2)
        self.assertEqual(stats.active_flows, 1)
