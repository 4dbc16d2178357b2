"""
Every use of a private Twisted name, in one place.

Portunus leans on a few of Twisted's private attributes and methods where
Twisted offers no public way to do what is needed.  Each use is one
function (or, for the DNS client's private hooks, one base class) here,
saying what it does, why, and which Twisted it was checked against; no
other module names these privates.  C{tests/test_compat.py} exercises each
one on real Twisted objects, so an upgrade that removes or renames one
fails there, by name, instead of somewhere in a data path.

Checked against Twisted 24.7 (the lower bound in C{pyproject.toml})
through 26.10.
"""

from __future__ import annotations

from collections.abc import Sequence

from twisted.application.internet import StreamServerEndpointService
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorCore, IReactorTCP
from twisted.names import client, dns
from twisted.python.failure import Failure

__all__ = [
    "HookedDnsResolver",
    "clear_exit_signal",
    "close_without_shutdown",
    "nothing_buffered",
    "raise_listen_errors_at_start",
]

#: The three sections of a DNS answer, as L{client.Resolver} fires them.
DnsAnswer = tuple[list[dns.RRHeader], list[dns.RRHeader], list[dns.RRHeader]]


def clear_exit_signal(reactor: IReactorCore) -> None:
    """
    Make twistd exit 0 after a stop that a signal began.

    The reactor's signal handlers (C{ReactorBase.sigInt}, C{sigTerm},
    C{sigBreak}) record the signal in the private C{_exitSignal} (declared
    by the private C{_ISupportsExitSignalCapturing}); once the reactor
    stops, twistd and twist re-raise it so the process dies of the signal.
    A service whose stop completed cleanly (sessions closed, connections
    drained, store closed) clears it, so the exit status says "clean".
    A reactor without the attribute (a test's fake) is left alone.
    """
    if getattr(reactor, "_exitSignal", None) is not None:
        reactor._exitSignal = None  # type: ignore[attr-defined]


def close_without_shutdown(transport: object) -> None:
    """
    Let a TCP transport's next C{connectionLost} close its socket without
    first calling C{shutdown(SHUT_RDWR)}.

    C{twisted.internet.tcp._SocketCloser} shuts a socket down before closing
    it unless its private C{_shouldShutdown} is false (Twisted sets it so
    for adopted listening sockets).  A spliced relay has already shut both
    directions down itself; closing is all that is left, and a second
    shutdown would only race the kernel.
    """
    transport._shouldShutdown = False  # type: ignore[attr-defined]


def nothing_buffered(transport: object) -> bool:
    """
    Whether a socket transport holds no bytes it has yet to write.

    C{twisted.internet.abstract.FileDescriptor} queues writes in
    C{dataBuffer} (undocumented) and the private C{_tempDataBuffer} (a list
    joined into C{dataBuffer} on the next write).  Only with both empty can
    the socket be handed to splice, or written directly, without
    reordering bytes.  A transport without them (not a socket) counts as
    empty; the caller checks it is a socket.
    """
    return not getattr(transport, "dataBuffer", b"") and not getattr(
        transport, "_tempDataBuffer", []
    )


def raise_listen_errors_at_start(service: StreamServerEndpointService) -> None:
    """
    Make C{service} raise from C{privilegedStartService} when its endpoint
    cannot listen, instead of logging the failure and running without it.

    This is what C{twisted.application.strports.service} does for the
    services it makes, by setting the private C{_raiseSynchronously}; a
    service built directly (to name the address in the error) needs the same.
    """
    service._raiseSynchronously = True


class HookedDnsResolver(client.Resolver):
    """
    L{twisted.names.client.Resolver} with its private hooks under public
    names, for a subclass that changes how queries are sent.

    C{client.Resolver} sends every UDP query, the first and each retry
    (C{_reissue}), through its private C{_query}, and every record lookup
    (C{lookupAddress} and friends, via C{ResolverBase}) through its private
    C{_lookup}.  Here those call L{query_server} and L{lookup_records},
    whose defaults are Twisted's own behaviour; a subclass overrides the
    public names.  L{connected_protocol}, L{reissue} and L{reactor} reach
    the other privates a subclass needs.
    """

    # -- Twisted's private hooks, routed to the public ones ----------------

    def _lookup(
        self, name: bytes, cls: int, type: int, timeout: Sequence[float] | None
    ) -> Deferred[DnsAnswer]:
        return self.lookup_records(name, cls, type, timeout)

    def _query(
        self,
        address: tuple[str, int],
        queries: list[dns.Query],
        timeout: float,
        id: int | None = None,
    ) -> Deferred[dns.Message]:
        return self.query_server(address, queries, timeout, id)

    # -- the public names ----------------------------------------------------

    def lookup_records(
        self, name: bytes, cls: int, type: int, timeout: Sequence[float] | None
    ) -> Deferred[DnsAnswer]:
        """
        Look up C{name}'s records of C{type} (class C{cls}); by default
        Twisted's UDP query, shared with an identical one in flight.
        C{timeout} is a sequence of per-attempt seconds, or C{None}.
        """
        answer: Deferred[DnsAnswer] = super()._lookup(name, cls, type, timeout)
        return answer

    def query_server(
        self,
        address: tuple[str, int],
        queries: list[dns.Query],
        timeout: float,
        id: int | None = None,
    ) -> Deferred[dns.Message]:
        """
        Send C{queries} to one server over UDP; by default on a fresh
        L{connected_protocol}, stopped once answered.  C{id} is set when
        retrying a timed-out query.
        """
        message: Deferred[dns.Message] = super()._query(address, queries, timeout, id)
        return message

    def connected_protocol(self, interface: str = "") -> dns.DNSDatagramProtocol:
        """A new L{dns.DNSDatagramProtocol} listening on C{interface}, a random port."""
        protocol: dns.DNSDatagramProtocol = self._connectedProtocol(interface=interface)
        return protocol

    def reissue(
        self,
        reason: Failure,
        addresses_left: list[tuple[str, int]],
        addresses_used: list[tuple[str, int]],
        queries: list[dns.Query],
        timeout: tuple[float, ...],
    ) -> Deferred[dns.Message] | Failure:
        """
        The errback of a UDP query: on a timeout, ask the next server (the
        next timeout once every server was asked); other failures pass.
        """
        result: Deferred[dns.Message] | Failure = self._reissue(
            reason, addresses_left, addresses_used, queries, timeout
        )
        return result

    @property
    def reactor(self) -> IReactorTCP:
        """The reactor given to the constructor (UDP, TCP and timers)."""
        reactor: IReactorTCP = self._reactor
        return reactor
