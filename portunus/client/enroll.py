"""
C{portunus-client enroll URI}: redeem an enrollment code for a bundle.

The connection is pinned like every control connection: the code goes out
only after the server has shown the certificate the URI names.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import HostnameEndpoint, connectProtocol, wrapClientTLS
from twisted.internet.interfaces import IHandshakeListener, IStreamClientEndpoint
from twisted.protocols import amp
from twisted.python.failure import Failure
from zope.interface import implementer

from portunus.addresses import format_host_port
from portunus.control.commands import Enroll, EnrollmentRefused
from portunus.control.enrollment import Bundle, EnrollUri, parse_endpoint
from portunus.control.tls import PinMismatch, PinnedClientTLS
from portunus.errors import PortunusError
from portunus.reactors import IProcessReactor

__all__ = ["EnrollingProtocol", "enroll"]

CONNECT_TIMEOUT = 10


@implementer(IHandshakeListener)
class EnrollingProtocol(amp.AMP):
    """Sends Enroll once the pinned handshake is done; fires L{result}."""

    def __init__(self, code: str) -> None:
        super().__init__()
        self._code = code
        self.result: Deferred[dict[str, Any]] = Deferred()

    def handshakeCompleted(self) -> None:
        d = self.callRemote(Enroll, code=self._code)
        d.addBoth(self._done)

    def _done(self, outcome: Any) -> None:
        if not self.result.called:
            if isinstance(outcome, Failure):
                self.result.errback(outcome)
            else:
                self.result.callback(outcome)
        if self.transport is not None:
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        super().connectionLost(reason)
        if not self.result.called:
            self.result.errback(reason)


def bundle_for(uri: EnrollUri, answer: dict[str, Any]) -> Bundle:
    """The bundle an Enroll answer makes, pinned to the URI's certificate."""
    endpoint = answer.get("server_endpoint") or uri.endpoint
    host, port = parse_endpoint(endpoint)
    return Bundle(
        client_name=answer["client_name"],
        client_id=answer["client_id"],
        server_endpoint=format_host_port(host, port),
        server_cert_sha256=uri.pin,
        token=answer["token"],
    )


@inlineCallbacks
def enroll(
    reactor: IProcessReactor, uri: EnrollUri, endpoint: IStreamClientEndpoint | None = None
) -> Generator[Deferred[Any], Any, Bundle]:
    """
    Redeem C{uri}'s code; fire with the L{Bundle}.

    @raise PortunusError: C{client.enrollment_failed} naming what went
        wrong (pin mismatch, refused code, unreachable server).
    """
    if endpoint is None:
        endpoint = wrapClientTLS(
            PinnedClientTLS(uri.pin),
            HostnameEndpoint(reactor, uri.host, uri.port, timeout=CONNECT_TIMEOUT),
        )
    protocol = EnrollingProtocol(uri.code)
    try:
        yield connectProtocol(endpoint, protocol)
        answer = yield protocol.result
    except EnrollmentRefused as e:
        advice = (
            "too many wrong codes came from this address; wait a minute, then retry"
            if str(e) == "enrollment_rate_limited"
            else "ask the operator for a new one (portunus-server enroll-client NAME)"
        )
        raise PortunusError(
            "client.enrollment_failed",
            f"the server refused the code: {e}; {advice}",
            reason=str(e),
        ) from None
    except PinMismatch as e:
        raise PortunusError(
            "client.enrollment_failed",
            f"{uri.endpoint} presented certificate {e.got}, not {e.expected} from the URI; "
            "check that the URI is for this server",
            reason="tls_pinned_mismatch",
        ) from None
    except PortunusError:
        raise
    except Exception as e:  # transport errors: refused, unreachable, TLS
        raise PortunusError(
            "client.enrollment_failed",
            f"could not enroll with {uri.endpoint}: {e}; check the server runs and "
            "its control port is reachable from here",
            reason="connect_failed",
        ) from None
    return bundle_for(uri, answer)
