"""
The TCP data plane over real sockets on 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import os
import socket
from typing import Any

from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks
from twisted.internet.protocol import Factory
from twisted.trial.unittest import TestCase

from portunus.dataplane import BindError, Forwarder, SpliceContext
from portunus.dataplane.splice import splice_supported
from portunus.model import PortRange, Rule, Target
from portunus.model import Protocol as Proto
from tests._net import (
    LOOPBACK,
    HashingClient,
    OneShotClientFactory,
    ReplyAfterEof,
    echo_factory,
    free_port,
    free_port_range,
)

reactor: Any = _reactor


def loopback_rule(name: str, listen: PortRange, target: Target) -> Rule:
    return Rule(
        name=name,
        protocol=Proto.TCP,
        listen=listen,
        targets=(target,),
        listen_addresses=(LOOPBACK,),
    )


class ForwardingTestCase(TestCase):
    """Runs with splice when the kernel allows; each class has a userspace twin."""

    timeout = 120
    use_splice = True

    def setUp(self) -> None:
        if self.use_splice and not splice_supported():
            self.skipTest("this kernel or sandbox cannot splice sockets")
        self.forwarder = Forwarder(reactor, splice=SpliceContext() if self.use_splice else None)
        self.addCleanup(self.forwarder.stop, 1.0)

    def listen(self, factory: Factory) -> int:
        port = reactor.listenTCP(0, factory, interface=LOOPBACK)
        self.addCleanup(port.stopListening)
        return int(port.getHost().port)

    def echo_rule(self, name: str = "echo") -> tuple[Rule, int]:
        target_port = self.listen(echo_factory())
        listen_port = free_port()
        rule = loopback_rule(
            name, PortRange.single(listen_port), Target(LOOPBACK, PortRange.single(target_port))
        )
        self.forwarder.install(rule)
        return rule, listen_port

    def exchange(self, port: int, payload: bytes) -> Deferred[tuple[int, str]]:
        client = HashingClient(payload)
        reactor.connectTCP(LOOPBACK, port, OneShotClientFactory(client), timeout=10)
        return client.done


class BulkTransferTests(ForwardingTestCase):
    @inlineCallbacks
    def test_64_mib_each_way_arrives_intact(self) -> Any:
        """64 MiB of random bytes go through a rule and back with equal sha256."""
        rule, port = self.echo_rule()
        payload = os.urandom(64 * 1024 * 1024)
        received, digest = yield self.exchange(port, payload)
        self.assertEqual(received, len(payload))
        self.assertEqual(digest, hashlib.sha256(payload).hexdigest())
        stats = self.forwarder.stats_for(rule.id)
        self.assertEqual((stats.bytes_in, stats.bytes_out), (len(payload), len(payload)))
        if self.use_splice:
            assert self.forwarder.splice is not None
            self.assertGreater(self.forwarder.splice.pool.created, 0)

    @inlineCallbacks
    def test_200_concurrent_connections_all_complete(self) -> Any:
        """200 connections at once through one rule each get their own bytes back."""
        rule, port = self.echo_rule()
        payloads = [os.urandom(16 * 1024) for _ in range(200)]
        results = yield gatherResults([self.exchange(port, p) for p in payloads])
        self.assertEqual(results, [(len(p), hashlib.sha256(p).hexdigest()) for p in payloads])
        stats = self.forwarder.stats_for(rule.id)
        self.assertEqual(stats.total_connections, 200)
        self.assertEqual(stats.connect_failures, 0)


class HalfCloseTests(ForwardingTestCase):
    @inlineCallbacks
    def test_client_shuts_write_and_still_reads_reply(self) -> Any:
        """A client that shuts its write side still receives the target's reply."""
        target_port = self.listen(Factory.forProtocol(ReplyAfterEof))
        listen_port = free_port()
        self.forwarder.install(
            loopback_rule(
                "half",
                PortRange.single(listen_port),
                Target(LOOPBACK, PortRange.single(target_port)),
            )
        )
        client = HashingClient(b"ping")
        reactor.connectTCP(LOOPBACK, listen_port, OneShotClientFactory(client))
        _received, digest = yield client.done
        self.assertEqual(digest, hashlib.sha256(b"got ping").hexdigest())


class PortRangeTests(ForwardingTestCase):
    @inlineCallbacks
    def test_each_listen_port_reaches_its_offset_target(self) -> Any:
        """Listen port A+i reaches target port C+i for every port of a range."""
        count = 4
        listen_start = free_port_range(count)
        target_start = free_port_range(count)
        labels: dict[int, bytes] = {}
        for i in range(count):
            port = target_start + i
            labels[port] = f"target-{i}".encode()
            factory = Factory.forProtocol(ReplyAfterEof)
            listener = reactor.listenTCP(port, factory, interface=LOOPBACK)
            self.addCleanup(listener.stopListening)
        self.forwarder.install(
            loopback_rule(
                "range",
                PortRange(listen_start, listen_start + count - 1),
                Target(LOOPBACK, PortRange(target_start, target_start + count - 1)),
            )
        )
        for i in range(count):
            client = HashingClient(f"port-{i}".encode())
            reactor.connectTCP(LOOPBACK, listen_start + i, OneShotClientFactory(client))
            _, digest = yield client.done
            self.assertEqual(digest, hashlib.sha256(f"got port-{i}".encode()).hexdigest())


class BindTests(ForwardingTestCase):
    def test_port_in_use_is_named(self) -> None:
        """A port held by another socket fails with port_in_use and the port."""
        holder = socket.socket()
        self.addCleanup(holder.close)
        holder.bind((LOOPBACK, 0))
        holder.listen(1)
        port = holder.getsockname()[1]
        rule = loopback_rule("busy", PortRange.single(port), Target(LOOPBACK, PortRange.single(1)))
        error = self.assertRaises(BindError, self.forwarder.install, rule)
        self.assertEqual((error.code, error.port), ("port_in_use", port))
        self.assertEqual(self.forwarder.rules, ())

    def test_range_binds_all_or_nothing(self) -> None:
        """If one port of a range is taken, none of the range stays bound."""
        start = free_port_range(3)
        holder = socket.socket()
        self.addCleanup(holder.close)
        holder.bind((LOOPBACK, start + 1))
        holder.listen(1)
        rule = loopback_rule(
            "range", PortRange(start, start + 2), Target(LOOPBACK, PortRange(1000, 1002))
        )
        error = self.assertRaises(BindError, self.forwarder.install, rule)
        self.assertEqual(error.port, start + 1)
        with socket.socket() as probe:
            probe.bind((LOOPBACK, start))  # released again

    def test_privileged_port_is_permission_denied(self) -> None:
        """Binding a port below 1024 without the right is permission_denied."""
        if os.geteuid() == 0:
            self.skipTest("running as root: every port can be bound")
        rule = loopback_rule("low", PortRange.single(81), Target(LOOPBACK, PortRange.single(1)))
        error = self.assertRaises(BindError, self.forwarder.install, rule)
        self.assertEqual(error.code, "permission_denied")


class DrainTests(ForwardingTestCase):
    @inlineCallbacks
    def test_remove_stops_accepting_and_lets_live_connections_finish(self) -> Any:
        """Removing a rule refuses new connections at once; a live one completes."""
        target_port = self.listen(Factory.forProtocol(ReplyAfterEof))
        listen_port = free_port()
        rule = loopback_rule(
            "drain", PortRange.single(listen_port), Target(LOOPBACK, PortRange.single(target_port))
        )
        self.forwarder.install(rule)
        live = socket.create_connection((LOOPBACK, listen_port))
        self.addCleanup(live.close)
        # Wait until the relay for the live connection exists.
        while self.forwarder.connection_count() == 0:
            yield _turn()
        removed = self.forwarder.remove(rule.id, drain_timeout=30)
        # The listening socket closes on the reactor's next turns.
        for _ in range(100):
            yield _turn()
            if not _accepts(listen_port):
                break
        self.assertFalse(_accepts(listen_port))
        self.assertNoResult(removed)
        live.sendall(b"still here")
        live.shutdown(socket.SHUT_WR)
        reply = yield _read_all(live)
        self.assertEqual(reply, b"got still here")
        cut = yield removed
        self.assertEqual(cut, 0)


def _accepts(port: int) -> bool:
    try:
        socket.create_connection((LOOPBACK, port), timeout=5).close()
    except ConnectionRefusedError:
        return False
    return True


def _turn() -> Deferred[None]:
    """Let the reactor run one iteration."""
    d: Deferred[None] = Deferred()
    reactor.callLater(0, d.callback, None)
    return d


def _read_all(sock: socket.socket) -> Deferred[bytes]:
    """Read a blocking socket to EOF in a thread, off the reactor."""
    from twisted.internet.threads import deferToThread

    def read() -> bytes:
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)

    return deferToThread(read)


def _userspace_twin(cls: type[ForwardingTestCase]) -> type[ForwardingTestCase]:
    return type(
        f"{cls.__name__}Userspace",
        (cls,),
        {"use_splice": False, "__module__": cls.__module__, "__doc__": cls.__doc__},
    )


BulkTransferTestsUserspace = _userspace_twin(BulkTransferTests)
HalfCloseTestsUserspace = _userspace_twin(HalfCloseTests)
PortRangeTestsUserspace = _userspace_twin(PortRangeTests)
DrainTestsUserspace = _userspace_twin(DrainTests)
