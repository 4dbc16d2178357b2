"""
The control port against strangers, as real processes on 127.0.0.0/8
(docs/security.md, "Control port"):

- a twistd portunus-server started with a soft open-file limit of 1,024,
  with 2,000 idle unauthenticated connections held against its control
  port, still answers the operator API, enrolls a real portunus-client,
  pushes a rule to it and forwards bytes: it raised its limit and its caps
  bounded the strangers (and, when the hard limit is 1,024 too, the caps
  alone kept it inside its descriptors);
- with short deadlines, a bare TCP connect, half a ClientHello, a TLS
  handshake with no Hello and a junk AMP box are each closed, and the
  server logs them as one aggregated control.refusals line, with nothing
  at error and no line at all for a bare connect and close.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import signal
import socket
import ssl
from typing import Any

import treq
from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Protocol
from twisted.protocols import amp
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.trial.unittest import SkipTest
from zope.interface import implementer

from portunus.control.tls import PinnedClientTLS
from tests._net import LOOPBACK, OneShotClientFactory, echo_factory, free_port_range
from tests.e2e._process import TwistdProcess, twistd_with_nofile
from tests.e2e.test_control_plane_process import SERVER_CLI, _ProcessCase
from tests.server.test_control_port import client_hello

reactor: Any = _reactor

#: Idle strangers held against the control port, and how many source
#: addresses they come from (127.0.1.1 ...): 40 each, under the
#: per-source cap, so the total cap is what bounds them.
STRANGERS = 2000
SOURCES = 50
#: Strangers opened at once: below the listen backlog (50), so no SYN is dropped.
WAVE = 40


@implementer(IHandshakeListener)
class Idle(Protocol):
    """
    A stranger: finishes the TLS handshake (proof the server accepted it),
    then says nothing.  C{done} fires at the handshake, or when the server
    closes the connection first.
    """

    def __init__(self) -> None:
        self.done: Deferred[None] = Deferred()
        self.handshaken = False
        self.lost = False

    def handshakeCompleted(self) -> None:
        self.handshaken = True
        self.done.callback(None)

    def connectionLost(self, reason: Any) -> None:
        self.lost = True
        if not self.done.called:
            self.done.callback(None)

    def abort(self) -> None:
        if self.transport is not None and not self.lost:
            self.transport.abortConnection()  # type: ignore[attr-defined]


def _soft_nofile(pid: int) -> int:
    with open(f"/proc/{pid}/limits") as f:
        for line in f:
            if line.startswith("Max open files"):
                return int(line.split()[3])
    raise AssertionError("no open-file limit in /proc/PID/limits")


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in the metrics")


class _ControlPortCase(_ProcessCase):
    timeout = 180

    def configure(self, **keys: float) -> None:
        with open(os.path.join(self.data_dir, "server.toml"), "a") as f:
            for key, value in keys.items():
                f.write(f"{key} = {value}\n")

    def start_limited_server(self, soft: int, hard: int) -> TwistdProcess:
        """twistd portunus-server, started with the open-file limit (soft, hard)."""
        self.launcher = twistd_with_nofile(soft, hard)
        try:
            return self.start_server()
        finally:
            del self.launcher

    @inlineCallbacks
    def strangers(self, count: int, pin: str) -> Any:
        """
        C{count} idle connections to the control port that finish their TLS
        handshake and send nothing (aborted at cleanup), opened in waves of
        L{WAVE} so the listen backlog does not overflow; fires with them
        once the server has answered or closed each one.
        """
        held: list[Idle] = []
        self.addCleanup(lambda: [i.abort() for i in held])
        for first in range(0, count, WAVE):
            wave = []
            for n in range(first, min(first + WAVE, count)):
                idle = Idle()
                wave.append(idle)
                factory = TLSMemoryBIOFactory(
                    PinnedClientTLS(pin), True, OneShotClientFactory(idle)
                )
                source = f"127.0.1.{n % SOURCES + 1}"
                reactor.connectTCP(
                    LOOPBACK, self.control_port, factory, timeout=30, bindAddress=(source, 0)
                )
            held += wave
            answered: Deferred[None] = Deferred()
            gatherResults([i.done for i in wave]).addBoth(
                lambda r, d=answered: d.called or d.callback(r)
            )
            deadline = reactor.callLater(60, lambda d=answered: d.called or d.callback(None))
            yield answered
            if deadline.active():
                deadline.cancel()
            stuck = sum(1 for i in wave if not i.done.called)
            self.assertEqual(stuck, 0, f"the server left {stuck} connections unanswered")
        return held

    def metrics(self) -> Any:
        d = treq.get(f"http://{LOOPBACK}:{self.metrics_port}/metrics", persistent=False)
        return d.addCallback(treq.text_content)


class IdleStrangersTests(_ControlPortCase):
    def setUp(self) -> None:
        super().setUp()
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard != resource.RLIM_INFINITY and hard < STRANGERS + 500:
            raise SkipTest(f"this test process may hold only {hard} descriptors")
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        self.addCleanup(resource.setrlimit, resource.RLIMIT_NOFILE, (soft, hard))
        self.hard = hard
        # Deadlines far beyond the test: the caps alone must bound the strangers.
        self.configure(control_handshake_timeout_secs=300, control_hello_timeout_secs=300)

    @inlineCallbacks
    def serve_despite_strangers(self, hard: int) -> Any:
        """Start with soft limit 1,024 and C{hard}, hold 2,000 strangers, then work."""
        server = self.start_limited_server(1024, hard)
        started = yield server.wait_for("server.started")
        assert server.transport is not None
        pid = server.transport.pid
        strangers = yield self.strangers(STRANGERS, started["fingerprint"])
        self.closed_by_server = sum(1 for s in strangers if s.lost)

        # The operator API answers.
        out, err, code = yield self.cli(SERVER_CLI, "list-clients", "--format", "json")
        self.assertEqual(code, 0, err.decode())
        self.assertEqual(json.loads(out), [])

        # A real edge enrolls, connects and forwards a pushed rule.
        bundle = yield self.enroll_bundle("edge-busy")
        edge = self.spawn("portunus-client", "--bundle", bundle)
        yield edge.wait_for("control.connected")
        target = reactor.listenTCP(0, echo_factory(), interface=LOOPBACK)
        self.addCleanup(target.stopListening)
        listen = free_port_range(1)
        out, err, code = yield self.cli(
            SERVER_CLI, "push-rule", "edge-busy", str(listen), f"{LOOPBACK}:{target.getHost().port}"
        )
        self.assertEqual(code, 0, err.decode())
        yield edge.wait_for("rule.activated")
        payload = os.urandom(1024 * 1024)
        received, digest = yield self.send(listen, payload)
        self.assertEqual((received, digest), (len(payload), hashlib.sha256(payload).hexdigest()))
        out, err, code = yield self.cli(SERVER_CLI, "list-clients", "--format", "json")
        [listed] = json.loads(out)
        self.assertEqual(listed["state"], "connected")

        text = yield self.metrics()
        return server, pid, text

    @inlineCallbacks
    def test_raised_limit_and_total_cap(self) -> None:
        """
        With a hard limit above 1,024 the server raises its soft limit to it
        at start, and holds at most 1,024 strangers (the rest evicted oldest
        first), while the API, enrollment, a push and forwarding all work.
        """
        if self.hard == resource.RLIM_INFINITY or self.hard <= 2 * 1024:
            raise SkipTest("needs a hard open-file limit above 2,048")
        server, pid, text = yield self.serve_despite_strangers(self.hard)
        self.assertEqual(_soft_nofile(pid), self.hard)
        raised = yield server.wait_for("server.rlimit_nofile")
        self.assertEqual(raised["soft"], self.hard)
        self.assertLessEqual(_metric(text, "portunus_control_unauthenticated_connections"), 1024)
        evicted = _metric(text, 'portunus_control_refusals_total{reason="total_cap"}')
        self.assertGreaterEqual(evicted, STRANGERS - 1024)
        self.assertGreaterEqual(self.closed_by_server, STRANGERS - 1024)

    @inlineCallbacks
    def test_caps_alone_when_the_limit_cannot_be_raised(self) -> None:
        """
        With soft and hard limits of 1,024 the server cannot raise it: it
        lowers the total cap to 512 (half the limit, with a warning), and
        still serves the API, enrollment, a push and forwarding.
        """
        server, pid, text = yield self.serve_despite_strangers(1024)
        self.assertEqual(_soft_nofile(pid), 1024)
        lowered = yield server.wait_for("control.unauthenticated_cap_lowered")
        self.assertEqual(lowered["effective"], 512)
        self.assertLessEqual(_metric(text, "portunus_control_unauthenticated_connections"), 512)
        self.assertGreaterEqual(self.closed_by_server, STRANGERS - 512)
        self.assertFalse(
            [e for e in server.events if "Too many open files" in json.dumps(e)],
            "the server ran out of descriptors",
        )


class StalledPeersTests(_ControlPortCase):
    def assertClosed(self, s: socket.socket, seconds: float = 10) -> None:
        """
        The server closes C{s} without sending data (a TLS socket may see
        the close as an error); a socket still open after C{seconds} fails.
        """
        s.settimeout(seconds)
        try:
            received = s.recv(65536)
        except (ssl.SSLError, ConnectionResetError):
            return
        except TimeoutError:
            self.fail(f"still open after {seconds} s")
        self.assertEqual(received, b"")

    @inlineCallbacks
    def test_stalled_peers_are_closed_and_logged_aggregated(self) -> None:
        """
        With 0.5 s deadlines: bare TCP, half a ClientHello, TLS with no
        Hello and a junk AMP box are each closed by the server; stopping it
        logs one control.refusals line with their counts, nothing at error
        or critical, and no line about the bare connect and close.
        """
        self.configure(control_handshake_timeout_secs=0.5, control_hello_timeout_secs=0.5)
        server = self.start_server()
        yield server.wait_for("server.started")
        address = (LOOPBACK, self.control_port)

        bare = socket.create_connection(address)
        self.addCleanup(bare.close)
        self.assertClosed(bare)

        half = socket.create_connection(address)
        self.addCleanup(half.close)
        hello = client_hello()
        half.sendall(hello[: len(hello) // 2])
        self.assertClosed(half)

        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        silent = context.wrap_socket(socket.create_connection(address))
        self.addCleanup(silent.close)
        self.assertClosed(silent)

        junk = context.wrap_socket(socket.create_connection(address))
        self.addCleanup(junk.close)
        junk.sendall(amp.AmpBox({b"no": b"command"}).serialize())
        self.assertClosed(junk)

        quiet = socket.create_connection(address)
        quiet.close()

        server.signal(signal.SIGTERM)
        self.assertEqual((yield server.exited), 0, server.stderr.decode()[-2000:])
        [line] = [e for e in server.events if e["event"] == "control.refusals"]
        counts = line["counts"]
        self.assertEqual(counts.get("handshake_timeout"), 2, line)
        self.assertEqual(counts.get("hello_timeout"), 1, line)
        self.assertEqual(counts.get("protocol_error"), 1, line)
        errors = [e for e in server.events if e["level"] in ("error", "critical")]
        # (the onboarding setup token is written to stderr, which reads as error)
        self.assertEqual([e for e in errors if e["event"] != "stderr"], [])
        self.assertFalse([e for e in server.events if "AMP connection" in e.get("msg", "")])
