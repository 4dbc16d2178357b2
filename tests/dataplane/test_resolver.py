"""
DNS-name targets: the cache, single-flight, limits and failure mapping on a
fake resolver and a deterministic clock, then the real DNS client against a
twisted.names server on a loopback port.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from twisted.internet import error as internet_error
from twisted.internet import reactor as _reactor
from twisted.internet.defer import (
    Deferred,
    TimeoutError,
    fail,
    gatherResults,
    inlineCallbacks,
    succeed,
)
from twisted.internet.protocol import DatagramProtocol, Factory, Protocol, connectionDone
from twisted.internet.task import Clock
from twisted.names import common, dns, server
from twisted.names import error as names_error
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from portunus.dataplane.resolver import (
    ATTEMPT_TIMEOUT,
    FAILURE_REASONS,
    MAX_CONCURRENT_RESOLVES,
    REASON_ALL_ADDRS_UNREACHABLE,
    DnsFailure,
    Resolution,
    ResolverConfigError,
    ResolverSettings,
    TargetResolver,
    parse_nameserver,
    read_resolv_conf,
    resolver_settings_from_table,
)
from tests._net import LOOPBACK

reactor: Any = _reactor

Response = tuple[list[dns.RRHeader], list[dns.RRHeader], list[dns.RRHeader]]


def a_records(name: str, addresses: Iterable[str], ttl: int = 60) -> Response:
    """An answer section of A records."""
    answers = [
        dns.RRHeader(name, dns.A, dns.IN, ttl, dns.Record_A(address, ttl)) for address in addresses
    ]
    return answers, [], []


def aaaa_records(name: str, addresses: Iterable[str], ttl: int = 60) -> Response:
    """An answer section of AAAA records."""
    answers = [
        dns.RRHeader(name, dns.AAAA, dns.IN, ttl, dns.Record_AAAA(address, ttl))
        for address in addresses
    ]
    return answers, [], []


NODATA: Response = ([], [], [])


class FakeDns(common.ResolverBase):
    """
    An IResolver whose queries wait until the test answers them, recording
    each as (name, "A" | "AAAA").
    """

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, str]] = []
        self.pending: list[tuple[str, str, Deferred[Response]]] = []

    def _lookup(self, name: bytes, cls: int, type: int, timeout: Any) -> Deferred[Response]:
        kind = dns.QUERY_TYPES[type]
        d: Deferred[Response] = Deferred()
        self.calls.append((name.decode(), kind))
        self.pending.append((name.decode(), kind, d))
        return d

    def _take(self, name: str | None, kind: str | None) -> Deferred[Response]:
        for i, (n, k, d) in enumerate(self.pending):
            if (name is None or n == name) and (kind is None or k == kind):
                del self.pending[i]
                return d
        raise AssertionError(f"no pending query for {name} {kind}: {self.pending}")

    def answer(self, response: Response, name: str | None = None, kind: str | None = None) -> None:
        self._take(name, kind).callback(response)

    def fail(self, error: BaseException, name: str | None = None, kind: str | None = None) -> None:
        self._take(name, kind).errback(Failure(error))


class ResolverTestCase(SynchronousTestCase):
    """A TargetResolver on a fake resolver and a Clock."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.dns = FakeDns()
        self.resolver = self.make()

    def make(self, **settings: Any) -> TargetResolver:
        return TargetResolver(self.clock, ResolverSettings(**settings), self.dns)

    def resolved(self, d: Deferred[Resolution]) -> Resolution:
        result = self.successResultOf(d)
        assert isinstance(result, Resolution)
        return result

    def failed(self, d: Deferred[Resolution]) -> DnsFailure:
        error = self.failureResultOf(d, DnsFailure).value
        assert isinstance(error, DnsFailure)
        return error

    def cached_for(self, name: str, ttl: int) -> None:
        """Resolve C{name} to 192.0.2.1 with C{ttl}."""
        d = self.resolver.resolve(name)
        self.dns.answer(a_records(name, ["192.0.2.1"], ttl), name)
        self.resolved(d)


class LiteralTests(ResolverTestCase):
    def test_ip_literals_bypass_dns(self) -> None:
        """IPv4 and IPv6 literals come back as they are without a query."""
        for host in ("192.0.2.7", "2001:db8::7", "::1"):
            result = self.resolved(self.resolver.resolve(host, prefer_ipv6=True))
            self.assertEqual(result, Resolution((host,)))
        self.assertEqual(self.dns.calls, [])
        stats = self.resolver.stats()
        self.assertEqual((stats.hits, stats.misses), (0, 0))

    def test_empty_name_fails(self) -> None:
        """A name that is only a dot is refused without a query."""
        self.assertEqual(self.failed(self.resolver.resolve(".")).reason, "other")
        self.assertEqual(self.dns.calls, [])


class AnswerTests(ResolverTestCase):
    def test_addresses_in_answer_order(self) -> None:
        """Every A record is returned in answer order, duplicates removed."""
        d = self.resolver.resolve("web.test")
        self.assertNoResult(d)
        self.dns.answer(a_records("web.test", ["192.0.2.3", "192.0.2.1", "192.0.2.3"]))
        result = self.resolved(d)
        self.assertEqual(result.addresses, ("192.0.2.3", "192.0.2.1"))
        self.assertFalse(result.stale)
        self.assertFalse(result.from_cache)
        self.assertEqual(result.ttl, 60)

    def test_second_lookup_from_cache(self) -> None:
        """A fresh answer is served from the cache without another query."""
        self.cached_for("web.test", 60)
        self.clock.advance(20)
        result = self.resolved(self.resolver.resolve("web.test"))
        self.assertEqual(result, Resolution(("192.0.2.1",), from_cache=True, ttl=40))
        self.assertEqual(len(self.dns.calls), 1)
        stats = self.resolver.stats()
        self.assertEqual((stats.hits, stats.misses, stats.cache_size), (1, 1, 1))

    def test_name_is_case_and_dot_insensitive(self) -> None:
        """Web.TEST. and web.test are one name: one query, one cache entry."""
        first = self.resolver.resolve("Web.TEST.")
        second = self.resolver.resolve("web.test")
        self.assertEqual(self.dns.calls, [("web.test", "A")])
        self.dns.answer(a_records("web.test", ["192.0.2.1"]))
        self.assertEqual(self.resolved(first).addresses, self.resolved(second).addresses)

    def test_cname_ttl_counts(self) -> None:
        """The TTL is the smallest of the CNAME chain and the addresses."""
        d = self.resolver.resolve("alias.test")
        cname = dns.RRHeader("alias.test", dns.CNAME, dns.IN, 20, dns.Record_CNAME("web.test"))
        answers, _, _ = a_records("web.test", ["192.0.2.1"], ttl=200)
        self.dns.answer(([cname, *answers], [], []))
        self.assertEqual(self.resolved(d).ttl, 20)
        self.clock.advance(20)
        self.resolver.resolve("alias.test")
        self.assertEqual(len(self.dns.calls), 2)


class TtlTests(ResolverTestCase):
    def test_short_ttl_clamped_to_five_seconds(self) -> None:
        """A 1 s TTL is cached for 5 s: no query at 4.9 s, a new one at 5 s."""
        self.cached_for("short.test", 1)
        self.clock.advance(4.9)
        self.assertTrue(self.resolved(self.resolver.resolve("short.test")).from_cache)
        self.assertEqual(len(self.dns.calls), 1)
        self.clock.advance(0.1)
        self.assertNoResult(self.resolver.resolve("short.test"))
        self.assertEqual(len(self.dns.calls), 2)

    def test_zero_ttl_clamped(self) -> None:
        """A 0 s TTL is still cached for 5 s."""
        self.cached_for("zero.test", 0)
        self.clock.advance(4)
        self.assertTrue(self.resolved(self.resolver.resolve("zero.test")).from_cache)

    def test_long_ttl_clamped_to_five_minutes(self) -> None:
        """A one-day TTL is cached for 300 s only."""
        d = self.resolver.resolve("long.test")
        self.dns.answer(a_records("long.test", ["192.0.2.1"], ttl=86400))
        self.assertEqual(self.resolved(d).ttl, 300)
        self.clock.advance(299.9)
        self.assertTrue(self.resolved(self.resolver.resolve("long.test")).from_cache)
        self.clock.advance(0.1)
        self.assertNoResult(self.resolver.resolve("long.test"))
        self.assertEqual(len(self.dns.calls), 2)

    def test_ttl_within_bounds_is_kept(self) -> None:
        """A 60 s TTL expires at 60 s exactly."""
        self.cached_for("web.test", 60)
        self.clock.advance(59.9)
        self.resolved(self.resolver.resolve("web.test"))
        self.clock.advance(0.1)
        self.resolver.resolve("web.test")
        self.assertEqual(len(self.dns.calls), 2)


class StaleTests(ResolverTestCase):
    def setUp(self) -> None:
        super().setUp()
        # One query per lookup: a SERVFAIL would otherwise go on to AAAA.
        self.resolver = self.make(ip_lookup_strategy="ipv4_only")

    def expire(self) -> None:
        self.cached_for("web.test", 10)
        self.clock.advance(10)

    def test_failed_refresh_serves_stale(self) -> None:
        """An expired entry whose refresh fails is served, flagged stale."""
        self.expire()
        d = self.resolver.resolve("web.test")
        self.dns.fail(names_error.DNSServerError("boom"))
        result = self.resolved(d)
        self.assertEqual(
            result,
            Resolution(("192.0.2.1",), stale=True, from_cache=True, stale_reason="servfail"),
        )
        self.assertEqual(self.resolver.stats().stale_served, 1)

    def test_retry_gap_between_refreshes(self) -> None:
        """Within the grace, a refresh is tried at most every 3 s."""
        self.expire()
        d = self.resolver.resolve("web.test")
        self.dns.fail(names_error.DNSServerError("boom"))
        self.resolved(d)
        self.clock.advance(2.9)
        self.assertTrue(self.resolved(self.resolver.resolve("web.test")).stale)
        self.assertEqual(len(self.dns.calls), 2)
        self.clock.advance(0.1)
        d = self.resolver.resolve("web.test")
        self.assertEqual(len(self.dns.calls), 3)
        self.dns.fail(TimeoutError())
        self.assertEqual(self.resolved(d).stale_reason, "attempt_timeout")

    def test_grace_ends_after_thirty_seconds(self) -> None:
        """Thirty seconds after the first failed refresh, failures reach the caller."""
        self.expire()
        d = self.resolver.resolve("web.test")
        self.dns.fail(names_error.DNSServerError("boom"))
        self.assertTrue(self.resolved(d).stale)
        for _ in range(9):
            self.clock.advance(3)
            d = self.resolver.resolve("web.test")
            self.dns.fail(names_error.DNSServerError("boom"))
            self.assertTrue(self.resolved(d).stale)
        self.clock.advance(2.9)
        self.assertTrue(self.resolved(self.resolver.resolve("web.test")).stale)
        self.clock.advance(0.1)
        d = self.resolver.resolve("web.test")
        self.dns.fail(names_error.DNSServerError("boom"))
        self.assertEqual(self.failed(d).reason, "servfail")
        self.assertEqual(self.resolver.stats().cache_size, 0)

    def test_grace_ends_even_when_refresh_in_flight(self) -> None:
        """A refresh that fails after the grace ended fails its callers."""
        self.expire()
        d = self.resolver.resolve("web.test")
        self.dns.fail(names_error.DNSServerError("boom"))
        self.clock.advance(29)
        d = self.resolver.resolve("web.test")
        self.clock.advance(2)
        self.dns.fail(names_error.DNSNameError("gone"))
        self.assertEqual(self.failed(d).reason, "nxdomain")

    def test_success_ends_grace(self) -> None:
        """A successful refresh replaces the stale answer and resets the grace."""
        self.expire()
        d = self.resolver.resolve("web.test")
        self.dns.fail(names_error.DNSServerError("boom"))
        self.clock.advance(3)
        d = self.resolver.resolve("web.test")
        self.dns.answer(a_records("web.test", ["192.0.2.9"], ttl=10))
        self.assertEqual(self.resolved(d), Resolution(("192.0.2.9",), ttl=10))
        self.clock.advance(10)
        d = self.resolver.resolve("web.test")
        self.dns.fail(names_error.DNSServerError("boom"))
        self.assertEqual(self.resolved(d).addresses, ("192.0.2.9",))
        self.clock.advance(29)
        d = self.resolver.resolve("web.test")
        self.dns.fail(names_error.DNSServerError("boom"))
        self.assertTrue(self.resolved(d).stale)

    def test_failures_are_not_cached(self) -> None:
        """A name that failed is asked again by the next connection."""
        d = self.resolver.resolve("gone.test")
        self.dns.fail(names_error.DNSNameError("gone"))
        self.failed(d)
        self.resolver.resolve("gone.test")
        self.assertEqual(len(self.dns.calls), 2)
        self.assertEqual(self.resolver.stats().failures, 1)


class SingleFlightTests(ResolverTestCase):
    def test_hundred_concurrent_lookups_one_query(self) -> None:
        """100 concurrent first lookups of one name send one query."""
        waiting = [self.resolver.resolve("web.test") for _ in range(100)]
        self.assertEqual(self.dns.calls, [("web.test", "A")])
        self.assertEqual(self.resolver.stats().in_flight, 1)
        self.dns.answer(a_records("web.test", ["192.0.2.1"]))
        for d in waiting:
            self.assertEqual(self.resolved(d).addresses, ("192.0.2.1",))
        stats = self.resolver.stats()
        self.assertEqual((stats.misses, stats.coalesced, stats.in_flight), (1, 99, 0))

    def test_concurrent_failure_reaches_everyone(self) -> None:
        """Every caller waiting on a failed lookup gets the failure."""
        waiting = [self.resolver.resolve("gone.test") for _ in range(3)]
        self.dns.fail(names_error.DNSNameError("gone"))
        self.assertEqual([self.failed(d).reason for d in waiting], ["nxdomain"] * 3)

    def test_cancel_one_waiter(self) -> None:
        """Cancelling one caller's wait leaves the others and the query alone."""
        first = self.resolver.resolve("web.test")
        second = self.resolver.resolve("web.test")
        first.cancel()
        self.failureResultOf(first)
        self.dns.answer(a_records("web.test", ["192.0.2.1"]))
        self.assertEqual(self.resolved(second).addresses, ("192.0.2.1",))
        self.assertTrue(self.resolved(self.resolver.resolve("web.test")).from_cache)

    def test_refresh_is_single_flight(self) -> None:
        """Callers of an expired name share one refresh."""
        self.cached_for("web.test", 10)
        self.clock.advance(10)
        waiting = [self.resolver.resolve("web.test") for _ in range(5)]
        self.assertEqual(len(self.dns.calls), 2)
        self.dns.answer(a_records("web.test", ["192.0.2.2"]))
        self.assertEqual({self.resolved(d).addresses for d in waiting}, {("192.0.2.2",)})

    def test_stale_answer_reaches_every_waiter(self) -> None:
        """Every caller sharing a failed refresh gets the stale answer, and is counted."""
        resolver = self.make(ip_lookup_strategy="ipv4_only")
        d = resolver.resolve("web.test")
        self.dns.answer(a_records("web.test", ["192.0.2.1"], ttl=10))
        self.resolved(d)
        self.clock.advance(10)
        waiting = [resolver.resolve("web.test") for _ in range(4)]
        self.dns.fail(names_error.DNSServerError("boom"))
        self.assertEqual([self.resolved(d).stale for d in waiting], [True] * 4)
        self.assertEqual(resolver.stats().stale_served, 4)


class OverloadTests(ResolverTestCase):
    def fill(self) -> None:
        for i in range(MAX_CONCURRENT_RESOLVES):
            self.resolver.resolve(f"n{i}.test")

    def test_sixty_fifth_distinct_lookup_fails_fast(self) -> None:
        """With 64 distinct lookups in flight, a 65th fails at once."""
        self.fill()
        self.assertEqual(self.resolver.stats().in_flight, 64)
        error = self.failed(self.resolver.resolve("n64.test"))
        self.assertEqual(error.reason, "resolver_overloaded")
        self.assertEqual(len(self.dns.calls), 64)
        self.assertEqual(self.resolver.stats().overloaded, 1)

    def test_joining_a_lookup_in_flight_is_not_limited(self) -> None:
        """A name already in flight can still be waited on at the limit."""
        self.fill()
        d = self.resolver.resolve("n3.test")
        self.dns.answer(a_records("n3.test", ["192.0.2.3"]), "n3.test")
        self.assertEqual(self.resolved(d).addresses, ("192.0.2.3",))

    def test_room_again_after_a_lookup_ends(self) -> None:
        """Once a lookup ends, a new distinct one may start."""
        self.fill()
        self.dns.answer(a_records("n0.test", ["192.0.2.1"]), "n0.test")
        self.assertNoResult(self.resolver.resolve("n64.test"))
        self.assertEqual(self.dns.calls[-1], ("n64.test", "A"))

    def test_overload_serves_stale(self) -> None:
        """An expired entry that cannot be refreshed for overload is served stale."""
        self.cached_for("web.test", 10)
        self.clock.advance(10)
        self.fill()
        result = self.resolved(self.resolver.resolve("web.test"))
        self.assertEqual(result.stale_reason, "resolver_overloaded")
        self.assertTrue(result.stale)


class EvictionTests(ResolverTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.resolver = self.make(cache_entries=3, ip_lookup_strategy="ipv4_only")

    def is_cached(self, name: str) -> bool:
        calls = len(self.dns.calls)
        d = self.resolver.resolve(name)
        if len(self.dns.calls) == calls:
            return True
        self.dns.answer(a_records(name, ["192.0.2.1"]), name)
        self.resolved(d)
        return False

    def test_closest_to_expiry_evicted(self) -> None:
        """A full cache evicts the entry that expires first."""
        self.cached_for("a.test", 100)
        self.cached_for("b.test", 10)
        self.cached_for("c.test", 50)
        self.cached_for("d.test", 200)
        self.assertEqual(self.resolver.stats().cache_size, 3)
        self.assertEqual(self.resolver.stats().evictions, 1)
        self.assertFalse(self.is_cached("b.test"))

    def test_expired_evicted_first(self) -> None:
        """An expired entry goes before any fresh one."""
        self.cached_for("a.test", 10)
        self.clock.advance(5)
        self.cached_for("b.test", 200)
        self.cached_for("c.test", 7)
        self.clock.advance(6)
        self.cached_for("d.test", 200)
        self.assertTrue(self.is_cached("c.test"))
        self.assertTrue(self.is_cached("b.test"))
        self.assertFalse(self.is_cached("a.test"))

    def test_pending_never_evicted(self) -> None:
        """An entry being refreshed stays, even when it expires first."""
        self.cached_for("a.test", 5)
        self.cached_for("b.test", 100)
        self.cached_for("c.test", 200)
        self.clock.advance(5)
        refresh = self.resolver.resolve("a.test")
        self.cached_for("d.test", 300)
        self.dns.fail(names_error.DNSServerError("boom"), "a.test")
        self.assertEqual(self.resolved(refresh).addresses, ("192.0.2.1",))
        self.assertFalse(self.is_cached("b.test"))

    def test_all_pending_leaves_answer_uncached(self) -> None:
        """When every entry is being refreshed, a new answer is served uncached."""
        resolver = self.make(cache_entries=1)
        d = resolver.resolve("a.test")
        self.dns.answer(a_records("a.test", ["192.0.2.1"], ttl=5))
        self.resolved(d)
        self.clock.advance(5)
        resolver.resolve("a.test")
        d = resolver.resolve("b.test")
        self.dns.answer(a_records("b.test", ["192.0.2.2"]), "b.test")
        self.assertEqual(self.resolved(d).addresses, ("192.0.2.2",))
        self.assertEqual(resolver.stats().cache_size, 1)
        self.assertEqual(resolver.stats().evictions, 0)

    def test_churn_keeps_heap_bounded(self) -> None:
        """Refreshing one name many times does not grow the eviction index."""
        for _ in range(500):
            self.cached_for("a.test", 5)
            self.clock.advance(5)
        self.assertLessEqual(len(self.resolver._heap), 2 * 1 + 64 + 1)


class FamilyTests(ResolverTestCase):
    def test_ipv4_first_by_default(self) -> None:
        """By default only A is asked when it has addresses."""
        d = self.resolver.resolve("dual.test")
        self.dns.answer(a_records("dual.test", ["192.0.2.1"]))
        self.assertEqual(self.resolved(d).addresses, ("192.0.2.1",))
        self.assertEqual(self.dns.calls, [("dual.test", "A")])

    def test_ipv4_first_falls_back_to_aaaa(self) -> None:
        """A name with no A record is asked for AAAA next."""
        d = self.resolver.resolve("v6.test")
        self.dns.answer(NODATA)
        self.dns.answer(aaaa_records("v6.test", ["2001:db8::1", "2001:db8::2"]))
        self.assertEqual(self.resolved(d).addresses, ("2001:db8::1", "2001:db8::2"))
        self.assertEqual(self.dns.calls, [("v6.test", "A"), ("v6.test", "AAAA")])

    def test_prefer_ipv6_asks_aaaa_first(self) -> None:
        """prefer_ipv6 asks AAAA first and uses it when present."""
        d = self.resolver.resolve("dual.test", prefer_ipv6=True)
        self.dns.answer(aaaa_records("dual.test", ["2001:db8::1"]))
        self.assertEqual(self.resolved(d).addresses, ("2001:db8::1",))
        self.assertEqual(self.dns.calls, [("dual.test", "AAAA")])

    def test_prefer_ipv6_falls_back_to_a(self) -> None:
        """prefer_ipv6 falls back to A when there is no AAAA."""
        d = self.resolver.resolve("v4.test", prefer_ipv6=True)
        self.dns.answer(NODATA)
        self.dns.answer(a_records("v4.test", ["192.0.2.1"]))
        self.assertEqual(self.resolved(d).addresses, ("192.0.2.1",))
        self.assertEqual(self.dns.calls, [("v4.test", "AAAA"), ("v4.test", "A")])

    def test_servfail_on_first_family_tries_the_other(self) -> None:
        """A SERVFAIL for A does not hide a working AAAA answer."""
        d = self.resolver.resolve("half.test")
        self.dns.fail(names_error.DNSServerError("boom"))
        self.dns.answer(aaaa_records("half.test", ["2001:db8::1"]))
        self.assertEqual(self.resolved(d).addresses, ("2001:db8::1",))

    def test_both_families_fail_reports_first_error(self) -> None:
        """When both families fail, the first family's reason is reported."""
        d = self.resolver.resolve("half.test")
        self.dns.fail(names_error.DNSServerError("boom"))
        self.dns.fail(names_error.DNSQueryRefusedError("no"))
        self.assertEqual(self.failed(d).reason, "servfail")

    def test_no_address_at_all_is_nxdomain(self) -> None:
        """A name with neither A nor AAAA fails as nxdomain."""
        d = self.resolver.resolve("empty.test")
        self.dns.answer(NODATA)
        self.dns.answer(NODATA)
        error = self.failed(d)
        self.assertEqual(error.reason, "nxdomain")
        self.assertIn("IPv4 or IPv6", error.detail)

    def test_ipv4_only(self) -> None:
        """ipv4_only never asks AAAA, even with prefer_ipv6."""
        resolver = self.make(ip_lookup_strategy="ipv4_only")
        d = resolver.resolve("v6.test", prefer_ipv6=True)
        self.dns.answer(NODATA)
        self.assertEqual(self.failed(d).reason, "nxdomain")
        self.assertEqual(self.dns.calls, [("v6.test", "A")])

    def test_ipv6_only(self) -> None:
        """ipv6_only asks only AAAA."""
        resolver = self.make(ip_lookup_strategy="ipv6_only")
        d = resolver.resolve("v6.test")
        self.dns.answer(aaaa_records("v6.test", ["2001:db8::1"]))
        self.assertEqual(self.resolved(d).addresses, ("2001:db8::1",))
        self.assertEqual(self.dns.calls, [("v6.test", "AAAA")])

    def test_ipv6_then_ipv4_setting(self) -> None:
        """ipv6_then_ipv4 asks AAAA first without prefer_ipv6."""
        resolver = self.make(ip_lookup_strategy="ipv6_then_ipv4")
        resolver.resolve("dual.test")
        self.assertEqual(self.dns.calls, [("dual.test", "AAAA")])

    def test_strategies_cached_apart(self) -> None:
        """The same name with and without prefer_ipv6 is two cache entries."""
        self.cached_for("dual.test", 60)
        d = self.resolver.resolve("dual.test", prefer_ipv6=True)
        self.assertEqual(self.dns.calls[-1], ("dual.test", "AAAA"))
        self.dns.answer(aaaa_records("dual.test", ["2001:db8::1"]))
        self.assertEqual(self.resolved(d).addresses, ("2001:db8::1",))
        self.assertTrue(self.resolved(self.resolver.resolve("dual.test")).from_cache)
        self.assertEqual(self.resolver.stats().cache_size, 2)


class FailureMappingTests(ResolverTestCase):
    def reason_for(self, error: BaseException) -> str:
        resolver = self.make(ip_lookup_strategy="ipv4_only")
        d = resolver.resolve("x.test")
        self.dns.fail(error)
        return self.failed(d).reason

    def test_reasons(self) -> None:
        """Each resolver error maps to its Portunus reason."""
        cases: list[tuple[BaseException, str]] = [
            (names_error.DNSNameError("x"), "nxdomain"),
            (names_error.AuthoritativeDomainError("x"), "nxdomain"),
            (names_error.DomainError("x"), "nxdomain"),
            (names_error.DNSServerError("x"), "servfail"),
            (TimeoutError(), "attempt_timeout"),
            (names_error.DNSQueryTimeoutError(1), "attempt_timeout"),
            (internet_error.TimeoutError(), "attempt_timeout"),
            (names_error.DNSQueryRefusedError("x"), "other"),
            (names_error.DNSFormatError("x"), "other"),
            (internet_error.ConnectionRefusedError(), "other"),
            (OSError("No domain name servers available"), "other"),
        ]
        for error, reason in cases:
            self.assertEqual(self.reason_for(error), reason, error)

    def test_reason_constants(self) -> None:
        """Every reason the resolver reports is a documented one."""
        self.assertEqual(REASON_ALL_ADDRS_UNREACHABLE, "all_addrs_unreachable")
        self.assertEqual(
            set(FAILURE_REASONS),
            {
                "nxdomain",
                "servfail",
                "attempt_timeout",
                "all_addrs_unreachable",
                "resolver_overloaded",
                "other",
            },
        )

    def test_nxdomain_stops_family_fallback(self) -> None:
        """A name that does not exist is not asked for the other family."""
        d = self.resolver.resolve("gone.test")
        self.dns.fail(names_error.DNSNameError("gone"))
        self.assertEqual(self.failed(d).reason, "nxdomain")
        self.assertEqual(self.dns.calls, [("gone.test", "A")])

    def test_resolver_raising_synchronously(self) -> None:
        """A resolver that raises instead of failing its Deferred maps to other."""

        class Raising(FakeDns):
            def lookupAddress(self, name: str, timeout: Any = None) -> Deferred[Response]:
                raise ValueError("bad name")

        resolver = TargetResolver(
            self.clock, ResolverSettings(ip_lookup_strategy="ipv4_only"), Raising()
        )
        error = self.failed(resolver.resolve("x.test"))
        self.assertEqual(error.reason, "other")
        self.assertIn("bad name", str(error))


class AttemptTimeoutTests(ResolverTestCase):
    def test_attempt_times_out_after_three_seconds(self) -> None:
        """An unanswered query fails with attempt_timeout at 3 s, not before."""
        d = self.resolver.resolve("slow.test")
        self.clock.advance(ATTEMPT_TIMEOUT - 0.1)
        self.assertNoResult(d)
        self.clock.advance(0.1)
        self.assertEqual(self.failed(d).reason, "attempt_timeout")
        self.assertEqual(self.dns.calls, [("slow.test", "A")])
        self.assertEqual(self.resolver.stats().in_flight, 0)

    def test_late_answer_is_ignored(self) -> None:
        """An answer after the timeout is dropped quietly and not cached."""
        d = self.resolver.resolve("slow.test")
        self.clock.advance(ATTEMPT_TIMEOUT)
        self.failed(d)
        self.dns.answer(a_records("slow.test", ["192.0.2.1"]))
        self.assertEqual(self.resolver.stats().cache_size, 0)

    def test_late_failure_is_swallowed(self) -> None:
        """A failure after the timeout is not left unhandled."""
        d = self.resolver.resolve("slow.test")
        self.clock.advance(ATTEMPT_TIMEOUT)
        self.failed(d)
        self.dns.fail(names_error.DNSServerError("late"))
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_each_family_gets_its_own_attempt(self) -> None:
        """The fallback family gets a full 3 s of its own."""
        d = self.resolver.resolve("v6.test")
        self.clock.advance(2)
        self.dns.answer(NODATA)
        self.clock.advance(2.9)
        self.assertNoResult(d)
        self.clock.advance(0.1)
        self.assertEqual(self.failed(d).reason, "attempt_timeout")


class SettingsTests(SynchronousTestCase):
    def test_defaults(self) -> None:
        """An empty [resolver] table gives the documented defaults."""
        settings, issues = resolver_settings_from_table({})
        self.assertEqual(issues, [])
        self.assertEqual(settings, ResolverSettings())
        self.assertEqual(settings.cache_entries, 8192)
        self.assertFalse(settings.query_over_tcp_only)
        self.assertEqual(settings.ip_lookup_strategy, "ipv4_then_ipv6")
        self.assertTrue(settings.tcp_fallback)
        self.assertIsNone(settings.nameservers)

    def test_every_key(self) -> None:
        """Every knob is read from the table."""
        settings, issues = resolver_settings_from_table(
            {
                "cache_entries": 100,
                "query_over_tcp_only": True,
                "ip_lookup_strategy": "IPv6_only",
                "tcp_fallback": False,
                "nameservers": ["192.0.2.53", "192.0.2.54:5353", "[2001:db8::53]:53", "::1"],
            }
        )
        self.assertEqual(issues, [])
        self.assertEqual(
            settings,
            ResolverSettings(
                cache_entries=100,
                query_over_tcp_only=True,
                ip_lookup_strategy="ipv6_only",
                tcp_fallback=False,
                nameservers=("192.0.2.53", "192.0.2.54:5353", "[2001:db8::53]:53", "::1"),
            ),
        )
        self.assertEqual(
            settings.nameserver_addresses(),
            [("192.0.2.53", 53), ("192.0.2.54", 5353), ("2001:db8::53", 53), ("::1", 53)],
        )

    def issues(self, table: Mapping[str, object]) -> dict[str, str]:
        settings, issues = resolver_settings_from_table(table)
        self.assertEqual(settings, ResolverSettings())
        return dict(issues)

    def test_unknown_key(self) -> None:
        """An unknown key is an issue that suggests the close one."""
        issues = self.issues({"cache_entry": 5})
        self.assertIn("did you mean 'cache_entries'?", issues["resolver.cache_entry"])

    def test_wrong_types(self) -> None:
        """Bools are not ints, strings are not bools, ints are not strategies."""
        issues = self.issues(
            {
                "cache_entries": True,
                "query_over_tcp_only": "true",
                "tcp_fallback": 1,
                "ip_lookup_strategy": 4,
                "nameservers": "192.0.2.53",
            }
        )
        self.assertIn("must be an integer, not a boolean", issues["resolver.cache_entries"])
        self.assertIn("write query_over_tcp_only = true", issues["resolver.query_over_tcp_only"])
        self.assertIn("must be a boolean, not an integer", issues["resolver.tcp_fallback"])
        self.assertIn('"ipv4_then_ipv6"', issues["resolver.ip_lookup_strategy"])
        self.assertIn("must be an array of strings", issues["resolver.nameservers"])

    def test_bad_values(self) -> None:
        """Out-of-range sizes, unknown strategies and empty lists are issues."""
        for size in (0, 1_000_001):
            issues = self.issues({"cache_entries": size})
            self.assertIn("use a value from 1 to 1000000", issues["resolver.cache_entries"])
        issues = self.issues({"ip_lookup_strategy": "ipv4_first", "nameservers": []})
        self.assertIn("'ipv4_first' is not allowed", issues["resolver.ip_lookup_strategy"])
        self.assertIn("/etc/resolv.conf", issues["resolver.nameservers"])

    def test_bad_nameservers(self) -> None:
        """Each bad nameserver is reported at its index."""
        issues = self.issues(
            {"nameservers": ["dns.example", 53, "192.0.2.53:0", "192.0.2.53", "192.0.2.53:53"]}
        )
        self.assertIn("not an IP address", issues["resolver.nameservers[0]"])
        self.assertIn("must be a string", issues["resolver.nameservers[1]"])
        self.assertIn("1 to 65535", issues["resolver.nameservers[2]"])
        self.assertIn("listed twice", issues["resolver.nameservers[4]"])
        self.assertNotIn("resolver.nameservers[3]", issues)

    def test_parse_nameserver(self) -> None:
        """Nameservers are IP addresses with an optional port, IPv6 in brackets."""
        self.assertEqual(parse_nameserver(" 192.0.2.1 "), ("192.0.2.1", 53))
        self.assertEqual(parse_nameserver("192.0.2.1:5353"), ("192.0.2.1", 5353))
        self.assertEqual(parse_nameserver("2001:db8::1"), ("2001:db8::1", 53))
        self.assertEqual(parse_nameserver("[2001:db8::1]"), ("2001:db8::1", 53))
        self.assertEqual(parse_nameserver("[::1]:5300"), ("::1", 5300))
        for bad in ("[192.0.2.1]:53", "dns.example:53", "[::1]53", "192.0.2.1:x", ""):
            self.assertRaises(ValueError, parse_nameserver, bad)

    def test_settings_validate(self) -> None:
        """ResolverSettings refuses values the table parser would refuse."""
        self.assertRaises(ValueError, ResolverSettings, cache_entries=0)
        self.assertRaises(ValueError, ResolverSettings, ip_lookup_strategy="both")
        self.assertRaises(ValueError, ResolverSettings, nameservers=[])
        self.assertRaises(ValueError, ResolverSettings, nameservers=["dns.example"])
        self.assertEqual(ResolverSettings(nameservers=["::1"]).nameservers, ("::1",))

    def test_prefer_ipv6_flips_only_the_default(self) -> None:
        """prefer_ipv6 turns ipv4_then_ipv6 around and leaves the rest alone."""
        for strategy, preferred in [
            ("ipv4_then_ipv6", "ipv6_then_ipv4"),
            ("ipv6_then_ipv4", "ipv6_then_ipv4"),
            ("ipv4_only", "ipv4_only"),
            ("ipv6_only", "ipv6_only"),
        ]:
            settings = ResolverSettings(ip_lookup_strategy=strategy)
            self.assertEqual(settings.strategy_for(False), strategy)
            self.assertEqual(settings.strategy_for(True), preferred)


class ResolvConfTests(SynchronousTestCase):
    def write(self, text: str) -> str:
        fd, path = tempfile.mkstemp(suffix=".conf")
        with os.fdopen(fd, "w") as f:
            f.write(text)
        self.addCleanup(os.remove, path)
        return path

    def test_nameservers_in_order(self) -> None:
        """Nameserver lines are read in order; comments and options are skipped."""
        path = self.write(
            "# generated\nsearch example.com\nnameserver 192.0.2.53\n"
            "options ndots:2\nnameserver 2001:db8::53\n; nameserver 192.0.2.99\n"
        )
        self.assertEqual(read_resolv_conf(path), [("192.0.2.53", 53), ("2001:db8::53", 53)])

    def test_empty_file_names_the_file(self) -> None:
        """A resolv.conf without nameservers is an error naming the file."""
        path = self.write("search example.com\n")
        error = self.assertRaises(ResolverConfigError, read_resolv_conf, path)
        self.assertIn(path, str(error))
        self.assertIn("nameservers", str(error))

    def test_missing_file_names_the_file(self) -> None:
        """A missing resolv.conf is an error naming the file."""
        path = self.mktemp()
        error = self.assertRaises(ResolverConfigError, read_resolv_conf, path)
        self.assertIn(path, str(error))

    def test_resolver_refuses_to_start_without_nameservers(self) -> None:
        """Building the default DNS client with an empty resolv.conf fails at once."""
        path = self.write("")
        error = self.assertRaises(
            ResolverConfigError, TargetResolver, Clock(), ResolverSettings(), resolv_conf=path
        )
        self.assertIn(path, str(error))

    def test_configured_nameservers_skip_resolv_conf(self) -> None:
        """Configured nameservers make resolv.conf irrelevant."""
        resolver = TargetResolver(
            Clock(),
            ResolverSettings(nameservers=["192.0.2.53"]),
            resolv_conf="/nonexistent/resolv.conf",
        )
        self.assertEqual(self.successResultOf(resolver.close()), None)


# -- a real DNS server on loopback -----------------------------------------


class ServFail(Exception):
    """Makes the test zone answer SERVFAIL."""


class Zone(common.ResolverBase):
    """An in-memory authority that records every question it is asked."""

    def __init__(
        self, records: Mapping[str, list[dns.RRHeader]], servfail: Iterable[str] = ()
    ) -> None:
        super().__init__()
        self.records = {name.encode(): rrs for name, rrs in records.items()}
        self.servfail = {name.encode() for name in servfail}
        self.questions: list[tuple[str, str]] = []

    def _lookup(self, name: bytes, cls: int, type: int, timeout: Any) -> Deferred[Response]:
        self.questions.append((name.decode(), dns.QUERY_TYPES.get(type, str(type))))
        if name in self.servfail:
            return fail(ServFail())
        if name not in self.records:
            return fail(names_error.AuthoritativeDomainError(name))
        return succeed(([rr for rr in self.records[name] if rr.type == type], [], []))


class TestServer(server.DNSServerFactory):
    """
    A DNS server that notes the transport of each query, truncates UDP
    answers for some names, and answers SERVFAIL without logging an error.
    """

    def __init__(self, zone: Zone, truncate: Iterable[str] = ()) -> None:
        super().__init__(authorities=[zone])
        self.truncate = {name.encode() for name in truncate}
        self.transports: list[str] = []
        self._idle: list[Deferred[None]] = []

    def messageReceived(self, message: dns.Message, proto: Any, address: Any = None) -> None:
        self.transports.append("tcp" if address is None else "udp")
        super().messageReceived(message, proto, address)

    def sendReply(self, protocol: Any, message: dns.Message, address: Any) -> None:
        if address is not None and message.queries[0].name.name in self.truncate:
            message.trunc = 1
            message.answers, message.authority, message.additional = [], [], []
        super().sendReply(protocol, message, address)

    def gotResolverError(self, failure: Failure, protocol: Any, message: Any, address: Any) -> None:
        if failure.check(ServFail):
            response = self._responseFromMessage(message=message, rCode=dns.ESERVER)
            self.sendReply(protocol, response, address)
            return
        super().gotResolverError(failure, protocol, message, address)

    def connectionLost(self, protocol: Any) -> None:
        super().connectionLost(protocol)
        if not self.connections:
            idle, self._idle = self._idle, []
            for d in idle:
                d.callback(None)

    def idle(self) -> Deferred[None]:
        """Fires once no TCP client is connected."""
        if not self.connections:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._idle.append(d)
        return d


class ClockedNetwork:
    """
    Real UDP and TCP on the global reactor, but timers on a Clock, so DNS
    timeouts move only when the test advances time.
    """

    def __init__(self, clock: Clock) -> None:
        self.clock = clock

    def listenUDP(self, *args: Any, **kwargs: Any) -> Any:
        return reactor.listenUDP(*args, **kwargs)

    def connectTCP(self, *args: Any, **kwargs: Any) -> Any:
        return reactor.connectTCP(*args, **kwargs)

    def callLater(self, *args: Any, **kwargs: Any) -> Any:
        return self.clock.callLater(*args, **kwargs)

    def seconds(self) -> float:
        return self.clock.seconds()


def a(name: str, address: str, ttl: int = 60) -> dns.RRHeader:
    return dns.RRHeader(name, dns.A, dns.IN, ttl, dns.Record_A(address, ttl))


def aaaa(name: str, address: str, ttl: int = 60) -> dns.RRHeader:
    return dns.RRHeader(name, dns.AAAA, dns.IN, ttl, dns.Record_AAAA(address, ttl))


RECORDS: Mapping[str, list[dns.RRHeader]] = {
    "web.test": [a("web.test", "192.0.2.10"), a("web.test", "192.0.2.11")],
    "dual.test": [a("dual.test", "192.0.2.20"), aaaa("dual.test", "2001:db8::20")],
    "v4.test": [a("v4.test", "192.0.2.30")],
    "short.test": [a("short.test", "192.0.2.40", ttl=1)],
    "big.test": [a("big.test", "192.0.2.50")],
}


class RealServerTests(TestCase):
    """The default DNS client against a twisted.names server on 127.0.0.1."""

    # Loopback answers are immediate; a query sent to the wrong server would
    # otherwise hang until trial's two-minute default.
    timeout = 10

    def setUp(self) -> None:
        self.zone = Zone(RECORDS, servfail=["broken.test"])
        self.server = TestServer(self.zone, truncate=["big.test"])
        self.port = self.listen(self.server)
        self.clock = Clock()

    def listen(self, factory: server.DNSServerFactory) -> int:
        for _ in range(20):
            udp = reactor.listenUDP(0, dns.DNSDatagramProtocol(factory), interface=LOOPBACK)
            port: int = udp.getHost().port
            try:
                tcp = reactor.listenTCP(port, factory, interface=LOOPBACK)
            except internet_error.CannotListenError:
                udp.stopListening()
                continue
            self.addCleanup(udp.stopListening)
            self.addCleanup(tcp.stopListening)
            return port
        raise RuntimeError("no port free for both UDP and TCP")

    def make(self, nameservers: Sequence[str] | None = None, **settings: Any) -> TargetResolver:
        servers = nameservers if nameservers is not None else [f"{LOOPBACK}:{self.port}"]
        resolver = TargetResolver(
            ClockedNetwork(self.clock),
            ResolverSettings(nameservers=servers, **settings),
            clock=self.clock,
            hosts_file=None,
        )
        self.addCleanup(self.server.idle)
        self.addCleanup(resolver.close)
        return resolver

    @inlineCallbacks
    def test_a_answer(self) -> Any:
        """A records come back in the server's order."""
        result = yield self.make().resolve("web.test")
        self.assertEqual(result, Resolution(("192.0.2.10", "192.0.2.11"), ttl=60))
        self.assertEqual(self.zone.questions, [("web.test", "A")])
        self.assertEqual(self.server.transports, ["udp"])

    @inlineCallbacks
    def test_prefer_ipv6(self) -> Any:
        """prefer_ipv6 gets the AAAA address; without it, the A address."""
        resolver = self.make()
        v6 = yield resolver.resolve("dual.test", prefer_ipv6=True)
        v4 = yield resolver.resolve("dual.test")
        self.assertEqual(v6.addresses, ("2001:db8::20",))
        self.assertEqual(v4.addresses, ("192.0.2.20",))

    @inlineCallbacks
    def test_prefer_ipv6_falls_back_to_a(self) -> Any:
        """A name without AAAA is resolved by A after an empty AAAA answer."""
        result = yield self.make().resolve("v4.test", prefer_ipv6=True)
        self.assertEqual(result.addresses, ("192.0.2.30",))
        self.assertEqual(self.zone.questions, [("v4.test", "AAAA"), ("v4.test", "A")])

    @inlineCallbacks
    def test_short_ttl_clamped(self) -> Any:
        """A 1 s TTL from the wire is cached for 5 s of the resolver's clock."""
        resolver = self.make()
        first = yield resolver.resolve("short.test")
        self.assertEqual(first.ttl, 5)
        self.clock.advance(4.9)
        cached = yield resolver.resolve("short.test")
        self.assertTrue(cached.from_cache)
        self.assertEqual(len(self.zone.questions), 1)
        self.clock.advance(0.1)
        fresh = yield resolver.resolve("short.test")
        self.assertFalse(fresh.from_cache)
        self.assertEqual(len(self.zone.questions), 2)

    @inlineCallbacks
    def test_nxdomain(self) -> Any:
        """A name the server does not know fails as nxdomain, A only."""
        with self.assertRaises(DnsFailure) as caught:
            yield self.make().resolve("missing.test")
        self.assertEqual(caught.exception.reason, "nxdomain")
        self.assertEqual(self.zone.questions, [("missing.test", "A")])

    @inlineCallbacks
    def test_servfail(self) -> Any:
        """A SERVFAIL answer fails as servfail."""
        with self.assertRaises(DnsFailure) as caught:
            yield self.make(ip_lookup_strategy="ipv4_only").resolve("broken.test")
        self.assertEqual(caught.exception.reason, "servfail")

    @inlineCallbacks
    def test_truncated_udp_retried_over_tcp(self) -> Any:
        """A truncated UDP answer is asked again over TCP."""
        result = yield self.make().resolve("big.test")
        self.assertEqual(result.addresses, ("192.0.2.50",))
        self.assertEqual(self.server.transports, ["udp", "tcp"])

    @inlineCallbacks
    def test_truncated_without_tcp_fallback(self) -> Any:
        """With tcp_fallback off, an empty truncated answer fails as other."""
        resolver = self.make(tcp_fallback=False, ip_lookup_strategy="ipv4_only")
        with self.assertRaises(DnsFailure) as caught:
            yield resolver.resolve("big.test")
        self.assertEqual(caught.exception.reason, "other")
        self.assertIn("tcp_fallback", caught.exception.detail)
        self.assertEqual(self.server.transports, ["udp"])

    @inlineCallbacks
    def test_tcp_only(self) -> Any:
        """query_over_tcp_only never uses UDP and shares one connection."""
        resolver = self.make(query_over_tcp_only=True, ip_lookup_strategy="ipv4_only")
        first, second = yield gatherResults(
            [resolver.resolve("web.test"), resolver.resolve("v4.test")]
        )
        third = yield resolver.resolve("dual.test")
        self.assertEqual(first.addresses, ("192.0.2.10", "192.0.2.11"))
        self.assertEqual(second.addresses, ("192.0.2.30",))
        self.assertEqual(third.addresses, ("192.0.2.20",))
        self.assertEqual(self.server.transports, ["tcp", "tcp", "tcp"])
        self.assertEqual(len(self.server.connections), 1)

    @inlineCallbacks
    def test_tcp_connection_dropped_after_timeout(self) -> Any:
        """A TCP connection that stops answering is closed; the next query reconnects."""
        asked: list[Deferred[None]] = [Deferred(), Deferred()]
        lost: Deferred[None] = Deferred()

        class Mute(Protocol):
            def dataReceived(self, data: bytes) -> None:
                asked.pop(0).callback(None)

            def connectionLost(self, reason: Failure = connectionDone) -> None:
                if not lost.called:
                    lost.callback(None)

        first, second = asked
        mute = reactor.listenTCP(0, Factory.forProtocol(Mute), interface=LOOPBACK)
        self.addCleanup(mute.stopListening)
        resolver = self.make(
            nameservers=[f"{LOOPBACK}:{mute.getHost().port}"],
            query_over_tcp_only=True,
            ip_lookup_strategy="ipv4_only",
        )
        d = resolver.resolve("web.test")
        yield first
        self.clock.advance(ATTEMPT_TIMEOUT)
        with self.assertRaises(DnsFailure) as caught:
            yield d
        self.assertEqual(caught.exception.reason, "attempt_timeout")
        yield lost
        d = resolver.resolve("web.test")
        yield second
        self.clock.advance(ATTEMPT_TIMEOUT)
        with self.assertRaises(DnsFailure):
            yield d

    @inlineCallbacks
    def test_hosts_file_first(self) -> Any:
        """A name in the hosts file is answered from it without a DNS query."""
        fd, path = tempfile.mkstemp()
        with os.fdopen(fd, "w") as f:
            f.write("192.0.2.99 fromhosts.test\n")
        self.addCleanup(os.remove, path)
        resolver = TargetResolver(
            ClockedNetwork(self.clock),
            ResolverSettings(nameservers=[f"{LOOPBACK}:{self.port}"]),
            clock=self.clock,
            hosts_file=path,
        )
        self.addCleanup(resolver.close)
        local = yield resolver.resolve("fromhosts.test")
        remote = yield resolver.resolve("web.test")
        self.assertEqual(local.addresses, ("192.0.2.99",))
        self.assertEqual(remote.addresses, ("192.0.2.10", "192.0.2.11"))
        self.assertEqual(self.zone.questions, [("web.test", "A")])

    @inlineCallbacks
    def test_silent_first_nameserver(self) -> Any:
        """A silent first server is skipped within one attempt, then asked last."""
        heard: list[bytes] = []
        first_query: Deferred[None] = Deferred()

        class Silent(DatagramProtocol):
            def datagramReceived(self, data: bytes, addr: Any) -> None:
                heard.append(data)
                if not first_query.called:
                    first_query.callback(None)

        silent = reactor.listenUDP(0, Silent(), interface=LOOPBACK)
        self.addCleanup(silent.stopListening)
        resolver = self.make(
            nameservers=[f"{LOOPBACK}:{silent.getHost().port}", f"{LOOPBACK}:{self.port}"],
            ip_lookup_strategy="ipv4_only",
        )
        d = resolver.resolve("web.test")
        yield first_query
        self.assertNoResult(d)
        self.clock.advance(ATTEMPT_TIMEOUT / 2)
        result = yield d
        self.assertEqual(result.addresses, ("192.0.2.10", "192.0.2.11"))
        again = yield resolver.resolve("v4.test")
        self.assertEqual(again.addresses, ("192.0.2.30",))
        self.assertEqual(len(heard), 1)
