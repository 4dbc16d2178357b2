"""
DNS-name targets: resolve a target's host name when a connection (or UDP
flow) needs it, on L{twisted.names}.

A rule whose target is a name does not resolve it when the rule starts:
each new connection asks L{TargetResolver.resolve}, which answers from a
small cache when it can.  The numbers are Portunus's:

  - Answers are cached for their TTL, clamped to [L{TTL_MIN}, L{TTL_MAX}].
  - When refreshing an expired answer fails, the old (stale) answer keeps
    being served for L{STALE_GRACE} seconds, refreshing at most every
    L{RETRY_GAP} seconds; each stale answer carries C{stale=True} so the
    caller still counts a DNS failure.  After the grace, failures reach the
    caller.
  - One attempt (one record type, UDP with TCP fallback) takes at most
    L{ATTEMPT_TIMEOUT} seconds.
  - Concurrent lookups of one name share one query (single-flight); at
    most L{MAX_CONCURRENT_RESOLVES} distinct lookups are in flight, and a
    lookup beyond that fails at once with C{resolver_overloaded}.
  - The cache holds C{cache_entries} names; when full it evicts the entry
    closest to (or furthest past) expiry, never one being refreshed.

IP literals never reach DNS.  The result is an ordered list of addresses
of one family, to be dialled in order: IPv4 first by default, IPv6 first
with C{prefer_ipv6} (or the C{ip_lookup_strategy} setting); the other
family is asked only when the first has no address.

Time comes from an injected clock, so tests drive every timer with
L{twisted.internet.task.Clock}.
"""

from __future__ import annotations

import heapq
import ipaddress
import socket
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

import attrs
from twisted.internet import error as internet_error
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.defer import TimeoutError as DeferredTimeoutError
from twisted.internet.interfaces import IReactorTime, IResolver
from twisted.logger import Logger
from twisted.names import client, dns, hosts, resolve
from twisted.names import error as names_error
from twisted.python.failure import Failure

from portunus.addresses import AddressError, ip_version, parse_port, split_host_port
from portunus.bounds import RESOLVER_CACHE_ENTRIES
from portunus.compat import DnsAnswer, HookedDnsResolver
from portunus.fields import FieldChecker
from portunus.fields import describe_value as _describe
from portunus.fields import printable as _safe
from portunus.reactors import IDataplaneReactor

__all__ = [
    "ATTEMPT_TIMEOUT",
    "DEFAULT_CACHE_ENTRIES",
    "DEFAULT_HOSTS_FILE",
    "DEFAULT_RESOLV_CONF",
    "FAILURE_REASONS",
    "IP_LOOKUP_STRATEGIES",
    "MAX_CACHE_ENTRIES",
    "MAX_CONCURRENT_RESOLVES",
    "REASON_ALL_ADDRS_UNREACHABLE",
    "REASON_ATTEMPT_TIMEOUT",
    "REASON_NXDOMAIN",
    "REASON_OTHER",
    "REASON_RESOLVER_OVERLOADED",
    "REASON_SERVFAIL",
    "RESOLVER_KEYS",
    "RETRY_GAP",
    "STALE_GRACE",
    "TTL_MAX",
    "TTL_MIN",
    "DnsFailure",
    "Resolution",
    "ResolverConfigError",
    "ResolverSettings",
    "ResolverStats",
    "TargetResolver",
    "parse_nameserver",
    "read_resolv_conf",
    "resolver_settings_from_table",
]

log = Logger()

#: Cached answers live at least this long, whatever their TTL says.
TTL_MIN: Final = 5.0
#: ... and at most this long.
TTL_MAX: Final = 300.0
#: How long a stale answer is served after refreshing it first failed.
STALE_GRACE: Final = 30.0
#: Within the grace, a refresh is tried at most this often.
RETRY_GAP: Final = 3.0
#: Seconds one attempt (one record type) may take.
ATTEMPT_TIMEOUT: Final = 3
#: Distinct lookups in flight at once; more fail with C{resolver_overloaded}.
MAX_CONCURRENT_RESOLVES: Final = 64
DEFAULT_CACHE_ENTRIES: Final = RESOLVER_CACHE_ENTRIES.fallback
MAX_CACHE_ENTRIES: Final = RESOLVER_CACHE_ENTRIES.high
DEFAULT_RESOLV_CONF: Final = "/etc/resolv.conf"
DEFAULT_HOSTS_FILE: Final = "/etc/hosts"

REASON_NXDOMAIN: Final = "nxdomain"
REASON_SERVFAIL: Final = "servfail"
REASON_ATTEMPT_TIMEOUT: Final = "attempt_timeout"
REASON_RESOLVER_OVERLOADED: Final = "resolver_overloaded"
REASON_OTHER: Final = "other"
#: Not raised here: the caller decides it after every address failed to dial.
REASON_ALL_ADDRS_UNREACHABLE: Final = "all_addrs_unreachable"
FAILURE_REASONS: Final = (
    REASON_NXDOMAIN,
    REASON_SERVFAIL,
    REASON_ATTEMPT_TIMEOUT,
    REASON_ALL_ADDRS_UNREACHABLE,
    REASON_RESOLVER_OVERLOADED,
    REASON_OTHER,
)

IP_LOOKUP_STRATEGIES: Final = ("ipv4_only", "ipv6_only", "ipv4_then_ipv6", "ipv6_then_ipv4")
_FAMILIES: Final[Mapping[str, tuple[int, ...]]] = {
    "ipv4_only": (dns.A,),
    "ipv6_only": (dns.AAAA,),
    "ipv4_then_ipv6": (dns.A, dns.AAAA),
    "ipv6_then_ipv4": (dns.AAAA, dns.A),
}
_FAMILY_NAMES: Final[Mapping[int, str]] = {dns.A: "IPv4", dns.AAAA: "IPv6"}

#: The keys of the standalone config's C{[resolver]} table.
RESOLVER_KEYS: Final = (
    "cache_entries",
    "query_over_tcp_only",
    "ip_lookup_strategy",
    "tcp_fallback",
    "nameservers",
)

#: Cache and single-flight key: (lower-cased name, lookup strategy).
_Key = tuple[str, str]


class DnsFailure(Exception):
    """
    A target's name could not be resolved.

    @ivar reason: one of L{FAILURE_REASONS}.
    @ivar host: the name asked for.
    @ivar detail: a human-readable explanation.
    """

    def __init__(self, reason: str, host: str = "", detail: str = "") -> None:
        super().__init__(reason, host, detail)
        self.reason = reason
        self.host = host
        self.detail = detail

    def __str__(self) -> str:
        text = f"{self.host}: {self.reason}" if self.host else self.reason
        return f"{text} ({self.detail})" if self.detail else text


class ResolverConfigError(ValueError):
    """The resolver cannot start: no nameserver to ask."""


@attrs.frozen
class Resolution:
    """
    Where a target name points: addresses to dial, in order.

    @ivar stale: the answer expired and refreshing it failed; it is served
        during the grace period, and the caller should count a DNS failure
        (C{stale_reason} says why the refresh failed).
    @ivar from_cache: no query was waited for.
    @ivar ttl: seconds this answer stays fresh; C{None} for IP literals and
        stale answers.
    """

    addresses: tuple[str, ...]
    stale: bool = False
    from_cache: bool = False
    ttl: float | None = None
    stale_reason: str | None = None


@attrs.frozen
class ResolverStats:
    """Counters since the resolver started, and its current sizes."""

    cache_size: int
    cache_capacity: int
    in_flight: int
    #: Answered from a fresh cache entry.
    hits: int
    #: Started a lookup (first lookup or refresh of an expired entry).
    misses: int
    #: Joined a lookup already in flight for the same name.
    coalesced: int
    #: Stale answers served.
    stale_served: int
    #: DNS queries sent (one per record type asked).
    queries: int
    #: Resolutions that failed (not counting stale answers).
    failures: int
    #: Lookups refused because too many were in flight.
    overloaded: int
    evictions: int


def parse_nameserver(text: str) -> tuple[str, int]:
    """
    Parse a nameserver: C{"host"}, C{"host:port"}, C{"v6addr"} or
    C{"[v6addr]:port"}, where the host is an IP address.  The port
    defaults to 53.

    @raise ValueError: with a message saying what to write instead.
    """
    example = "write e.g. 192.0.2.53, 192.0.2.53:5353, 2001:db8::53 or [2001:db8::53]:53"
    try:
        split = split_host_port(text.strip(), bare_ipv6=True)
    except AddressError as e:
        raise ValueError(f"{e}; {example}") from None
    if ip_version(split.host) is None:
        raise ValueError(
            f"'{_safe(split.host)}' is not an IP address; a nameserver must be an IP address; "
            f"{example}"
        )
    return split.host, 53 if split.port is None else parse_port(split.port)


def _nameservers(value: Iterable[str] | None) -> tuple[str, ...] | None:
    return None if value is None else tuple(value)


def _check_nameservers(
    instance: object, attribute: attrs.Attribute[tuple[str, ...] | None], value: object
) -> None:
    if value is None:
        return
    assert isinstance(value, tuple)
    if not value:
        raise ValueError("nameservers is empty; leave it out to use /etc/resolv.conf")
    for server in value:
        parse_nameserver(server)


def _check_cache_entries(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if value not in RESOLVER_CACHE_ENTRIES:
        raise ValueError(f"cache_entries must be {RESOLVER_CACHE_ENTRIES.span('..')}, got {value}")


@attrs.frozen
class ResolverSettings:
    """
    Operator knobs of the target resolver (the standalone C{[resolver]}
    table).

    @ivar nameservers: servers to ask, each as L{parse_nameserver} reads
        it; C{None} means those in C{/etc/resolv.conf}.
    """

    cache_entries: int = attrs.field(default=DEFAULT_CACHE_ENTRIES, validator=_check_cache_entries)
    query_over_tcp_only: bool = False
    ip_lookup_strategy: str = attrs.field(
        default="ipv4_then_ipv6", validator=attrs.validators.in_(IP_LOOKUP_STRATEGIES)
    )
    tcp_fallback: bool = True
    nameservers: tuple[str, ...] | None = attrs.field(
        default=None, converter=_nameservers, validator=_check_nameservers
    )

    def nameserver_addresses(self) -> list[tuple[str, int]] | None:
        """The configured nameservers as C{(host, port)}, or C{None}."""
        if self.nameservers is None:
            return None
        return [parse_nameserver(server) for server in self.nameservers]

    def strategy_for(self, prefer_ipv6: bool) -> str:
        """The lookup strategy for a rule; C{prefer_ipv6} flips the default."""
        if prefer_ipv6 and self.ip_lookup_strategy == "ipv4_then_ipv6":
            return "ipv6_then_ipv4"
        return self.ip_lookup_strategy


def resolver_settings_from_table(
    table: Mapping[str, object],
) -> tuple[ResolverSettings, list[tuple[str, str]]]:
    """
    Read the standalone config's C{[resolver]} table.

    @return: the settings (defaults where a value was missing or wrong) and
        every problem found, as C{(field, message)} with fields such as
        C{"resolver.cache_entries"}.
    """
    issues: list[tuple[str, str]] = []
    values: dict[str, Any] = {}

    def add(key: str, message: str) -> None:
        issues.append((f"resolver.{key}", message))

    check = FieldChecker(lambda where, field, message, code: issues.append((field, message)))
    check.strict(table, RESOLVER_KEYS, None, "resolver", "[resolver]")
    entries = check.integer(
        table, "cache_entries", None, "resolver.cache_entries", RESOLVER_CACHE_ENTRIES
    )
    if isinstance(entries, int):
        values["cache_entries"] = entries
    for key in ("query_over_tcp_only", "tcp_fallback"):
        flag = check.boolean(table, key, None, f"resolver.{key}")
        if isinstance(flag, bool):
            values[key] = flag
    strategy = check.choice(
        table, "ip_lookup_strategy", None, "resolver.ip_lookup_strategy", IP_LOOKUP_STRATEGIES
    )
    if isinstance(strategy, str):
        values["ip_lookup_strategy"] = strategy

    if "nameservers" in table:
        raw = table["nameservers"]
        if not isinstance(raw, list):
            add(
                "nameservers",
                f"must be an array of strings, not {_describe(raw)}; "
                'write nameservers = ["192.0.2.53", "[2001:db8::53]:53"]',
            )
        elif not raw:
            add(
                "nameservers",
                "is empty; list at least one server, or leave the key out to use "
                f"the servers in {DEFAULT_RESOLV_CONF}",
            )
        else:
            servers: list[str] = []
            seen: set[tuple[str, int]] = set()
            ok = True
            for i, item in enumerate(raw):
                field = f"nameservers[{i}]"
                if not isinstance(item, str):
                    add(field, f"must be a string, not {_describe(item)}; quote the address")
                    ok = False
                    continue
                try:
                    address = parse_nameserver(item)
                except ValueError as e:
                    add(field, str(e))
                    ok = False
                    continue
                if address in seen:
                    add(field, f"'{_safe(item)}' is listed twice; remove the duplicate")
                    ok = False
                    continue
                seen.add(address)
                servers.append(item.strip())
            if ok:
                values["nameservers"] = tuple(servers)

    return ResolverSettings(**values), issues


def read_resolv_conf(path: str = DEFAULT_RESOLV_CONF) -> list[tuple[str, int]]:
    """
    The nameservers of a C{resolv.conf(5)} file, in order.

    @raise ResolverConfigError: the file cannot be read or names no
        nameserver; the message names the file and what to do.
    """
    try:
        with open(path, "rb") as f:
            content = f.read()
    except OSError as e:
        raise ResolverConfigError(
            f"{path}: cannot be read ({e.strerror or e}); fix it, or set "
            "[resolver] nameservers to the DNS servers to use"
        ) from None
    servers: list[tuple[str, int]] = []
    for line in content.decode("utf-8", "replace").splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "nameserver" and ip_version(parts[1]) is not None:
            servers.append((parts[1], 53))
    if not servers:
        raise ResolverConfigError(
            f"{path}: lists no nameserver; add a 'nameserver <ip>' line, or set "
            "[resolver] nameservers to the DNS servers to use"
        )
    return servers


class TargetResolver:
    """
    Resolves DNS-name targets for the data plane: cached, single-flight,
    bounded.  See the module docstring for the rules.
    """

    def __init__(
        self,
        reactor: IDataplaneReactor,
        settings: ResolverSettings,
        resolver: IResolver | None = None,
        *,
        clock: IReactorTime | None = None,
        resolv_conf: str = DEFAULT_RESOLV_CONF,
        hosts_file: str | None = DEFAULT_HOSTS_FILE,
        max_in_flight: int = MAX_CONCURRENT_RESOLVES,
    ) -> None:
        """
        @param reactor: the reactor; without C{resolver} it must also
            provide L{IReactorUDP} and L{IReactorTCP} for DNS queries.
        @param resolver: the L{IResolver} to ask; by default a
            L{twisted.names.client.Resolver} on C{settings.nameservers} (or
            those of C{resolv_conf}), after the hosts file C{hosts_file}.
        @param clock: times cache entries and attempts; the reactor by
            default.

        @raise ResolverConfigError: no resolver was given, no nameserver is
            configured, and C{resolv_conf} lists none.
        """
        self.settings = settings
        self._clock: IReactorTime = clock if clock is not None else reactor
        self._max_in_flight = max_in_flight
        self._client: _DnsClient | None = None
        if resolver is None:
            servers = settings.nameserver_addresses() or read_resolv_conf(resolv_conf)
            self._client = _DnsClient(
                servers,
                reactor,
                tcp_only=settings.query_over_tcp_only,
                tcp_fallback=settings.tcp_fallback,
            )
            resolver = self._client
            if hosts_file is not None:
                resolver = resolve.ResolverChain([hosts.Resolver(file=hosts_file), self._client])
        self._resolver: IResolver = resolver
        self._cache: dict[_Key, _Entry] = {}
        # (expires_at, seq, key); an item whose seq no longer matches the
        # entry's is dead and skipped.
        self._heap: list[tuple[float, int, _Key]] = []
        self._seq = 0
        self._in_flight: dict[_Key, _Flight] = {}
        self._hits = 0
        self._misses = 0
        self._coalesced = 0
        self._stale_served = 0
        self._queries = 0
        self._failures = 0
        self._overloaded = 0
        self._evictions = 0

    # -- public -----------------------------------------------------------

    def resolve(self, host: str, prefer_ipv6: bool = False) -> Deferred[Resolution]:
        """
        Addresses for C{host}, in the order to dial them.

        @return: a L{Deferred} firing with a L{Resolution}, or failing with
            L{DnsFailure}.  Cancelling it abandons only this caller's wait.
        """
        if ip_version(host) is not None:
            return succeed(Resolution((host,)))
        name = host.rstrip(".").lower()
        if not name:
            return fail(DnsFailure(REASON_OTHER, host, "the host name is empty"))
        strategy = self.settings.strategy_for(prefer_ipv6)
        key = (name, strategy)
        now = self._clock.seconds()

        entry = self._cache.get(key)
        if entry is not None and now < entry.expires_at:
            self._hits += 1
            return succeed(Resolution(entry.addresses, from_cache=True, ttl=entry.expires_at - now))

        flight = self._in_flight.get(key)
        if flight is not None:
            self._coalesced += 1
            return flight.join()

        if entry is not None and entry.grace_until is not None:
            if now >= entry.grace_until:
                self._drop(key)
                entry = None
            elif now < entry.retry_at:
                return succeed(self._serve_stale(entry))

        if len(self._in_flight) >= self._max_in_flight:
            self._overloaded += 1
            detail = f"{len(self._in_flight)} lookups already in flight"
            if entry is not None:
                return succeed(self._refresh_failed(entry, REASON_RESOLVER_OVERLOADED, now))
            self._failures += 1
            return fail(DnsFailure(REASON_RESOLVER_OVERLOADED, host, detail))

        self._misses += 1
        flight = self._in_flight[key] = _Flight()
        waiter = flight.join()
        lookup = Deferred.fromCoroutine(self._look_up(name, _FAMILIES[strategy]))
        lookup.addCallbacks(
            self._flight_succeeded,
            self._flight_failed,
            callbackArgs=(key,),
            errbackArgs=(key,),
        )
        return waiter

    def stats(self) -> ResolverStats:
        """A snapshot of the counters, for observability."""
        return ResolverStats(
            cache_size=len(self._cache),
            cache_capacity=self.settings.cache_entries,
            in_flight=len(self._in_flight),
            hits=self._hits,
            misses=self._misses,
            coalesced=self._coalesced,
            stale_served=self._stale_served,
            queries=self._queries,
            failures=self._failures,
            overloaded=self._overloaded,
            evictions=self._evictions,
        )

    def close(self) -> Deferred[None]:
        """
        Close the TCP connections to nameservers (if this resolver made the
        DNS client); fires once they are gone.
        """
        if self._client is None:
            return succeed(None)
        return self._client.close()

    # -- lookups ----------------------------------------------------------

    async def _look_up(self, name: str, families: Sequence[int]) -> tuple[tuple[str, ...], float]:
        first_error: DnsFailure | None = None
        for rtype in families:
            self._queries += 1
            try:
                response = await self._attempt(name, rtype)
            except Exception as e:
                failure = DnsFailure(_reason_for(e), name, _detail_for(e))
                # The name does not exist, or the server is not answering:
                # asking for the other family would not help.
                if failure.reason in (REASON_NXDOMAIN, REASON_ATTEMPT_TIMEOUT):
                    raise failure from None
                first_error = first_error or failure
                continue
            addresses, ttl = _addresses_in(response, rtype)
            if addresses:
                return addresses, ttl
        if first_error is not None:
            raise first_error
        wanted = " or ".join(_FAMILY_NAMES[rtype] for rtype in families)
        raise DnsFailure(REASON_NXDOMAIN, name, f"the name has no {wanted} address")

    def _attempt(self, name: str, rtype: int) -> Deferred[Any]:
        """One query, failing with a timeout after L{ATTEMPT_TIMEOUT} seconds."""
        timeout = (ATTEMPT_TIMEOUT,)
        try:
            if rtype == dns.A:
                query: Deferred[Any] = self._resolver.lookupAddress(name, timeout)
            else:
                query = self._resolver.lookupIPV6Address(name, timeout)
        except Exception:
            return fail()
        result: Deferred[Any] = Deferred()

        def timed_out() -> None:
            result.errback(Failure(DeferredTimeoutError(f"no answer within {ATTEMPT_TIMEOUT} s")))

        timer = self._clock.callLater(ATTEMPT_TIMEOUT, timed_out)

        def finished(outcome: object) -> None:
            # A late answer (or failure) after the timeout is dropped.
            if result.called:
                return
            timer.cancel()
            if isinstance(outcome, Failure):
                result.errback(outcome)
            else:
                result.callback(outcome)

        query.addBoth(finished)
        return result

    def _flight_succeeded(self, found: tuple[tuple[str, ...], float], key: _Key) -> None:
        addresses, ttl = found
        flight = self._in_flight.pop(key)
        self._store(key, addresses, self._clock.seconds() + ttl)
        for waiter in flight.take():
            waiter.callback(Resolution(addresses, ttl=ttl))

    def _flight_failed(self, failure: Failure, key: _Key) -> None:
        flight = self._in_flight.pop(key)
        error = failure.value
        if not isinstance(error, DnsFailure):
            error = DnsFailure(REASON_OTHER, key[0], failure.getErrorMessage())
        now = self._clock.seconds()
        entry = self._cache.get(key)
        if entry is not None and (entry.grace_until is None or now < entry.grace_until):
            waiters = flight.take()
            stale = self._refresh_failed(entry, error.reason, now)
            self._stale_served += max(len(waiters) - 1, 0)
            for waiter in waiters:
                waiter.callback(stale)
            return
        if entry is not None:
            self._drop(key)
        self._failures += 1
        for waiter in flight.take():
            waiter.errback(Failure(error))

    def _refresh_failed(self, entry: _Entry, reason: str, now: float) -> Resolution:
        if entry.grace_until is None:
            entry.grace_until = now + STALE_GRACE
        entry.retry_at = now + RETRY_GAP
        entry.last_reason = reason
        return self._serve_stale(entry)

    def _serve_stale(self, entry: _Entry) -> Resolution:
        self._stale_served += 1
        return Resolution(
            entry.addresses, stale=True, from_cache=True, stale_reason=entry.last_reason
        )

    # -- cache ------------------------------------------------------------

    def _store(self, key: _Key, addresses: tuple[str, ...], expires_at: float) -> None:
        if (
            key not in self._cache
            and len(self._cache) >= self.settings.cache_entries
            and not self._evict_one()
        ):
            # Everything cached is being refreshed: serve this answer uncached.
            return
        self._seq += 1
        self._cache[key] = _Entry(addresses, expires_at, self._seq)
        heapq.heappush(self._heap, (expires_at, self._seq, key))
        self._compact()

    def _evict_one(self) -> bool:
        """Evict the entry that expires first (or expired), if one may go."""
        now = self._clock.seconds()
        pending: list[tuple[float, int, _Key]] = []
        evicted = False
        while self._heap:
            item = heapq.heappop(self._heap)
            expires_at, seq, key = item
            entry = self._cache.get(key)
            if entry is None or entry.seq != seq:
                continue
            if key in self._in_flight:
                pending.append(item)
                continue
            del self._cache[key]
            self._evictions += 1
            log.debug(
                "resolver cache full: evicted {host}",
                event="resolver.cache_evicted",
                host=key[0],
                strategy=key[1],
                expired=expires_at <= now,
            )
            evicted = True
            break
        for item in pending:
            heapq.heappush(self._heap, item)
        return evicted

    def _drop(self, key: _Key) -> None:
        del self._cache[key]
        self._compact()

    def _compact(self) -> None:
        if len(self._heap) > 2 * len(self._cache) + 64:
            self._heap = [(e.expires_at, e.seq, k) for k, e in self._cache.items()]
            heapq.heapify(self._heap)


@attrs.define
class _Entry:
    addresses: tuple[str, ...]
    expires_at: float
    seq: int
    #: Set at the first failed refresh: stale answers are served until then.
    grace_until: float | None = None
    #: No refresh before this time.
    retry_at: float = 0.0
    last_reason: str | None = None


class _Flight:
    """The callers waiting on one lookup."""

    def __init__(self) -> None:
        self._waiters: list[Deferred[Resolution]] = []

    def join(self) -> Deferred[Resolution]:
        def cancel(d: Deferred[Resolution]) -> None:
            if d in self._waiters:
                self._waiters.remove(d)

        waiter: Deferred[Resolution] = Deferred(cancel)
        self._waiters.append(waiter)
        return waiter

    def take(self) -> list[Deferred[Resolution]]:
        waiters, self._waiters = self._waiters, []
        return waiters


class _TruncatedAnswer(Exception):
    """A truncated UDP answer held no address and may not be retried over TCP."""


class _TcpClientFactory(client.DNSClientFactory):
    controller: _DnsClient

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        self.controller._connecting = False
        super().clientConnectionFailed(connector, reason)

    def buildProtocol(self, addr: Any) -> dns.DNSProtocol:
        # On the client's reactor, so its timers follow an injected clock.
        protocol = dns.DNSProtocol(self.controller, reactor=self.controller.reactor)
        protocol.factory = self
        return protocol


class _DnsClient(HookedDnsResolver):
    """
    L{client.Resolver} with Portunus's transport rules: optionally TCP only;
    optionally no TCP retry of a truncated answer; a per-server UDP timeout
    that lets one attempt reach every server; the last server that answered
    asked first; loopback servers asked from a loopback socket; one TCP
    connection at a time, dropped when a query on it times out.
    """

    def __init__(
        self,
        servers: Sequence[tuple[str, int]],
        reactor: IDataplaneReactor,
        *,
        tcp_only: bool,
        tcp_fallback: bool,
    ) -> None:
        self._tcp_only = tcp_only
        self._tcp_fallback = tcp_fallback
        self._preferred = 0
        self._closing = False
        self._connecting = False
        self._gone: list[Deferred[None]] = []
        per_server = max(ATTEMPT_TIMEOUT / len(servers), 0.5)
        super().__init__(servers=list(servers), timeout=(per_server,), reactor=reactor)
        self._tcp_factory = _TcpClientFactory(self, ATTEMPT_TIMEOUT)
        self._tcp_factory.noisy = False
        self.factory = self._tcp_factory

    def queryUDP(self, queries: Any, timeout: Any = None) -> Any:
        # The caller's timeout is for the whole attempt; each server gets
        # its share of it.
        timeout = self.timeout
        start = self._preferred % len(self.servers)
        addresses = self.servers[start:] + self.servers[:start]
        addresses.reverse()
        used = addresses.pop()
        d = self.query_server(used, queries, timeout[0])
        d.addErrback(self.reissue, addresses, [used], queries, timeout)
        return d

    def query_server(
        self,
        address: tuple[str, int],
        queries: list[dns.Query],
        timeout: float,
        id: int | None = None,
    ) -> Deferred[dns.Message]:
        protocol = self.connected_protocol(_source_interface(address[0]))
        d: Deferred[dns.Message] = protocol.query(address, queries, timeout, id)

        def done(result: object) -> object:
            protocol.transport.stopListening()
            if not isinstance(result, Failure) and address in self.servers:
                self._preferred = self.servers.index(address)
            return result

        d.addBoth(done)
        return d

    def queryTCP(self, queries: Any, timeout: Any = ATTEMPT_TIMEOUT) -> Any:
        if self.connections:
            d = self.connections[0].query(queries, timeout)
        else:
            d = Deferred()
            self.pending.append((d, queries, timeout))
            if not self._connecting:
                self._connecting = True
                host, port = self.pickServer()
                self.reactor.connectTCP(host, port, self._tcp_factory, timeout=ATTEMPT_TIMEOUT)
        d.addErrback(self._drop_tcp_on_timeout)
        return d

    def _drop_tcp_on_timeout(self, failure: Failure) -> Failure:
        # A connection that stopped answering is not trusted again; the
        # next query connects afresh (perhaps to the next server).
        if failure.check(DeferredTimeoutError):
            for protocol in list(self.connections):
                protocol.transport.loseConnection()
        return failure

    def lookup_records(
        self, name: bytes, cls: int, type: int, timeout: Sequence[float] | None
    ) -> Deferred[DnsAnswer]:
        if not self._tcp_only:
            return super().lookup_records(name, cls, type, timeout)
        d = self.queryTCP([dns.Query(name, type, cls)], ATTEMPT_TIMEOUT)
        d.addCallback(self._answers)
        return d

    def filterAnswers(self, message: dns.Message) -> Any:
        if message.trunc and self._tcp_fallback:
            d = self.queryTCP(message.queries, ATTEMPT_TIMEOUT)
            d.addCallback(self._answers)
            return d
        if message.trunc and not message.answers:
            return Failure(_TruncatedAnswer("the UDP answer was truncated and tcp_fallback is off"))
        # Without the TCP retry, what fit in the datagram is the answer.
        return self._answers(message)

    def _answers(self, message: dns.Message) -> Any:
        if message.rCode != dns.OK:
            return Failure(self.exceptionForCode(message.rCode)(message))
        return (message.answers, message.authority, message.additional)

    def connectionMade(self, protocol: Any) -> None:
        self._connecting = False
        if self._closing:
            protocol.transport.loseConnection()
        super().connectionMade(protocol)

    def connectionLost(self, protocol: Any) -> None:
        super().connectionLost(protocol)
        if not self.connections:
            gone, self._gone = self._gone, []
            for d in gone:
                d.callback(None)

    def close(self) -> Deferred[None]:
        self._closing = True
        if not self.connections:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._gone.append(d)
        for protocol in list(self.connections):
            protocol.transport.loseConnection()
        return d


def _source_interface(server: str) -> str:
    try:
        address = ipaddress.ip_address(server)
    except ValueError:
        return ""
    if address.version == 6:
        return "::1" if address.is_loopback else "::"
    return "127.0.0.1" if address.is_loopback else ""


def _addresses_in(response: Any, rtype: int) -> tuple[tuple[str, ...], float]:
    """The addresses of type C{rtype} in an answer, and the clamped TTL."""
    answers = response[0]
    addresses: list[str] = []
    ttls: list[int] = []
    for rr in answers:
        if rr.cls != dns.IN:
            continue
        if rr.type == dns.CNAME:
            ttls.append(rr.ttl)
        elif rr.type == rtype == dns.A:
            addresses.append(rr.payload.dottedQuad())
            ttls.append(rr.ttl)
        elif rr.type == rtype == dns.AAAA:
            addresses.append(socket.inet_ntop(socket.AF_INET6, rr.payload.address))
            ttls.append(rr.ttl)
    ttl = min(ttls) if ttls else TTL_MIN
    return tuple(dict.fromkeys(addresses)), min(max(float(ttl), TTL_MIN), TTL_MAX)


def _reason_for(error: BaseException) -> str:
    if isinstance(error, names_error.DNSNameError | names_error.AuthoritativeDomainError):
        return REASON_NXDOMAIN
    if isinstance(error, names_error.DNSServerError):
        return REASON_SERVFAIL
    if isinstance(error, DeferredTimeoutError | internet_error.TimeoutError | TimeoutError):
        return REASON_ATTEMPT_TIMEOUT
    if type(error) is names_error.DomainError:
        # What an authority or hosts file says about a name it does not know.
        return REASON_NXDOMAIN
    return REASON_OTHER


def _detail_for(error: BaseException) -> str:
    if isinstance(error, _TruncatedAnswer | DeferredTimeoutError):
        return str(error)
    if isinstance(error, names_error.DomainError) and error.args:
        message = error.args[0]
        if isinstance(message, dns.Message):
            return f"the nameserver answered with rcode {message.rCode}"
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
