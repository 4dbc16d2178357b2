"""
C{GET /v1/audit} and C{GET /v1/audit/export} through the real Klein
resource and pipeline (StubTreq), over a real store and the real writer.
Accounts are a stub: two bearer tokens, a superadmin's and a user's.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlencode

from treq.testing import StubTreq
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from portunus.errors import PortunusError
from portunus.server.api import audit as audit_api
from portunus.server.api.app import make_api
from portunus.server.api.audit import decode_cursor, encode_cursor, parse_rfc3339
from portunus.server.audit import AuditEntry
from portunus.server.audit.writer import AuditLog
from portunus.server.auth.principal import AuthMethod, Principal, Role
from portunus.server.store import Store, open_store, run_synchronously

ADMIN_TOKEN = "admin-token"
USER_TOKEN = "user-token"
#: 2023-11-14T22:13:20Z
NOW = 1_700_000_000.0

ENTRY_KEYS = {
    "seq",
    "timestamp",
    "actor",
    "role",
    "method",
    "path",
    "outcome",
    "reason",
    "action",
    "resource_kind",
    "resource_value",
    "correlation_id",
    "details",
}


class StubAccounts:
    """What the pipeline asks of accounts: bootstrapped, and two bearer tokens."""

    def bootstrapped(self) -> bool:
        return True

    def authenticate_bearer(self, token: str) -> Deferred[Principal]:
        if token == ADMIN_TOKEN:
            return succeed(Principal("_legacy", Role.SUPERADMIN, AuthMethod.BEARER))
        if token == USER_TOKEN:
            return succeed(Principal("bob", Role.USER, AuthMethod.BEARER))
        return fail(PortunusError("credential_invalid", "unknown token"))

    def authenticate_session(self, secret: str, remote: str | None) -> Deferred[Principal]:
        return fail(PortunusError("credential_invalid", "no sessions here"))


class AuditApiTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(NOW)
        self.store: Store = open_store(self.mktemp(), self.clock, runner=run_synchronously)
        self.addCleanup(lambda: self.successResultOf(self.store.close()))
        self.audit = AuditLog(self.store.audit, self.clock)
        reader = audit_api.AuditReader(self.audit, self.store.audit, self.clock)
        app = make_api(
            None, StubAccounts(), self.clock, self.audit, services={audit_api.ROUTES: reader}
        )
        self.http = StubTreq(app.resource())

    def request(
        self, path: str, token: str | None = ADMIN_TOKEN, **query: Any
    ) -> tuple[int, bytes, Any]:
        headers = {b"authorization": [f"Bearer {token}".encode()]} if token else {}
        url = "http://127.0.0.1:7080" + path
        if query:
            url += "?" + urlencode(query)
        d = self.http.get(url, headers=headers)
        self.http.flush()
        response = self.successResultOf(d)
        return response.code, self.successResultOf(response.content()), response

    def get(self, path: str = "/v1/audit", **query: Any) -> tuple[int, Any]:
        status, body, _ = self.request(path, **query)
        return status, json.loads(body)

    def assertError(self, answer: tuple[int, Any], status: int, code: str) -> None:
        got_status, body = answer
        self.assertEqual((got_status, body["error"]["code"]), (status, code), body)

    def add(self, count: int, start: float = NOW - 1000, **fields: Any) -> None:
        """C{count} rows one second apart from C{start}, actor a{i}."""
        entries = [
            AuditEntry(**{"ts": start + i, "actor": f"a{i}", "outcome": "allow", **fields})
            for i in range(count)
        ]
        self.successResultOf(self.store.audit.append(entries))


class ListTests(AuditApiTestCase):
    def test_plain_array_newest_first_default_limit_100(self) -> None:
        """Without since/until/cursor the answer is a JSON array of the newest 100."""
        self.add(150)
        status, body = self.get()
        self.assertEqual(status, 200)
        self.assertIsInstance(body, list)
        self.assertEqual([e["seq"] for e in body], list(range(150, 50, -1)))

    def test_limit(self) -> None:
        """limit caps the array."""
        self.add(10)
        status, body = self.get(limit=3)
        self.assertEqual((status, [e["seq"] for e in body]), (200, [10, 9, 8]))

    def test_entry_json(self) -> None:
        """Every field is present; the timestamp is RFC 3339 UTC with Z."""
        written = AuditEntry(
            ts=NOW,
            actor="_legacy",
            outcome="allow",
            role="superadmin",
            method="POST",
            path="/v1/rules",
            reason="ok",
            action="rule.push",
            resource_kind="rule",
            resource_value="7",
            correlation_id="abc",
            details={"client": "edge-01"},
        )
        self.successResultOf(self.store.audit.append([written]))
        [shown] = self.get()[1]
        self.assertEqual(
            shown,
            {
                "seq": 1,
                "timestamp": "2023-11-14T22:13:20Z",
                "actor": "_legacy",
                "role": "superadmin",
                "method": "POST",
                "path": "/v1/rules",
                "outcome": "allow",
                "reason": "ok",
                "action": "rule.push",
                "resource_kind": "rule",
                "resource_value": "7",
                "correlation_id": "abc",
                "details": {"client": "edge-01"},
            },
        )

    def test_outcome_and_actor_filters(self) -> None:
        self.add(3, outcome="deny")
        self.add(2, start=NOW - 10)
        self.assertEqual([e["seq"] for e in self.get(outcome="deny")[1]], [3, 2, 1])
        self.assertEqual([e["seq"] for e in self.get(outcome="allow")[1]], [5, 4])
        self.assertEqual([e["seq"] for e in self.get(actor="a1")[1]], [5, 2])
        self.assertEqual([e["seq"] for e in self.get(actor="a1", outcome="deny")[1]], [2])

    def test_reads_what_the_writer_still_holds(self) -> None:
        """An entry recorded a moment ago is listed before any flush tick."""
        self.audit.record(AuditEntry(ts=NOW, actor="alice", outcome="deny"))
        [shown] = self.get()[1]
        self.assertEqual((shown["actor"], shown["outcome"]), ("alice", "deny"))

    def test_invalid_parameters(self) -> None:
        """Each bad parameter has its code and status."""
        for limit in ("0", "1001", "ten", "-1", ""):
            self.assertError(self.get(limit=limit), 422, "invalid_limit")
        self.assertError(self.get(outcome="maybe"), 422, "invalid_outcome")
        for since in ("yesterday", "2026-01-02", "2026-01-02T03:04:05", "2026-13-02T03:04:05Z"):
            self.assertError(self.get(since=since), 400, "invalid_time_range")
        self.assertError(
            self.get(since="2026-01-02T00:00:00Z", until="2026-01-01T00:00:00Z"),
            400,
            "invalid_time_range",
        )
        too_large = encode_cursor(2**63)
        for cursor in ("", "!!", "NDI=", encode_cursor(42) + "A", "MA", "YWJj", "LTE", too_large):
            self.assertError(self.get(cursor=cursor), 400, "invalid_cursor")

    def test_superadmins_only(self) -> None:
        """
        A user is refused (403 role_required) and the refusal is itself
        audited; a request without credentials is refused and only counted.
        """
        status, body, _ = self.request("/v1/audit", token=USER_TOKEN)
        self.assertEqual((status, json.loads(body)["error"]["code"]), (403, "role_required"))
        status, body, _ = self.request("/v1/audit/export", token=None)
        self.assertEqual((status, json.loads(body)["error"]["code"]), (401, "unauthenticated"))
        denied = self.get(outcome="deny")[1]
        self.assertEqual(
            [(e["path"], e["reason"]) for e in denied], [("/v1/audit", "role_required")]
        )


class PagingTests(AuditApiTestCase):
    def test_since_until_give_the_envelope(self) -> None:
        """since is inclusive, until exclusive; the answer is {entries, next_cursor, count}."""
        self.add(10, start=NOW)
        status, body = self.get(since="2023-11-14T22:13:22Z", until="2023-11-14T22:13:25Z")
        self.assertEqual(status, 200)
        self.assertEqual(set(body), {"entries", "next_cursor", "count"})
        self.assertEqual([e["seq"] for e in body["entries"]], [5, 4, 3])
        self.assertEqual((body["count"], body["next_cursor"]), (3, None))

    def test_offsets_are_honoured(self) -> None:
        """A timestamp with an offset means the same instant in UTC."""
        self.add(3, start=NOW)
        body = self.get(since="2023-11-15T00:13:21+02:00")[1]
        self.assertEqual([e["seq"] for e in body["entries"]], [3, 2])

    def test_cursor_pages_every_entry_once(self) -> None:
        """
        Following next_cursor from the first page visits every entry once,
        newest first, even while new entries arrive between pages.
        """
        self.add(25)
        status, page = self.get(since="2000-01-01T00:00:00Z", limit=10)
        seen = [e["seq"] for e in page["entries"]]
        self.add(5, start=NOW)
        while page["next_cursor"] is not None:
            self.assertEqual(page["count"], len(page["entries"]))
            status, page = self.get(cursor=page["next_cursor"], limit=10)
            self.assertEqual(status, 200)
            seen += [e["seq"] for e in page["entries"]]
        self.assertEqual(seen, list(range(25, 0, -1)))

    def test_last_full_page_has_no_cursor(self) -> None:
        """When the page ends exactly at the oldest entry, next_cursor is null."""
        self.add(4)
        page = self.get(since="2000-01-01T00:00:00Z", limit=2)[1]
        page = self.get(cursor=page["next_cursor"], limit=2)[1]
        self.assertEqual(([e["seq"] for e in page["entries"]], page["next_cursor"]), ([2, 1], None))

    def test_cursor_with_filters(self) -> None:
        self.add(6, outcome="deny")
        self.add(6, start=NOW - 100)
        page = self.get(outcome="deny", cursor=encode_cursor(5), limit=2)[1]
        self.assertEqual([e["seq"] for e in page["entries"]], [4, 3])
        self.assertEqual(decode_cursor(page["next_cursor"]), 3)

    def test_cursor_encoding(self) -> None:
        """A cursor is the base64url, unpadded, of the row seq; nothing else decodes."""
        self.assertEqual(encode_cursor(42), "NDI")
        self.assertEqual(decode_cursor("NDI"), 42)
        self.assertEqual(decode_cursor(encode_cursor(10**12)), 10**12)


class ExportTests(AuditApiTestCase):
    def test_ndjson_oldest_first_as_an_attachment(self) -> None:
        self.add(3)
        status, body, response = self.request("/v1/audit/export")
        self.assertEqual(status, 200)
        headers = response.headers
        self.assertEqual(headers.getRawHeaders(b"content-type"), [b"application/x-ndjson"])
        self.assertEqual(
            headers.getRawHeaders(b"content-disposition"),
            [b'attachment; filename="portunus-audit-20231114T221320Z.ndjson"'],
        )
        self.assertTrue(body.endswith(b"\n"))
        lines = [json.loads(line) for line in body.splitlines()]
        self.assertEqual([e["seq"] for e in lines], [1, 2, 3])
        self.assertEqual(set(lines[0]), ENTRY_KEYS)
        self.assertEqual(lines, list(reversed(self.get()[1])))

    def test_filters_apply(self) -> None:
        self.add(2, outcome="deny")
        self.add(2, start=NOW)
        _, body, _ = self.request("/v1/audit/export", outcome="allow", since="2023-11-14T22:13:21Z")
        self.assertEqual([json.loads(line)["seq"] for line in body.splitlines()], [4])

    def test_empty_export_is_empty(self) -> None:
        status, body, _ = self.request("/v1/audit/export")
        self.assertEqual((status, body), (200, b""))

    def test_bounded(self) -> None:
        """An export stops at the row bound, oldest first, and says it was truncated."""
        self.patch(audit_api, "EXPORT_MAX_ROWS", 3)
        self.add(5)
        _, body, response = self.request("/v1/audit/export")
        self.assertEqual([json.loads(line)["seq"] for line in body.splitlines()], [1, 2, 3])
        self.assertEqual(response.headers.getRawHeaders(b"x-portunus-export-truncated"), [b"true"])

    def test_invalid_parameters_are_json_errors(self) -> None:
        status, body, response = self.request("/v1/audit/export", outcome="x")
        self.assertError((status, json.loads(body)), 422, "invalid_outcome")
        self.assertEqual(response.headers.getRawHeaders(b"content-disposition"), None)
        status, body, _ = self.request("/v1/audit/export", until="nope")
        self.assertError((status, json.loads(body)), 400, "invalid_time_range")


class ParseTests(SynchronousTestCase):
    def test_rfc3339(self) -> None:
        """Z, offsets, fractions and lowercase separators parse; offset-less times do not."""
        self.assertEqual(parse_rfc3339("2023-11-14T22:13:20Z"), NOW)
        self.assertEqual(parse_rfc3339("2023-11-14t22:13:20.5z"), NOW + 0.5)
        self.assertEqual(parse_rfc3339("2023-11-15T00:13:20+02:00"), NOW)
        for bad in (
            "2023-11-14T22:13:20",
            "2023-11-14",
            "20231114T221320Z",
            " 2023-11-14T22:13:20Z",
        ):
            self.assertRaises(ValueError, parse_rfc3339, bad)


class FloodTests(AuditApiTestCase):
    """What a flood of requests does to the audit log, through the pipeline and the writer."""

    def test_unauthenticated_flood_adds_no_rows(self) -> None:
        """
        2,000 requests refused before authentication (no token, a wrong
        token) add no row and queue nothing; they are one summary line.
        The rows from before, and an authenticated refusal among the
        flood, are all there.
        """
        self.add(3)
        self.audit.start()
        with capturedLogs() as captured:
            for i in range(2000):
                token = None if i % 2 else "wrong-token"
                status, _, _ = self.request("/v1/audit/export", token=token)
                self.assertEqual(status, 401)
                if i == 1000:
                    self.assertEqual(self.request("/v1/audit", token=USER_TOKEN)[0], 403)
            self.successResultOf(self.audit.stop())
        self.assertEqual(self.audit.accepted, 1)
        self.assertEqual(self.successResultOf(self.store.audit.count()), 4)
        [line] = [e for e in captured if e.get("event") == "audit.unauthenticated_summary"]
        self.assertEqual(line["by_reason"], {"credential_invalid": 1000, "unauthenticated": 1000})
        # One warning per refusal only for the authenticated one; the rest at debug.
        warned = [
            e["reason"]
            for e in captured
            if e.get("event") == "operator.deny" and e["log_level"] >= LogLevel.warn
        ]
        self.assertEqual(warned, ["role_required"])

    def test_an_authenticated_entry_waits_for_a_full_queue(self) -> None:
        """
        With the writer's queue full, an authenticated request's answer
        waits until its entry is written, instead of the entry being dropped.
        """
        audit = AuditLog(self.store.audit, self.clock, queue_size=1)
        reader = audit_api.AuditReader(audit, self.store.audit, self.clock)
        app = make_api(None, StubAccounts(), self.clock, audit, services={audit_api.ROUTES: reader})
        http = StubTreq(app.resource())
        audit.start()
        headers = {b"authorization": [f"Bearer {USER_TOKEN}".encode()]}
        answers = [http.get("http://127.0.0.1:7080/v1/audit", headers=headers) for _ in range(2)]
        http.flush()
        self.assertEqual(self.successResultOf(answers[0]).code, 403)
        self.assertNoResult(answers[1])
        self.clock.advance(0.1)
        http.flush()
        self.assertEqual(self.successResultOf(answers[1]).code, 403)
        self.successResultOf(audit.stop())
        self.assertEqual(self.successResultOf(self.store.audit.count()), 2)
