"""
C{python -m portunus.healthcheck}: the checks containers and probes run,
against real sockets on loopback and this kernel's C{/proc/net}.
"""

from __future__ import annotations

import io
import json
import os
import socket
import sys
from contextlib import redirect_stderr, redirect_stdout
from typing import Any

from twisted.internet import reactor as _reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase
from twisted.web.resource import Resource
from twisted.web.server import Site

from portunus import healthcheck
from portunus.healthcheck import Socket, has_session, health_url, parse_proc_net, unbound_ports
from tests._net import LOOPBACK

reactor: Any = _reactor


def _proc(name: str) -> list[Socket]:
    if not os.path.exists(f"/proc/net/{name}"):
        raise SkipTest(f"/proc/net/{name} is Linux only")
    with open(f"/proc/net/{name}") as f:
        return parse_proc_net(f.read())


def _run(argv: list[str], environ: dict[str, str] | None = None) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = healthcheck.main(argv, environ or {})
    return code, out.getvalue(), err.getvalue()


class ProcNetTests(SynchronousTestCase):
    def listening(self, family: int, host: str, kind: int = socket.SOCK_STREAM) -> socket.socket:
        s = socket.socket(family, kind)
        self.addCleanup(s.close)
        s.bind((host, 0))
        if kind == socket.SOCK_STREAM:
            s.listen(1)
        return s

    def test_reads_ipv4_and_ipv6_listeners_from_this_kernel(self) -> None:
        """The parser decodes the kernel's byte order: a real listener shows up as itself."""
        v4 = self.listening(socket.AF_INET, LOOPBACK)
        try:
            v6 = self.listening(socket.AF_INET6, "::1")
        except OSError:
            raise SkipTest("no IPv6 loopback here") from None
        port4, port6 = v4.getsockname()[1], v6.getsockname()[1]
        tcp = _proc("tcp") + _proc("tcp6")
        self.assertIn(("127.0.0.1", port4), {s.local for s in tcp if s.state == 0x0A})
        self.assertIn(("::1", port6), {s.local for s in tcp if s.state == 0x0A})
        self.assertEqual(unbound_ports([("tcp", port4), ("tcp", port6)], tcp, []), [])

    def test_unbound_ports_names_each_protocol_separately(self) -> None:
        """A TCP listener does not count for a UDP rule on the same port, nor the reverse."""
        tcp = self.listening(socket.AF_INET, LOOPBACK)
        udp = self.listening(socket.AF_INET, LOOPBACK, socket.SOCK_DGRAM)
        t, u = tcp.getsockname()[1], udp.getsockname()[1]
        missing = unbound_ports(
            [("tcp", t), ("udp", u), ("udp", t), ("tcp", u)], _proc("tcp"), _proc("udp")
        )
        self.assertEqual(sorted(missing), sorted([("udp", t), ("tcp", u)]))

    def test_session_is_an_established_connection_of_this_user_to_the_server(self) -> None:
        """Only an established connection, to that address and port, owned by this uid, counts."""
        server = self.listening(socket.AF_INET, LOOPBACK)
        port = server.getsockname()[1]
        self.assertFalse(has_session(_proc("tcp"), [LOOPBACK], port, os.getuid()))
        client = socket.create_connection((LOOPBACK, port))
        self.addCleanup(client.close)
        accepted, _ = server.accept()
        self.addCleanup(accepted.close)
        tcp = _proc("tcp")
        self.assertTrue(has_session(tcp, [LOOPBACK], port, os.getuid()))
        self.assertFalse(has_session(tcp, [LOOPBACK], port, os.getuid() + 1))
        self.assertFalse(has_session(tcp, ["127.0.0.2"], port, os.getuid()))

    def test_ipv4_mapped_peers_count_for_ipv4_addresses(self) -> None:
        """A dual-stack socket shows an IPv4 peer as ::ffff:a.b.c.d; that is the same server."""
        row = Socket(("::", 5000), ("::ffff:10.0.0.1", 7443), 0x01, 1000)
        self.assertTrue(has_session([row], ["10.0.0.1"], 7443, 1000))


class HealthUrlTests(SynchronousTestCase):
    def test_wildcards_are_asked_on_loopback(self) -> None:
        """0.0.0.0 and :: are not addresses to connect to: the check asks loopback."""
        self.assertEqual(health_url("0.0.0.0", 7080), "http://127.0.0.1:7080/v1/health")
        self.assertEqual(health_url("::", 7080), "http://[::1]:7080/v1/health")
        self.assertEqual(health_url("10.1.2.3", 80), "http://10.1.2.3:80/v1/health")


class _Health(Resource):
    isLeaf = True

    def __init__(self, body: bytes, code: int = 200) -> None:
        super().__init__()
        self.body, self.code = body, code

    def render_GET(self, request: Any) -> bytes:
        request.setResponseCode(self.code)
        return self.body


class CommandTests(TestCase):
    def serve(self, body: bytes, code: int = 200) -> int:
        root = Resource()
        v1 = Resource()
        root.putChild(b"v1", v1)
        v1.putChild(b"health", _Health(body, code))
        port = reactor.listenTCP(0, Site(root), interface=LOOPBACK)
        self.addCleanup(port.stopListening)
        return int(port.getHost().port)

    def data_dir(self, toml: str = "") -> str:
        path = self.mktemp()
        os.makedirs(path)
        with open(os.path.join(path, "server.toml"), "w") as f:
            f.write(toml)
        return path

    @inlineCallbacks
    def test_server_uses_the_address_the_server_would(self) -> Any:
        """server.toml's operator_http_listen, overridden by the environment, is what is asked."""
        good = self.serve(json.dumps({"status": "ok"}).encode())
        bad = self.serve(b'{"status": "starting"}', 503)
        data = self.data_dir(f'operator_http_listen = "0.0.0.0:{bad}"\n')
        code, _, err = yield deferToThread(_run, ["server", "--data-dir", data])
        self.assertEqual(code, 1)
        self.assertIn(f"http://127.0.0.1:{bad}/v1/health answered 503", err)
        env = {"PORTUNUS_OPERATOR_HTTP_LISTEN": f"{LOOPBACK}:{good}"}
        code, out, _ = yield deferToThread(_run, ["server", "--data-dir", data], env)
        self.assertEqual((code, out), (0, f"healthy: http://127.0.0.1:{good}/v1/health: ok\n"))

    def test_server_down_is_unhealthy(self) -> None:
        """Nothing listening: exit 1 naming the URL."""
        probe = socket.socket()
        probe.bind((LOOPBACK, 0))
        port = probe.getsockname()[1]
        probe.close()
        data = self.data_dir(f'operator_http_listen = "127.0.0.1:{port}"\n')
        code, _, err = _run(["server", "--data-dir", data])
        self.assertEqual(code, 1)
        self.assertIn(f"unhealthy: http://127.0.0.1:{port}/v1/health:", err)

    def test_standalone_lists_the_ports_not_bound(self) -> None:
        """Healthy once every rule's ports are bound; otherwise each missing port is named."""
        if not sys.platform.startswith("linux"):
            raise SkipTest("reads /proc/net")
        held = socket.socket()
        self.addCleanup(held.close)
        held.bind((LOOPBACK, 0))
        port = held.getsockname()[1]
        config = self.mktemp()
        with open(config, "w") as f:
            f.write(f'[[rule]]\nname = "web"\nlisten_port = {port}\ntarget = "127.0.0.1:9"\n')
        code, _, err = _run(["standalone", "--config", config])
        self.assertEqual((code, err), (1, f"unhealthy: not bound: tcp/{port}\n"))
        held.listen(1)
        code, out, _ = _run(["standalone", "--config", config])
        self.assertEqual((code, out), (0, "healthy: 1 port(s) bound\n"))

    def test_edge_with_a_bad_bundle_is_unhealthy(self) -> None:
        """A bundle that cannot be read is reported, not a traceback."""
        code, _, err = _run(["edge", "--bundle", os.path.abspath("missing.json")])
        self.assertEqual(code, 1)
        self.assertIn("unhealthy: ", err)
        self.assertIn("missing.json", err)
