"""
The web console: the static files of L{portunus.server.web}, served by the
operator API's Klein app at C{/} of the operator listener.

The console is a client of the public C{/v1} API and nothing else, so this
module only hands out files.  C{/assets/NAME} is one of the shipped files
(an exact name: a path that is not one of them is a 404, never a look on
disk); every other path outside C{/v1} is C{index.html}, so the console's
own routes (C{/rules/7}, C{/users/bob} ...) survive a reload.  C{/v1}
paths never reach here: unknown ones stay JSON 404s.

Every answer carries a strict Content-Security-Policy (no inline script
or style, nothing from another origin, no framing); C{index.html} is
revalidated on every load and the assets are cached briefly with an ETag.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping
from importlib.resources import files
from importlib.resources.abc import Traversable

import attrs
from twisted.web.iweb import IRequest

__all__ = [
    "ASSET_CACHE_CONTROL",
    "CONTENT_SECURITY_POLICY",
    "SECURITY_HEADERS",
    "Asset",
    "Console",
    "is_api_path",
]

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'self'; form-action 'self'"
)

#: Sent with every console answer, files and errors alike.
SECURITY_HEADERS: Mapping[bytes, bytes] = {
    b"content-security-policy": CONTENT_SECURITY_POLICY.encode("ascii"),
    b"x-content-type-options": b"nosniff",
    b"referrer-policy": b"same-origin",
    b"x-frame-options": b"DENY",
}

#: The assets' names do not change with their content, so browsers keep
#: them only briefly and then revalidate with the ETag.
ASSET_CACHE_CONTROL = b"public, max-age=300"
INDEX_CACHE_CONTROL = b"no-cache"

_ASSET_PREFIX = "/assets/"

_CONTENT_TYPES: Mapping[str, str] = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".json": "application/json",
    ".txt": "text/plain; charset=utf-8",
}


def is_api_path(path: str) -> bool:
    """Whether C{path} belongs to the JSON API (and never to the console)."""
    return path == "/v1" or path.startswith("/v1/")


def content_type(name: str) -> str:
    """The media type a file called C{name} is served as."""
    dot = name.rfind(".")
    return _CONTENT_TYPES.get(name[dot:].lower() if dot >= 0 else "", "application/octet-stream")


@attrs.frozen
class Asset:
    """One file as it is served."""

    body: bytes
    content_type: str
    etag: bytes

    @classmethod
    def of(cls, name: str, body: bytes) -> Asset:
        digest = hashlib.sha256(body).hexdigest()[:32]
        return cls(body, content_type(name), f'"{digest}"'.encode("ascii"))


def _walk(folder: Traversable, prefix: str) -> Iterator[tuple[str, bytes]]:
    for entry in folder.iterdir():
        name = f"{prefix}{entry.name}"
        if entry.is_dir():
            if not entry.name.startswith(("_", ".")):
                yield from _walk(entry, f"{name}/")
        elif not entry.name.startswith(".") and not entry.name.endswith((".py", ".pyc")):
            yield name, entry.read_bytes()


@attrs.frozen
class Console:
    """The console's files, read once, and how a request for one is answered."""

    index: Asset
    #: By their path under C{/assets/} (C{app.js}, C{pages/rules.js} ...).
    assets: Mapping[str, Asset]

    @classmethod
    def load(cls, folder: Traversable | None = None) -> Console:
        """
        The files of C{folder} (default: the installed
        L{portunus.server.web} package): C{index.html} and C{assets/}.
        """
        root = folder if folder is not None else files("portunus.server.web")
        index = Asset.of("index.html", root.joinpath("index.html").read_bytes())
        assets = {name: Asset.of(name, body) for name, body in _walk(root.joinpath("assets"), "")}
        return cls(index, assets)

    def render(self, request: IRequest) -> bytes:
        """Answer a request for a path outside C{/v1}."""
        for name, value in SECURITY_HEADERS.items():
            request.setHeader(name, value)
        if request.method not in (b"GET", b"HEAD"):
            request.setResponseCode(405)
            request.setHeader(b"allow", b"GET, HEAD")
            return self._text(request, "the console only answers GET and HEAD\n")
        path = request.path.decode("latin-1")
        if path.startswith(_ASSET_PREFIX):
            asset = self.assets.get(path[len(_ASSET_PREFIX) :])
            if asset is None:
                request.setResponseCode(404)
                return self._text(request, f"no console asset {path}\n")
            return self._send(request, asset, ASSET_CACHE_CONTROL)
        return self._send(request, self.index, INDEX_CACHE_CONTROL)

    def _send(self, request: IRequest, asset: Asset, cache_control: bytes) -> bytes:
        request.setHeader(b"cache-control", cache_control)
        request.setHeader(b"etag", asset.etag)
        request.setHeader(b"content-type", asset.content_type.encode("ascii"))
        wanted = request.getHeader(b"if-none-match")
        if wanted is not None and asset.etag in (tag.strip() for tag in wanted.split(b",")):
            request.setResponseCode(304)
            return b""
        request.setResponseCode(200)
        return asset.body

    def _text(self, request: IRequest, text: str) -> bytes:
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        return text.encode("utf-8")
