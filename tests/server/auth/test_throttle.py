"""
Tests for L{portunus.server.auth.throttle}.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from portunus.errors import PortunusError
from portunus.server.auth.throttle import Throttle

KEY = ("login", "alice", "192.0.2.1")


class ThrottleTestCase(SynchronousTestCase):
    """A throttle with the default settings on a fake clock."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.throttle = Throttle(self.clock)

    def fail_times(self, times: int = 1, key: tuple[str, str, str | None] = KEY) -> None:
        for _ in range(times):
            self.throttle.failed(*key)

    def refused(self, key: tuple[str, str, str | None] = KEY) -> PortunusError:
        with self.assertRaises(PortunusError) as cm:
            self.throttle.check(*key)
        return cm.exception

    def assertLockedFor(self, seconds: float, key: tuple[str, str, str | None] = KEY) -> None:
        """Locked until exactly C{seconds} from now, and free from then on."""
        self.clock.advance(seconds - 0.1)
        self.refused(key)
        self.clock.advance(0.1)
        self.throttle.check(*key)


class LockoutTests(ThrottleTestCase):
    """Five failures lock the key, and the lock doubles to a cap."""

    def test_four_failures_not_locked(self) -> None:
        """Up to four failures the key is still allowed."""
        self.fail_times(4)
        self.throttle.check(*KEY)

    def test_fifth_failure_locks_sixty_seconds(self) -> None:
        """The fifth failure locks for exactly 60 s: refused at 59.9 s, free at 60 s."""
        self.fail_times(5)
        self.assertLockedFor(60)

    def test_doubling_to_cap(self) -> None:
        """Each failure after the fifth doubles the lock: 60, 120, 240, 480, then 900 s."""
        self.fail_times(4)
        for lockout in (60, 120, 240, 480, 900):
            self.fail_times()
            self.assertLockedFor(lockout)

    def test_cap_holds(self) -> None:
        """Failures past the ninth (reported while locked) stay at the 900 s cap."""
        self.fail_times(9)
        self.clock.advance(100)
        self.fail_times()
        self.assertLockedFor(900)

    def test_many_failures(self) -> None:
        """Thousands of failures on one key keep the cap (no overflow in the doubling)."""
        self.fail_times(5000)
        self.assertEqual(self.refused().fields["retry_after"], 900)

    def test_error(self) -> None:
        """The refusal is rate_limited (429), with retry_after in whole seconds and the action."""
        self.fail_times(5)
        self.clock.advance(10.5)
        error = self.refused()
        self.assertEqual(error.code, "rate_limited")
        self.assertEqual(error.error.http_status, 429)
        self.assertEqual(error.fields, {"retry_after": 50, "action": "login"})
        self.assertIn("50 seconds", error.message)

    def test_retry_after_rounds_up(self) -> None:
        """retry_after rounds up, so a client waiting that long is let in; never below 1."""
        self.fail_times(5)
        self.clock.advance(0.5)
        self.assertEqual(self.refused().fields["retry_after"], 60)
        self.clock.advance(59.45)
        self.assertEqual(self.refused().fields["retry_after"], 1)

    def test_retry_after_first_lock(self) -> None:
        """Right after the fifth failure the client is told to wait the full 60 s."""
        self.fail_times(5)
        self.assertEqual(self.refused().fields["retry_after"], 60)


class WindowTests(ThrottleTestCase):
    """Failures older than the 15 minute window are forgotten."""

    def test_window_resets_count(self) -> None:
        """Four failures, 15 minutes of quiet, then four more: still not locked."""
        self.fail_times(4)
        self.clock.advance(900)
        self.fail_times(4)
        self.throttle.check(*KEY)
        self.fail_times()
        self.assertLockedFor(60)

    def test_within_window_counts(self) -> None:
        """Failures spaced just under the window keep adding up."""
        for _ in range(4):
            self.fail_times()
            self.clock.advance(899)
        self.fail_times()
        self.refused()

    def test_after_cap_window_resets_lockout(self) -> None:
        """After a 900 s lock runs out, the next failure starts over at a count of 1."""
        self.fail_times(9)
        self.assertLockedFor(900)
        self.fail_times(4)
        self.throttle.check(*KEY)


class SuccessTests(ThrottleTestCase):
    """A success clears the key."""

    def test_success_clears_count(self) -> None:
        """Four failures, a success, four failures: not locked."""
        self.fail_times(4)
        self.throttle.succeeded(*KEY)
        self.fail_times(4)
        self.throttle.check(*KEY)
        self.assertEqual(len(self.throttle), 1)

    def test_success_clears_lock(self) -> None:
        """A success (say, a password reset by a superadmin) lifts an active lock."""
        self.fail_times(7)
        self.throttle.succeeded(*KEY)
        self.throttle.check(*KEY)
        self.assertEqual(len(self.throttle), 0)

    def test_success_unknown_key(self) -> None:
        """Succeeding on a key never seen is harmless."""
        self.throttle.succeeded(*KEY)
        self.assertEqual(len(self.throttle), 0)


class KeyTests(ThrottleTestCase):
    """Action, subject and remote address each make a separate key."""

    def test_independent(self) -> None:
        """Locking one key leaves keys differing in any one part alone."""
        self.fail_times(5)
        self.refused()
        for other in (
            ("onboarding", "alice", "192.0.2.1"),
            ("login", "bob", "192.0.2.1"),
            ("login", "alice", "192.0.2.2"),
            ("login", "alice", None),
        ):
            self.throttle.check(*other)

    def test_none_remote_is_a_key(self) -> None:
        """An unknown remote address is throttled as a key of its own."""
        key = ("login", "alice", None)
        self.fail_times(5, key)
        self.refused(key)
        self.throttle.check(*KEY)
        self.throttle.succeeded(*key)
        self.throttle.check(*key)


class BoundTests(SynchronousTestCase):
    """The table never holds more than max_keys keys."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.throttle = Throttle(self.clock, max_keys=3)

    def test_bound_holds(self) -> None:
        """A flood of distinct keys never grows the table past max_keys."""
        for i in range(100):
            self.throttle.failed("login", f"user{i}", "198.51.100.7")
            self.assertLessEqual(len(self.throttle), 3)
            self.clock.advance(1)
        self.assertEqual(len(self.throttle), 3)

    def test_oldest_evicted_when_all_recent(self) -> None:
        """With no idle key, the one whose last failure is oldest goes."""
        for name in ("a", "b", "c"):
            for _ in range(5):
                self.throttle.failed("login", name, None)
            self.clock.advance(1)
        self.throttle.failed("login", "a", None)
        self.throttle.failed("login", "d", None)
        self.throttle.check("login", "b", None)
        with self.assertRaises(PortunusError):
            self.throttle.check("login", "a", None)
        with self.assertRaises(PortunusError):
            self.throttle.check("login", "c", None)
        self.assertEqual(len(self.throttle), 3)

    def test_idle_evicted_first(self) -> None:
        """Keys idle past the window with no lock go before a more recently failed one."""
        self.throttle.failed("login", "idle1", None)
        self.throttle.failed("login", "idle2", None)
        self.clock.advance(900)
        for _ in range(5):
            self.throttle.failed("login", "locked", None)
        self.throttle.failed("login", "new", None)
        self.assertEqual(len(self.throttle), 2)
        with self.assertRaises(PortunusError):
            self.throttle.check("login", "locked", None)

    def test_repeat_failures_do_not_evict(self) -> None:
        """More failures on a key already held never push another key out."""
        for name in ("a", "b", "c"):
            for _ in range(4):
                self.throttle.failed("login", name, None)
        for _ in range(10):
            self.throttle.failed("login", "c", None)
        self.throttle.failed("login", "a", None)
        self.throttle.failed("login", "b", None)
        for name in ("a", "b", "c"):
            with self.assertRaises(PortunusError):
                self.throttle.check("login", name, None)
