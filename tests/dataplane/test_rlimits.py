"""
Raising the open-file limit at start (L{raise_nofile_limit}), for the
standalone forwarder and the edge client.
"""

from __future__ import annotations

import resource

from twisted.logger import LogEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from portunus.client.tap import _Root
from portunus.dataplane import rlimits
from portunus.dataplane.rlimits import RLIMIT_NOFILE_LOW, raise_nofile_limit


class RaiseNofileLimitTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.soft, self.hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        self.addCleanup(resource.setrlimit, resource.RLIMIT_NOFILE, (self.soft, self.hard))
        self.events: list[LogEvent] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def lower_soft_limit(self) -> int:
        lowered = min(self.hard - 1, 512)
        resource.setrlimit(resource.RLIMIT_NOFILE, (lowered, self.hard))
        return lowered

    def named(self, event: str) -> list[LogEvent]:
        return [e for e in self.events if e.get("event") == event]

    def test_soft_limit_is_raised_to_the_hard_one(self) -> None:
        """The soft limit ends at the hard one, and the start log says so."""
        self.lower_soft_limit()
        self.assertEqual(raise_nofile_limit("client"), self.hard)
        self.assertEqual(resource.getrlimit(resource.RLIMIT_NOFILE), (self.hard, self.hard))
        [logged] = self.named("client.rlimit_nofile")
        self.assertEqual((logged["soft"], logged["hard"]), (self.hard, self.hard))

    def test_low_limit_is_warned_about(self) -> None:
        """A hard limit under the floor leaves a warning naming the fix."""
        resource.setrlimit(resource.RLIMIT_NOFILE, (self.soft, self.hard))
        if self.hard >= RLIMIT_NOFILE_LOW:
            # Lowering the hard limit cannot be undone by an unprivileged
            # process, so only pretend the floor is higher.
            self.patch(rlimits, "RLIMIT_NOFILE_LOW", self.hard + 1)
        raise_nofile_limit("standalone")
        [warned] = self.named("standalone.rlimit_nofile_low")
        self.assertEqual(warned["soft"], self.hard)
        self.assertIn("LimitNOFILE", warned["log_format"])

    def test_edge_client_raises_it_before_its_services_start(self) -> None:
        """The edge's root service raises the limit when twistd starts it."""
        self.lower_soft_limit()
        root = _Root(observer=lambda event: None)
        root.startService()
        self.addCleanup(root.stopService)
        self.assertEqual(resource.getrlimit(resource.RLIMIT_NOFILE), (self.hard, self.hard))
        self.assertEqual(len(self.named("client.rlimit_nofile")), 1)
