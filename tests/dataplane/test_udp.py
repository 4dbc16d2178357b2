"""
The UDP flow table, upstream reader and runtime on a memory reactor.
"""

from __future__ import annotations

import errno
import socket
from typing import Any

import attrs
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.error import DNSLookupError
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from portunus.dataplane import Forwarder, udp
from portunus.dataplane.failover import TargetSelector
from portunus.dataplane.listeners import bind_datagram_sockets, receive_buffer_size
from portunus.dataplane.ratelimit import RULE_UDP_REASONS, RuleLimiter
from portunus.dataplane.stats import RuleStats
from portunus.dataplane.udp import (
    MAX_DATAGRAM,
    PENDING_DATAGRAMS_MAX,
    REPLY_BUDGET,
    FlowState,
    UdpFlow,
    UdpFlowTable,
    UdpRuntime,
)
from portunus.model import PortRange, Protocol, RateLimit, Rule, Target
from tests._net import LOOPBACK, free_port, free_port_range

Address = tuple[str, int]

CLIENT_A = ("192.0.2.1", 40000)
CLIENT_B = ("192.0.2.2", 40000)


def udp_rule(
    *targets: Target,
    listen: PortRange | None = None,
    max_flows: int = 1024,
    idle: int = 60,
    listen_addresses: tuple[str, ...] = ("0.0.0.0", "::"),
) -> Rule:
    return Rule(
        name="dns",
        protocol=Protocol.UDP,
        listen=listen or PortRange.single(5353),
        targets=targets or (Target("10.0.0.5", PortRange.single(53)),),
        listen_addresses=listen_addresses,
        udp_max_flows=max_flows,
        udp_flow_idle_secs=idle,
    )


class FakeListener:
    """A listener socket's transport: records replies, or fails them."""

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, Address]] = []
        self.fail: Exception | None = None

    def write(self, datagram: bytes, addr: Address) -> None:
        if self.fail is not None:
            raise self.fail
        self.sent.append((datagram, addr))


class FakeUpstream:
    """A flow's upstream socket: records what is sent and whether it closed."""

    def __init__(self, address: str, port: int, flow: UdpFlow) -> None:
        self.address = address
        self.port = port
        self.flow = flow
        self.sent: list[bytes] = []
        self.closed = False
        self.fail_next: OSError | None = None

    def send(self, datagram: bytes) -> None:
        if self.fail_next is not None:
            error, self.fail_next = self.fail_next, None
            raise error
        self.sent.append(datagram)

    def close(self) -> None:
        self.closed = True


class Harness:
    """A flow table on a memory clock with fake upstreams and resolver."""

    def __init__(self, rule: Rule, admission: Any = None) -> None:
        self.rule = rule
        self.clock = MemoryReactorClock()
        self.stats = RuleStats()
        self.upstreams: list[FakeUpstream] = []
        self.open_error: OSError | None = None
        self.resolutions: list[tuple[str, Deferred[str]]] = []
        self.listener = FakeListener()
        self.table = UdpFlowTable(self.clock, rule, self.stats, self.open, self.resolve, admission)

    def open(self, address: str, port: int, flow: UdpFlow) -> FakeUpstream:
        if self.open_error is not None:
            raise self.open_error
        upstream = FakeUpstream(address, port, flow)
        self.upstreams.append(upstream)
        return upstream

    def resolve(self, host: str) -> Deferred[str]:
        d: Deferred[str] = Deferred()
        self.resolutions.append((host, d))
        return d

    def send(
        self,
        data: bytes,
        source: Address = CLIENT_A,
        port: int | None = None,
        listener: FakeListener | None = None,
    ) -> None:
        self.table.datagram_received(
            port if port is not None else self.rule.listen.start,
            source,
            data,
            listener or self.listener,
        )

    def flow(self, source: Address = CLIENT_A, port: int | None = None) -> UdpFlow:
        return self.table.flows[(port if port is not None else self.rule.listen.start, source)]


def capture_logs(case: SynchronousTestCase) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    case.patch(udp, "log", Logger(observer=events.append))
    return events


def named(events: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [e for e in events if e.get("event") == name]


class NewFlowTests(SynchronousTestCase):
    def test_first_datagram_opens_flow_and_is_sent(self) -> None:
        """A new source gets a connected upstream to the target and its first datagram."""
        h = Harness(udp_rule())
        h.send(b"query")
        [upstream] = h.upstreams
        self.assertEqual((upstream.address, upstream.port), ("10.0.0.5", 53))
        self.assertEqual(upstream.sent, [b"query"])
        self.assertIs(h.flow().state, FlowState.OPEN)
        port = h.stats.ports[5353]
        for stats in (h.stats, port):
            self.assertEqual(
                (stats.active_flows, stats.datagrams_in, stats.bytes_in), (1, 1, len(b"query"))
            )

    def test_same_source_reuses_its_flow(self) -> None:
        """Later datagrams from the same source use the flow's one upstream."""
        h = Harness(udp_rule())
        h.send(b"one")
        h.send(b"two")
        [upstream] = h.upstreams
        self.assertEqual(upstream.sent, [b"one", b"two"])
        self.assertEqual(h.stats.datagrams_in, 2)

    def test_flows_keyed_by_listen_port_and_source(self) -> None:
        """Each (listen port, source) pair is its own flow; range ports map by offset."""
        h = Harness(
            udp_rule(Target("10.0.0.5", PortRange(7000, 7001)), listen=PortRange(5000, 5001))
        )
        h.send(b"a0", CLIENT_A, 5000)
        h.send(b"a1", CLIENT_A, 5001)
        h.send(b"b0", CLIENT_B, 5000)
        h.send(b"a0-again", ("192.0.2.1", 40001), 5000)
        self.assertEqual(
            [(u.port, u.sent) for u in h.upstreams],
            [(7000, [b"a0"]), (7001, [b"a1"]), (7000, [b"b0"]), (7000, [b"a0-again"])],
        )
        self.assertEqual(len(h.table), 4)
        self.assertEqual(h.stats.ports[5000].active_flows, 3)
        self.assertEqual(h.stats.ports[5001].active_flows, 1)

    def test_lowest_priority_target_chosen(self) -> None:
        """A flow goes to the first target in priority order."""
        h = Harness(
            udp_rule(
                Target("10.0.0.9", PortRange.single(53), priority=5),
                Target("10.0.0.1", PortRange.single(53), priority=1),
            )
        )
        h.send(b"q")
        self.assertEqual(h.upstreams[0].address, "10.0.0.1")

    def test_open_failure_counts_and_frees_the_slot(self) -> None:
        """An upstream that cannot be opened drops the datagram; the next one retries."""
        h = Harness(udp_rule(max_flows=1))
        events = capture_logs(self)
        h.open_error = OSError(errno.EMFILE, "Too many open files")
        h.send(b"lost")
        self.assertEqual((len(h.table), h.stats.active_flows), (0, 0))
        self.assertEqual(h.stats.connect_failures, 1)
        self.assertEqual(len(named(events, "rule.udp_upstream_connect_failed")), 1)
        h.open_error = None
        h.send(b"kept")
        self.assertEqual(h.upstreams[0].sent, [b"kept"])

    def test_admission_hook_refuses_new_flows_only(self) -> None:
        """The admission hook sees each new flow once and can refuse it."""
        asked: list[tuple[int, Address]] = []

        def admission(rule: Rule, port: int, source: Address) -> str | None:
            asked.append((port, source))
            return "udp_flow_rate" if source == CLIENT_B else None

        h = Harness(udp_rule(), admission)
        h.send(b"a1")
        h.send(b"a2")
        h.send(b"b1", CLIENT_B)
        self.assertEqual(asked, [(5353, CLIENT_A), (5353, CLIENT_B)])
        self.assertEqual(list(h.table.flows), [(5353, CLIENT_A)])
        self.assertEqual(len(h.upstreams), 1)


class ReplyTests(SynchronousTestCase):
    def test_reply_goes_back_to_the_source(self) -> None:
        """A target's reply leaves from the listener to the flow's source."""
        h = Harness(udp_rule())
        h.send(b"q", CLIENT_A)
        h.send(b"q", CLIENT_B)
        h.upstreams[1].flow.reply_received(b"for-b")
        h.upstreams[0].flow.reply_received(b"for-a")
        self.assertEqual(h.listener.sent, [(b"for-b", CLIENT_B), (b"for-a", CLIENT_A)])
        port = h.stats.ports[5353]
        for stats in (h.stats, port):
            self.assertEqual((stats.datagrams_out, stats.bytes_out), (2, 10))

    def test_reply_leaves_from_the_listener_last_used(self) -> None:
        """A client that moves to another listener socket gets replies from it."""
        h = Harness(udp_rule())
        other = FakeListener()
        h.send(b"q1")
        h.send(b"q2", listener=other)
        h.flow().reply_received(b"r")
        self.assertEqual((h.listener.sent, other.sent), ([], [(b"r", CLIENT_A)]))

    def test_reply_send_failure_is_counted_and_keeps_the_flow(self) -> None:
        """A reply the listener cannot send is dropped and counted; the flow stays."""
        h = Harness(udp_rule())
        events = capture_logs(self)
        h.send(b"q")
        h.listener.fail = BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")
        h.flow().reply_received(b"r")
        self.assertEqual((h.stats.send_dropped, h.stats.datagrams_out), (1, 0))
        self.assertEqual(len(named(events, "rule.udp_reply_wouldblock")), 1)
        self.assertIs(h.flow().state, FlowState.OPEN)

    def test_upstream_wouldblock_drops_one_datagram(self) -> None:
        """A full upstream send buffer drops that datagram only."""
        h = Harness(udp_rule())
        h.send(b"one")
        h.upstreams[0].fail_next = BlockingIOError(errno.EAGAIN, "again")
        h.send(b"two")
        h.send(b"three")
        self.assertEqual(h.upstreams[0].sent, [b"one", b"three"])
        self.assertEqual((h.stats.send_dropped, h.stats.datagrams_in), (1, 2))


class CapTests(SynchronousTestCase):
    def test_cap_drops_new_flows_and_never_evicts(self) -> None:
        """At udp_max_flows new sources are dropped and counted; old flows keep working."""
        h = Harness(
            udp_rule(
                Target("10.0.0.5", PortRange(53, 54)), listen=PortRange(5000, 5001), max_flows=2
            )
        )
        h.send(b"a", CLIENT_A, 5000)
        h.send(b"b", CLIENT_B, 5001)
        h.send(b"c", ("192.0.2.3", 1), 5000)
        h.send(b"d", ("192.0.2.4", 1), 5001)
        self.assertEqual(len(h.upstreams), 2)
        self.assertEqual(h.stats.flows_dropped_overflow, 2)
        self.assertEqual(h.stats.ports[5000].flows_dropped_overflow, 1)
        self.assertEqual(h.stats.ports[5001].flows_dropped_overflow, 1)
        h.send(b"a2", CLIENT_A, 5000)
        self.assertEqual(h.upstreams[0].sent, [b"a", b"a2"])
        self.assertEqual(h.stats.active_flows, 2)

    def test_cap_frees_when_a_flow_closes(self) -> None:
        """A slot freed by an idle flow admits the next new source."""
        h = Harness(udp_rule(max_flows=1))
        h.send(b"a")
        h.clock.advance(60)
        h.send(b"b", CLIENT_B)
        self.assertEqual(list(h.table.flows), [(5353, CLIENT_B)])
        self.assertEqual(h.stats.flows_dropped_overflow, 0)

    def test_overflow_warning_is_rate_limited(self) -> None:
        """Overflow drops log one warning per interval carrying the count held back."""
        h = Harness(udp_rule(max_flows=1))
        events = capture_logs(self)
        h.send(b"a")
        for i in range(5):
            h.send(b"x", ("192.0.2.9", 1000 + i))
        self.assertEqual([e["held"] for e in named(events, "rule.udp_flow_dropped_overflow")], [0])
        h.clock.advance(udp.LOG_THROTTLE_SECS)
        h.send(b"a")  # keeps the first flow from going idle
        h.send(b"x", ("192.0.2.9", 2000))
        self.assertEqual(
            [e["held"] for e in named(events, "rule.udp_flow_dropped_overflow")], [0, 4]
        )
        self.assertEqual(h.stats.flows_dropped_overflow, 6)


class IdleTests(SynchronousTestCase):
    def test_idle_flow_reaped_on_the_clock(self) -> None:
        """A flow silent for udp_flow_idle_secs is closed by the reaper, not before."""
        h = Harness(udp_rule(idle=60))
        events = capture_logs(self)
        self.assertEqual(h.table.reap_interval, 15.0)
        h.send(b"q")
        h.clock.advance(45)
        self.assertEqual(len(h.table), 1)
        h.clock.advance(15)
        self.assertEqual(len(h.table), 0)
        self.assertTrue(h.upstreams[0].closed)
        self.assertEqual((h.stats.active_flows, h.stats.ports[5353].active_flows), (0, 0))
        self.assertEqual(len(named(events, "rule.udp_flow_closed_idle")), 1)
        self.assertEqual(h.clock.getDelayedCalls(), [])

    def test_traffic_either_way_keeps_a_flow(self) -> None:
        """Datagrams from the client or replies from the target reset the idle clock."""
        h = Harness(udp_rule(idle=60))
        h.send(b"q")
        h.clock.advance(45)
        h.send(b"q")
        h.clock.advance(45)
        h.flow().reply_received(b"r")
        h.clock.advance(45)
        self.assertEqual(len(h.table), 1)
        h.clock.advance(15)
        self.assertEqual(len(h.table), 0)

    def test_reaper_floor(self) -> None:
        """The reaper runs every idle/4 but never more often than every 25 ms."""
        self.assertEqual(Harness(udp_rule(idle=30)).table.reap_interval, 7.5)
        self.assertEqual(Harness(udp_rule(idle=0)).table.reap_interval, 0.025)

    def test_one_timer_for_many_flows(self) -> None:
        """However many flows a rule has, it schedules one reaper call."""
        h = Harness(udp_rule())
        for i in range(100):
            h.send(b"q", ("192.0.2.1", 1000 + i))
        self.assertEqual(len(h.clock.getDelayedCalls()), 1)


class IcmpTests(SynchronousTestCase):
    def test_refused_read_evicts_and_next_datagram_rebuilds(self) -> None:
        """ECONNREFUSED on the upstream evicts the flow; the next datagram opens a new one."""
        h = Harness(udp_rule())
        events = capture_logs(self)
        h.send(b"first")
        first = h.upstreams[0]
        first.flow.upstream_failed(ConnectionRefusedError(errno.ECONNREFUSED, "refused"))
        self.assertTrue(first.closed)
        self.assertEqual(len(h.table), 0)
        self.assertEqual((h.stats.icmp_evictions, h.stats.ports[5353].icmp_evictions), (1, 1))
        self.assertEqual(h.stats.active_flows, 0)
        self.assertEqual(len(named(events, "rule.udp_flow_evicted_icmp")), 1)
        h.send(b"second")
        self.assertEqual(len(h.upstreams), 2)
        self.assertEqual(h.upstreams[1].sent, [b"second"])

    def test_unreachable_errors_evict(self) -> None:
        """Host and network unreachable evict like port unreachable."""
        for number in (errno.EHOSTUNREACH, errno.ENETUNREACH):
            h = Harness(udp_rule())
            h.send(b"q")
            h.upstreams[0].flow.upstream_failed(OSError(number, "unreachable"))
            self.assertEqual((len(h.table), h.stats.icmp_evictions), (0, 1))

    def test_refused_send_rebuilds_without_losing_the_datagram(self) -> None:
        """An ICMP error reported by a send evicts, and that datagram opens the next flow."""
        h = Harness(udp_rule())
        h.send(b"first")
        h.upstreams[0].fail_next = ConnectionRefusedError(errno.ECONNREFUSED, "refused")
        h.send(b"second")
        self.assertTrue(h.upstreams[0].closed)
        self.assertEqual(h.upstreams[1].sent, [b"second"])
        self.assertEqual((h.stats.icmp_evictions, h.stats.active_flows), (1, 1))

    def test_other_read_errors_close_the_flow(self) -> None:
        """An unexpected read error closes the flow without counting an ICMP eviction."""
        h = Harness(udp_rule())
        h.send(b"q")
        h.upstreams[0].flow.upstream_failed(OSError(errno.EIO, "I/O error"))
        self.assertEqual((len(h.table), h.stats.icmp_evictions), (0, 0))

    def test_emsgsize_keeps_the_flow(self) -> None:
        """A path-MTU report is counted as a dropped datagram and the flow stays."""
        h = Harness(udp_rule())
        h.send(b"q")
        h.upstreams[0].flow.upstream_failed(OSError(errno.EMSGSIZE, "Message too long"))
        self.assertEqual((len(h.table), h.stats.send_dropped), (1, 1))


class ResolutionTests(SynchronousTestCase):
    def hostname_rule(self) -> Rule:
        return udp_rule(Target("dns.example", PortRange.single(53)))

    def test_hostname_resolved_once_and_datagrams_held(self) -> None:
        """Datagrams sent while the target resolves are held and sent in order."""
        h = Harness(self.hostname_rule())
        h.send(b"1")
        h.send(b"2")
        self.assertEqual([host for host, _ in h.resolutions], ["dns.example"])
        self.assertEqual(h.upstreams, [])
        h.resolutions[0][1].callback("10.1.1.1")
        [upstream] = h.upstreams
        self.assertEqual((upstream.address, upstream.port), ("10.1.1.1", 53))
        self.assertEqual(upstream.sent, [b"1", b"2"])
        h.send(b"3")
        self.assertEqual(upstream.sent, [b"1", b"2", b"3"])

    def test_held_datagrams_are_bounded(self) -> None:
        """Past PENDING_DATAGRAMS_MAX held datagrams, more are dropped and counted."""
        h = Harness(self.hostname_rule())
        for i in range(PENDING_DATAGRAMS_MAX + 3):
            h.send(b"%d" % i)
        self.assertEqual(h.stats.flows_pending_drops, 3)
        h.resolutions[0][1].callback("10.1.1.1")
        self.assertEqual(len(h.upstreams[0].sent), PENDING_DATAGRAMS_MAX)

    def test_dns_failure_counts_and_frees_the_slot(self) -> None:
        """A target that does not resolve drops the flow and counts a DNS failure."""
        h = Harness(self.hostname_rule())
        events = capture_logs(self)
        h.send(b"q")
        h.resolutions[0][1].errback(Failure(DNSLookupError("dns.example")))
        self.assertEqual(len(h.table), 0)
        self.assertEqual((h.stats.dns_failures, h.stats.ports[5353].dns_failures), (1, 1))
        self.assertEqual(h.stats.active_flows, 0)
        self.assertEqual(len(named(events, "rule.udp_dns_failed")), 1)
        h.send(b"again")
        self.assertEqual(len(h.resolutions), 2)

    def test_resolution_after_close_is_ignored(self) -> None:
        """A resolution that completes after its flow closed opens nothing."""
        h = Harness(self.hostname_rule())
        h.send(b"q")
        self.assertEqual(h.table.close_all(), 1)
        h.resolutions[0][1].callback("10.1.1.1")
        self.assertEqual(h.upstreams, [])
        self.assertEqual(h.stats.active_flows, 0)

    def test_hostname_without_resolver_refused(self) -> None:
        """A table for a hostname target cannot be built without a resolver."""
        self.assertRaises(
            ValueError,
            UdpFlowTable,
            MemoryReactorClock(),
            self.hostname_rule(),
            RuleStats(),
            lambda *a: None,
        )


class CloseAllTests(SynchronousTestCase):
    def test_close_all_closes_every_flow_and_the_reaper(self) -> None:
        """close_all closes every upstream, zeroes active flows and cancels the reaper."""
        h = Harness(udp_rule())
        h.send(b"a", CLIENT_A)
        h.send(b"b", CLIENT_B)
        self.assertEqual(h.table.close_all(), 2)
        self.assertTrue(all(u.closed for u in h.upstreams))
        self.assertEqual((len(h.table), h.stats.active_flows), (0, 0))
        self.assertEqual(h.clock.getDelayedCalls(), [])

    def test_replies_after_close_are_dropped(self) -> None:
        """A reply racing a flow's close is not sent."""
        h = Harness(udp_rule())
        h.send(b"q")
        flow = h.flow()
        h.table.close_all()
        flow.reply_received(b"late")
        self.assertEqual(h.listener.sent, [])


class FakeNameResolver:
    """Answers every name at once with the given addresses."""

    def __init__(self, addresses: list[Any]) -> None:
        self.addresses = addresses
        self.asked: list[tuple[str, str]] = []

    def resolveHostName(
        self, receiver: Any, host: str, port: int = 0, transportSemantics: str = "TCP"
    ) -> None:
        self.asked.append((host, transportSemantics))
        receiver.resolutionBegan(None)
        for address in self.addresses:
            receiver.addressResolved(address)
        receiver.resolutionComplete()


class HostnameResolverTests(SynchronousTestCase):
    def resolve(self, addresses: list[Any], prefer_ipv6: bool = False) -> Deferred[str]:
        reactor = MemoryReactorClock()
        reactor.nameResolver = FakeNameResolver(addresses)  # type: ignore[assignment]
        return udp.hostname_resolver(reactor, prefer_ipv6)("dns.example")

    def test_first_ipv4_address_by_default(self) -> None:
        """Without prefer_ipv6 the first IPv4 address wins over earlier IPv6 ones."""
        d = self.resolve(
            [
                IPv6Address("UDP", "2001:db8::1", 0),
                IPv4Address("UDP", "192.0.2.7", 0),
                IPv4Address("UDP", "192.0.2.8", 0),
            ]
        )
        self.assertEqual(self.successResultOf(d), "192.0.2.7")

    def test_prefer_ipv6_with_fallback(self) -> None:
        """prefer_ipv6 picks IPv6 when there is one and falls back to IPv4."""
        both = [IPv4Address("UDP", "192.0.2.7", 0), IPv6Address("UDP", "2001:db8::1", 0)]
        self.assertEqual(self.successResultOf(self.resolve(both, True)), "2001:db8::1")
        only_v4 = [IPv4Address("UDP", "192.0.2.7", 0)]
        self.assertEqual(self.successResultOf(self.resolve(only_v4, True)), "192.0.2.7")

    def test_no_address_is_a_lookup_error(self) -> None:
        """A name with no addresses fails with DNSLookupError."""
        self.failureResultOf(self.resolve([]), DNSLookupError)


class FakeSocket:
    """Just enough of a non-blocking datagram socket for the upstream reader."""

    def __init__(self, incoming: list[bytes | OSError]) -> None:
        self.incoming = incoming
        self.sent: list[bytes] = []
        self.closed = False
        self.pending_error = 0

    def recv(self, size: int) -> bytes:
        assert size == MAX_DATAGRAM
        if not self.incoming:
            raise BlockingIOError(errno.EAGAIN, "again")
        item = self.incoming.pop(0)
        if isinstance(item, OSError):
            raise item
        return item

    def send(self, data: bytes) -> int:
        self.sent.append(data)
        return len(data)

    def fileno(self) -> int:
        return -1 if self.closed else 7

    def getsockopt(self, level: int, option: int) -> int:
        assert (level, option) == (socket.SOL_SOCKET, socket.SO_ERROR)
        error, self.pending_error = self.pending_error, 0
        return error

    def close(self) -> None:
        self.closed = True


class SocketUpstreamTests(SynchronousTestCase):
    def make(self, incoming: list[bytes | OSError]) -> tuple[Harness, Any, FakeSocket]:
        h = Harness(udp_rule())
        sockets: list[FakeSocket] = []

        def open_fake(address: str, port: int, flow: UdpFlow) -> Any:
            sock = FakeSocket(incoming)
            sockets.append(sock)
            return udp._SocketUpstream(h.clock, sock, flow)  # type: ignore[arg-type]

        h.table._open_upstream = open_fake
        h.send(b"q")
        return h, h.flow().upstream, sockets[0]

    def test_reads_at_most_the_budget_per_turn(self) -> None:
        """One readable upstream yields at most REPLY_BUDGET datagrams per reactor turn."""
        h, upstream, sock = self.make([b"r%d" % i for i in range(REPLY_BUDGET + 5)])
        self.assertIn(upstream, h.clock.readers)
        self.assertEqual(sock.sent, [b"q"])
        upstream.doRead()
        self.assertEqual(len(h.listener.sent), REPLY_BUDGET)
        upstream.doRead()
        self.assertEqual(len(h.listener.sent), REPLY_BUDGET + 5)
        self.assertEqual(h.listener.sent[0], (b"r0", CLIENT_A))

    def test_refused_read_evicts_and_unregisters(self) -> None:
        """ECONNREFUSED read from the socket evicts the flow and releases the socket."""
        h, upstream, sock = self.make(
            [b"r", ConnectionRefusedError(errno.ECONNREFUSED, "refused"), b"never"]
        )
        upstream.doRead()
        self.assertEqual(h.listener.sent, [(b"r", CLIENT_A)])
        self.assertEqual(h.stats.icmp_evictions, 1)
        self.assertTrue(sock.closed)
        self.assertNotIn(upstream, h.clock.readers)

    def test_connection_lost_closes_the_flow(self) -> None:
        """The reactor dropping the socket (shutdown) closes its flow, no eviction counted."""
        h, upstream, sock = self.make([])
        upstream.connectionLost(Failure(Exception("reactor stopping")))
        self.assertTrue(sock.closed)
        self.assertEqual((len(h.table), h.stats.active_flows), (0, 0))
        self.assertEqual(h.stats.icmp_evictions, 0)

    def test_error_only_wakeup_is_an_icmp_eviction(self) -> None:
        """An ICMP error the reactor reports as a lost socket (EPOLLERR) still evicts."""
        h, upstream, sock = self.make([])
        sock.pending_error = errno.ECONNREFUSED
        upstream.connectionLost(Failure(Exception("EPOLLERR")))
        self.assertTrue(sock.closed)
        self.assertEqual((len(h.table), h.stats.icmp_evictions), (0, 1))


class RuntimeTests(SynchronousTestCase):
    def test_serve_adopts_each_socket_with_64k_datagrams(self) -> None:
        """Every listen port is adopted as a datagram port reading 65,535-byte datagrams."""
        reactor = MemoryReactorClock()
        start = free_port_range(2)
        rule = udp_rule(
            Target(LOOPBACK, PortRange(9000, 9001)),
            listen=PortRange(start, start + 1),
            listen_addresses=(LOOPBACK,),
        )
        runtime = UdpRuntime(reactor, rule)
        runtime.serve(bind_datagram_sockets(rule.listen_addresses, rule.listen))
        self.assertEqual(
            [(family, size) for _, family, _, size in reactor.adoptedPorts],
            [(socket.AF_INET, MAX_DATAGRAM)] * 2,
        )
        self.assertEqual(sorted(runtime.stats.ports), [start, start + 1])

    def test_datagram_through_adopted_protocol_and_drain(self) -> None:
        """A listener protocol feeds the table; drain closes flows and reports them."""
        reactor = MemoryReactorClock()
        rule = udp_rule(listen_addresses=(LOOPBACK,), listen=PortRange.single(free_port()))
        opened: list[FakeUpstream] = []

        def open_fake(address: str, port: int, flow: UdpFlow) -> FakeUpstream:
            opened.append(FakeUpstream(address, port, flow))
            return opened[-1]

        runtime = UdpRuntime(reactor, rule, open_upstream=open_fake)
        runtime.serve(bind_datagram_sockets(rule.listen_addresses, rule.listen))
        protocol = reactor.adoptedPorts[0][2]
        listener = FakeListener()
        protocol.makeConnection(listener)
        protocol.datagramReceived(b"q", CLIENT_A)
        opened[0].flow.reply_received(b"r")
        self.assertEqual(listener.sent, [(b"r", CLIENT_A)])
        self.assertEqual(runtime.active_count(), 1)
        self.assertEqual(self.successResultOf(runtime.drain()), 1)
        self.assertTrue(opened[0].closed)
        self.assertEqual(runtime.active_count(), 0)


class ForwarderUdpTests(SynchronousTestCase):
    def test_udp_rule_binds_datagram_sockets_and_removes(self) -> None:
        """The Forwarder serves UDP rules by default and removes them at once."""
        reactor = MemoryReactorClock()
        forwarder = Forwarder(reactor)
        port = free_port(socket.SOCK_DGRAM)
        rule = udp_rule(listen=PortRange.single(port), listen_addresses=(LOOPBACK,))
        forwarder.install(rule)
        [(_, family, _, size)] = reactor.adoptedPorts
        self.assertEqual((family, size), (socket.AF_INET, MAX_DATAGRAM))
        self.assertEqual(forwarder.stats()[rule.id].active_flows, 0)
        self.assertEqual(forwarder.connection_count(), 0)
        self.assertEqual(self.successResultOf(forwarder.remove(rule.id)), 0)
        self.assertEqual(forwarder.rules, ())

    def test_tcp_and_udp_rules_share_a_port(self) -> None:
        """A TCP rule and a UDP rule may listen on the same port number."""
        reactor = MemoryReactorClock()
        forwarder = Forwarder(reactor)
        port = free_port()
        for name, protocol in (("t", Protocol.TCP), ("u", Protocol.UDP)):
            forwarder.install(
                Rule(
                    name=name,
                    protocol=protocol,
                    listen=PortRange.single(port),
                    targets=(Target(LOOPBACK, PortRange.single(9)),),
                    listen_addresses=(LOOPBACK,),
                )
            )
        self.assertEqual(len(forwarder.rules), 2)
        self.successResultOf(forwarder.stop())


class BindDatagramTests(SynchronousTestCase):
    def test_port_in_use_named(self) -> None:
        """A UDP port already bound fails with port_in_use, and nothing stays bound."""
        from portunus.dataplane import BindError

        start = free_port_range(3)
        holder = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(holder.close)
        holder.bind((LOOPBACK, start + 1))
        error = self.assertRaises(
            BindError, bind_datagram_sockets, (LOOPBACK,), range(start, start + 3)
        )
        self.assertEqual((error.code, error.port), ("port_in_use", start + 1))
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind((LOOPBACK, start))  # released again

    def test_no_reuseaddr_and_large_receive_buffer(self) -> None:
        """UDP listeners skip SO_REUSEADDR (it would share the port) and ask for 4 MiB."""
        [bound] = bind_datagram_sockets((LOOPBACK,), [free_port(socket.SOCK_DGRAM)])
        self.addCleanup(bound.sock.close)
        sock = bound.sock
        self.assertEqual(sock.type, socket.SOCK_DGRAM)
        self.assertEqual(sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR), 0)
        try:
            with open("/proc/sys/net/core/rmem_max") as f:
                rmem_max = int(f.read())
        except OSError:
            self.skipTest("no /proc/sys/net/core/rmem_max (not Linux)")
        # Unprivileged, the kernel caps the request at rmem_max.
        self.assertGreaterEqual(receive_buffer_size(sock), min(udp.UDP_RCVBUF, rmem_max))

    def test_reduced_receive_buffer_logged(self) -> None:
        """A listener granted less than 4 MiB of receive buffer is reported once."""
        events = capture_logs(self)
        self.patch(udp, "receive_buffer_size", lambda sock: 212992)
        reactor = MemoryReactorClock()
        rule = udp_rule(listen=PortRange.single(free_port()), listen_addresses=(LOOPBACK,))
        UdpRuntime(reactor, rule).serve(bind_datagram_sockets(rule.listen_addresses, rule.listen))
        [event] = named(events, "rule.udp_rcvbuf_reduced")
        self.assertEqual(event["granted"], 212992)


class SelectorAndLimitTests(SynchronousTestCase):
    """UDP flows pick targets by health and obey the rule's rate limits."""

    def harness(self, rule: Rule) -> Harness:
        h = Harness(rule)
        h.selector = TargetSelector(rule, h.clock)
        h.limiter = RuleLimiter(h.clock, rule.rate_limit, RULE_UDP_REASONS)
        h.table = UdpFlowTable(
            h.clock, rule, h.stats, h.open, h.resolve, None, h.selector, h.limiter
        )
        return h

    def test_icmp_evictions_fail_over_to_the_next_target(self) -> None:
        """Three ICMP evictions mark the primary failed; new flows go to the secondary."""
        rule = udp_rule(
            Target("10.0.0.1", PortRange.single(53), priority=0),
            Target("10.0.0.2", PortRange.single(53), priority=1),
        )
        h = self.harness(rule)
        for _ in range(3):
            h.send(b"q")
            h.upstreams[-1].flow.upstream_failed(ConnectionRefusedError(errno.ECONNREFUSED, "x"))
        h.send(b"q")
        self.assertEqual(h.upstreams[-1].address, "10.0.0.2")
        self.assertEqual(h.selector.failovers_total, 1)

    def test_first_reply_counts_as_success(self) -> None:
        """A target that answers is recorded healthy once per flow."""
        h = self.harness(udp_rule())
        h.send(b"q")
        target = h.flow().target
        h.selector.record_failure(target)
        h.table.reply(h.flow(), b"a")
        h.table.reply(h.flow(), b"b")
        self.assertEqual(h.selector.snapshot()[0]["consecutive_failures"], 0)

    def test_concurrent_flow_cap_refuses_and_releases(self) -> None:
        """With concurrent_connections = 1 a second flow is refused until the first closes."""
        rule = attrs.evolve(udp_rule(idle=30), rate_limit=RateLimit(concurrent_connections=1))
        h = self.harness(rule)
        h.send(b"a", source=CLIENT_A)
        h.send(b"b", source=CLIENT_B)
        self.assertEqual(len(h.table), 1)
        self.assertEqual(h.limiter.stats.rejects, {"conn_concurrent": 1})
        h.clock.advance(31)
        h.clock.advance(31)
        self.assertEqual(len(h.table), 0)
        h.send(b"c", source=CLIENT_B)
        self.assertEqual(len(h.table), 1)

    def test_new_flow_rate(self) -> None:
        """new_connections_per_sec limits new flows, not datagrams of open ones."""
        rule = attrs.evolve(udp_rule(), rate_limit=RateLimit(new_connections_per_sec=1))
        h = self.harness(rule)
        h.send(b"a", source=CLIENT_A)
        h.send(b"b", source=CLIENT_B)
        h.send(b"a2", source=CLIENT_A)
        self.assertEqual(len(h.table), 1)
        self.assertEqual(h.upstreams[0].sent, [b"a", b"a2"])
        self.assertEqual(h.limiter.stats.rejects, {"udp_flow_rate": 1})

    def test_bandwidth_caps_drop_and_count(self) -> None:
        """Datagrams over a bandwidth budget are dropped and counted per direction."""
        rule = attrs.evolve(
            udp_rule(), rate_limit=RateLimit(bandwidth_in_bps=100, bandwidth_out_bps=100)
        )
        h = self.harness(rule)
        h.send(b"x" * 100)
        h.send(b"y" * 100)
        self.assertEqual(h.upstreams[0].sent, [b"x" * 100])
        self.assertEqual(h.stats.bandwidth_dropped_in, 1)
        h.table.reply(h.flow(), b"z" * 100)
        h.table.reply(h.flow(), b"w" * 100)
        self.assertEqual(len(h.listener.sent), 1)
        self.assertEqual(h.stats.bandwidth_dropped_out, 1)
        h.clock.advance(1)
        h.send(b"later")
        self.assertEqual(h.upstreams[0].sent[-1], b"later")
