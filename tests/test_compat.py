"""
Tests for L{portunus.compat}: each private Twisted name it uses still
exists and still does what Portunus relies on, on real Twisted objects; and
no other module touches a private Twisted name.

A Twisted upgrade that removes or renames one of these privates fails
here, naming it.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
import re
import signal
import socket
from collections.abc import Iterator
from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.internet import tcp
from twisted.internet.base import ReactorBase
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import CannotListenError, ConnectionDone
from twisted.internet.interfaces import _ISupportsExitSignalCapturing
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactor
from twisted.names import client, dns
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

import portunus
from portunus import compat
from portunus.compat import (
    HookedDnsResolver,
    clear_exit_signal,
    close_without_shutdown,
    nothing_buffered,
    raise_listen_errors_at_start,
)


class _ReactorWithoutWaker(ReactorBase):
    """A real L{ReactorBase}, minus the waker pipe no test here needs."""

    def installWaker(self) -> None:
        pass


class ExitSignalTests(SynchronousTestCase):
    """C{_exitSignal}: what twistd re-raises once the reactor stops."""

    def test_twistd_reads_the_declared_attribute(self) -> None:
        """
        The running reactor (the kind twistd installs) declares the private
        C{_ISupportsExitSignalCapturing}, whose attribute is C{_exitSignal}.
        """
        from twisted.internet import reactor

        self.assertTrue(_ISupportsExitSignalCapturing.providedBy(reactor))
        self.assertIn("_exitSignal", list(_ISupportsExitSignalCapturing))

    def test_signal_recorded_then_cleared(self) -> None:
        """
        A SIGTERM handled by L{ReactorBase} is recorded in C{_exitSignal};
        L{clear_exit_signal} forgets it.
        """
        reactor = _ReactorWithoutWaker()
        reactor.sigTerm(signal.SIGTERM, None)
        self.assertEqual(reactor._exitSignal, signal.SIGTERM)
        clear_exit_signal(reactor)
        self.assertIsNone(reactor._exitSignal)

    def test_reactor_without_it_left_alone(self) -> None:
        """A fake reactor without the attribute does not grow one."""
        clock = Clock()
        clear_exit_signal(clock)  # type: ignore[arg-type]
        self.assertFalse(hasattr(clock, "_exitSignal"))


class _Recorder(Protocol):
    def __init__(self) -> None:
        self.lost: list[Failure | None] = []

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.lost.append(reason)


def _socket_transport(case: SynchronousTestCase) -> tuple[tcp.Connection, socket.socket]:
    """
    A real TCP-transport class over one end of a socket pair (its socket
    also dup'ed, so only a C{shutdown()} ends it for the peer), and the
    non-blocking peer end.
    """
    mine, peer = socket.socketpair()
    held = mine.dup()
    peer.setblocking(False)
    for sock in (held, peer, mine):
        case.addCleanup(sock.close)
    transport = tcp.Connection(mine, _Recorder(), MemoryReactor())
    transport.connected = True
    return transport, peer


def _peer_saw_eof(peer: socket.socket) -> bool:
    try:
        return peer.recv(1) == b""
    except BlockingIOError:
        return False


class CloseWithoutShutdownTests(SynchronousTestCase):
    """C{_shouldShutdown} on C{tcp.Connection}, which the data plane's transports are."""

    def test_transports_inherit_it(self) -> None:
        """Both accepted and dialled TCP transports are C{tcp.Connection}s."""
        self.assertTrue(issubclass(tcp.Server, tcp.Connection))
        self.assertTrue(issubclass(tcp.Client, tcp.Connection))
        self.assertIs(tcp.Connection._shouldShutdown, True)

    def test_twisted_shuts_down_by_default(self) -> None:
        """Without it, a lost connection's socket is shut down: the peer sees EOF."""
        transport, peer = _socket_transport(self)
        transport.connectionLost(Failure(ConnectionDone()))
        self.assertTrue(_peer_saw_eof(peer))

    def test_close_only(self) -> None:
        """
        After L{close_without_shutdown}, the socket is only closed: with
        another descriptor on it, the peer sees no EOF.
        """
        transport, peer = _socket_transport(self)
        protocol = transport.protocol
        close_without_shutdown(transport)
        transport.connectionLost(Failure(ConnectionDone()))
        self.assertFalse(_peer_saw_eof(peer))
        self.assertEqual(len(protocol.lost), 1)  # type: ignore[attr-defined]


class NothingBufferedTests(SynchronousTestCase):
    """C{dataBuffer} and C{_tempDataBuffer}: the bytes a transport still holds."""

    def test_fresh_transport(self) -> None:
        """A transport that was never written to holds nothing."""
        transport, _ = _socket_transport(self)
        self.assertTrue(nothing_buffered(transport))

    def test_write_not_yet_flushed(self) -> None:
        """A write waits in C{_tempDataBuffer} until the reactor flushes it."""
        transport, _ = _socket_transport(self)
        transport.write(b"x")
        self.assertEqual(transport.dataBuffer, b"")
        self.assertFalse(nothing_buffered(transport))

    def test_partly_written(self) -> None:
        """What the socket would not take waits in C{dataBuffer}."""
        transport, _ = _socket_transport(self)
        transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        transport.write(b"x" * (1 << 20))
        transport.doWrite()
        self.assertTrue(transport.dataBuffer)
        self.assertFalse(nothing_buffered(transport))

    def test_not_a_socket(self) -> None:
        """An object without the buffers counts as empty."""
        self.assertTrue(nothing_buffered(object()))


class _RefusingEndpoint:
    def listen(self, factory: object) -> Deferred[object]:
        return fail(CannotListenError("127.0.0.1", 1, OSError("in use")))


class RaiseListenErrorsTests(SynchronousTestCase):
    """C{_raiseSynchronously} on C{StreamServerEndpointService}."""

    def _service(self) -> StreamServerEndpointService:
        return StreamServerEndpointService(_RefusingEndpoint(), Factory())  # type: ignore[arg-type]

    def test_twisted_logs_by_default(self) -> None:
        """Without it, a listen failure is only logged."""
        self._service().privilegedStartService()
        self.assertEqual(len(self.flushLoggedErrors(CannotListenError)), 1)

    def test_raised(self) -> None:
        """With L{raise_listen_errors_at_start} it is raised from the start."""
        service = self._service()
        raise_listen_errors_at_start(service)
        self.assertRaises(CannotListenError, service.privilegedStartService)


def _params(method: Any) -> list[str]:
    return list(inspect.signature(method).parameters)


class _Recording(HookedDnsResolver):
    """Records what reaches the public hooks, answers from a script."""

    def __init__(self, reactor: Any, servers: list[tuple[str, int]]) -> None:
        super().__init__(servers=servers, reactor=reactor)
        self.lookups: list[tuple[bytes, int, int, object]] = []
        self.queries: list[tuple[tuple[str, int], float, int | None]] = []
        self.answers: list[Deferred[dns.Message]] = []

    def lookup_records(self, name: bytes, cls: int, type: int, timeout: Any) -> Any:
        self.lookups.append((name, cls, type, timeout))
        return succeed(([], [], []))

    def query_server(
        self,
        address: tuple[str, int],
        queries: list[dns.Query],
        timeout: float,
        id: int | None = None,
    ) -> Deferred[dns.Message]:
        self.queries.append((address, timeout, id))
        return self.answers.pop(0)


class HookedDnsResolverTests(TestCase):
    """C{client.Resolver}'s private C{_lookup}, C{_query}, C{_reissue}, C{_connectedProtocol}."""

    first = ("127.0.0.1", 5301)
    second = ("127.0.0.1", 5302)

    def test_private_signatures(self) -> None:
        """The privates exist with the parameters the hooks pass."""
        self.assertEqual(
            _params(client.Resolver._lookup), ["self", "name", "cls", "type", "timeout"]
        )
        self.assertEqual(_params(client.Resolver._query), ["self", "args"])
        self.assertEqual(
            _params(client.Resolver._reissue),
            ["self", "reason", "addressesLeft", "addressesUsed", "query", "timeout"],
        )
        self.assertEqual(_params(client.Resolver._connectedProtocol), ["self", "interface"])
        self.assertEqual(
            _params(dns.DNSDatagramProtocol.query), ["self", "address", "queries", "timeout", "id"]
        )

    def test_record_lookups_reach_lookup_records(self) -> None:
        """C{lookupAddress} (through C{ResolverBase}) arrives at L{lookup_records}."""
        resolver = _Recording(MemoryReactor(), [self.first])
        self.successResultOf(resolver.lookupAddress("example.com", timeout=(3,)))
        self.assertEqual(resolver.lookups, [(b"example.com", dns.IN, dns.A, (3,))])

    def test_queries_and_retries_reach_query_server(self) -> None:
        """
        C{queryUDP} sends through L{query_server}; on a timeout Twisted's
        C{_reissue} asks the next server through it too, with the query's id.
        """
        resolver = _Recording(MemoryReactor(), [self.first, self.second])
        answer = dns.Message()
        resolver.answers = [fail(dns.DNSQueryTimeoutError(77)), succeed(answer)]
        d = resolver.queryUDP([dns.Query(b"example.com")], timeout=(2,))
        self.assertIs(self.successResultOf(d), answer)
        self.assertEqual(resolver.queries, [(self.first, 2, None), (self.second, 2, 77)])

    def test_reissue(self) -> None:
        """L{reissue} on a timeout asks the next server not yet asked."""
        resolver = _Recording(MemoryReactor(), [self.first, self.second])
        answer = dns.Message()
        resolver.answers = [succeed(answer)]
        result = resolver.reissue(
            Failure(dns.DNSQueryTimeoutError(5)), [self.second], [self.first], [], (2,)
        )
        assert isinstance(result, Deferred)
        self.assertIs(self.successResultOf(result), answer)
        self.assertEqual(resolver.queries, [(self.second, 2, 5)])

    def test_default_query_server(self) -> None:
        """
        Without an override, L{query_server} is Twisted's C{_query}: a
        datagram protocol on the reactor, stopped once the query ends.
        """
        from twisted.internet import reactor

        resolver = HookedDnsResolver(servers=[self.first], reactor=reactor)
        d = resolver.query_server(self.first, [dns.Query(b"example.com")], 0.01)
        self.assertIs(resolver.reactor, reactor)
        return self.assertFailure(d, dns.DNSQueryTimeoutError)

    def test_connected_protocol(self) -> None:
        """L{connected_protocol} listens on the interface asked for."""
        from twisted.internet import reactor

        resolver = HookedDnsResolver(servers=[self.first], reactor=reactor)
        protocol = resolver.connected_protocol("127.0.0.1")
        self.addCleanup(protocol.transport.stopListening)
        self.assertIsInstance(protocol, dns.DNSDatagramProtocol)
        self.assertEqual(protocol.transport.getHost().host, "127.0.0.1")


def _portunus_modules() -> Iterator[str]:
    for info in pkgutil.walk_packages(portunus.__path__, "portunus."):
        yield info.name


#: Names spelt with an underscore that are public all the same.
_PUBLIC = {("os", "_exit")}


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _twisted_privates(cls: type) -> set[str]:
    """The private names C{cls}'s Twisted base classes define or assign."""
    names: set[str] = set()
    for base in cls.__mro__:
        if not base.__module__.startswith("twisted."):
            continue
        names.update(n for n in vars(base) if _private(n))
        try:
            source = inspect.getsource(base)
        except (OSError, TypeError):
            continue
        names.update(re.findall(r"self\.(_[A-Za-z]\w*)\s*(?::[^=\n]*)?=", source))
    return names


def _own_names(tree: ast.Module) -> set[str]:
    """
    The private attribute names the module's own classes define: assigned
    on C{self} or C{cls}, in a class body or C{__slots__}, or as methods.
    """
    names: set[str] = set()
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.ctx, ast.Store)
            and isinstance(node.value, ast.Name)
            and node.value.id in ("self", "cls")
        ):
            names.add(node.attr)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            names.add(node.name)
        elif isinstance(node, ast.ClassDef):
            for item in node.body:
                targets = item.targets if isinstance(item, ast.Assign) else []
                if isinstance(item, ast.AnnAssign):
                    targets = [item.target]
                for target in targets:
                    if isinstance(target, ast.Name):
                        names.add(target.id)
                        if target.id == "__slots__" and isinstance(item.value, ast.Tuple):
                            names.update(
                                e.value for e in item.value.elts if isinstance(e, ast.Constant)
                            )
    return {n for n in names if _private(n)}


def _private_uses(module_name: str) -> list[str]:
    module = importlib.import_module(module_name)
    with open(module.__file__ or "", encoding="utf-8") as f:
        source = f.read()
    tree = ast.parse(source)
    own = _own_names(tree)
    found: list[str] = []

    def where(node: ast.AST) -> str:
        return f"{module_name}:{getattr(node, 'lineno', '?')}"

    # Another object's private attribute, unless this module owns the name.
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and _private(node.attr)
            and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))
            and node.attr not in own
            and not (isinstance(node.value, ast.Name) and (node.value.id, node.attr) in _PUBLIC)
        ):
            found.append(f"{where(node)} .{node.attr}")
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("getattr", "setattr", "hasattr")
            and len(node.args) >= 2
            and isinstance(node.args[1], ast.Constant)
            and isinstance(node.args[1].value, str)
            and _private(node.args[1].value)
            and node.args[1].value not in own
        ):
            found.append(f"{where(node)} {node.func.id}({node.args[1].value!r})")

    # A subclass of a Twisted class touching (or overriding) its privates.
    for node in ast.walk(tree):
        if not isinstance(node, ast.ClassDef):
            continue
        cls = getattr(module, node.name, None)
        if not isinstance(cls, type) or cls.__module__ != module_name:
            continue
        theirs = _twisted_privates(cls)
        for item in ast.walk(node):
            if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef) and item.name in theirs:
                found.append(f"{where(item)} def {node.name}.{item.name}")
            elif (
                isinstance(item, ast.Attribute)
                and item.attr in theirs
                and isinstance(item.value, ast.Name)
                and item.value.id == "self"
            ):
                found.append(f"{where(item)} {node.name}: self.{item.attr}")
            elif isinstance(item, ast.Assign) and item in node.body:
                for target in item.targets:
                    if isinstance(target, ast.Name) and target.id in theirs:
                        found.append(f"{where(item)} {node.name}.{target.id} =")
    return found


class OnlyCompatTouchesPrivatesTests(SynchronousTestCase):
    """Every private Twisted name goes through L{portunus.compat}."""

    def test_no_private_twisted_names_outside_compat(self) -> None:
        """
        No module but C{portunus.compat} reads another object's private
        attribute, nor touches or overrides a private of a Twisted base
        class.
        """
        found = [
            use
            for name in _portunus_modules()
            if name != compat.__name__
            for use in _private_uses(name)
        ]
        self.assertEqual(found, [])

    def test_the_check_sees_them(self) -> None:
        """The check above finds the uses C{portunus.compat} wraps."""
        found = _private_uses(compat.__name__)
        for expected in ("._exitSignal", "._shouldShutdown", "getattr('_tempDataBuffer')"):
            self.assertTrue(any(expected in use for use in found), (expected, found))
        for expected in ("def HookedDnsResolver._lookup", "def HookedDnsResolver._query"):
            self.assertIn(expected, " ".join(found))
