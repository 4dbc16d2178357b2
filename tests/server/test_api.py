"""
The operator HTTP API through its real Klein resource (StubTreq, no
sockets) over a fake control plane.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from portunus.errors import PortunusError
from portunus.model import Balance, PortRange, Protocol, ProxyProtocolVersion, RateLimit
from portunus.server.plane import IControlPlane
from tests.server._apiharness import TOKEN, ApiHarness
from tests.server._fakeplane import FakePlane


class ApiTestCase(SynchronousTestCase):
    """An API over a L{FakePlane} with one connected client, C{edge-01}."""

    token: str | None = TOKEN

    def setUp(self) -> None:
        self.plane = FakePlane()
        self.edge = self.plane.add_client("edge-01")
        self.api = ApiHarness(self, self.plane, operator_token=self.token)
        self.clock = self.api.clock

    def call(
        self,
        method: str,
        path: str,
        body: object = None,
        token: str | None = TOKEN,
        raw: bytes | None = None,
        content_type: str = "application/json",
    ) -> tuple[int, Any]:
        status, decoded, _ = self.api.request(
            method, path, body, token=token, raw=raw, content_type=content_type
        )
        return status, decoded

    def assertError(
        self, answer: tuple[int, Any], status: int, code: str, field: str | None = None
    ) -> dict[str, Any]:
        got_status, body = answer
        self.assertEqual((got_status, body["error"]["code"]), (status, code), body)
        self.assertIsInstance(body["error"]["message"], str)
        if field is not None:
            self.assertEqual(body["error"]["field"], field, body)
        error: dict[str, Any] = body["error"]
        return error


class FakePlaneTests(SynchronousTestCase):
    def test_fake_provides_the_interface(self) -> None:
        """The fake the API is tested against really is an IControlPlane."""
        self.assertTrue(verifyObject(IControlPlane, FakePlane()))


class EnvelopeTests(ApiTestCase):
    def test_unknown_route(self) -> None:
        """An unknown path is a JSON 404, not an HTML page."""
        self.assertError(self.call("GET", "/v1/nothing-here"), 404, "not_found")

    def test_wrong_method(self) -> None:
        """A known path with the wrong method is a JSON 405 naming the allowed ones."""
        error = self.assertError(self.call("PUT", "/v1/rules"), 405, "method_not_allowed")
        self.assertIn("POST", error["allowed"])

    def test_malformed_json(self) -> None:
        self.assertError(self.call("POST", "/v1/rules", raw=b"{nope"), 400, "invalid_json")

    def test_wrong_content_type(self) -> None:
        self.assertError(
            self.call("POST", "/v1/rules", raw=b"{}", content_type="text/plain"),
            400,
            "invalid_json",
        )

    def test_lone_surrogate(self) -> None:
        """
        A string with an unpaired surrogate escape is invalid_json, not a
        500 from the store that cannot encode it.
        """
        user = b'{"user_id": "bob", "display_name": "\\ud800", "initial_password": "long enough!"}'
        self.assertError(self.call("POST", "/v1/users", raw=user), 400, "invalid_json")
        grant = b'{"user_id": "\\udc00", "client": "*", "listen_port_start": 80}'
        self.assertError(self.call("POST", "/v1/grants", raw=grant), 400, "invalid_json")
        paired = b'{"name": "edge-\\ud83d\\ude00"}'
        status, answer = self.call("POST", "/v1/client-enrollments", raw=paired)
        self.assertEqual((status, answer["client_name"]), (201, "edge-\U0001f600"))

    def test_deeply_nested(self) -> None:
        """A body nested deeper than the parser recurses is invalid_json, not a 500."""
        body = b'{"a": ' * 100_000 + b"1" + b"}" * 100_000
        self.assertError(self.call("POST", "/v1/rules", raw=body), 400, "invalid_json")

    def test_not_an_object(self) -> None:
        self.assertError(self.call("POST", "/v1/rules", body=[1, 2]), 400, "invalid_json")

    def test_empty_body(self) -> None:
        self.assertError(self.call("POST", "/v1/client-enrollments"), 400, "invalid_json")

    def test_internal_error_hides_details(self) -> None:
        """
        An unexpected exception is a 500 with a correlation id; the
        exception's text and traceback stay in the server log.
        """
        self.plane.fail_next("list_clients", RuntimeError("db password is hunter2"))
        status, body = self.call("GET", "/v1/clients")
        self.assertEqual(status, 500)
        self.assertEqual(body["error"]["code"], "internal")
        text = json.dumps(body)
        self.assertNotIn("hunter2", text)
        self.assertNotIn("Traceback", text)
        self.assertIn(body["error"]["correlation_id"], body["error"]["message"])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_plane_errors_map_to_their_status(self) -> None:
        """Each refusal the plane may make answers with the registry's status."""
        cases = [
            ("client_not_connected", 422),
            ("port_in_use", 409),
            ("activation_failed", 422),
            ("ack_timeout", 504),
            ("client_not_found", 404),
            ("unsupported_protocol", 422),
            ("conflict.sni_route_duplicate", 409),
        ]
        for code, status in cases:
            self.plane.fail_next("push_rule", PortunusError(code, f"{code} happened", port=8080))
            error = self.assertError(
                self.call("POST", "/v1/rules", body=_rule_body()), status, code
            )
            self.assertEqual(error["message"], f"{code} happened")
            self.assertEqual(error["port"], 8080)


class ClientRouteTests(ApiTestCase):
    def test_list(self) -> None:
        """GET /v1/clients lists every client with its state."""
        self.plane.add_client("edge-02", state="disconnected")
        status, body = self.call("GET", "/v1/clients")
        self.assertEqual(status, 200)
        self.assertEqual([c["client_name"] for c in body], ["edge-01", "edge-02"])
        self.assertEqual(
            set(body[0]),
            {
                "client_id",
                "client_name",
                "state",
                "connected",
                "remote_addr",
                "connected_at",
                "created_at",
                "revoked_at",
                "client_version",
                "features",
            },
        )
        self.assertEqual([c["connected"] for c in body], [True, False])
        self.assertEqual(body[0]["created_at"], "2023-11-14T22:13:20Z")

    def test_get(self) -> None:
        status, body = self.call("GET", f"/v1/clients/{self.edge.client_id}")
        self.assertEqual((status, body["client_name"]), (200, "edge-01"))

    def test_get_unknown(self) -> None:
        self.assertError(self.call("GET", "/v1/clients/nope"), 404, "client_not_found")

    def test_enroll(self) -> None:
        """An enrollment answers 201 with the URI and the command to run on the edge."""
        status, body = self.call(
            "POST", "/v1/client-enrollments", body={"name": "edge-09", "address": "10.0.0.1"}
        )
        self.assertEqual(status, 201)
        self.assertEqual(set(body), {"client_id", "client_name", "uri", "expires_at", "command"})
        self.assertEqual(body["command"], f"portunus-client enroll '{body['uri']}'")
        self.assertEqual(self.plane.calls[-1], ("enroll_client", ("edge-09", "10.0.0.1", 600)))
        self.assertEqual(body["expires_at"], "2023-11-14T22:23:20Z")

    def test_enroll_ttl(self) -> None:
        self.call("POST", "/v1/client-enrollments", body={"name": "e", "ttl_secs": 86400})
        self.assertEqual(self.plane.calls[-1], ("enroll_client", ("e", None, 86400)))

    def test_enroll_bad_ttl(self) -> None:
        for ttl in (0, 86401, "600", 1.5, True):
            self.assertError(
                self.call("POST", "/v1/client-enrollments", body={"name": "e", "ttl_secs": ttl}),
                400,
                "invalid_enrollment_ttl",
                "ttl_secs",
            )

    def test_enroll_bad_name(self) -> None:
        for name in (None, "", "x" * 65, "bad\nname", " padded", 7):
            body: dict[str, Any] = {} if name is None else {"name": name}
            self.assertError(
                self.call("POST", "/v1/client-enrollments", body=body or {"ttl_secs": 5}),
                400,
                "invalid_name",
                "name",
            )

    def test_enroll_bad_address(self) -> None:
        for address in ("host:7443", "", "a b", 5):
            self.assertError(
                self.call("POST", "/v1/client-enrollments", body={"name": "e", "address": address}),
                400,
                "invalid_client_address",
                "address",
            )

    def test_reenroll(self) -> None:
        """Re-enrollment needs no body and answers like an enrollment."""
        status, body = self.call("POST", f"/v1/clients/{self.edge.client_id}/enrollment")
        self.assertEqual((status, body["client_name"]), (201, "edge-01"))
        self.assertEqual(
            self.plane.calls[-1], ("reenroll_client", (self.edge.client_id, None, 600))
        )

    def test_rename(self) -> None:
        status, body = self.call(
            "PATCH", f"/v1/clients/{self.edge.client_id}", body={"name": "edge-one"}
        )
        self.assertEqual((status, body["client_name"]), (200, "edge-one"))

    def test_rename_bad_name(self) -> None:
        self.assertError(
            self.call("PATCH", f"/v1/clients/{self.edge.client_id}", body={"name": ""}),
            400,
            "invalid_name",
        )

    def test_revoke_then_delete(self) -> None:
        """Revoke answers 204; delete is refused before, 204 after."""
        path = f"/v1/clients/{self.edge.client_id}"
        self.assertError(self.call("DELETE", path), 409, "client_not_revoked")
        self.assertEqual(self.call("POST", path + "/revoke"), (204, None))
        self.assertEqual(self.call("DELETE", path), (204, None))
        self.assertEqual(self.plane.clients, {})


def _rule_body(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "client": "edge-01",
        "listen": 8080,
        "targets": [{"host": "10.0.0.5", "port": 80}],
    }
    for key, value in changes.items():
        if value is None:
            body.pop(key, None)
        else:
            body[key] = value
    return body


class RuleRouteTests(ApiTestCase):
    def push(self, **changes: Any) -> tuple[int, Any]:
        return self.call("POST", "/v1/rules", body=_rule_body(**changes))

    def test_push(self) -> None:
        """A minimal body becomes a TCP rule named 'rule', pushed with a 2 s ack wait."""
        status, body = self.push()
        self.assertEqual(status, 201)
        self.assertEqual(
            set(body),
            {
                "rule",
                "client_id",
                "client_name",
                "state",
                "state_reason",
                "created_at",
                "updated_at",
                "owner",
            },
        )
        self.assertEqual(body["owner"], "_legacy")
        self.assertEqual(body["client_id"], self.edge.client_id)
        self.assertEqual(body["state"], "active")
        self.assertEqual(
            body["rule"],
            {
                "id": 1,
                "name": "rule",
                "protocol": "tcp",
                "listen": "8080",
                "targets": [{"host": "10.0.0.5", "ports": "80"}],
            },
        )
        method, (client_id, rule, ack) = self.plane.calls[-1]
        self.assertEqual((method, client_id, ack), ("push_rule", self.edge.client_id, 2.0))
        self.assertEqual(rule.protocol, Protocol.TCP)

    def test_push_every_field(self) -> None:
        """Every optional field reaches the Rule the plane gets."""
        status, body = self.push(
            client=self.edge.client_id,
            name="web",
            listen="9000-9001",
            targets=[
                {
                    "host": "a.example.net",
                    "port": "80-81",
                    "priority": 1,
                    "weight": 3,
                    "proxy_protocol": "v2",
                },
                {"host": "::1", "port": "90-91"},
            ],
            balance="weighted",
            prefer_ipv6=True,
            health_check_interval_secs=10,
            rate_limit={"bandwidth_in_bps": 1000, "concurrent_connections": 5},
            ack_timeout_secs=0.5,
        )
        self.assertEqual(status, 201, body)
        _, (_, rule, ack) = self.plane.calls[-1]
        self.assertEqual(ack, 0.5)
        self.assertEqual(rule.name, "web")
        self.assertEqual(rule.listen, PortRange(9000, 9001))
        self.assertEqual(rule.targets[0].ports, PortRange(80, 81))
        self.assertEqual(rule.targets[0].proxy_protocol, ProxyProtocolVersion.V2)
        self.assertEqual((rule.targets[0].priority, rule.targets[0].weight), (1, 3))
        self.assertEqual(rule.balance, Balance.WEIGHTED)
        self.assertTrue(rule.prefer_ipv6)
        self.assertEqual(rule.health_check_interval_secs, 10)
        self.assertEqual(
            rule.rate_limit, RateLimit(bandwidth_in_bps=1000, concurrent_connections=5)
        )

    def test_push_sni_and_proxy_accept(self) -> None:
        status, _ = self.push(
            sni_pattern="*.Example.com",
            accept_proxy_protocol=True,
            trusted_sources=["10.0.0.0/8"],
        )
        self.assertEqual(status, 201)
        rule = self.plane.calls[-1][1][1]
        self.assertEqual(rule.sni_pattern, "*.example.com")
        self.assertEqual(rule.trusted_sources, ("10.0.0.0/8",))

    def test_client_by_name_ambiguous(self) -> None:
        """Two clients with the asked name: 409, the operator must give an id."""
        self.plane.add_client("edge-01")
        error = self.assertError(self.push(), 409, "client_name_ambiguous")
        self.assertEqual(len(error["client_ids"]), 2)

    def test_unknown_client(self) -> None:
        self.assertError(self.push(client="ghost"), 404, "client_not_found")

    def test_validation_names_the_field(self) -> None:
        """Every invalid field is refused with its name and a precise code."""
        cases: list[tuple[dict[str, Any], int, str, str]] = [
            ({"client": None}, 400, "validation_failed", "client"),
            ({"client": ""}, 400, "validation_failed", "client"),
            ({"protocol": "sctp"}, 400, "invalid_protocol", "protocol"),
            ({"listen": None}, 400, "validation_failed", "listen"),
            ({"listen": 0}, 400, "range_invalid", "listen"),
            ({"listen": "90-80"}, 400, "range_inverted", "listen"),
            ({"listen": "80-x"}, 400, "range_invalid", "listen"),
            ({"targets": None}, 400, "rule_shape_missing", "targets"),
            ({"targets": []}, 400, "targets_empty", "targets"),
            ({"targets": [{"host": "h", "port": 1}] * 9}, 400, "targets_too_many", "targets"),
            (
                {"targets": [{"host": "bad host", "port": 80}]},
                400,
                "invalid_target",
                "targets[0].host",
            ),
            ({"targets": [{"port": 80}]}, 400, "invalid_target", "targets[0].host"),
            ({"targets": [{"host": "h", "port": 70000}]}, 400, "range_invalid", "targets[0].port"),
            (
                {"targets": [{"host": "h", "port": 80, "proxy_protocol": "v3"}]},
                400,
                "validation_failed",
                "targets[0].proxy_protocol",
            ),
            (
                {"targets": [{"host": "h", "port": 80, "weight": 0}]},
                400,
                "validation_failed",
                "targets[0].weight",
            ),
            (
                {"targets": [{"host": "h", "port": 80, "bogus": 1}]},
                400,
                "validation_failed",
                "targets[0].bogus",
            ),
            (
                {"listen": "80-81", "targets": [{"host": "h", "port": "80-82"}]},
                400,
                "mismatched_range",
                "targets[0].port",
            ),
            ({"name": ""}, 400, "invalid_name", "name"),
            (
                {"health_check_interval_secs": 0},
                400,
                "health_check_interval_out_of_range",
                "health_check_interval_secs",
            ),
            (
                {"health_check_interval_secs": 3601},
                400,
                "health_check_interval_out_of_range",
                "health_check_interval_secs",
            ),
            ({"sni_pattern": "a..b"}, 400, "validation.sni_pattern_malformed", "sni_pattern"),
            (
                {"sni_pattern": "a.example.com", "protocol": "udp"},
                400,
                "validation.sni_on_unsupported_rule",
                "sni_pattern",
            ),
            ({"balance": "random"}, 400, "validation_failed", "balance"),
            ({"prefer_ipv6": "yes"}, 400, "validation_failed", "prefer_ipv6"),
            ({"rate_limit": {}}, 400, "validation.rate_limit_no_caps_provided", "rate_limit"),
            (
                {"rate_limit": {"bandwidth_in_bps": 0}},
                400,
                "validation_failed",
                "rate_limit.bandwidth_in_bps",
            ),
            (
                {"rate_limit": {"bandwidth_in_burst": 10}},
                400,
                "validation.rate_limit_burst_without_rate",
                "rate_limit.bandwidth_in_burst",
            ),
            ({"accept_proxy_protocol": True}, 400, "validation_failed", "trusted_sources"),
            ({"udp_max_flows": 0}, 400, "validation_failed", "udp_max_flows"),
            ({"ack_timeout_secs": 0}, 400, "validation_failed", "ack_timeout_secs"),
            ({"ack_timeout_secs": 61}, 400, "validation_failed", "ack_timeout_secs"),
            ({"ack_timeout_secs": "2"}, 400, "validation_failed", "ack_timeout_secs"),
            ({"frobnicate": 1}, 400, "validation_failed", "body.frobnicate"),
        ]
        for changes, status, code, field in cases:
            with self.subTest(changes=changes):
                self.assertError(self.push(**changes), status, code, field)
        self.assertNotIn("push_rule", [name for name, _ in self.plane.calls])

    def test_every_issue_listed(self) -> None:
        """One answer lists every problem, so one round trip shows all to fix."""
        error = self.assertError(
            self.push(listen="90-80", protocol="sctp"), 400, "invalid_protocol", "protocol"
        )
        self.assertEqual([i["field"] for i in error["issues"]], ["protocol", "listen"])
        self.assertIn("1 more", error["message"])

    def test_list_and_filter(self) -> None:
        """GET /v1/rules lists all rules; ?client= keeps one client's (id or name)."""
        other = self.plane.add_client("edge-02")
        self.push()
        self.push(client=other.client_id)
        status, body = self.call("GET", "/v1/rules")
        self.assertEqual((status, [r["client_name"] for r in body]), (200, ["edge-01", "edge-02"]))
        status, body = self.call("GET", "/v1/rules?client=edge-02")
        self.assertEqual([r["rule"]["id"] for r in body], [2])
        self.assertEqual(self.plane.calls[-1], ("list_rules", (other.client_id,)))
        self.assertError(self.call("GET", "/v1/rules?client=ghost"), 404, "client_not_found")

    def test_get_and_remove(self) -> None:
        self.push()
        status, body = self.call("GET", "/v1/rules/1")
        self.assertEqual((status, body["rule"]["id"]), (200, 1))
        self.assertEqual(self.call("DELETE", "/v1/rules/1"), (204, None))
        self.assertError(self.call("GET", "/v1/rules/1"), 404, "rule_not_found")
        self.assertError(self.call("DELETE", "/v1/rules/1"), 404, "rule_not_found")

    def test_non_numeric_rule_id(self) -> None:
        """A rule id that is not a number cannot exist: 404 rule_not_found."""
        self.assertError(self.call("GET", "/v1/rules/web"), 404, "rule_not_found")
        self.assertEqual(self.plane.calls, [])

    def test_rule_id_beyond_the_store(self) -> None:
        """A number too large for a store id names no rule: 404, not the store's overflow."""
        for route in ("/v1/rules/9223372036854775808", "/v1/rules/99999999999999999999/stats"):
            self.assertError(self.call("GET", route), 404, "rule_not_found")
        self.assertEqual(self.plane.calls, [])

    def test_stats(self) -> None:
        """Stats carry per-target state always, per-port rows only on request."""
        self.push()
        self.plane.stats[1] = {
            "bytes_in": 10,
            "per_port": [{"port": 8080, "bytes_in": 10}],
            "per_target": [],
            "updated_at": 1_700_000_000.0,
        }
        status, body = self.call("GET", "/v1/rules/1/stats")
        self.assertEqual(status, 200)
        self.assertEqual(body["rule_id"], 1)
        self.assertEqual(body["updated_at"], "2023-11-14T22:13:20Z")
        self.assertNotIn("per_port", body)
        self.assertIn("per_target", body)
        _, body = self.call("GET", "/v1/rules/1/stats?per_port=true")
        self.assertEqual(body["per_port"], [{"port": 8080, "bytes_in": 10}])
        self.assertError(self.call("GET", "/v1/rules/9/stats"), 404, "rule_not_found")

    def test_stats_per_port_from_the_edge(self) -> None:
        """An edge's per-port counters (keyed by port) come back as per_port rows in port order."""
        self.push()
        self.plane.stats[1] = {
            "bytes_in": 30,
            "ports": {"9001": {"bytes_in": 20}, "9000": {"bytes_in": 10}},
            "updated_at": 1_700_000_000.0,
        }
        _, body = self.call("GET", "/v1/rules/1/stats")
        self.assertNotIn("per_port", body)
        self.assertNotIn("ports", body)
        _, body = self.call("GET", "/v1/rules/1/stats?per_port=1")
        self.assertEqual(
            body["per_port"], [{"port": 9000, "bytes_in": 10}, {"port": 9001, "bytes_in": 20}]
        )

    def test_activation_failed_reason(self) -> None:
        """activation_failed keeps the plane's reason field for the operator."""
        self.plane.fail_next(
            "push_rule", PortunusError("activation_failed", "bind failed", reason="EACCES")
        )
        error = self.assertError(self.push(), 422, "activation_failed")
        self.assertEqual(error["reason"], "EACCES")
