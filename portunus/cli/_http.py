"""
The operator API as the CLI calls it: bearer token, JSON in and out, and
every failure turned into a L{CliError} carrying the exit code the
registry gives its error code.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, urlencode

import attrs

from portunus.cli.exits import CliError

__all__ = [
    "DEFAULT_ENDPOINT",
    "ENDPOINT_ENV",
    "REQUEST_TIMEOUT",
    "TOKEN_ENV",
    "OperatorClient",
    "base_url",
    "path",
]

DEFAULT_ENDPOINT = "127.0.0.1:7080"
TOKEN_ENV = "PORTUNUS_OPERATOR_TOKEN"
ENDPOINT_ENV = "PORTUNUS_HTTP_ENDPOINT"
#: Seconds a request may take (Portunus: 30).
REQUEST_TIMEOUT = 30.0


def base_url(endpoint: str) -> str:
    """C{host:port} (or a full C{http://} URL) as the API's base URL."""
    endpoint = endpoint.strip().rstrip("/")
    if "://" in endpoint:
        return endpoint
    return f"http://{endpoint}"


def path(*segments: str) -> str:
    """A URL path from segments, each percent-encoded."""
    return "/" + "/".join(quote(s, safe="") for s in segments)


@attrs.define
class OperatorClient:
    """
    Calls on the API at C{endpoint}.  C{http} is anything with treq's
    C{request(method, url, headers=, data=)} (treq's HTTPClient; StubTreq
    in tests); C{timeout} is passed on when not C{None}.
    """

    http: Any
    endpoint: str
    token: str | None
    timeout: float | None = REQUEST_TIMEOUT

    async def call(
        self,
        method: str,
        where: str,
        body: object = None,
        query: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> Any:
        """
        The decoded JSON answer (C{None} for 204).  An error envelope
        raises L{CliError} with its code; no answer at all raises one with
        exit 1 naming the endpoint.
        """
        if not self.token:
            raise CliError(
                "unauthenticated",
                f"{TOKEN_ENV} is not set; export it from the server's data dir: "
                "operator_token in server.toml if set there, else the operator.token file "
                f"(export {TOKEN_ENV}=$(cat DATA_DIR/operator.token))",
                exit_code=4,
            )
        url = base_url(self.endpoint) + where
        if query:
            url += "?" + urlencode(query)
        headers = {
            b"authorization": [f"Bearer {self.token}".encode()],
            b"accept": [b"application/json"],
        }
        kwargs: dict[str, Any] = {"headers": headers}
        if body is not None:
            headers[b"content-type"] = [b"application/json"]
            kwargs["data"] = json.dumps(body).encode("utf-8")
        limit = timeout if timeout is not None else self.timeout
        if limit is not None:
            kwargs["timeout"] = limit
        try:
            response = await self.http.request(method, url, **kwargs)
            content = await response.content()
        except Exception as e:
            reason = str(e) or type(e).__name__
            raise CliError(
                "transport",
                f"cannot reach the server at {base_url(self.endpoint)} ({reason}); is it "
                "running? Start it with portunus-server serve, or point --http-endpoint "
                "(or PORTUNUS_HTTP_ENDPOINT) at its operator_http_listen address",
                exit_code=1,
            ) from e
        try:
            answer = json.loads(content) if content else None
        except ValueError:
            answer = None
            if response.code < 300:
                raise CliError(
                    "bad_answer",
                    f"{base_url(self.endpoint)} answered {response.code} with something that "
                    "is not JSON; is --http-endpoint the Portunus operator API?",
                    exit_code=1,
                ) from None
        if response.code >= 400:
            error = answer.get("error") if isinstance(answer, dict) else None
            if not isinstance(error, dict) or "code" not in error:
                raise CliError(
                    "http_error",
                    f"{base_url(self.endpoint)} answered HTTP {response.code}; "
                    "is --http-endpoint the Portunus operator API?",
                    exit_code=1,
                )
            raise CliError(str(error["code"]), str(error.get("message", "")))
        return answer
