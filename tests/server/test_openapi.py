"""
The OpenAPI document of the operator API: valid OpenAPI 3.1, served at
C{GET /v1/openapi.json}, naming exactly the routes the app has with the
access they really need, only registered codes with their registry
statuses, and a checker (which the harness runs over every answer) that
does catch an answer the document does not describe.
"""

from __future__ import annotations

import importlib
import json
import pkgutil
import re
from collections.abc import Iterator
from typing import Any

from jsonschema import Draft202012Validator
from schemathesis.specs.openapi.definitions import OPENAPI_31
from twisted.trial.unittest import SynchronousTestCase

from portunus.control.tls import generate_self_signed
from portunus.errors import ERRORS
from portunus.rulespec import API_RULE_KEYS, API_TARGET_KEYS, RATE_LIMIT_KEYS
from portunus.server import api
from portunus.server.api import audit, metrics, settings
from portunus.server.api.app import make_api
from portunus.server.api.catalog import ROUTE_TABLES
from portunus.server.api.openapi import document
from portunus.server.api.route import Routes
from tests.server._apiharness import ApiHarness
from tests.server._fakeplane import FakePlane
from tests.server._openapicheck import ResponseChecker

_KLEIN_PARAMETER = re.compile(r"<(?:[a-z]+:)?([a-z_]+)>")
_METHODS = ("get", "put", "post", "patch", "delete")


class _Unused:
    """A stand-in for a route module's collaborator these tests never reach."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"{name} was not expected to be used")


def every_service(plane: Any) -> dict[Routes, Any]:
    """
    The services of the route tables the server adds to C{make_api}'s
    (tap's C{services}), over stand-ins: only their routes' paths, methods
    and access are looked at here.
    """
    cert_pem, _ = generate_self_signed("portunus.test")
    return {
        audit.ROUTES: audit.AuditReader(None, _Unused(), _Unused()),
        settings.ROUTES: settings.AdvertisedSettings.of(
            plane, cert_pem=cert_pem, seed=None, control_port=7443
        ),
        metrics.ROUTES: _Unused(),
    }


def operations(doc: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in doc["paths"].items():
        for method in _METHODS:
            if method in item:
                yield method.upper(), path, item[method]


def schemas(node: object) -> Iterator[dict[str, Any]]:
    """Every schema object in the document (component, parameter, body, answer)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "schema" and isinstance(value, dict):
                yield value
            elif key == "schemas" and isinstance(value, dict):
                yield from value.values()
            else:
                yield from schemas(value)
    elif isinstance(node, list):
        for value in node:
            yield from schemas(value)


def documented_codes(response: dict[str, Any]) -> list[str]:
    """The error codes a response lists."""
    schema = response["content"]["application/json"]["schema"]
    codes: list[str] = schema["allOf"][1]["properties"]["error"]["properties"]["code"]["enum"]
    return codes


def operation_codes(operation: dict[str, Any]) -> set[str]:
    """The error codes an operation lists, over all its statuses."""
    return {
        code
        for status, response in operation["responses"].items()
        if int(status) >= 400
        for code in documented_codes(response)
    }


class DocumentTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.doc = document()

    def test_valid_openapi_31(self) -> None:
        """The document validates against the OpenAPI 3.1 schema."""
        validator = Draft202012Validator(OPENAPI_31)
        errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(self.doc)]
        self.assertEqual(errors, [])
        self.assertEqual(self.doc["openapi"], "3.1.0")

    def test_schemas_are_json_schema(self) -> None:
        """Each schema in it is a valid JSON Schema 2020-12 (the 3.1 dialect)."""
        found = list(schemas(self.doc))
        self.assertGreater(len(found), 50)
        for schema in found:
            Draft202012Validator.check_schema(schema)

    def test_references_resolve(self) -> None:
        """Every C{$ref} names a component that exists."""
        text = repr(self.doc)
        refs = set(re.findall(r"'\$ref': '#/components/schemas/([^']+)'", text))
        self.assertTrue(refs)
        self.assertEqual(refs - set(self.doc["components"]["schemas"]), set())

    def test_codes_registered(self) -> None:
        """
        The Error schema's codes are the registry's, and each response lists
        only registered codes whose registry status is that response's.
        """
        error = self.doc["components"]["schemas"]["Error"]["properties"]["error"]
        self.assertEqual(error["properties"]["code"]["enum"], sorted(ERRORS))
        seen = 0
        for method, path, operation in operations(self.doc):
            for status, response in operation["responses"].items():
                if int(status) < 400:
                    continue
                for code in documented_codes(response):
                    self.assertIn(code, ERRORS, f"{method} {path}")
                    self.assertEqual(ERRORS[code].http_status, int(status), (method, path, code))
                    seen += 1
        self.assertGreater(seen, 100)

    def test_every_operation_can_fail_internally(self) -> None:
        """Every operation documents the pipeline's 500 with its correlation id."""
        for _, path, operation in operations(self.doc):
            self.assertIn("internal", documented_codes(operation["responses"]["500"]), path)

    def test_rule_push_keys(self) -> None:
        """The rule push body documents exactly the keys the API dialect accepts."""
        components = self.doc["components"]["schemas"]
        push = components["RulePush"]
        self.assertEqual(set(push["properties"]), set(API_RULE_KEYS))
        self.assertIs(push["additionalProperties"], False)
        self.assertEqual(set(components["TargetIn"]["properties"]), set(API_TARGET_KEYS))
        self.assertEqual(set(components["RateLimit"]["properties"]), set(RATE_LIMIT_KEYS))

    def test_operation_ids_unique(self) -> None:
        ids = [operation["operationId"] for _, _, operation in operations(self.doc)]
        self.assertEqual(len(ids), len(set(ids)))


class RouteTests(SynchronousTestCase):
    """The document against the app the server runs."""

    def setUp(self) -> None:
        self.plane = FakePlane()
        self.api = ApiHarness(self, self.plane, services=every_service(self.plane))
        self.doc = document()

    def test_served(self) -> None:
        """C{GET /v1/openapi.json} answers the document without credentials."""
        status, body, response = self.api.request("GET", "/v1/openapi.json", token=None)
        self.assertEqual(status, 200)
        self.assertEqual(body, self.doc)
        self.assertEqual(response.headers.getRawHeaders(b"content-type"), [b"application/json"])

    def test_routes_documented(self) -> None:
        """
        Every route of the app is documented with its method, and every
        documented operation is a route (Klein's C{<x>} is OpenAPI's C{{x}}).
        """
        routes = set()
        for rule in self.api.app.url_map.iter_rules():
            path = _KLEIN_PARAMETER.sub(r"{\1}", rule.rule)
            for method in rule.methods or ():
                if method not in ("HEAD", "OPTIONS"):
                    routes.add((method, path))
        documented = {(method, path) for method, path, _ in operations(self.doc)}
        self.assertEqual(sorted(routes - documented), [], "routes the document lacks")
        self.assertEqual(sorted(documented - routes), [], "documented routes the app lacks")

    def test_documented_routes_answer(self) -> None:
        """
        Every documented operation is routed: a request to it is answered
        by its route, never by the app's own C{not_found} or
        C{method_not_allowed}.
        """
        for method, path, _ in operations(self.doc):
            _, body, _ = self.api.request(method, self._path(path), token=None)
            code = body["error"]["code"] if isinstance(body, dict) and "error" in body else None
            self.assertNotIn(code, ("not_found", "method_not_allowed"), (method, path))

    def test_every_table_in_catalog(self) -> None:
        """
        Every route table of the API package is in the catalog, so no
        module's routes can be served undocumented or documented unserved.
        """
        found = []
        for info in pkgutil.iter_modules(api.__path__):
            module = importlib.import_module(f"{api.__name__}.{info.name}")
            found += [value for value in vars(module).values() if isinstance(value, Routes)]
        self.assertGreaterEqual(len(found), 10)
        self.assertEqual([t for t in found if t not in ROUTE_TABLES], [])
        self.assertEqual(len(set(ROUTE_TABLES)), len(ROUTE_TABLES))

    def test_table_outside_catalog_refused(self) -> None:
        """C{make_api} refuses to serve a route table the document does not list."""
        stray = Routes("stray", bind=None)

        @stray.route("GET", "/v1/stray", "stray", "Not documented", access="public")
        async def handler(service: object, call: object) -> object:
            return {}

        with self.assertRaises(ValueError) as caught:
            make_api(
                self.plane, self.api.accounts, self.api.clock, self.api.audit, services={stray: 1}
            )
        self.assertIn("stray", str(caught.exception))

    def test_declarations_are_the_document(self) -> None:
        """
        Each route's declaration is what the document says of it: its
        method, path, operation id, whether it is public, and the codes of
        the gates the pipeline passes it through.
        """
        declared = {
            (r.operation.method, r.operation.path): r.operation for t in ROUTE_TABLES for r in t
        }
        self.assertEqual(
            set(declared), {(method, path) for method, path, _ in operations(self.doc)}
        )
        for method, path, documented in operations(self.doc):
            operation = declared[(method, path)]
            self.assertEqual(documented["operationId"], operation.operation_id)
            self.assertEqual(documented.get("security") == [], operation.access == "public")
            gate_codes = {code for gate in operation.gates for code in gate.codes}
            self.assertLessEqual(gate_codes, operation_codes(documented), path)

    def test_password_change_gate(self) -> None:
        """
        A session that must change its password is refused exactly by the
        routes whose declaration puts them behind that gate.
        """
        self.api.onboard()
        status, body, _ = self.api.request(
            "POST",
            "/v1/users",
            {
                "user_id": "carol",
                "initial_password": "a long enough password",
                "password_change_required": True,
            },
        )
        self.assertEqual(status, 201, body)
        for table in ROUTE_TABLES:
            for route in table:
                operation = route.operation
                if operation.access == "public":
                    continue
                cookie = self.api.login("carol", "a long enough password")
                status, body, _ = self.api.browser(
                    cookie, operation.method, self._path(operation.path)
                )
                code = body["error"]["code"] if isinstance(body, dict) and "error" in body else None
                gated = any(gate.name == "password_change" for gate in operation.gates)
                self.assertEqual(code == "password_change_required", gated, (operation.path, body))

    def _path(self, template: str) -> str:
        return re.sub(r"\{[a-z_]+\}", "x1", template)

    def test_access_as_documented(self) -> None:
        """
        An operation documented as public answers without credentials;
        every other one refuses them (503 before onboarding, 401 after),
        and one documented for superadmins only refuses a user.
        """
        self.api.onboard()
        self.api.add_user("bob", "a long enough password")
        for method, path, operation in operations(self.doc):
            public = operation.get("security") == []
            superadmin = "role_required" in operation_codes(operation)
            target = self._path(path)
            status, body, _ = self.api.request(method, target, token=None)
            if public:
                self.assertNotIn(status, (401, 403, 503), (method, path, body))
                continue
            self.assertEqual((status, body["error"]["code"]), (401, "unauthenticated"), path)
            # A fresh session each time: one of these is the logout.
            cookie = self.api.login("bob", "a long enough password")
            status, body, _ = self.api.browser(cookie, method, target)
            if superadmin:
                self.assertEqual((status, body["error"]["code"]), (403, "role_required"), path)
            else:
                self.assertNotIn(status, (401, 503), (method, path, body))

    def test_bootstrap_required_documented(self) -> None:
        """Before onboarding, each non-public operation answers its documented 503."""
        for method, path, operation in operations(self.doc):
            if operation.get("security") == []:
                continue
            status, body, _ = self.api.request(method, self._path(path), token=None)
            self.assertEqual((status, body["error"]["code"]), (503, "bootstrap_required"))


class CheckerTests(SynchronousTestCase):
    """The checker the harness runs over every answer can fail."""

    def setUp(self) -> None:
        self.checker = ResponseChecker()

    def test_documented_answer(self) -> None:
        body = b'{"status": "ok"}'
        self.assertEqual(
            self.checker.problems("GET", "/v1/health", 200, "application/json", body), []
        )

    def test_undocumented_status(self) -> None:
        """A status the operation does not document is a problem."""
        problems = self.checker.problems("GET", "/v1/health", 201, "application/json", b"{}")
        self.assertEqual(len(problems), 1)
        self.assertIn("not documented", problems[0])

    def test_body_off_schema(self) -> None:
        """A JSON body that does not match the schema is a problem, down to formats."""
        problems = self.checker.problems(
            "GET", "/v1/health", 200, "application/json", b'{"status": "fine"}'
        )
        self.assertEqual(len(problems), 1)
        client = {
            "client_id": "c",
            "client_name": "edge",
            "state": "connected",
            "connected": True,
            "remote_addr": None,
            "connected_at": "yesterday",
            "created_at": None,
            "revoked_at": None,
            "client_version": None,
            "features": [],
        }
        problems = self.checker.problems(
            "GET", "/v1/clients/c", 200, "application/json", json.dumps(client).encode()
        )
        self.assertEqual(len(problems), 1)
        self.assertIn("date-time", problems[0])

    def test_undocumented_code(self) -> None:
        """An error code the operation does not list for that status is a problem."""
        body = b'{"error": {"code": "rule_not_found", "message": "no"}}'
        problems = self.checker.problems("GET", "/v1/clients/c", 404, "application/json", body)
        self.assertEqual(len(problems), 1)

    def test_media_type(self) -> None:
        """An answer in another media type than documented is a problem."""
        problems = self.checker.problems("GET", "/v1/health", 200, "text/html", b"ok")
        self.assertEqual(len(problems), 1)

    def test_body_where_none(self) -> None:
        """A body on a documented empty answer is a problem."""
        problems = self.checker.problems("DELETE", "/v1/rules/1", 204, "application/json", b"{}")
        self.assertEqual(len(problems), 1)

    def test_undocumented_route(self) -> None:
        """An answer other than 404/405 from an undocumented route is a problem."""
        problems = self.checker.problems("GET", "/v1/nope", 200, "application/json", b"{}")
        self.assertEqual(len(problems), 1)
        body = b'{"error": {"code": "not_found", "message": "no route"}}'
        self.assertEqual(
            self.checker.problems("GET", "/v1/nope", 404, "application/json", body), []
        )

    def test_literal_path_wins(self) -> None:
        """C{/v1/users/me} is its own operation, not C{/v1/users/{user_id}}."""
        found = self.checker.operation("GET", "/v1/users/me")
        assert found is not None
        self.assertEqual(found[0], "/v1/users/me")
