"""
Data-plane features end to end through a real Forwarder on 127.0.0.1, with
real peers: HAProxy reads the PROXY headers we send, openssl s_server and
s_client prove SNI routing, a DNS server on a loopback port answers names.
"""

from __future__ import annotations

import errno
import os
import shutil
import socket
from collections.abc import Generator
from typing import Any

from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.error import CannotListenError
from twisted.internet.utils import getProcessOutputAndValue
from twisted.names import dns, server
from twisted.names.authority import PySourceAuthority
from twisted.python.filepath import FilePath
from twisted.trial.unittest import TestCase

from portunus.dataplane import Forwarder
from portunus.dataplane.proxyprotocol import encode_header
from portunus.dataplane.resolver import ResolverSettings, TargetResolver
from portunus.model import (
    PortRange,
    Protocol,
    ProxyProtocolVersion,
    RateLimit,
    Rule,
    Target,
)
from tests._net import (
    LOOPBACK,
    HashingClient,
    OneShotClientFactory,
    echo_factory,
    free_port,
)
from tests.dataplane.test_proxyprotocol import HAProxyHarness

reactor: Any = _reactor
OPENSSL = shutil.which("openssl")


def rule(name: str, listen: int, *targets: Target, **features: Any) -> Rule:
    return Rule(
        name=name,
        protocol=Protocol.TCP,
        listen=PortRange.single(listen),
        targets=targets,
        listen_addresses=(LOOPBACK,),
        **features,
    )


def target(host: str, port: int, **kw: Any) -> Target:
    return Target(host, PortRange.single(port), **kw)


def exchange(port: int, payload: bytes) -> Deferred[tuple[int, str]]:
    client = HashingClient(payload)
    reactor.connectTCP(LOOPBACK, port, OneShotClientFactory(client), timeout=10)
    return client.done


def blocking_exchange(port: int, payload: bytes) -> Deferred[bytes]:
    """Send, half-close and read everything back, in a thread (with the local port)."""
    from twisted.internet.threads import deferToThread

    def run() -> bytes:
        with socket.create_connection((LOOPBACK, port), timeout=10) as s:
            local_port = s.getsockname()[1]
            chunks = []
            try:
                s.sendall(payload)
                s.shutdown(socket.SHUT_WR)
                while chunk := s.recv(65536):
                    chunks.append(chunk)
            except (ConnectionResetError, BrokenPipeError, OSError) as e:
                # The forwarder may drop the peer (untrusted PROXY source)
                # before our half-close or read: that is an empty reply.
                if e.errno not in (errno.ENOTCONN, errno.ECONNRESET, errno.EPIPE):
                    raise
        return str(local_port).encode() + b"|" + b"".join(chunks)

    return deferToThread(run)


class ForwarderCase(TestCase):
    timeout = 60

    def setUp(self) -> None:
        self.forwarder = Forwarder(reactor)
        self.addCleanup(self.forwarder.stop, 1.0)

    def echo(self) -> int:
        listener = reactor.listenTCP(0, echo_factory(), interface=LOOPBACK)
        self.addCleanup(listener.stopListening)
        return int(listener.getHost().port)


class ProxyProtocolThroughForwarderTests(HAProxyHarness):
    """The forwarder's PROXY headers, read by a real HAProxy."""

    def install(self, *rules: Rule) -> Forwarder:
        forwarder = Forwarder(reactor)
        self.addCleanup(forwarder.stop, 1.0)
        for r in rules:
            forwarder.install(r)
        return forwarder

    @inlineCallbacks
    def test_sends_v1_and_v2_with_the_client_address(self) -> Generator[Any, Any, None]:
        """HAProxy behind a rule with proxy_protocol sees our client's address and port."""
        for version in ProxyProtocolVersion:
            listen = free_port()
            self.install(
                rule(
                    f"pp-{version.value}",
                    listen,
                    target(LOOPBACK, self.show_port, proxy_protocol=version),
                )
            )
            reply = yield blocking_exchange(listen, b"GET / HTTP/1.0\r\n\r\n")
            local_port, _, response = reply.partition(b"|")
            body = response.partition(b"\r\n\r\n")[2]
            self.assertEqual(body, b"127.0.0.1 " + local_port, (version, response))

    @inlineCallbacks
    def test_accepted_header_is_passed_on(self) -> Generator[Any, Any, None]:
        """A trusted client's PROXY header names the client HAProxy then sees."""
        listen = free_port()
        self.install(
            rule(
                "accept",
                listen,
                target(LOOPBACK, self.show_port, proxy_protocol=ProxyProtocolVersion.V2),
                accept_proxy_protocol=True,
                trusted_sources=("127.0.0.0/8",),
            )
        )
        header = encode_header(ProxyProtocolVersion.V1, ("203.0.113.7", 4242), (LOOPBACK, listen))
        reply = yield blocking_exchange(listen, header + b"GET / HTTP/1.0\r\n\r\n")
        body = reply.partition(b"|")[2].partition(b"\r\n\r\n")[2]
        self.assertEqual(body, b"203.0.113.7 4242")

    @inlineCallbacks
    def test_untrusted_peer_is_dropped(self) -> Generator[Any, Any, None]:
        """A peer outside trusted_sources is closed before anything reaches the target."""
        listen = free_port()
        forwarder = self.install(
            rule(
                "strict",
                listen,
                target(LOOPBACK, self.show_port),
                accept_proxy_protocol=True,
                trusted_sources=("10.0.0.0/8",),
            )
        )
        header = encode_header(ProxyProtocolVersion.V1, ("203.0.113.7", 4242), (LOOPBACK, listen))
        reply = yield blocking_exchange(listen, header + b"GET / HTTP/1.0\r\n\r\n")
        self.assertEqual(reply.partition(b"|")[2], b"")
        self.assertEqual(forwarder.stats()[forwarder.rules[0].id].total_connections, 0)


class SniRoutingTests(ForwarderCase):
    """openssl s_client through SNI rules reaches the s_server the name selects."""

    timeout = 90

    @inlineCallbacks
    def setUp(self) -> Generator[Any, Any, None]:  # type: ignore[override]
        super().setUp()
        if OPENSSL is None:
            self.skipTest("openssl is not installed (apt-get install openssl)")
        self.servers: dict[str, int] = {}
        for name in ("exact.example.com", "wild.example.com", "fallback.example.com"):
            self.servers[name] = yield self.start_server(name)
        self.listen = free_port()
        routes = [
            ("exact", "a.example.com", False, "exact.example.com"),
            ("wild", "*.example.com", False, "wild.example.com"),
            ("fallback", None, True, "fallback.example.com"),
        ]
        for name, pattern, fallback, cn in routes:
            self.forwarder.install(
                rule(
                    name,
                    self.listen,
                    target(LOOPBACK, self.servers[cn]),
                    sni_pattern=pattern,
                    sni_fallback=fallback,
                )
            )

    @inlineCallbacks
    def start_server(self, cn: str) -> Generator[Any, Any, int]:
        assert OPENSSL is not None
        directory = FilePath(self.mktemp())
        directory.makedirs()
        key, cert = directory.child("key.pem").path, directory.child("cert.pem").path
        _out, err, code = yield getProcessOutputAndValue(
            OPENSSL,
            ["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", key, "-out", cert, "-days", "1", "-subj", f"/CN={cn}"],
        )  # fmt: skip
        self.assertEqual(code, 0, err)
        port = free_port()
        from tests.e2e._process import TwistdProcess

        process = TwistdProcess()
        transport = reactor.spawnProcess(
            process,
            OPENSSL,
            [OPENSSL, "s_server", "-accept", f"{LOOPBACK}:{port}", "-cert", cert, "-key", key,
             "-www"],
        )  # fmt: skip
        self.addCleanup(lambda: transport.signalProcess("KILL") or process.exited)
        # s_server prints ACCEPT once it listens.
        while b"ACCEPT" not in process.stdout:
            if process.exited.called:
                self.fail(f"openssl s_server exited: {process.stderr!r}")
            yield _turn()
        return port

    @inlineCallbacks
    def subject_for(self, *servername: str) -> Generator[Any, Any, str]:
        assert OPENSSL is not None
        out, err, _code = yield getProcessOutputAndValue(
            OPENSSL,
            ["s_client", "-connect", f"{LOOPBACK}:{self.listen}", *servername],
            env=dict(os.environ),
            stdinBytes=b"",
        )
        text = (out + err).decode(errors="replace")
        for line in text.splitlines():
            if line.startswith("subject="):
                return line.split("CN", 1)[1].strip(" =")
        self.fail(f"no certificate subject in s_client output:\n{text}")

    @inlineCallbacks
    def test_exact_wildcard_and_fallback(self) -> Generator[Any, Any, None]:
        """Exact beats wildcard; the wildcard covers one label; the rest go to fallback."""
        cases = [
            (["-servername", "a.example.com"], "exact.example.com"),
            (["-servername", "b.example.com"], "wild.example.com"),
            (["-servername", "x.b.example.com"], "fallback.example.com"),
            (["-servername", "example.com"], "fallback.example.com"),
            (["-noservername"], "fallback.example.com"),
        ]
        for args, expected in cases:
            subject = yield self.subject_for(*args)
            self.assertEqual(subject, expected, args)

    @inlineCallbacks
    def test_removing_the_last_rule_closes_the_port(self) -> Generator[Any, Any, None]:
        """SNI rules share one listener, which closes when the last rule goes."""
        for r in self.forwarder.rules:
            yield self.forwarder.remove(r.id, drain_timeout=1)
        for _ in range(50):
            yield _turn()
        with self.assertRaises(ConnectionRefusedError):
            socket.create_connection((LOOPBACK, self.listen), timeout=5).close()


class RateLimitTests(ForwarderCase):
    @inlineCallbacks
    def test_bandwidth_cap_paces_the_transfer(self) -> Generator[Any, Any, None]:
        """1 MiB through a 256 KiB/s cap takes at least (1 MiB - burst - one read) / rate."""
        rate = 256 * 1024
        listen = free_port()
        r = rule(
            "capped",
            listen,
            target(LOOPBACK, self.echo()),
            rate_limit=RateLimit(bandwidth_in_bps=rate, bandwidth_in_burst=rate),
        )
        self.forwarder.install(r)
        payload = os.urandom(1024 * 1024)
        started = reactor.seconds()
        received, _ = yield exchange(listen, payload)
        elapsed = reactor.seconds() - started
        self.assertEqual(received, len(payload))
        self.assertGreaterEqual(elapsed, (len(payload) - rate - 65536) / rate)
        stats = self.forwarder.runtime_for(r.id).limiter.stats
        self.assertGreater(stats.throttle_seconds_in, 0)

    @inlineCallbacks
    def test_concurrent_cap_refuses_the_extra_connection(self) -> Generator[Any, Any, None]:
        """With concurrent_connections = 1 a second connection is reset, counted."""
        listen = free_port()
        r = rule(
            "one-at-a-time",
            listen,
            target(LOOPBACK, self.echo()),
            rate_limit=RateLimit(concurrent_connections=1),
        )
        self.forwarder.install(r)
        held = socket.create_connection((LOOPBACK, listen))
        self.addCleanup(held.close)
        held.sendall(b"x")
        from twisted.internet.threads import deferToThread

        self.assertEqual((yield deferToThread(held.recv, 1)), b"x")
        received, _ = yield exchange(listen, b"refused")
        self.assertEqual(received, 0)
        limiter = self.forwarder.runtime_for(r.id).limiter
        self.assertEqual(limiter.stats.rejects, {"conn_concurrent": 1})


class FailoverTests(ForwarderCase):
    @inlineCallbacks
    def test_refusing_primary_fails_over_and_is_marked_failed(self) -> Generator[Any, Any, None]:
        """Connections reach the secondary while the primary refuses; 3 refusals mark it failed."""
        listen = free_port()
        closed = free_port()
        r = rule(
            "ha",
            listen,
            target(LOOPBACK, closed, priority=0),
            target(LOOPBACK, self.echo(), priority=1),
        )
        self.forwarder.install(r)
        for i in range(3):
            received, _ = yield exchange(listen, b"%d" % i)
            self.assertEqual(received, 1)
        selector = self.forwarder.runtime_for(r.id).selector
        health = {t.ports.start: selector.health(t).name for t in r.targets}
        self.assertEqual(health[closed], "FAILED")


class DnsTargetTests(ForwarderCase):
    @inlineCallbacks
    def setUp(self) -> Generator[Any, Any, None]:  # type: ignore[override]
        zone = FilePath(self.mktemp())
        zone.setContent(b"zone = [SOA('test', ttl=2), A('svc.test', '127.0.0.1', ttl=2)]\n")
        factory = server.DNSServerFactory(authorities=[PySourceAuthority(zone.path)])
        # TCP first: a TCP port is then free for UDP far more often than
        # the other way round (UDP ports are not shared with connections).
        for _ in range(20):
            tcp = reactor.listenTCP(0, factory, interface=LOOPBACK)
            port = tcp.getHost().port
            try:
                udp = reactor.listenUDP(port, dns.DNSDatagramProtocol(factory), interface=LOOPBACK)
            except CannotListenError:
                yield tcp.stopListening()
                continue
            break
        self.addCleanup(tcp.stopListening)
        self.addCleanup(udp.stopListening)
        settings = ResolverSettings(nameservers=(f"{LOOPBACK}:{port}",))
        resolver = TargetResolver(reactor, settings, hosts_file=None)
        self.forwarder = Forwarder(reactor, resolver=resolver)
        self.addCleanup(self.forwarder.stop, 1.0)

    @inlineCallbacks
    def test_name_target_is_resolved_and_reached(self) -> Generator[Any, Any, None]:
        """A host-name target is resolved by the configured DNS server and dialled."""
        listen = free_port()
        self.forwarder.install(rule("named", listen, target("svc.test", self.echo())))
        received, _ = yield exchange(listen, b"hello")
        self.assertEqual(received, 5)

    @inlineCallbacks
    def test_unknown_name_drops_the_connection_not_the_rule(self) -> Generator[Any, Any, None]:
        """An NXDOMAIN target drops that connection and counts a DNS failure."""
        listen = free_port()
        r = rule("missing", listen, target("nope.test", self.echo()))
        self.forwarder.install(r)
        received, _ = yield exchange(listen, b"hello")
        self.assertEqual(received, 0)
        stats = self.forwarder.stats_for(r.id)
        self.assertEqual((stats.dns_failures, stats.connect_failures), (1, 1))
        self.assertEqual(self.forwarder.rules, (r,))


def _turn() -> Deferred[None]:
    d: Deferred[None] = Deferred()
    reactor.callLater(0, d.callback, None)
    return d
