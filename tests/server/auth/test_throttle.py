"""
Tests for L{portunus.server.auth.throttle}: lockouts per (action, subject,
address) and per (action, source network), guesses reserved before they
are checked, and a bounded table.
"""

from __future__ import annotations

import contextlib

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from portunus.errors import PortunusError
from portunus.server.auth.throttle import (
    MAX_ADDRESS_FAILURES,
    MAX_FAILURES,
    Attempt,
    Throttle,
    source_network,
)

KEY = ("login", "alice", "192.0.2.1")

Key = tuple[str, str, str | None]


class ThrottleTestCase(SynchronousTestCase):
    """A throttle with the default settings on a fake clock."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.throttle = Throttle(self.clock)

    def fail_times(self, times: int = 1, key: Key = KEY) -> None:
        for _ in range(times):
            self.throttle.attempt(*key).failed()

    def refused(self, key: Key = KEY) -> PortunusError:
        with self.assertRaises(PortunusError) as cm:
            self.throttle.attempt(*key)
        return cm.exception

    def allowed(self, key: Key = KEY) -> None:
        """A guess on C{key} is let through (and released unanswered)."""
        self.throttle.attempt(*key).release()

    def assertLockedFor(self, seconds: float, key: Key = KEY) -> None:
        """Locked until exactly C{seconds} from now, and free from then on."""
        self.clock.advance(seconds - 0.1)
        self.refused(key)
        self.clock.advance(0.1)
        self.allowed(key)


class LockoutTests(ThrottleTestCase):
    """Five failures lock the key, and the lock doubles to a cap."""

    def test_four_failures_not_locked(self) -> None:
        """Up to four failures the key is still allowed."""
        self.fail_times(4)
        self.allowed()

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

    def test_many_failures(self) -> None:
        """Thousands of failures on one key keep the cap (no overflow in the doubling)."""
        self.throttle = Throttle(self.clock, window=1e12)
        for _ in range(5000):
            self.fail_times()
            self.clock.advance(900)
        self.fail_times()
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
        self.allowed()
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
        self.fail_times(4)
        for lockout in (60, 120, 240, 480, 900):
            self.fail_times()
            self.assertLockedFor(lockout)
        self.fail_times(4)
        self.allowed()


class SuccessTests(ThrottleTestCase):
    """A success clears the subject's key."""

    def test_success_clears_count(self) -> None:
        """Four failures, a success, four failures: not locked."""
        self.fail_times(4)
        self.throttle.attempt(*KEY).succeeded()
        self.fail_times(4)
        self.allowed()

    def test_success_keeps_the_network_count(self) -> None:
        """
        A success does not forget the source's failures across users: a
        sprayer who knows one password cannot reset the per-network count.
        """
        for i in range(MAX_ADDRESS_FAILURES - 1):
            self.fail_times(1, ("login", f"user{i}", "192.0.2.1"))
        self.throttle.attempt(*KEY).succeeded()
        self.fail_times(1, ("login", "zed", "192.0.2.1"))
        self.refused(("login", "yan", "192.0.2.1"))

    def test_success_forgets_empty_keys(self) -> None:
        """A success with no failures on record leaves nothing in the table."""
        self.throttle.attempt(*KEY).succeeded()
        self.assertEqual(len(self.throttle), 0)

    def test_decided_once(self) -> None:
        """An attempt counts once, whatever is called after its decision."""
        attempt = self.throttle.attempt(*KEY)
        attempt.failed()
        attempt.failed()
        attempt.release()
        self.fail_times(3)
        self.allowed()


class ReservationTests(ThrottleTestCase):
    """Guesses are reserved before they are checked."""

    def test_simultaneous_guesses_stop_at_the_limit(self) -> None:
        """
        Of 100 guesses on one key made before any is decided, five are
        let through; the rest are refused at once (retry in 1 s).
        """
        attempts: list[Attempt] = []
        refusals = []
        for _ in range(100):
            try:
                attempts.append(self.throttle.attempt(*KEY))
            except PortunusError as e:
                refusals.append(e)
        self.assertEqual(len(attempts), MAX_FAILURES)
        self.assertEqual({e.fields["retry_after"] for e in refusals}, {1})
        for attempt in attempts:
            attempt.failed()
        self.assertEqual(self.refused().fields["retry_after"], 60)

    def test_released_guesses_free_their_place(self) -> None:
        """A guess released undecided (another error) does not count."""
        attempts = [self.throttle.attempt(*KEY) for _ in range(MAX_FAILURES)]
        self.refused()
        for attempt in attempts:
            with attempt:
                pass
        self.fail_times(MAX_FAILURES - 1)
        self.allowed()
        self.assertEqual(len(self.throttle), 2)

    def test_after_a_lock_one_guess_at_a_time(self) -> None:
        """Once a lock runs out, one guess may be in flight, and its failure locks again."""
        self.fail_times(5)
        self.clock.advance(60)
        first = self.throttle.attempt(*KEY)
        self.assertEqual(self.refused().fields["retry_after"], 1)
        first.failed()
        self.assertLockedFor(120)

    def test_a_right_password_in_flight_frees_the_key(self) -> None:
        """A success while other guesses are in flight clears the count, not their places."""
        attempts = [self.throttle.attempt(*KEY) for _ in range(MAX_FAILURES)]
        attempts[0].succeeded()
        for attempt in attempts[1:]:
            attempt.failed()
        self.allowed()


class AddressTests(ThrottleTestCase):
    """One source guessing across user names is locked too."""

    def test_spraying_is_locked(self) -> None:
        """
        Twenty wrong guesses from one address, each on another user, lock
        every user name from that address for 60 s; other addresses are not.
        """
        for i in range(MAX_ADDRESS_FAILURES):
            self.fail_times(1, ("login", f"user{i}", "192.0.2.1"))
        error = self.refused(("login", "alice", "192.0.2.1"))
        self.assertEqual(error.fields["retry_after"], 60)
        self.assertIn("from your address", error.message)
        self.allowed(("login", "alice", "192.0.2.2"))
        self.assertLockedFor(60, ("login", "someone", "192.0.2.1"))

    def test_simultaneous_spraying_stops_at_the_limit(self) -> None:
        """Guesses in flight count for the address as for a user."""
        attempts = []
        for i in range(200):
            with contextlib.suppress(PortunusError):
                attempts.append(self.throttle.attempt("login", f"user{i}", "192.0.2.1"))
        self.assertEqual(len(attempts), MAX_ADDRESS_FAILURES)

    def test_an_ipv6_64_is_one_source(self) -> None:
        """Addresses of one IPv6 /64 share the count; the next /64 does not."""
        for i in range(MAX_ADDRESS_FAILURES):
            self.fail_times(1, ("login", f"user{i}", f"2001:db8:0:1::{i + 1:x}"))
        self.refused(("login", "alice", "2001:db8:0:1:ffff::1"))
        self.allowed(("login", "alice", "2001:db8:0:2::1"))

    def test_actions_are_separate(self) -> None:
        """The address limit of logins leaves onboarding alone."""
        for i in range(MAX_ADDRESS_FAILURES):
            self.fail_times(1, ("login", f"user{i}", "192.0.2.1"))
        self.allowed(("onboarding", "_onboarding", "192.0.2.1"))

    def test_source_network(self) -> None:
        """IPv4 as is, IPv4-mapped as IPv4, IPv6 as its /64 (no zone), anything else as is."""
        self.assertEqual(source_network("192.0.2.7"), "192.0.2.7")
        self.assertEqual(source_network("::ffff:192.0.2.7"), "192.0.2.7")
        self.assertEqual(source_network("2001:db8::1:2:3:4"), "2001:db8::/64")
        self.assertEqual(source_network("2001:db8:0:5:1::9"), "2001:db8:0:5::/64")
        self.assertEqual(source_network("fe80::1%eth0"), "fe80::/64")
        self.assertEqual(source_network("/run/portunus.sock"), "/run/portunus.sock")
        self.assertIsNone(source_network(None))


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
            self.allowed(other)

    def test_none_remote_is_a_key(self) -> None:
        """An unknown remote address is throttled as a key of its own."""
        key = ("login", "alice", None)
        self.fail_times(5, key)
        self.refused(key)
        self.allowed(KEY)


class BoundTests(SynchronousTestCase):
    """The table never holds more than max_keys keys."""

    def setUp(self) -> None:
        self.clock = Clock()
        # Each guess holds two keys: the subject's and the network's.
        self.throttle = Throttle(self.clock, max_keys=6)

    def test_bound_holds(self) -> None:
        """A flood of distinct keys never grows the table past max_keys."""
        for i in range(100):
            self.throttle.attempt("login", f"user{i}", f"198.51.100.{i}").failed()
            self.assertLessEqual(len(self.throttle), 6)
            self.clock.advance(1)
        self.assertEqual(len(self.throttle), 6)

    def test_oldest_evicted_when_all_recent(self) -> None:
        """With no idle key, the one whose last failure is oldest goes."""
        for name in ("a", "b", "c"):
            for _ in range(5):
                self.throttle.attempt("login", name, name).failed()
            self.clock.advance(1)
        self.throttle.attempt("login", "d", "d").failed()
        with self.assertRaises(PortunusError):
            self.throttle.attempt("login", "b", "b")
        with self.assertRaises(PortunusError):
            self.throttle.attempt("login", "c", "c")
        self.throttle.attempt("login", "a", "a").release()
        self.assertLessEqual(len(self.throttle), 6)

    def test_guesses_in_flight_are_never_evicted(self) -> None:
        """
        A key with a guess in flight stays, whatever the flood; when every
        key has one, a new key's guess is refused instead.
        """
        held = [self.throttle.attempt("login", name, name) for name in ("a", "b", "c")]
        with self.assertRaises(PortunusError) as cm:
            self.throttle.attempt("login", "d", "d")
        self.assertIn("in flight", cm.exception.message)
        for attempt in held:
            attempt.failed()
        self.throttle.attempt("login", "d", "d").release()
