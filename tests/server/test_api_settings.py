"""
The advertised endpoint: C{GET/PUT /v1/settings/advertised-endpoint}
through the real pipeline with a real generated certificate, the SAN
matching rules, and the real ControlPlane naming the override in the
enrollment URIs it issues.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from portunus.control.enrollment import parse_enroll_uri
from portunus.control.tls import certificate_hosts, generate_self_signed
from portunus.server.advertised import CertificateNames, check_override, host_covered
from portunus.server.api import settings
from portunus.server.controlplane import ControlPlane
from tests.server._apiharness import ApiHarness
from tests.server._fakeplane import FakePlane
from tests.server.test_control_session import Harness

CERT_PEM, _ = generate_self_signed("server.example", ["*.edge.example.com", "203.0.113.7"])
PATH = "/v1/settings/advertised-endpoint"
SANS = ["server.example", "localhost", "*.edge.example.com", "127.0.0.1", "::1", "203.0.113.7"]


class CertificateNamesTests(SynchronousTestCase):
    names = CertificateNames(*certificate_hosts(CERT_PEM))

    def test_certificate_hosts(self) -> None:
        """The DNS and IP SANs of a generated certificate, read back from its PEM."""
        dns, ips = certificate_hosts(CERT_PEM)
        self.assertEqual(dns, ("server.example", "localhost", "*.edge.example.com"))
        self.assertEqual(
            ips, tuple(ipaddress.ip_address(a) for a in ("127.0.0.1", "::1", "203.0.113.7"))
        )

    def test_not_a_certificate(self) -> None:
        self.assertRaises(ValueError, certificate_hosts, b"not a certificate")

    def test_dns_names_ignore_case(self) -> None:
        self.assertTrue(host_covered("Server.Example", self.names))
        self.assertTrue(host_covered("server.example.", self.names))
        self.assertFalse(host_covered("other.example", self.names))

    def test_wildcard_covers_exactly_one_label(self) -> None:
        """C{*.edge.example.com} covers C{a.edge.example.com} only: not the apex, not deeper."""
        self.assertTrue(host_covered("a.edge.example.com", self.names))
        self.assertTrue(host_covered("A-1.EDGE.example.com", self.names))
        self.assertFalse(host_covered("edge.example.com", self.names))
        self.assertFalse(host_covered("a.b.edge.example.com", self.names))
        self.assertFalse(host_covered("aedge.example.com", self.names))

    def test_ip_needs_an_ip_san(self) -> None:
        """An IP host matches IP SANs only, compared as addresses."""
        self.assertTrue(host_covered("203.0.113.7", self.names))
        self.assertTrue(host_covered("0:0::1", self.names))
        self.assertFalse(host_covered("203.0.113.8", self.names))
        dns_only = CertificateNames(("203.0.113.7",), ())
        self.assertFalse(host_covered("203.0.113.7", dns_only))

    def test_check_override_fills_the_port(self) -> None:
        self.assertEqual(check_override("203.0.113.7", 7443, self.names), "203.0.113.7:7443")
        self.assertEqual(
            check_override("A.edge.example.com:9000", 7443, self.names), "a.edge.example.com:9000"
        )
        self.assertEqual(check_override("[::1]", 7443, self.names), "[::1]:7443")


class SettingsApiTests(SynchronousTestCase):
    """The routes over a L{FakePlane}, a real certificate and no seed unless set."""

    seed: str | None = None

    def setUp(self) -> None:
        self.plane = FakePlane()
        self.api = ApiHarness(
            self,
            self.plane,
            services={
                settings.ROUTES: settings.AdvertisedSettings.of(
                    self.plane, cert_pem=CERT_PEM, seed=self.seed, control_port=7443
                )
            },
        )

    def put(self, value: object) -> tuple[int, Any]:
        status, body, _ = self.api.request("PUT", PATH, {"advertised_endpoint": value})
        return status, body

    def get(self) -> Any:
        status, body, _ = self.api.request("GET", PATH)
        self.assertEqual(status, 200, body)
        return body

    def assertError(self, answer: tuple[int, Any], status: int, code: str) -> dict[str, Any]:
        got, body = answer
        self.assertEqual((got, body["error"]["code"]), (status, code), body)
        error: dict[str, Any] = body["error"]
        return error

    def test_loopback(self) -> None:
        """Nothing set: 127.0.0.1 and the control port, with a diagnostic saying why that is bad."""
        body = self.get()
        self.assertEqual(
            {k: body[k] for k in ("override", "effective", "source")},
            {"override": None, "effective": "127.0.0.1:7443", "source": "loopback"},
        )
        self.assertIn("only edges on this machine", body["diagnostic"])
        self.assertEqual(body["cert_sans"], SANS)

    def test_override_wins(self) -> None:
        """
        A PUT stores the override (bare host: the control port), answers
        the new state, and the plane has it.
        """
        status, body = self.put("a.edge.example.com")
        self.assertEqual(status, 200, body)
        self.assertEqual(
            body,
            {
                "override": "a.edge.example.com:7443",
                "effective": "a.edge.example.com:7443",
                "source": "override",
                "diagnostic": None,
                "cert_sans": SANS,
            },
        )
        self.assertEqual(self.plane.advertised, "a.edge.example.com:7443")
        self.assertEqual(self.get(), body)

    def test_put_is_audited(self) -> None:
        """A change is audited as settings.advertised_endpoint with the new value."""
        self.put("203.0.113.7:9443")
        [entry] = [e for e in self.api.audit.entries if e.method == "PUT"]
        self.assertEqual(
            (entry.action, entry.outcome, entry.resource_kind, entry.resource_value),
            ("settings.advertised_endpoint", "allow", "setting", "advertised_endpoint"),
        )
        self.assertEqual(entry.details, {"endpoint": "203.0.113.7:9443"})

    def test_clear(self) -> None:
        """C{null} and C{""} both clear the override."""
        for empty in (None, ""):
            self.put("a.edge.example.com:9000")
            status, body = self.put(empty)
            self.assertEqual(status, 200, body)
            self.assertEqual((body["override"], body["source"]), (None, "loopback"))
            self.assertIsNone(self.plane.advertised)

    def test_invalid(self) -> None:
        """Anything but a bare host[:port] string is 422 endpoint_invalid, and nothing changes."""
        self.put("a.edge.example.com")
        for value in (
            "https://a.edge.example.com",
            "a.edge.example.com/enroll",
            "a.edge.example.com:99999",
            "a.edge.example.com:",
            "under_score.example",
            "   ",
            5,
            ["a.edge.example.com"],
        ):
            error = self.assertError(self.put(value), 422, "endpoint_invalid")
            self.assertEqual(error["field"], "advertised_endpoint")
        self.assertEqual(self.plane.advertised, "a.edge.example.com:7443")

    def test_not_in_the_certificate(self) -> None:
        """A host the certificate does not name is 422, naming the ones it does."""
        for host in ("b.c.edge.example.com", "edge.example.com", "203.0.113.8", "other.example"):
            error = self.assertError(self.put(host), 422, "endpoint_not_in_cert_san")
            self.assertEqual(error["cert_sans"], SANS)
            self.assertIn("*.edge.example.com", error["message"])
        self.assertIsNone(self.plane.advertised)
        denied = [e for e in self.api.audit.entries if e.method == "PUT"]
        self.assertEqual({e.reason for e in denied}, {"endpoint_not_in_cert_san"})

    def test_body_shape(self) -> None:
        """A missing or unknown key is validation_failed naming it."""
        status, body, _ = self.api.request("PUT", PATH, {})
        self.assertEqual((status, body["error"]["field"]), (400, "advertised_endpoint"))
        status, body, _ = self.api.request("PUT", PATH, {"advertised_endpoint": None, "port": 1})
        self.assertEqual((status, body["error"]["field"]), (400, "body.port"))

    def test_superadmins_only(self) -> None:
        """A user may neither read nor change the setting: 403 role_required."""
        self.api.onboard()
        self.api.add_user("bob")
        cookie = self.api.login("bob", "a long enough password")
        status, body = self.api.browser(cookie, "GET", PATH)[:2]
        self.assertEqual((status, body["error"]["code"]), (403, "role_required"))
        status, body = self.api.browser(cookie, "PUT", PATH, {"advertised_endpoint": None})[:2]
        self.assertEqual((status, body["error"]["code"]), (403, "role_required"))


class SeededSettingsApiTests(SettingsApiTests):
    seed = "server.example:7443"

    def test_loopback(self) -> None:
        """With a seed and no override, the seed is in effect."""
        body = self.get()
        self.assertEqual(
            (body["override"], body["effective"], body["source"], body["diagnostic"]),
            (None, "server.example:7443", "seed", None),
        )

    def test_clear(self) -> None:
        """Clearing the override goes back to the seed."""
        self.put("a.edge.example.com:9000")
        status, body = self.put(None)
        self.assertEqual((status, body["source"], body["effective"]), (200, "seed", self.seed))


class UncoveredSeedTests(SettingsApiTests):
    seed = "other.example:7443"

    def test_loopback(self) -> None:
        """A seed the certificate does not name is used, with a diagnostic saying so."""
        body = self.get()
        self.assertEqual((body["source"], body["effective"]), ("seed", self.seed))
        self.assertIn("other.example", body["diagnostic"])
        self.assertIn("does not", body["diagnostic"])

    def test_clear(self) -> None:
        self.put("a.edge.example.com:9000")
        self.assertEqual(self.put(None)[1]["source"], "seed")


class PlaneOverrideTests(SynchronousTestCase):
    """The real ControlPlane and store: enrollment URIs follow the override."""

    def setUp(self) -> None:
        self.h = Harness(self)
        self.plane = self.h.plane

    def endpoint(self, address: str | None = None) -> str:
        view = self.h.successful(self.plane.enroll_client("edge", address, 600))
        uri = parse_enroll_uri(view.uri)
        return f"{uri.host}:{uri.port}"

    def test_enrollments_name_the_override(self) -> None:
        """
        Codes issued after the override is set name it; an explicit
        address still wins; clearing goes back to the configured endpoint.
        """
        self.assertEqual(self.endpoint(), "127.0.0.1:7443")
        self.h.successful(self.plane.set_advertised_override("edge.example.com:9443"))
        self.assertEqual(self.plane.advertised_override(), "edge.example.com:9443")
        self.assertEqual(self.endpoint(), "edge.example.com:9443")
        self.assertEqual(self.endpoint("198.51.100.4"), "198.51.100.4:7443")
        self.h.successful(self.plane.set_advertised_override(None))
        self.assertEqual(self.endpoint(), "127.0.0.1:7443")

    def test_redeemed_bundle_names_the_frozen_endpoint(self) -> None:
        """A code keeps the endpoint it was issued with, even if the override changes later."""
        self.h.successful(self.plane.set_advertised_override("edge.example.com:9443"))
        enrolled = self.h.enroll()
        self.assertEqual(enrolled["answer"]["server_endpoint"], "edge.example.com:9443")

    def test_stored_and_loaded_at_startup(self) -> None:
        """The override lives in server_settings; a plane started later loads it."""
        self.h.successful(self.plane.set_advertised_override("edge.example.com:9443"))
        self.assertEqual(
            self.h.successful(self.h.store.get_setting("advertised_endpoint")),
            "edge.example.com:9443",
        )
        again = ControlPlane(self.h.store, self.plane.settings, self.h.clock)
        self.assertEqual(again.advertised_endpoint, "127.0.0.1:7443")
        self.h.successful(again.load_advertised_override())
        self.assertEqual(again.advertised_endpoint, "edge.example.com:9443")

        self.h.successful(self.plane.set_advertised_override(None))
        self.assertIsNone(self.h.successful(self.h.store.get_setting("advertised_endpoint")))

    def test_garbage_in_the_store_is_ignored(self) -> None:
        """A stored value that does not parse is not handed to edges; it is logged."""
        self.h.successful(self.h.store.set_setting("advertised_endpoint", "https://x/"))
        with capturedLogs() as logged:
            self.h.successful(self.plane.load_advertised_override())
        self.assertIsNone(self.plane.advertised_override())
        self.assertEqual(self.plane.advertised_endpoint, "127.0.0.1:7443")
        self.assertEqual(
            [e["event"] for e in logged if e.get("event", "").startswith("advertised.")],
            ["advertised.override_invalid"],
        )
