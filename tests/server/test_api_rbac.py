"""
Users, grants and what they allow, end to end through the API: who may
push where, who sees which rules and clients, and what removing a user or
revoking a grant takes with it.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from portunus.model import Rule
from portunus.server.plane import ClientView, RuleView
from portunus.server.store import Store
from tests.server._apiharness import ApiHarness
from tests.server._fakeplane import FakePlane

PASSWORD = "correct horse battery"
USER_PASSWORD = "a long enough password"

Answer = tuple[int, Any, Any]


class StorePlane(FakePlane):
    """
    A L{FakePlane} whose clients and rules are rows in the harness's
    store too, as the real plane's are, so the store's cascades (revoking
    a grant, removing a user) find the rules pushed through the API.
    """

    store: Store

    def add_client(self, name: str, state: str = "connected", **kw: Any) -> ClientView:
        record = _fired(self.store.create_client(name, None, self.now))
        view = ClientView(
            client_id=record.client_id, name=name, state=state, created_at=self.now, **kw
        )
        self.clients[record.client_id] = view
        return view

    async def push_rule(
        self,
        client_id: str,
        rule: Rule,
        ack_timeout: float,
        owner_user_id: str | None = None,
        grant_id: str | None = None,
        allow_local_targets: bool = True,
    ) -> RuleView:
        record = await self.store.insert_rule(
            client_id, rule, self.now, owner_user_id=owner_user_id, grant_id=grant_id
        )
        self._next_rule = record.rule_id
        return await FakePlane.push_rule(
            self, client_id, rule, ack_timeout, owner_user_id, grant_id, allow_local_targets
        )

    async def remove_rule(self, rule_id: int) -> None:
        await self.store.delete_rule(rule_id)
        await FakePlane.remove_rule(self, rule_id)


def _fired(d: Deferred[Any]) -> Any:
    """The result of a Deferred the inline store has already fired."""
    results: list[Any] = []
    d.addBoth(results.append)
    [result] = results
    if isinstance(result, Failure):
        result.raiseException()
    return result


class RbacTestCase(SynchronousTestCase):
    """
    Alice is the onboarded superadmin; bob and carol are users, logged in;
    clients edge-01, edge-02 and edge-03 exist.  Nobody has a grant yet.
    """

    def setUp(self) -> None:
        self.plane = StorePlane()
        self.api = ApiHarness(self, self.plane)
        self.plane.store = self.api.store
        self.edge1 = self.plane.add_client("edge-01")
        self.edge2 = self.plane.add_client("edge-02")
        self.edge3 = self.plane.add_client("edge-03")
        self.api.onboard("alice", PASSWORD)
        self.alice = self.api.login("alice", PASSWORD)
        self.api.add_user("bob", USER_PASSWORD)
        self.api.add_user("carol", USER_PASSWORD)
        self.bob = self.api.login("bob", USER_PASSWORD)
        self.carol = self.api.login("carol", USER_PASSWORD)

    # -- helpers ------------------------------------------------------------

    def assertError(
        self, answer: Answer, status: int, code: str, field: str | None = None
    ) -> dict[str, Any]:
        got_status, body, _ = answer
        self.assertIsInstance(body, dict, body)
        self.assertEqual((got_status, body["error"]["code"]), (status, code), body)
        self.assertIsInstance(body["error"]["message"], str)
        if field is not None:
            self.assertEqual(body["error"].get("field"), field, body)
        error: dict[str, Any] = body["error"]
        return error

    def ok(self, answer: Answer, status: int = 200) -> Any:
        got, body, _ = answer
        self.assertEqual(got, status, body)
        return body

    def grant(
        self,
        user_id: str,
        client: str,
        start: int,
        end: int | None = None,
        protocols: list[str] | None = None,
    ) -> dict[str, Any]:
        """Grant C{user_id} ports C{start..end} on C{client}, as the operator token."""
        body: dict[str, Any] = {"user_id": user_id, "client": client, "listen_port_start": start}
        if end is not None:
            body["listen_port_end"] = end
        if protocols is not None:
            body["protocols"] = protocols
        result: dict[str, Any] = self.ok(self.api.request("POST", "/v1/grants", body), 201)
        return result

    def create_grant(self, **body: Any) -> Answer:
        grant = {"user_id": "bob", "client": "edge-01", "listen_port_start": 8000}
        grant.update(body)
        return self.api.request(
            "POST", "/v1/grants", {k: v for k, v in grant.items() if v is not None}
        )

    def push(
        self, cookie: str, client: str = "edge-01", listen: object = 8080, **more: Any
    ) -> Answer:
        """Push a rule through the console as the session C{cookie}'s user."""
        body = {
            "client": client,
            "listen": listen,
            "targets": [{"host": "10.0.0.5", "port": listen}],
        }
        body.update(more)
        return self.api.browser(cookie, "POST", "/v1/rules", body)

    def pushed(self, cookie: str, **kw: Any) -> int:
        """Push and return the new rule's id."""
        rule_id: int = self.ok(self.push(cookie, **kw), 201)["rule"]["id"]
        return rule_id

    def get(self, cookie: str, path: str) -> Answer:
        return self.api.browser(cookie, "GET", path)

    def rule_ids(self, answer: Answer) -> list[int]:
        return [view["rule"]["id"] for view in self.ok(answer)]

    def audited(self, action: str) -> Any:
        """The last audit entry for C{action}."""
        return [e for e in self.api.audit.entries if e.action == action][-1]

    def store_rule_ids(self) -> list[int]:
        records = self.successResultOf(self.api.store.list_rules())
        return [record.rule_id for record in records]


class UserTests(RbacTestCase):
    def test_superadmin_creates_a_user(self) -> None:
        """A superadmin's console creates a user: 201 with the user's view, audited."""
        body = self.ok(
            self.api.browser(
                self.alice,
                "POST",
                "/v1/users",
                {"user_id": "dave", "display_name": "Dave D", "initial_password": USER_PASSWORD},
            ),
            201,
        )
        self.assertEqual(
            {k: body[k] for k in ("user_id", "display_name", "role", "disabled")},
            {"user_id": "dave", "display_name": "Dave D", "role": "user", "disabled": False},
        )
        self.assertEqual((body["password_change_required"], body["grant_count"]), (False, 0))
        self.assertTrue(body["created_at"].endswith("Z"))
        entry = self.api.audit.entries[-1]
        self.assertEqual(
            (entry.outcome, entry.actor, entry.action, entry.resource_value, entry.details),
            ("allow", "alice", "user.create", "dave", {"role": "user"}),
        )
        self.assertNotIn(USER_PASSWORD, repr(self.api.audit.entries))
        self.assertEqual(self.get(self.api.login("dave", USER_PASSWORD), "/v1/users/me")[0], 200)

    def test_create_superadmin(self) -> None:
        """role superadmin makes a superadmin who may manage users."""
        self.api.add_user("dave", role="superadmin")
        dave = self.api.login("dave", "a long enough password")
        self.assertEqual(self.get(dave, "/v1/users")[0], 200)

    def test_get_and_list(self) -> None:
        """GET /v1/users lists everyone by id with grant counts; GET one user, with theirs."""
        self.grant("bob", "edge-01", 8000, 8099)
        self.grant("bob", "*", 9000)
        users = self.ok(self.get(self.alice, "/v1/users"))
        self.assertEqual(
            [(u["user_id"], u["role"], u["grant_count"]) for u in users],
            [
                ("_legacy", "superadmin", 0),
                ("alice", "superadmin", 0),
                ("bob", "user", 2),
                ("carol", "user", 0),
            ],
        )
        self.assertEqual(self.ok(self.get(self.alice, "/v1/users/bob"))["grant_count"], 2)
        self.assertError(self.get(self.alice, "/v1/users/nobody"), 404, "user_not_found")

    def test_create_validation(self) -> None:
        """Bad create bodies are refused with their codes."""
        cases: list[tuple[dict[str, Any], int, str, str | None]] = [
            ({"user_id": "bob"}, 409, "user_already_exists", None),
            ({"user_id": "alice"}, 409, "user_already_exists", None),
            ({"user_id": "Dave"}, 422, "invalid_user_id", "user_id"),
            ({"user_id": "_dave"}, 422, "reserved_user_id", "user_id"),
            ({"role": "admin"}, 422, "invalid_role", "role"),
            ({"initial_password": None}, 422, "initial_password_required", "initial_password"),
            ({"initial_password": ""}, 422, "initial_password_required", "initial_password"),
            ({"initial_password": "short"}, 422, "password_too_short", "initial_password"),
            ({"display_name": "x" * 65}, 422, "invalid_display_name", "display_name"),
            ({"password_change_required": "yes"}, 400, "validation_failed", None),
        ]
        for changes, status, code, field in cases:
            body: dict[str, Any] = {"user_id": "dave", "initial_password": USER_PASSWORD}
            body.update(changes)
            body = {k: v for k, v in body.items() if v is not None}
            with self.subTest(changes=changes):
                self.assertError(self.api.request("POST", "/v1/users", body), status, code, field)
        self.assertError(self.api.request("GET", "/v1/users/dave"), 404, "user_not_found")

    def test_me_as_user(self) -> None:
        """A user's /v1/users/me says role user."""
        body = self.ok(self.get(self.bob, "/v1/users/me"))
        self.assertEqual((body["user_id"], body["role"]), ("bob", "user"))

    def test_user_is_refused_admin_routes(self) -> None:
        """A user gets 403 role_required on users, grants, client mutations and enrollments."""
        client = self.edge1.client_id
        refused = [
            ("POST", "/v1/users", {"user_id": "eve", "initial_password": USER_PASSWORD}),
            ("GET", "/v1/users", None),
            ("GET", "/v1/users/carol", None),
            ("DELETE", "/v1/users/carol", None),
            ("POST", "/v1/users/carol/password", {"temporary_password": True}),
            ("POST", "/v1/grants", {"user_id": "bob", "client": "*", "listen_port_start": 1}),
            ("GET", "/v1/grants", None),
            ("DELETE", "/v1/grants/01HXXXXXXXXXXXXXXXXXXXXXXX", None),
            ("POST", "/v1/client-enrollments", {"name": "edge-09"}),
            ("POST", f"/v1/clients/{client}/enrollment", None),
            ("PATCH", f"/v1/clients/{client}", {"name": "mine"}),
            ("POST", f"/v1/clients/{client}/revoke", None),
            ("DELETE", f"/v1/clients/{client}", None),
        ]
        before = len(self.plane.calls)
        for method, path, body in refused:
            with self.subTest(method=method, path=path):
                self.assertError(
                    self.api.browser(self.bob, method, path, body), 403, "role_required"
                )
                entry = self.api.audit.entries[-1]
                self.assertEqual(
                    (entry.outcome, entry.reason, entry.actor, entry.role, entry.path),
                    ("deny", "role_required", "bob", "user", path),
                )
        self.assertEqual(self.plane.calls[before:], [])
        self.assertEqual(len(self.ok(self.api.request("GET", "/v1/users"))), 4)
        self.assertEqual(self.ok(self.api.request("GET", "/v1/grants")), [])


class GrantTests(RbacTestCase):
    def test_grant_by_client_name(self) -> None:
        """A grant names a client by name; it answers with the id and name, audited."""
        grant = self.grant("bob", "edge-01", 8000, 8099)
        self.assertEqual(
            {k: v for k, v in grant.items() if k not in ("grant_id", "created_at")},
            {
                "user_id": "bob",
                "client": "edge-01",
                "client_id": self.edge1.client_id,
                "listen_port_start": 8000,
                "listen_port_end": 8099,
                "protocols": ["tcp"],
                "note": "",
                "allow_local_targets": False,
            },
        )
        self.assertEqual(len(grant["grant_id"]), 26)
        entry = self.api.audit.entries[-1]
        self.assertEqual(
            (entry.action, entry.resource_kind, entry.resource_value, entry.actor),
            ("grant.create", "grant", grant["grant_id"], "_legacy"),
        )

    def test_grant_by_client_id(self) -> None:
        """A client id names the same client."""
        grant = self.grant("bob", self.edge2.client_id, 8000)
        self.assertEqual(
            (grant["client"], grant["client_id"], grant["listen_port_end"]),
            ("edge-02", self.edge2.client_id, 8000),
        )

    def test_grant_on_every_client(self) -> None:
        """client "*" grants every client."""
        grant = self.grant("bob", "*", 8000, 8010, ["udp", "tcp", "udp"])
        self.assertEqual(
            (grant["client"], grant["client_id"], grant["protocols"]),
            ("*", "*", ["tcp", "udp"]),
        )

    def test_grant_with_note_from_the_console(self) -> None:
        """A superadmin's console grants too, with a note."""
        grant = self.ok(
            self.api.browser(
                self.alice,
                "POST",
                "/v1/grants",
                {
                    "user_id": "carol",
                    "client": "edge-03",
                    "listen_port_start": 1,
                    "listen_port_end": 65535,
                    "protocols": ["udp"],
                    "note": "team lab",
                },
            ),
            201,
        )
        self.assertEqual((grant["note"], grant["protocols"]), ("team lab", ["udp"]))

    def test_validation(self) -> None:
        """Bad grant bodies are refused with their codes and statuses; nothing is stored."""
        cases: list[tuple[dict[str, Any], int, str, str | None]] = [
            ({"listen_port_start": 0}, 422, "invalid_port_range", "listen_port_start"),
            ({"listen_port_start": 65536}, 422, "invalid_port_range", "listen_port_start"),
            ({"listen_port_start": "8000"}, 422, "invalid_port_range", "listen_port_start"),
            ({"listen_port_start": True}, 422, "invalid_port_range", "listen_port_start"),
            ({"listen_port_start": None}, 422, "invalid_port_range", "listen_port_start"),
            ({"listen_port_end": 7999}, 422, "invalid_port_range", "listen_port_end"),
            ({"listen_port_end": 70000}, 422, "invalid_port_range", "listen_port_end"),
            ({"protocols": []}, 422, "empty_protocol_set", "protocols"),
            ({"protocols": ["sctp"]}, 400, "invalid_protocol", "protocols"),
            ({"protocols": ["tcp", "icmp"]}, 400, "invalid_protocol", "protocols"),
            ({"protocols": "tcp"}, 400, "invalid_protocol", "protocols"),
            ({"user_id": "nobody"}, 404, "user_not_found", None),
            ({"user_id": None}, 404, "user_not_found", "user_id"),
            ({"client": "edge-99"}, 404, "client_not_found", None),
            ({"client": "01HCLIENT00000000000000099"}, 404, "client_not_found", None),
            ({"client": None}, 422, "invalid_client", "client"),
            ({"client": ""}, 422, "invalid_client", "client"),
            ({"note": "n" * 257}, 400, "validation_failed", "note"),
        ]
        for changes, status, code, field in cases:
            with self.subTest(changes=changes):
                self.assertError(self.create_grant(**changes), status, code, field)
        self.assertEqual(self.ok(self.api.request("GET", "/v1/grants")), [])

    def test_list_and_filter(self) -> None:
        """GET /v1/grants lists all grants oldest first; ?user_id= narrows to one user."""
        first = self.grant("bob", "edge-01", 8000)
        self.api.clock.advance(1)
        second = self.grant("carol", "edge-02", 9000)
        self.api.clock.advance(1)
        third = self.grant("bob", "*", 7000)
        everything = self.ok(self.api.request("GET", "/v1/grants"))
        self.assertEqual(everything, [first, second, third])
        bobs = self.ok(self.api.request("GET", "/v1/grants?user_id=bob"))
        self.assertEqual(bobs, [first, third])
        self.assertEqual(self.ok(self.api.request("GET", "/v1/grants?user_id=nobody")), [])

    def test_revoke_unknown(self) -> None:
        """Revoking a grant that does not exist is 404 grant_not_found."""
        self.assertError(
            self.api.request("DELETE", "/v1/grants/01HNOTAGRANT00000000000000"),
            404,
            "grant_not_found",
        )


class PushTests(RbacTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.tcp = self.grant("bob", "edge-01", 8000, 8099)

    def test_push_inside_a_grant(self) -> None:
        """A push inside a grant is 201, owned by the user and stamped with the grant."""
        body = self.ok(self.push(self.bob, listen="8000-8099"), 201)
        rule_id = body["rule"]["id"]
        self.assertEqual(body["owner"], "bob")
        view = self.plane.rules[rule_id]
        self.assertEqual((view.owner_user_id, view.grant_id), ("bob", self.tcp["grant_id"]))
        record = self.successResultOf(self.api.store.get_rule(rule_id))
        self.assertEqual((record.owner_user_id, record.grant_id), ("bob", self.tcp["grant_id"]))

    def test_push_by_client_id(self) -> None:
        """The client may be named by id in the push."""
        self.ok(self.push(self.bob, client=self.edge1.client_id, listen=8050), 201)

    def test_client_without_a_grant(self) -> None:
        """
        A push to a client without a grant is 404 client_not_found: to its
        user, a client they have no grant on does not exist.
        """
        self.assertError(self.push(self.bob, client="edge-02"), 404, "client_not_found")
        self.assertEqual(self.store_rule_ids(), [])

    def test_protocol_not_granted(self) -> None:
        """A UDP push under a TCP-only grant is 403 protocol_not_granted."""
        self.assertError(self.push(self.bob, protocol="udp"), 403, "protocol_not_granted")

    def test_port_outside_grant(self) -> None:
        """A listen port, or any part of a range, outside the grant is 403 port_outside_grant."""
        for listen in (7999, 8100, "8090-8110", "7990-8010"):
            with self.subTest(listen=listen):
                error = self.assertError(
                    self.push(self.bob, listen=listen), 403, "port_outside_grant"
                )
                self.assertEqual(error["granted"], [[8000, 8099]])
        self.assertEqual(self.store_rule_ids(), [])

    def test_adjacent_grants_do_not_add_up(self) -> None:
        """A range straddling two adjacent grants is refused; each half alone passes."""
        self.grant("bob", "edge-01", 8100, 8199)
        self.assertError(self.push(self.bob, listen="8090-8110"), 403, "port_outside_grant")
        self.ok(self.push(self.bob, listen="8090-8099"), 201)
        second = self.ok(self.push(self.bob, listen="8100-8110"), 201)
        self.assertNotEqual(self.plane.rules[second["rule"]["id"]].grant_id, self.tcp["grant_id"])

    def test_refusal_order(self) -> None:
        """The client comes before protocol_not_granted, which comes before ports."""
        self.assertError(
            self.push(self.bob, client="edge-02", protocol="udp", listen=1),
            404,
            "client_not_found",
        )
        self.assertError(self.push(self.bob, protocol="udp", listen=1), 403, "protocol_not_granted")

    def test_udp_grant(self) -> None:
        """A tcp+udp grant allows both protocols."""
        self.grant("bob", "edge-02", 5000, 5010, ["tcp", "udp"])
        self.ok(self.push(self.bob, client="edge-02", listen=5000, protocol="udp"), 201)
        self.ok(self.push(self.bob, client="edge-02", listen=5001), 201)

    def test_star_grant(self) -> None:
        """A "*" grant allows the push on any client, stamped with that grant."""
        star = self.grant("bob", "*", 6000, 6001)
        body = self.ok(self.push(self.bob, client="edge-03", listen=6000), 201)
        self.assertEqual(self.plane.rules[body["rule"]["id"]].grant_id, star["grant_id"])

    def test_grants_are_per_user(self) -> None:
        """Bob's grant does not let carol push."""
        self.assertError(self.push(self.carol), 404, "client_not_found")

    def test_grant_without_local_targets_marks_the_rule(self) -> None:
        """
        A push under a grant that does not allow local targets reaches the
        plane as such: the rule says allow_local_targets false.
        """
        body = self.ok(self.push(self.bob, listen=8050), 201)
        self.assertIs(body["rule"]["allow_local_targets"], False)

    def test_grant_with_local_targets_lets_them_through(self) -> None:
        """A grant with allow_local_targets lets its rules keep local targets."""
        grant = self.ok(self.create_grant(listen_port_start=9000, allow_local_targets=True), 201)
        self.assertIs(grant["allow_local_targets"], True)
        body = self.ok(self.push(self.bob, listen=9000), 201)
        self.assertNotIn("allow_local_targets", body["rule"])

    def test_allow_local_targets_must_be_boolean(self) -> None:
        """A grant's allow_local_targets that is not a boolean is refused, naming the field."""
        self.assertError(
            self.create_grant(allow_local_targets="yes"),
            400,
            "validation_failed",
            "allow_local_targets",
        )

    def test_superadmin_bypasses_grants(self) -> None:
        """A superadmin pushes anywhere without a grant; the rule is theirs, under no grant."""
        body = self.ok(self.push(self.alice, client="edge-02", listen=22, protocol="udp"), 201)
        view = self.plane.rules[body["rule"]["id"]]
        self.assertEqual((body["owner"], view.grant_id), ("alice", None))
        body = self.ok(
            self.api.request(
                "POST",
                "/v1/rules",
                {"client": "edge-03", "listen": 23, "targets": [{"host": "h", "port": 1}]},
            ),
            201,
        )
        self.assertEqual(body["owner"], "_legacy")

    def test_refusal_is_audited_with_the_user(self) -> None:
        """A handler-level 403 is a deny entry naming the user who was refused."""
        self.push(self.bob, listen=9999)
        entry = self.api.audit.entries[-1]
        self.assertEqual(
            (
                entry.outcome,
                entry.reason,
                entry.actor,
                entry.role,
                entry.method,
                entry.path,
                entry.action,
            ),
            ("deny", "port_outside_grant", "bob", "user", "POST", "/v1/rules", "rule.push"),
        )
        self.assertEqual(entry.resource_kind, "client")
        self.assertEqual(entry.resource_value, self.edge1.client_id)

    def test_push_is_audited(self) -> None:
        """A push is an allow entry: action rule.push on the new rule's id."""
        rule_id = self.pushed(self.bob, listen=8080)
        entry = self.api.audit.entries[-1]
        self.assertEqual(
            (entry.outcome, entry.reason, entry.actor, entry.action),
            ("allow", "ok", "bob", "rule.push"),
        )
        self.assertEqual((entry.resource_kind, entry.resource_value), ("rule", str(rule_id)))
        self.assertEqual((entry.details or {}).get("listen"), "8080")

    def test_push_audit_names_the_protocol(self) -> None:
        """The push's audit details name the protocol as the API does (tcp)."""
        self.pushed(self.bob, listen=8080)
        self.assertEqual(self.audited("rule.push").details["protocol"], "tcp")

    def test_revoked_grant_stops_pushes(self) -> None:
        """Once the grant is revoked the same push is refused: the client is gone for bob."""
        self.ok(self.api.request("DELETE", f"/v1/grants/{self.tcp['grant_id']}"))
        self.assertError(self.push(self.bob), 404, "client_not_found")


class IsolationTests(RbacTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.grant("bob", "edge-01", 8000, 8099)
        self.grant("carol", "edge-01", 9000, 9099)
        self.grant("carol", "edge-02", 9000, 9099)
        self.bobs = self.pushed(self.bob, listen=8080)
        self.carols = self.pushed(self.carol, listen=9080)
        self.admins = self.pushed(self.alice, client="edge-03", listen=80)

    def test_list_shows_own_rules(self) -> None:
        """A user's rule list holds their rules only, whatever ?owner= says."""
        self.assertEqual(self.rule_ids(self.get(self.bob, "/v1/rules")), [self.bobs])
        self.assertEqual(self.rule_ids(self.get(self.bob, "/v1/rules?owner=carol")), [self.bobs])
        self.assertEqual(
            self.rule_ids(self.get(self.carol, "/v1/rules?client=edge-01")), [self.carols]
        )

    def test_superadmin_sees_all_and_filters_by_owner(self) -> None:
        """A superadmin lists every rule, or one owner's with ?owner=."""
        self.assertEqual(
            self.rule_ids(self.get(self.alice, "/v1/rules")),
            [self.bobs, self.carols, self.admins],
        )
        self.assertEqual(self.rule_ids(self.get(self.alice, "/v1/rules?owner=bob")), [self.bobs])
        self.assertEqual(
            self.rule_ids(self.api.request("GET", "/v1/rules?owner=alice")), [self.admins]
        )
        self.assertEqual(self.rule_ids(self.get(self.alice, "/v1/rules?owner=nobody")), [])

    def test_others_rules_are_not_owner(self) -> None:
        """Another user's rule is 403 not_owner to get, delete or read stats of."""
        for method, path in [
            ("GET", f"/v1/rules/{self.carols}"),
            ("GET", f"/v1/rules/{self.carols}/stats"),
            ("DELETE", f"/v1/rules/{self.carols}"),
            ("GET", f"/v1/rules/{self.admins}"),
        ]:
            with self.subTest(method=method, path=path):
                self.assertError(self.api.browser(self.bob, method, path), 403, "not_owner")
                entry = self.api.audit.entries[-1]
                self.assertEqual(
                    (entry.outcome, entry.reason, entry.actor), ("deny", "not_owner", "bob")
                )
        self.assertIn(self.carols, self.store_rule_ids())
        self.assertNotIn("remove_rule", [name for name, _ in self.plane.calls])

    def test_own_rules_are_reachable(self) -> None:
        """A user gets, reads stats of and deletes their own rule."""
        self.assertEqual(self.ok(self.get(self.bob, f"/v1/rules/{self.bobs}"))["owner"], "bob")
        self.assertEqual(
            self.ok(self.get(self.bob, f"/v1/rules/{self.bobs}/stats"))["rule_id"], self.bobs
        )
        self.assertEqual(self.api.browser(self.bob, "DELETE", f"/v1/rules/{self.bobs}")[0], 204)
        self.assertNotIn(self.bobs, self.store_rule_ids())

    def test_superadmin_reaches_every_rule(self) -> None:
        """A superadmin gets and deletes a user's rule."""
        self.assertEqual(self.ok(self.get(self.alice, f"/v1/rules/{self.bobs}"))["owner"], "bob")
        self.assertEqual(self.api.browser(self.alice, "DELETE", f"/v1/rules/{self.bobs}")[0], 204)

    def test_unknown_rule_is_not_found(self) -> None:
        """A rule that does not exist is 404 rule_not_found, for users too."""
        self.assertError(self.get(self.bob, "/v1/rules/999"), 404, "rule_not_found")

    def test_clients_are_filtered_by_grants(self) -> None:
        """A user lists only the clients they hold a grant on."""
        names = [c["client_name"] for c in self.ok(self.get(self.bob, "/v1/clients"))]
        self.assertEqual(names, ["edge-01"])
        names = [c["client_name"] for c in self.ok(self.get(self.carol, "/v1/clients"))]
        self.assertEqual(names, ["edge-01", "edge-02"])

    def test_hidden_client_is_not_found(self) -> None:
        """A client without a grant is 404 client_not_found by id; a granted one is shown."""
        self.assertError(
            self.get(self.bob, f"/v1/clients/{self.edge2.client_id}"), 404, "client_not_found"
        )
        body = self.ok(self.get(self.bob, f"/v1/clients/{self.edge1.client_id}"))
        self.assertEqual(body["client_name"], "edge-01")

    def test_no_grant_sees_no_clients(self) -> None:
        """A user without grants sees an empty client list."""
        self.api.add_user("dave")
        dave = self.api.login("dave", USER_PASSWORD)
        self.assertEqual(self.ok(self.get(dave, "/v1/clients")), [])
        self.assertEqual(self.ok(self.get(dave, "/v1/rules")), [])

    def test_star_grant_sees_every_client(self) -> None:
        """A "*" grant shows every client, by list and by id."""
        self.grant("bob", "*", 1, 1)
        names = [c["client_name"] for c in self.ok(self.get(self.bob, "/v1/clients"))]
        self.assertEqual(names, ["edge-01", "edge-02", "edge-03"])
        self.assertEqual(self.get(self.bob, f"/v1/clients/{self.edge3.client_id}")[0], 200)

    def test_superadmin_sees_every_client(self) -> None:
        """A superadmin needs no grant to see clients."""
        self.assertEqual(len(self.ok(self.get(self.alice, "/v1/clients"))), 3)


class ClientSecrecyTests(RbacTestCase):
    """
    A user cannot learn whether a client they have no grant on exists:
    its id or name gets the answer an unknown one gets, and a name shared
    with clients they cannot see is not ambiguous to them.
    """

    UNKNOWN_ID = "01HCLIENT00000000000000099"

    def setUp(self) -> None:
        super().setUp()
        self.grant("bob", "edge-01", 8000, 8099)

    def same_answers(self, ask: Any, hidden: str, unknown: str) -> None:
        """C{ask(ref)} answers the same for both refs, once each names itself as the ref."""
        answers = []
        for ref in (hidden, unknown):
            status, body, _ = ask(ref)
            answers.append((status, json.dumps(body, sort_keys=True).replace(ref, "REF")))
        self.assertEqual(answers[0], answers[1])
        self.assertEqual(answers[0][0], 404, answers[0])

    def test_push(self) -> None:
        """A push names a hidden client or an unknown one, by id or by name: 404 alike."""
        self.same_answers(
            lambda ref: self.push(self.bob, client=ref), self.edge2.client_id, self.UNKNOWN_ID
        )
        self.same_answers(lambda ref: self.push(self.bob, client=ref), "edge-02", "edge-99")
        self.assertEqual(self.store_rule_ids(), [])

    def test_rule_filter(self) -> None:
        """GET /v1/rules?client= on a hidden client answers as on an unknown one."""
        self.same_answers(
            lambda ref: self.get(self.bob, f"/v1/rules?client={ref}"), "edge-02", "edge-99"
        )
        self.same_answers(
            lambda ref: self.get(self.bob, f"/v1/rules?client={ref}"),
            self.edge2.client_id,
            self.UNKNOWN_ID,
        )

    def test_client_by_id(self) -> None:
        """GET /v1/clients/{id} on a hidden client answers as on an unknown one."""
        self.same_answers(
            lambda ref: self.get(self.bob, f"/v1/clients/{ref}"),
            self.edge2.client_id,
            self.UNKNOWN_ID,
        )

    def test_a_shared_name_resolves_among_visible_clients(self) -> None:
        """
        Three clients called edge-dup, bob granted on one: his push by that
        name goes to his; granted on two, the ambiguity lists those two
        only; the superadmin's lists all three.
        """
        dups = [self.plane.add_client("edge-dup") for _ in range(3)]
        self.grant("bob", dups[0].client_id, 7000, 7099)
        body = self.ok(self.push(self.bob, client="edge-dup", listen=7000), 201)
        self.assertEqual(self.plane.rules[body["rule"]["id"]].client_id, dups[0].client_id)
        self.grant("bob", dups[1].client_id, 7000, 7099)
        error = self.assertError(
            self.push(self.bob, client="edge-dup", listen=7001), 409, "client_name_ambiguous"
        )
        self.assertEqual(
            sorted(error["client_ids"]), sorted([dups[0].client_id, dups[1].client_id])
        )
        self.assertNotIn(dups[2].client_id, error["message"])
        error = self.assertError(
            self.push(self.alice, client="edge-dup", listen=7001), 409, "client_name_ambiguous"
        )
        self.assertEqual(sorted(error["client_ids"]), sorted(d.client_id for d in dups))

    def test_a_star_grant_sees_every_client(self) -> None:
        """With a * grant every client is the user's to name."""
        self.grant("carol", "*", 6000, 6001)
        self.ok(self.push(self.carol, client="edge-03", listen=6000), 201)
        self.assertError(
            self.push(self.carol, client="edge-99", listen=6001), 404, "client_not_found"
        )


class CascadeTests(RbacTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.g1 = self.grant("bob", "edge-01", 8000, 8099)
        self.g2 = self.grant("bob", "edge-02", 8000, 8099)
        self.g3 = self.grant("carol", "edge-01", 9000, 9099)
        self.r1 = self.pushed(self.bob, listen=8080)
        self.r2 = self.pushed(self.bob, listen=8081)
        self.r3 = self.pushed(self.bob, client="edge-02", listen=8080)
        self.r4 = self.pushed(self.carol, listen=9090)
        self.r5 = self.pushed(self.alice, client="edge-03", listen=80)

    def test_revoking_a_grant_removes_its_rules(self) -> None:
        """DELETE /v1/grants/<id> removes the rules pushed under it, and the edges drop them."""
        body = self.ok(self.api.request("DELETE", f"/v1/grants/{self.g1['grant_id']}"))
        self.assertEqual(
            body, {"grant_id": self.g1["grant_id"], "removed_rule_ids": [self.r1, self.r2]}
        )
        self.assertEqual(self.plane.forgotten, [self.r1, self.r2])
        self.assertEqual(self.store_rule_ids(), [self.r3, self.r4, self.r5])
        self.assertEqual(self.rule_ids(self.get(self.bob, "/v1/rules")), [self.r3])
        grants = self.ok(self.api.request("GET", "/v1/grants?user_id=bob"))
        self.assertEqual([g["grant_id"] for g in grants], [self.g2["grant_id"]])
        entry = self.api.audit.entries[-1]
        self.assertEqual(
            (entry.action, entry.resource_value, entry.details),
            ("grant.revoke", self.g1["grant_id"], {"removed_rule_ids": [self.r1, self.r2]}),
        )

    def test_revoking_twice(self) -> None:
        """A revoked grant is gone: revoking it again is 404 grant_not_found."""
        self.ok(self.api.request("DELETE", f"/v1/grants/{self.g1['grant_id']}"))
        self.assertError(
            self.api.request("DELETE", f"/v1/grants/{self.g1['grant_id']}"),
            404,
            "grant_not_found",
        )

    def test_revoking_a_grant_hides_its_client(self) -> None:
        """After revocation the client leaves the user's client list."""
        self.ok(self.api.request("DELETE", f"/v1/grants/{self.g1['grant_id']}"))
        names = [c["client_name"] for c in self.ok(self.get(self.bob, "/v1/clients"))]
        self.assertEqual(names, ["edge-02"])

    def test_removing_a_user(self) -> None:
        """DELETE /v1/users/<id> removes their grants, rules and sessions."""
        body = self.ok(self.api.browser(self.alice, "DELETE", "/v1/users/bob"))
        self.assertEqual(
            body,
            {
                "user_id": "bob",
                "removed_credential_ids": [],
                "revoked_grant_ids": sorted([self.g1["grant_id"], self.g2["grant_id"]]),
                "removed_rule_ids": [self.r1, self.r2, self.r3],
            },
        )
        self.assertEqual(self.plane.forgotten, [self.r1, self.r2, self.r3])
        self.assertEqual(self.store_rule_ids(), [self.r4, self.r5])
        self.assertError(self.get(self.bob, "/v1/users/me"), 401, "credential_invalid")
        self.assertError(self.get(self.alice, "/v1/users/bob"), 404, "user_not_found")
        self.assertEqual(self.ok(self.api.request("GET", "/v1/grants?user_id=bob")), [])
        self.assertEqual(self.ok(self.get(self.carol, "/v1/users/me"))["user_id"], "carol")
        entry = self.audited("user.remove")
        self.assertEqual(
            (entry.outcome, entry.actor, entry.resource_value), ("allow", "alice", "bob")
        )
        self.assertEqual((entry.details or {}).get("removed_rule_ids"), [self.r1, self.r2, self.r3])

    def test_removed_user_id_can_be_reused(self) -> None:
        """A new user with a removed user's id starts with nothing."""
        self.ok(self.api.request("DELETE", "/v1/users/bob"))
        self.api.add_user("bob", "another long password")
        bob = self.api.login("bob", "another long password")
        self.assertEqual(self.ok(self.get(bob, "/v1/rules")), [])
        self.assertError(self.push(bob), 404, "client_not_found")

    def test_remove_unknown_user(self) -> None:
        """Removing a user who does not exist is 404 user_not_found."""
        self.assertError(self.api.request("DELETE", "/v1/users/nobody"), 404, "user_not_found")

    def test_cannot_remove_self(self) -> None:
        """A superadmin cannot remove themself: 409 cannot_remove_self."""
        self.api.add_user("dave", role="superadmin")
        self.assertError(
            self.api.browser(self.alice, "DELETE", "/v1/users/alice"), 409, "cannot_remove_self"
        )
        self.assertEqual(self.ok(self.get(self.alice, "/v1/users/me"))["user_id"], "alice")

    def test_last_superadmin(self) -> None:
        """The onboarded superadmin is the last who can log in: 409 last_superadmin."""
        self.assertError(self.api.request("DELETE", "/v1/users/alice"), 409, "last_superadmin")
        self.api.add_user("dave", role="superadmin")
        body = self.ok(self.api.request("DELETE", "/v1/users/alice"))
        self.assertEqual(body["removed_rule_ids"], [self.r5])
        self.assertError(self.get(self.alice, "/v1/users/me"), 401, "credential_invalid")
        dave = self.api.login("dave", USER_PASSWORD)
        self.assertError(
            self.api.browser(dave, "DELETE", "/v1/users/dave"), 409, "cannot_remove_self"
        )

    def test_operator_token_user_is_not_a_human_superadmin(self) -> None:
        """_legacy is no human superadmin: alice is still the last one while it exists."""
        self.ok(self.api.request("GET", "/v1/users/_legacy"))
        self.assertError(self.api.request("DELETE", "/v1/users/alice"), 409, "last_superadmin")

    def test_operator_token_user_cannot_be_removed(self) -> None:
        """
        While operator_token is configured its _legacy user cannot be removed
        (the token would keep working as a user that no longer exists, and
        its pushes would fail user_not_found); the token keeps pushing.
        """
        self.assertError(
            self.api.browser(self.alice, "DELETE", "/v1/users/_legacy"), 422, "reserved_user_id"
        )
        body = self.ok(
            self.api.request(
                "POST",
                "/v1/rules",
                {"client": "edge-03", "listen": 81, "targets": [{"host": "h", "port": 1}]},
            ),
            201,
        )
        self.assertEqual(body["owner"], "_legacy")


class ResetPasswordTests(RbacTestCase):
    def test_temporary_password(self) -> None:
        """A reset with no body generates a temporary password, shown once, ending sessions."""
        other = self.api.login("bob", USER_PASSWORD)
        body = self.ok(self.api.browser(self.alice, "POST", "/v1/users/bob/password"))
        self.assertEqual(set(body), {"user_id", "sessions_revoked", "temporary_password"})
        self.assertEqual((body["user_id"], body["sessions_revoked"]), ("bob", 2))
        temporary = body["temporary_password"]
        self.assertGreaterEqual(len(temporary), 12)
        self.assertError(self.get(self.bob, "/v1/users/me"), 401, "credential_invalid")
        self.assertError(self.get(other, "/v1/users/me"), 401, "credential_invalid")
        self.assertError(
            self.api.request(
                "POST", "/v1/auth/login", {"user_id": "bob", "password": USER_PASSWORD}, token=None
            ),
            401,
            "invalid_login",
        )
        status, login, _ = self.api.request(
            "POST", "/v1/auth/login", {"user_id": "bob", "password": temporary}, token=None
        )
        self.assertEqual((status, login["password_change_required"]), (200, True))
        shown = self.ok(self.api.request("GET", "/v1/users/bob"))
        self.assertEqual(shown["password_change_required"], True)
        self.assertNotIn("temporary_password", shown)
        self.assertNotIn(temporary, repr(self.api.audit.entries))
        entry = self.audited("user.password_reset")
        self.assertEqual(
            (entry.outcome, entry.actor, entry.resource_value, entry.details),
            ("allow", "alice", "bob", {"sessions_revoked": 2, "temporary": True}),
        )

    def test_explicit_temporary_flag(self) -> None:
        """temporary_password: true asks for a generated password too."""
        body = self.ok(
            self.api.request("POST", "/v1/users/carol/password", {"temporary_password": True})
        )
        self.assertEqual(body["sessions_revoked"], 1)
        self.assertIn("temporary_password", body)

    def test_new_password(self) -> None:
        """A given new password is set without forcing a change and is not echoed."""
        body = self.ok(
            self.api.request(
                "POST", "/v1/users/bob/password", {"new_password": "chosen by the admin"}
            )
        )
        self.assertEqual(body, {"user_id": "bob", "sessions_revoked": 1})
        bob = self.api.login("bob", "chosen by the admin")
        self.assertEqual(self.get(bob, "/v1/clients")[0], 200)

    def test_refusals(self) -> None:
        """Policy, unknown and reserved users, and a bad flag are refused with their codes."""
        self.assertError(
            self.api.request("POST", "/v1/users/bob/password", {"new_password": "short"}),
            422,
            "password_too_short",
            "new_password",
        )
        self.assertError(
            self.api.request("POST", "/v1/users/nobody/password", {}), 404, "user_not_found"
        )
        self.assertError(
            self.api.request("POST", "/v1/users/_legacy/password", {}), 422, "reserved_user_id"
        )
        self.assertError(
            self.api.request("POST", "/v1/users/bob/password", {"temporary_password": "yes"}),
            400,
            "validation_failed",
            "temporary_password",
        )
        self.assertEqual(self.get(self.bob, "/v1/users/me")[0], 200)

    def test_unknown_targets_are_throttled(self) -> None:
        """Five resets of an unknown user lock that target: 429 rate_limited."""
        for _ in range(5):
            self.assertError(
                self.api.request("POST", "/v1/users/nobody/password", {}), 404, "user_not_found"
            )
        self.assertError(
            self.api.request("POST", "/v1/users/nobody/password", {}), 429, "rate_limited"
        )
        self.ok(self.api.request("POST", "/v1/users/bob/password", {}))
