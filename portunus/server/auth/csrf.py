"""
Cross-site request forgery checks for cookie-authenticated writes.

A browser attaches the C{portunus_session} cookie to any request to this
origin, including ones a hostile page makes; it does not let that page set
custom headers or send a JSON body cross-origin without a preflight.  So a
cookie-authenticated write must carry all of: an C{Origin} that is this
server's own, C{X-Portunus-CSRF: 1}, and (with a body) a JSON content type.
Bearer requests are not sent by browsers on their own and skip this.
"""

from __future__ import annotations

from twisted.web.iweb import IRequest

from portunus.errors import PortunusError

__all__ = ["MUTATING_METHODS", "check_csrf"]

MUTATING_METHODS = frozenset({b"POST", b"PUT", b"PATCH", b"DELETE"})


def _authority(origin: str) -> str:
    for scheme in ("https://", "http://"):
        if origin.lower().startswith(scheme):
            return origin[len(scheme) :]
    return origin


def _has_body(request: IRequest) -> bool:
    length = request.getHeader(b"content-length")
    if length is not None:
        try:
            return int(length) > 0
        except ValueError:
            return True
    return request.getHeader(b"transfer-encoding") is not None


def check_csrf(request: IRequest, public_origin: str | None) -> None:
    """
    Refuse a cookie-authenticated write that could have come from another
    site: C{csrf_origin_required}, C{csrf_origin_mismatch},
    C{csrf_header_required}, C{csrf_content_type_required}.

    With C{public_origin} (C{operator_http_public_origin}, for a server
    behind a proxy that rewrites C{Host}) the C{Origin} must equal it
    exactly; otherwise its authority must equal the C{Host} header.
    """
    raw_origin = request.getHeader(b"origin")
    if raw_origin is None or not raw_origin.strip() or raw_origin.strip() == b"null":
        raise PortunusError(
            "csrf_origin_required",
            "a cookie-authenticated write needs an Origin header; browsers send it, "
            "scripts should use a bearer token instead",
        )
    origin = raw_origin.decode("latin-1").strip()
    if public_origin is not None:
        if origin != public_origin:
            raise PortunusError(
                "csrf_origin_mismatch",
                f"Origin {origin!r} is not this server's public origin {public_origin!r}",
                origin=origin,
            )
    else:
        host = (request.getHeader(b"host") or b"").decode("latin-1").strip()
        if _authority(origin).lower() != host.lower():
            raise PortunusError(
                "csrf_origin_mismatch",
                f"Origin {origin!r} does not match the Host {host!r} this request was sent to",
                origin=origin,
            )
    if (request.getHeader(b"x-portunus-csrf") or b"").strip() != b"1":
        raise PortunusError(
            "csrf_header_required",
            "a cookie-authenticated write needs the header X-Portunus-CSRF: 1",
        )
    if _has_body(request):
        kind = (request.getHeader(b"content-type") or b"").split(b";")[0].strip().lower()
        if kind != b"application/json":
            raise PortunusError(
                "csrf_content_type_required",
                "a cookie-authenticated write with a body must be Content-Type: application/json",
            )
