"""
Rate limits: token buckets, validation, admission, throttles and the pause
gate on a deterministic clock, plus one capped relay over real sockets.
"""

from __future__ import annotations

import itertools
from typing import Any

from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import ClientFactory, Factory, Protocol
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from portunus.dataplane.ratelimit import (
    OWNER_TCP_REASONS,
    RULE_UDP_REASONS,
    AdmissionChain,
    Admitter,
    DatagramBudget,
    PauseGate,
    PauseReason,
    RuleLimiter,
    Throttle,
    TokenBucket,
    burst_range,
    chunk_size_for,
    validate_rate_limit,
)
from portunus.model import RateLimit
from tests._net import LOOPBACK

reactor: Any = _reactor

BP = PauseReason.BACKPRESSURE
THROTTLE = PauseReason.THROTTLE


@implementer(IPushProducer)
class RecordingProducer:
    """Stands in for a transport: records every producer call."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.paused = False
        self.stopped = False

    def pauseProducing(self) -> None:
        self.calls.append("pause")
        self.paused = True

    def resumeProducing(self) -> None:
        self.calls.append("resume")
        self.paused = False

    def stopProducing(self) -> None:
        self.calls.append("stop")
        self.stopped = True


class TokenBucketTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.bucket = TokenBucket(self.clock, rate=1000, burst=2000)

    def test_starts_full(self) -> None:
        """A new bucket holds its whole burst."""
        self.assertEqual(self.bucket.tokens, 2000)

    def test_refills_at_rate(self) -> None:
        """Tokens come back at C{rate} per second of clock time."""
        self.assertEqual(self.bucket.take(2000), 0.0)
        self.clock.advance(0.25)
        self.assertAlmostEqual(self.bucket.tokens, 250)

    def test_refill_stops_at_burst(self) -> None:
        """However long the bucket idles, it holds at most C{burst}."""
        self.bucket.take(500)
        self.clock.advance(3600)
        self.assertEqual(self.bucket.tokens, 2000)

    def test_take_within_balance_waits_nothing(self) -> None:
        """Taking no more than the balance returns 0.0."""
        self.assertEqual(self.bucket.take(1500), 0.0)
        self.assertEqual(self.bucket.take(500), 0.0)
        self.assertEqual(self.bucket.tokens, 0)

    def test_take_into_deficit_returns_repayment_time(self) -> None:
        """Overdrawing by D tokens returns D / rate seconds."""
        self.assertAlmostEqual(self.bucket.take(2500), 0.5)
        self.assertEqual(self.bucket.tokens, -500)
        self.clock.advance(0.5)
        self.assertAlmostEqual(self.bucket.tokens, 0)

    def test_take_zero_reports_current_debt(self) -> None:
        """C{take(0)} is the time left until the debt is repaid."""
        self.bucket.take(3000)
        self.clock.advance(0.4)
        self.assertAlmostEqual(self.bucket.take(0), 0.6)

    def test_try_take_only_when_enough(self) -> None:
        """C{try_take} consumes nothing when the balance is short."""
        self.assertTrue(self.bucket.try_take(1999))
        self.assertFalse(self.bucket.try_take(2))
        self.assertEqual(self.bucket.tokens, 1)
        self.assertTrue(self.bucket.try_take(1))

    def test_refund_clamped_to_burst(self) -> None:
        """A refund never lifts the balance above the burst."""
        self.bucket.take(1)
        self.bucket.refund(10)
        self.assertEqual(self.bucket.tokens, 2000)

    def test_clock_stepping_back_grants_nothing(self) -> None:
        """A clock that goes backwards and forwards again earns no extra tokens."""
        self.bucket.take(2000)
        self.clock.rightNow -= 10
        self.assertEqual(self.bucket.tokens, 0)
        self.clock.advance(10)
        self.assertEqual(self.bucket.tokens, 2000)
        self.bucket.take(2000)
        self.clock.advance(1)
        self.assertEqual(self.bucket.tokens, 1000)

    def test_update_keeps_tokens(self) -> None:
        """Raising rate and burst keeps the balance: no free burst."""
        self.bucket.take(1900)
        self.bucket.update(rate=5000, burst=50_000)
        self.assertEqual(self.bucket.tokens, 100)
        self.assertEqual((self.bucket.rate, self.bucket.burst), (5000, 50_000))
        self.clock.advance(1)
        self.assertEqual(self.bucket.tokens, 5100)

    def test_update_clamps_to_new_burst(self) -> None:
        """Lowering the burst below the balance cuts the balance to it."""
        self.bucket.update(rate=1000, burst=300)
        self.assertEqual(self.bucket.tokens, 300)

    def test_update_keeps_debt(self) -> None:
        """A deficit survives an update, repaid at the new rate."""
        self.bucket.take(3000)
        self.bucket.update(rate=2000, burst=2000)
        self.assertEqual(self.bucket.tokens, -1000)
        self.assertAlmostEqual(self.bucket.take(0), 0.5)

    def test_update_refills_at_old_rate_first(self) -> None:
        """Time before an update is credited at the rate in force then."""
        self.bucket.take(2000)
        self.clock.advance(1)
        self.bucket.update(rate=100_000, burst=100_000)
        self.assertEqual(self.bucket.tokens, 1000)

    def test_rejects_non_positive_rate_or_burst(self) -> None:
        """A bucket needs a positive rate and burst."""
        self.assertRaises(ValueError, TokenBucket, self.clock, 0, 10)
        self.assertRaises(ValueError, TokenBucket, self.clock, 10, 0)
        self.assertRaises(ValueError, self.bucket.update, -1, 10)


class ChunkSizeTests(SynchronousTestCase):
    def test_about_100ms_between_8_and_64_kib(self) -> None:
        """Chunks are a tenth of the rate, clamped to 8..64 KiB."""
        self.assertEqual(chunk_size_for(1000), 8 * 1024)
        self.assertEqual(chunk_size_for(256 * 1024), 26214)
        self.assertEqual(chunk_size_for(10**9), 64 * 1024)


class ValidationTests(SynchronousTestCase):
    def codes(self, **fields: int) -> list[tuple[str, str]]:
        return [(f, c) for f, c, _ in validate_rate_limit(RateLimit(**fields))]

    def test_valid_limits_have_no_issues(self) -> None:
        """Every field set within range is accepted."""
        limit = RateLimit(
            bandwidth_in_bps=1_000_000,
            bandwidth_out_bps=2_000_000,
            new_connections_per_sec=10,
            concurrent_connections=100,
            bandwidth_in_burst=10_000,
            bandwidth_out_burst=120_000_000,
            new_connections_burst=600,
        )
        self.assertEqual(validate_rate_limit(limit), [])
        self.assertEqual(validate_rate_limit(RateLimit()), [])

    def test_zero_or_negative_cap(self) -> None:
        """A rate of 0 or less is C{validation.rate_limit_cap_zero}, per field."""
        for field in (
            "bandwidth_in_bps",
            "bandwidth_out_bps",
            "new_connections_per_sec",
            "concurrent_connections",
        ):
            for value in (0, -5):
                self.assertEqual(
                    self.codes(**{field: value}),
                    [(field, "validation.rate_limit_cap_zero")],
                )

    def test_zero_cap_with_burst_reports_only_the_cap(self) -> None:
        """A burst for a zero rate is not also reported out of range."""
        self.assertEqual(
            self.codes(bandwidth_in_bps=0, bandwidth_in_burst=5),
            [("bandwidth_in_bps", "validation.rate_limit_cap_zero")],
        )

    def test_burst_without_rate(self) -> None:
        """A burst whose rate is absent is C{rate_limit_burst_without_rate}."""
        self.assertEqual(
            self.codes(bandwidth_out_burst=100, new_connections_burst=3),
            [
                ("bandwidth_out_burst", "validation.rate_limit_burst_without_rate"),
                ("new_connections_burst", "validation.rate_limit_burst_without_rate"),
            ],
        )

    def test_burst_range_bounds(self) -> None:
        """Bursts of exactly rate/100 and rate x 60 pass; one past either fails."""
        rate = 1_000_000
        self.assertEqual(self.codes(bandwidth_in_bps=rate, bandwidth_in_burst=10_000), [])
        self.assertEqual(self.codes(bandwidth_in_bps=rate, bandwidth_in_burst=60_000_000), [])
        for burst in (9_999, 60_000_001):
            self.assertEqual(
                self.codes(bandwidth_in_bps=rate, bandwidth_in_burst=burst),
                [("bandwidth_in_burst", "validation.rate_limit_burst_range")],
            )

    def test_burst_range_message_states_range(self) -> None:
        """The message names the allowed range for the given rate."""
        [(_, _, message)] = validate_rate_limit(
            RateLimit(new_connections_per_sec=1000, new_connections_burst=60_001)
        )
        self.assertIn("between 10 and 60000", message)
        self.assertIn("new_connections_per_sec = 1000", message)

    def test_burst_floor_is_at_least_one_and_rounds_up(self) -> None:
        """The lowest burst is max(1, rate/100), rounded up to whole units."""
        self.assertEqual(burst_range(50), (1, 3000))
        self.assertEqual(burst_range(150), (2, 9000))
        self.assertEqual(
            self.codes(new_connections_per_sec=150, new_connections_burst=1),
            [("new_connections_burst", "validation.rate_limit_burst_range")],
        )


class RuleLimiterTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()

    def test_uncapped_admits_everything(self) -> None:
        """No limit: every connection is admitted and there are no buckets."""
        limiter = RuleLimiter(self.clock, None)
        for _ in range(1000):
            self.assertIsNone(limiter.admit())
        self.assertEqual(limiter.stats.active, 1000)
        self.assertIsNone(limiter.bandwidth_in)
        self.assertIsNone(limiter.bandwidth_out)
        self.assertFalse(limiter.caps_bandwidth)

    def test_concurrent_cap_and_release(self) -> None:
        """Past the concurrent cap, C{conn_concurrent}; a release frees a slot."""
        limiter = RuleLimiter(self.clock, RateLimit(concurrent_connections=2))
        self.assertIsNone(limiter.admit())
        self.assertIsNone(limiter.admit())
        self.assertEqual(limiter.admit(), "conn_concurrent")
        self.assertEqual(limiter.admit(), "conn_concurrent")
        limiter.release()
        self.assertIsNone(limiter.admit())
        self.assertEqual(limiter.stats.rejects, {"conn_concurrent": 2})
        self.assertEqual(limiter.stats.active, 2)

    def test_connection_rate(self) -> None:
        """Past the accept rate, C{conn_rate}, until tokens refill."""
        limiter = RuleLimiter(self.clock, RateLimit(new_connections_per_sec=2))
        self.assertIsNone(limiter.admit())
        self.assertIsNone(limiter.admit())
        self.assertEqual(limiter.admit(), "conn_rate")
        self.clock.advance(0.5)
        self.assertIsNone(limiter.admit())
        self.assertEqual(limiter.admit(), "conn_rate")
        self.assertEqual(limiter.stats.rejects, {"conn_rate": 2})

    def test_connection_burst(self) -> None:
        """C{new_connections_burst} lets that many accepts through at once."""
        limiter = RuleLimiter(
            self.clock, RateLimit(new_connections_per_sec=1, new_connections_burst=5)
        )
        self.assertEqual([limiter.admit() for _ in range(6)], [None] * 5 + ["conn_rate"])

    def test_concurrent_refusal_spends_no_rate_token(self) -> None:
        """A connection refused for concurrency does not use up the accept rate."""
        limiter = RuleLimiter(
            self.clock, RateLimit(concurrent_connections=1, new_connections_per_sec=2)
        )
        self.assertIsNone(limiter.admit())
        self.assertEqual(limiter.admit(), "conn_concurrent")
        limiter.release()
        self.assertIsNone(limiter.admit())

    def test_release_without_admit(self) -> None:
        """Releasing more than was admitted is a bug, not a silent negative count."""
        limiter = RuleLimiter(self.clock, None)
        self.assertRaises(RuntimeError, limiter.release)

    def test_lowering_concurrent_below_live_refuses_only_new(self) -> None:
        """A cap under the live count keeps live connections and refuses new ones."""
        limiter = RuleLimiter(self.clock, RateLimit(concurrent_connections=5))
        for _ in range(4):
            limiter.admit()
        limiter.update(RateLimit(concurrent_connections=2))
        self.assertEqual(limiter.stats.active, 4)
        self.assertEqual(limiter.admit(), "conn_concurrent")
        limiter.release()
        limiter.release()
        self.assertEqual(limiter.admit(), "conn_concurrent")
        limiter.release()
        self.assertIsNone(limiter.admit())

    def test_adding_concurrent_cap_counts_live_connections(self) -> None:
        """Connections admitted while uncapped count against a cap added later."""
        limiter = RuleLimiter(self.clock, None)
        limiter.admit()
        limiter.admit()
        limiter.update(RateLimit(concurrent_connections=2))
        self.assertEqual(limiter.admit(), "conn_concurrent")

    def test_update_keeps_connection_tokens(self) -> None:
        """A hot update does not refill the accept bucket."""
        limiter = RuleLimiter(self.clock, RateLimit(new_connections_per_sec=3))
        for _ in range(3):
            limiter.admit()
        limiter.update(RateLimit(new_connections_per_sec=100))
        self.assertEqual(limiter.admit(), "conn_rate")
        self.clock.advance(0.01)
        self.assertIsNone(limiter.admit())

    def test_update_bandwidth_in_place(self) -> None:
        """Changing a bandwidth cap updates the same bucket, keeping its tokens."""
        limiter = RuleLimiter(self.clock, RateLimit(bandwidth_in_bps=1000))
        bucket = limiter.bandwidth_in
        assert bucket is not None
        bucket.take(800)
        limiter.update(RateLimit(bandwidth_in_bps=4000, bandwidth_in_burst=8000))
        self.assertIs(limiter.bandwidth_in, bucket)
        self.assertEqual((bucket.rate, bucket.burst, bucket.tokens), (4000, 8000, 200))

    def test_adding_and_removing_bandwidth_caps(self) -> None:
        """A new cap makes a full bucket; a removed cap leaves no bucket for new connections."""
        limiter = RuleLimiter(self.clock, RateLimit(bandwidth_in_bps=1000))
        limiter.update(RateLimit(bandwidth_out_bps=500))
        self.assertIsNone(limiter.bandwidth_in)
        assert limiter.bandwidth_out is not None
        self.assertEqual(limiter.bandwidth_out.tokens, 500)
        self.assertTrue(limiter.caps_bandwidth)
        limiter.update(None)
        self.assertFalse(limiter.caps_bandwidth)

    def test_udp_reasons(self) -> None:
        """A UDP rule's rate refusals read C{udp_flow_rate}."""
        limiter = RuleLimiter(self.clock, RateLimit(new_connections_per_sec=1), RULE_UDP_REASONS)
        limiter.admit()
        self.assertEqual(limiter.admit(), "udp_flow_rate")

    def test_throttles_only_when_capped(self) -> None:
        """C{throttle_in}/C{throttle_out} are None for an uncapped direction."""
        gate = PauseGate(RecordingProducer())
        limiter = RuleLimiter(self.clock, RateLimit(bandwidth_out_bps=100))
        self.assertIsNone(limiter.throttle_in(gate))
        self.assertIsInstance(limiter.throttle_out(gate), Throttle)

    def test_throttle_seconds_per_direction(self) -> None:
        """Time a throttle keeps its side paused is added to the right direction."""
        limiter = RuleLimiter(self.clock, RateLimit(bandwidth_in_bps=100, bandwidth_out_bps=100))
        gate = PauseGate(RecordingProducer())
        throttle = limiter.throttle_in(gate)
        assert throttle is not None
        throttle.consumed(250)
        self.clock.advance(10)
        self.assertAlmostEqual(limiter.stats.throttle_seconds_in, 1.5)
        self.assertEqual(limiter.stats.throttle_seconds_out, 0.0)
        self.assertEqual(limiter.stats.snapshot()["throttle_seconds_in"], 1.5)


class AdmissionChainTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()

    def chain(
        self, owner: RateLimit, rule: RateLimit
    ) -> tuple[RuleLimiter, RuleLimiter, AdmissionChain]:
        o = RuleLimiter(self.clock, owner, OWNER_TCP_REASONS)
        r = RuleLimiter(self.clock, rule)
        return o, r, AdmissionChain([o, r])

    def test_admitted_by_all_layers(self) -> None:
        """Admission takes a slot in every layer; release frees them all."""
        owner, rule, chain = self.chain(
            RateLimit(concurrent_connections=5), RateLimit(concurrent_connections=5)
        )
        self.assertIsNone(chain.admit())
        self.assertEqual((owner.stats.active, rule.stats.active), (1, 1))
        chain.release()
        self.assertEqual((owner.stats.active, rule.stats.active), (0, 0))

    def test_owner_checked_first(self) -> None:
        """An owner refusal is reported as such and never reaches the rule."""
        _owner, rule, chain = self.chain(
            RateLimit(concurrent_connections=1), RateLimit(new_connections_per_sec=1)
        )
        self.assertIsNone(chain.admit())
        self.assertEqual(chain.admit(), "owner_concurrent")
        self.assertEqual(rule.stats.rejects, {})
        self.assertEqual(rule.stats.active, 1)
        chain.release()
        self.clock.advance(1)
        self.assertIsNone(chain.admit())

    def test_rule_refusal_releases_owner_slot(self) -> None:
        """When the rule refuses, the owner's slot and accept token are given back."""
        owner, rule, chain = self.chain(
            RateLimit(concurrent_connections=2, new_connections_per_sec=2),
            RateLimit(concurrent_connections=1),
        )
        self.assertIsNone(chain.admit())
        self.assertEqual(chain.admit(), "conn_concurrent")
        self.assertEqual(owner.stats.active, 1)
        self.assertEqual(owner.stats.rejects, {})
        self.assertEqual(rule.stats.rejects, {"conn_concurrent": 1})
        # The owner's second accept token is still there for another rule.
        other = RuleLimiter(self.clock, None)
        self.assertIsNone(AdmissionChain([owner, other]).admit())

    def test_chains_nest(self) -> None:
        """A chain is itself an admitter and can be a layer of another chain."""
        owner, _rule, inner = self.chain(RateLimit(concurrent_connections=1), RateLimit())
        outer_limiter = RuleLimiter(self.clock, RateLimit(concurrent_connections=3))
        outer: Admitter = AdmissionChain([outer_limiter, inner])
        self.assertIsNone(outer.admit())
        self.assertEqual(outer.admit(), "owner_concurrent")
        self.assertEqual(outer_limiter.stats.active, 1)
        outer.release()
        self.assertEqual((outer_limiter.stats.active, owner.stats.active), (0, 0))


class PauseGateTests(SynchronousTestCase):
    def test_truth_table(self) -> None:
        """
        For every sequence of pauses and resumes by two reasons, the producer
        is paused exactly when some reason is held, with no redundant calls.
        """
        ops = [(kind, reason) for kind in ("pause", "resume") for reason in (BP, THROTTLE)]
        for length in range(1, 5):
            for sequence in itertools.product(ops, repeat=length):
                producer = RecordingProducer()
                gate = PauseGate(producer)
                held: set[PauseReason] = set()
                for kind, reason in sequence:
                    if kind == "pause":
                        gate.pause(reason)
                        held.add(reason)
                    else:
                        gate.resume(reason)
                        held.discard(reason)
                    self.assertEqual(producer.paused, bool(held), sequence)
                    self.assertEqual(gate.reasons, frozenset(held), sequence)
                for first, second in itertools.pairwise(producer.calls):
                    self.assertNotEqual(first, second, sequence)
                if producer.calls:
                    self.assertEqual(producer.calls[0], "pause", sequence)

    def test_throttle_resume_does_not_override_backpressure(self) -> None:
        """Back-pressure, then a throttle, then the throttle ends: still paused."""
        producer = RecordingProducer()
        gate = PauseGate(producer)
        gate.producer.pauseProducing()
        gate.pause(THROTTLE)
        gate.resume(THROTTLE)
        self.assertTrue(producer.paused)
        gate.producer.resumeProducing()
        self.assertFalse(producer.paused)
        self.assertEqual(producer.calls, ["pause", "resume"])

    def test_starts_paused_by_given_reasons(self) -> None:
        """C{paused_by} pauses the producer now, until each reason is dropped."""
        producer = RecordingProducer()
        gate = PauseGate(producer, paused_by=[PauseReason.RELAY])
        self.assertTrue(producer.paused)
        gate.producer.pauseProducing()
        gate.resume(PauseReason.RELAY)
        self.assertTrue(producer.paused)
        gate.producer.resumeProducing()
        self.assertFalse(producer.paused)

    def test_producer_adapter(self) -> None:
        """The adapter is an IPushProducer whose stop reaches the transport."""
        producer = RecordingProducer()
        gate = PauseGate(producer)
        verifyObject(IPushProducer, gate.producer)
        gate.producer.stopProducing()
        self.assertTrue(producer.stopped)


class ThrottleTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.bucket = TokenBucket(self.clock, rate=1000, burst=1000)
        self.producer = RecordingProducer()
        self.gate = PauseGate(self.producer)
        self.throttled: list[float] = []
        self.throttle = Throttle.for_gate(self.clock, self.bucket, self.gate, self.throttled.append)

    def test_within_budget_never_pauses(self) -> None:
        """Chunks that fit in the bucket pass without a pause or a timer."""
        self.throttle.consumed(600)
        self.throttle.consumed(400)
        self.assertEqual(self.producer.calls, [])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_pauses_until_deficit_repaid(self) -> None:
        """A deficit pauses at once and resumes exactly when it is repaid."""
        self.throttle.consumed(1500)
        self.assertTrue(self.producer.paused)
        self.assertTrue(self.throttle.throttled)
        self.clock.advance(0.499)
        self.assertTrue(self.producer.paused)
        self.clock.advance(0.001)
        self.assertFalse(self.producer.paused)
        self.assertFalse(self.throttle.throttled)
        self.assertEqual(len(self.throttled), 1)
        self.assertAlmostEqual(self.throttled[0], 0.5)

    def test_one_timer_per_direction(self) -> None:
        """More bytes while throttled add debt but never a second timer or pause."""
        self.throttle.consumed(1500)
        self.throttle.consumed(300)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.assertEqual(self.producer.calls, ["pause"])

    def test_bytes_read_while_paused_extend_the_pause(self) -> None:
        """Bytes that arrive while paused are paid for before resuming."""
        self.throttle.consumed(1500)
        self.throttle.consumed(300)
        self.clock.advance(0.5)
        self.assertTrue(self.producer.paused)
        self.clock.advance(0.3)
        self.assertFalse(self.producer.paused)
        self.assertAlmostEqual(self.throttled[0], 0.8)

    def test_lowered_rate_extends_the_pause(self) -> None:
        """A rate lowered mid-pause is honoured when the timer fires."""
        self.throttle.consumed(1500)
        self.clock.advance(0.25)
        self.bucket.update(rate=100, burst=1000)
        self.clock.advance(0.25)
        self.assertTrue(self.producer.paused)
        self.clock.advance(2.5)
        self.assertFalse(self.producer.paused)

    def test_accumulates_over_episodes(self) -> None:
        """Each pause reports its own duration."""
        self.throttle.consumed(1200)
        self.clock.advance(2)
        self.throttle.consumed(1100)
        self.clock.advance(1)
        self.assertEqual(len(self.throttled), 2)
        self.assertAlmostEqual(self.throttled[0], 0.2)
        self.assertAlmostEqual(self.throttled[1], 0.1)

    def test_never_resumes_while_backpressure_holds(self) -> None:
        """The throttle's resume leaves a back-pressure pause in place."""
        self.throttle.consumed(1500)
        self.gate.producer.pauseProducing()
        self.clock.advance(1)
        self.assertFalse(self.throttle.throttled)
        self.assertTrue(self.producer.paused)
        self.gate.producer.resumeProducing()
        self.assertFalse(self.producer.paused)
        self.assertEqual(self.producer.calls, ["pause", "resume"])

    def test_backpressure_release_does_not_end_throttle(self) -> None:
        """A drained peer buffer does not resume a side still in deficit."""
        self.gate.producer.pauseProducing()
        self.throttle.consumed(1500)
        self.gate.producer.resumeProducing()
        self.assertTrue(self.producer.paused)
        self.clock.advance(0.5)
        self.assertFalse(self.producer.paused)

    def test_stop_cancels_timer(self) -> None:
        """stop() cancels the timer, counts the time so far and never resumes."""
        self.throttle.consumed(2000)
        self.clock.advance(0.3)
        self.throttle.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertAlmostEqual(self.throttled[0], 0.3)
        self.clock.advance(10)
        self.assertTrue(self.producer.paused)
        self.throttle.consumed(10_000)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_plain_callables(self) -> None:
        """Without a gate, the throttle calls the given pause and resume."""
        calls: list[str] = []
        throttle = Throttle(
            self.clock,
            self.bucket,
            lambda: calls.append("pause"),
            lambda: calls.append("resume"),
            lambda s: calls.append(f"{s:.1f}"),
        )
        throttle.consumed(1100)
        self.clock.advance(0.1)
        self.assertEqual(calls, ["pause", "0.1", "resume"])

    def test_two_throttles_share_a_gate(self) -> None:
        """Throttles with distinct reasons on one gate each hold it."""
        owner_bucket = TokenBucket(self.clock, rate=100, burst=100)
        owner = Throttle.for_gate(
            self.clock, owner_bucket, self.gate, self.throttled.append, reason="owner"
        )
        self.throttle.consumed(1100)
        owner.consumed(1100)
        self.clock.advance(0.1)
        self.assertTrue(self.producer.paused)
        self.clock.advance(9.9)
        self.assertFalse(self.producer.paused)


class DatagramBudgetTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.budget = DatagramBudget(TokenBucket(self.clock, rate=1000, burst=1000))

    def test_drops_over_budget(self) -> None:
        """Datagrams past the budget are dropped and counted, then pass again."""
        self.assertTrue(self.budget.allow(600))
        self.assertTrue(self.budget.allow(400))
        self.assertFalse(self.budget.allow(100))
        self.assertFalse(self.budget.allow(50))
        self.assertEqual((self.budget.dropped, self.budget.dropped_bytes), (2, 150))
        self.clock.advance(0.1)
        self.assertTrue(self.budget.allow(100))

    def test_datagram_bigger_than_burst(self) -> None:
        """One datagram above the burst passes from a full bucket; its debt is repaid first."""
        self.assertTrue(self.budget.allow(1500))
        self.clock.advance(0.4)
        self.assertFalse(self.budget.allow(1))
        self.clock.advance(0.1)
        self.assertFalse(self.budget.allow(1500))
        self.clock.advance(1)
        self.assertTrue(self.budget.allow(1500))


# -- real sockets --------------------------------------------------------


class _Sink(Protocol):
    """Counts what arrives; C{done} fires with the count once closed."""

    def __init__(self, done: Deferred[int]) -> None:
        self.done = done
        self.received = 0

    def dataReceived(self, data: bytes) -> None:
        self.received += len(data)

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.done.callback(self.received)


class _TargetLeg(Protocol):
    def __init__(self, relay: _CappedRelay) -> None:
        self.relay = relay

    def connectionMade(self) -> None:
        self.relay.target_connected(self)


class _CappedRelay(Protocol):
    """
    A one-way relay capped by a L{Throttle}, wired the way the real relay
    is: the client transport behind a L{PauseGate}, whose producer adapter
    is registered with the target transport for back-pressure.
    """

    def __init__(self, limiter: RuleLimiter, target_port: int) -> None:
        self.limiter = limiter
        self.target_port = target_port
        self.target: Any = None
        self.gate: PauseGate | None = None
        self.throttle: Throttle | None = None

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.gate = PauseGate(self.transport, paused_by=[PauseReason.RELAY])  # type: ignore[arg-type]
        factory = ClientFactory.forProtocol(lambda: _TargetLeg(self))
        reactor.connectTCP(LOOPBACK, self.target_port, factory)

    def target_connected(self, leg: _TargetLeg) -> None:
        assert self.gate is not None
        self.target = leg.transport
        self.target.registerProducer(self.gate.producer, True)
        self.throttle = self.limiter.throttle_in(self.gate)
        self.gate.resume(PauseReason.RELAY)

    def dataReceived(self, data: bytes) -> None:
        assert self.throttle is not None
        self.target.write(data)
        self.throttle.consumed(len(data))

    def connectionLost(self, reason: Failure | None = None) -> None:
        assert self.throttle is not None
        self.throttle.stop()
        self.target.unregisterProducer()
        self.target.loseConnection()


class _Sender(Protocol):
    def __init__(self, payload: bytes) -> None:
        self.payload = payload

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(self.payload)
        self.transport.loseConnection()


class CappedRelayIntegrationTests(TestCase):
    timeout = 60

    def listen(self, factory: Factory) -> int:
        port = reactor.listenTCP(0, factory, interface=LOOPBACK)
        self.addCleanup(port.stopListening)
        return int(port.getHost().port)

    @inlineCallbacks
    def test_bandwidth_cap_paces_a_real_transfer(self) -> Any:
        """
        1 MiB through a relay capped at 256 KiB/s arrives whole and takes at
        least the time the cap allows beyond its burst.
        """
        rate = 256 * 1024
        total = 1024 * 1024
        done: Deferred[int] = Deferred()
        sink_port = self.listen(Factory.forProtocol(lambda: _Sink(done)))
        limiter = RuleLimiter(reactor, RateLimit(bandwidth_in_bps=rate))
        relay_port = self.listen(Factory.forProtocol(lambda: _CappedRelay(limiter, sink_port)))
        started = reactor.seconds()
        reactor.connectTCP(
            LOOPBACK, relay_port, ClientFactory.forProtocol(lambda: _Sender(b"x" * total))
        )

        received = yield done
        elapsed = reactor.seconds() - started

        self.assertEqual(received, total)
        # Bytes are paid for after they are read, so the last chunk (at most
        # one 64 KiB read) may go out on credit: that, and not a timing
        # margin, is why the bound allows it.
        self.assertGreaterEqual(elapsed, (total - rate - 64 * 1024) / rate)
        self.assertGreater(limiter.stats.throttle_seconds_in, 0)
