"""
The operator API as tests drive it: the real Klein app and pipeline, real
accounts over a real store in a temporary data dir (transactions inline),
fast password hashing, a fake plane, and a list for the audit entries.
"""

from __future__ import annotations

import json
import os
from typing import Any

import attrs
from treq.testing import StubTreq
from twisted.internet.defer import Deferred, execute, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from portunus.server.api.app import make_api
from portunus.server.audit.entry import AuditEntry
from portunus.server.auth.accounts import Accounts
from portunus.server.auth.passwords import Passwords
from portunus.server.auth.throttle import Throttle
from portunus.server.store import Store, open_store, run_synchronously
from tests.server._openapicheck import CheckedResource, shared_checker

__all__ = ["TOKEN", "ApiHarness", "ListAudit", "fast_passwords", "open_test_store"]

TOKEN = "s3cret-operator-token"
ORIGIN = "http://127.0.0.1:7080"


@attrs.define
class ListAudit:
    """An audit sink keeping entries, and the unauthenticated refusals it is told of, in lists."""

    entries: list[AuditEntry] = attrs.field(factory=list)
    #: (reason, remote) of each request refused before anyone authenticated.
    unauthenticated_failures: list[tuple[str, str | None]] = attrs.field(factory=list)
    #: While set, C{record} answers as a writer with a full queue: not yet.
    hold: bool = False
    held: list[Deferred[None]] = attrs.field(factory=list)

    def record(self, entry: AuditEntry) -> Deferred[None]:
        self.entries.append(entry)
        if not self.hold:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self.held.append(d)
        return d

    def unauthenticated(self, reason: str, remote: str | None) -> None:
        self.unauthenticated_failures.append((reason, remote))


def fast_passwords() -> Passwords:
    """Argon2id at the lowest cost, run inline: the same code path, quickly."""

    def inline(fn: Any) -> Deferred[Any]:
        return execute(fn)

    return Passwords(inline, time_cost=1, memory_cost=8, parallelism=1)


def open_test_store(case: SynchronousTestCase, clock: Clock) -> Store:
    path = case.mktemp()
    os.makedirs(path)
    store = open_store(path, clock, runner=run_synchronously)
    case.addCleanup(store.close)
    return store


class ApiHarness:
    """One API over C{plane}; requests answer synchronously through L{call}."""

    def __init__(
        self,
        case: SynchronousTestCase,
        plane: Any,
        *,
        operator_token: str | None = TOKEN,
        public_origin: str | None = None,
        services: Any = None,
        check_openapi: bool = True,
    ) -> None:
        self.case = case
        self.plane = plane
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.store = open_test_store(case, self.clock)
        self.audit = ListAudit()
        self.accounts = Accounts(
            self.store.accounts,
            fast_passwords(),
            Throttle(self.clock),
            self.clock,
            operator_token=operator_token,
        )
        self.setup_token = case.successResultOf(Deferred.fromCoroutine(self.accounts.start()))
        self.app = make_api(
            plane,
            self.accounts,
            self.clock,
            self.audit,
            public_origin=public_origin,
            services=services,
        )
        self.resource = self.app.resource()
        #: What answers the OpenAPI document does not describe (check_openapi).
        self.undocumented: list[str] = []
        if check_openapi:
            self.resource = CheckedResource(self.resource, shared_checker(), self.undocumented)
            case.addCleanup(self.assert_documented)
        self.http = StubTreq(self.resource)

    def request(
        self,
        method: str,
        path: str,
        body: object = None,
        *,
        token: str | None = TOKEN,
        cookie: str | None = None,
        headers: dict[str, str] | None = None,
        raw: bytes | None = None,
        content_type: str = "application/json",
    ) -> tuple[int, Any, Any]:
        """Send a request; returns the status, the decoded JSON body and the response."""
        sent: dict[bytes, list[bytes]] = {}
        if token is not None:
            sent[b"authorization"] = [f"Bearer {token}".encode()]
        if cookie is not None:
            sent[b"cookie"] = [f"portunus_session={cookie}".encode()]
        for name, value in (headers or {}).items():
            sent[name.lower().encode()] = [value.encode()]
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        if data is not None:
            sent.setdefault(b"content-type", [content_type.encode()])
        # A fresh client each time: StubTreq keeps a cookie jar, which would
        # send the last login's cookie with every later request, bearer ones
        # included.  Here each request carries exactly the cookie it names.
        http = StubTreq(self.resource)
        d = http.request(method, ORIGIN + path, headers=sent, data=data)
        http.flush()
        response = self.case.successResultOf(d)
        content = self.case.successResultOf(response.content())
        self.assert_documented()
        decoded = None
        if content:
            try:
                decoded = json.loads(content)
            except ValueError:
                decoded = content
        return response.code, decoded, response

    def assert_documented(self) -> None:
        """Fail the test if an answer so far is not as the OpenAPI document says."""
        problems, self.undocumented[:] = list(self.undocumented), []
        if problems:
            summary = "\n".join(problems)
            self.case.fail(f"answers the OpenAPI document does not describe:\n{summary}")

    # -- accounts shortcuts ---------------------------------------------------

    def onboard(self, user_id: str = "alice", password: str = "correct horse battery") -> None:
        assert self.setup_token is not None
        status, body, _ = self.request(
            "POST",
            "/v1/auth/onboarding",
            {
                "user_id": user_id,
                "display_name": user_id.title(),
                "password": password,
                "password_confirm": password,
                "setup_token": self.setup_token,
            },
            token=None,
        )
        assert status == 201, body

    def login(self, user_id: str, password: str) -> str:
        """Log in and return the session cookie's value."""
        status, body, response = self.request(
            "POST", "/v1/auth/login", {"user_id": user_id, "password": password}, token=None
        )
        assert status == 200, body
        header = response.headers.getRawHeaders(b"set-cookie")[0].decode()
        return header.split(";")[0].split("=", 1)[1]

    def browser(self, cookie: str, method: str, path: str, body: object = None) -> Any:
        """A same-origin console request with the session cookie and the CSRF header."""
        return self.request(
            method,
            path,
            body,
            token=None,
            cookie=cookie,
            headers={"origin": ORIGIN, "x-portunus-csrf": "1", "host": "127.0.0.1:7080"},
        )

    def add_user(
        self, user_id: str, password: str = "a long enough password", role: str = "user"
    ) -> None:
        status, body, _ = self.request(
            "POST",
            "/v1/users",
            {
                "user_id": user_id,
                "display_name": user_id,
                "role": role,
                "initial_password": password,
            },
        )
        assert status == 201, body
