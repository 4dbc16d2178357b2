"""
C{GET /v1/metrics}: the metrics listener's Prometheus text, for
superadmins, through the API's pipeline.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from portunus.server.api import metrics as metrics_api
from portunus.server.metrics import CONTENT_TYPE, ServerMetrics
from tests.server._apiharness import ApiHarness
from tests.server._fakeplane import FakePlane
from tests.server.test_metrics import FakeSource, row


class MetricsApiTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.source = FakeSource()
        self.metrics = ServerMetrics(self.source)
        self.api = ApiHarness(self, FakePlane(), services={metrics_api.ROUTES: self.metrics})

    def test_superadmin_gets_the_exposition(self) -> None:
        """200, the exposition's content type, and exactly what the listener renders."""
        self.source.rows.append(row(7, stats={"bytes_in": 1500}))
        self.source.clients = 2
        status, body, response = self.api.request("GET", "/v1/metrics")
        self.assertEqual(status, 200)
        self.assertEqual(response.headers.getRawHeaders("content-type"), [CONTENT_TYPE])
        self.assertEqual(body, self.metrics.render())
        self.assertIn(b"portunus_clients_connected 2.0", body)
        self.assertIn(b'portunus_rule_bytes_in_total{client="edge-01"', body)

    def test_scrapes_are_not_audited(self) -> None:
        """A scrape is a read: no audit entry."""
        self.api.request("GET", "/v1/metrics")
        self.assertEqual(self.api.audit.entries, [])

    def test_users_are_refused(self) -> None:
        """A user (not a superadmin) is 403 role_required, and no metrics leak."""
        self.api.onboard()
        self.api.add_user("bob")
        cookie = self.api.login("bob", "a long enough password")
        status, body, response = self.api.request("GET", "/v1/metrics", token=None, cookie=cookie)
        self.assertEqual((status, body["error"]["code"]), (403, "role_required"))
        self.assertEqual(response.headers.getRawHeaders("content-type"), ["application/json"])

    def test_unauthenticated(self) -> None:
        """Unlike the loopback-only listener, the API's copy needs credentials."""
        self.api.onboard()
        status, body, _ = self.api.request("GET", "/v1/metrics", token=None)
        self.assertEqual((status, body["error"]["code"]), (401, "unauthenticated"))
