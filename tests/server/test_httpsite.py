"""
L{QuietSite}: no access-log line per request at info, for anyone who can
reach the port; C{api.request} at debug instead (the metrics site: none).
Real requests over 127.0.0.1, events caught on the global publisher.
"""

from __future__ import annotations

from typing import Any

import treq
from twisted.internet.defer import inlineCallbacks
from twisted.logger import LogEvent, LogLevel, formatEvent, globalLogPublisher
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource
from twisted.web.static import Data

from portunus.server.httpsite import QuietSite


class QuietSiteTests(TestCase):
    def setUp(self) -> None:
        self.events: list[LogEvent] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    @inlineCallbacks
    def get(self, site: QuietSite, path: str) -> Any:
        from twisted.internet import reactor

        port = reactor.listenTCP(0, site, interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        response = yield treq.get(f"http://127.0.0.1:{port.getHost().port}{path}", persistent=False)
        yield treq.content(response)
        return response.code

    def root(self) -> Resource:
        root = Resource()
        root.putChild(b"health", Data(b'{"ok":true}', "application/json"))
        return root

    @inlineCallbacks
    def test_api_site_logs_api_request_at_debug_only(self) -> Any:
        """
        One api.request event at debug per request (method, path without
        the query, status, peer) and no access-log line at all.
        """
        code = yield self.get(QuietSite(self.root(), request_event="api.request"), "/health?x=1")
        self.assertEqual(code, 200)
        [event] = [e for e in self.events if e.get("event") == "api.request"]
        self.assertEqual(event["log_level"], LogLevel.debug)
        self.assertEqual(
            (event["method"], event["path"], event["status"], event["remote"]),
            ("GET", "/health", 200, "127.0.0.1"),
        )
        self.assertFalse([e for e in self.events if "HTTP/1.1" in formatEvent(e)])

    @inlineCallbacks
    def test_metrics_site_logs_no_request(self) -> Any:
        """Without a request event, a request leaves no log event at any level."""
        code = yield self.get(QuietSite(self.root()), "/health")
        self.assertEqual(code, 200)
        self.assertFalse([e for e in self.events if "HTTP/1.1" in formatEvent(e)])
        self.assertFalse([e for e in self.events if "event" in e])
