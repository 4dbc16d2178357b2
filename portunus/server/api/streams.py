"""
C{GET /v1/rules/<id>/stats/stream}: a rule's stats as server-sent events.

The stream opens with the plane's cached snapshot (the JSON of
C{GET /v1/rules/<id>/stats}), then carries one C{stats} event for each
report the rule's client sends (every 5 s), pushed by the plane's
subscription rather than polled.  A C{: keepalive} comment every 30 s
keeps proxies from timing an idle stream out, and C{event: removed} ends
the stream when the rule goes away.

A reader that does not keep up must not make the server buffer for it.
The stream is a push producer on the request: when the connection's send
buffer fills, Twisted pauses it, and while paused it holds only the newest
snapshot, counting the ones it skips (C{stats_stream.lagged} is logged
when it catches up or ends).  Streams are bounded in number, in all and
per user, since each holds a connection open.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.web.iweb import IRequest
from zope.interface import implementer

from portunus.errors import PortunusError
from portunus.server.api.request import ApiContext, Call, Stream
from portunus.server.api.route import Routes
from portunus.server.api.rules import flag, owned_rule, stats_json
from portunus.server.api.schemas import FLAG

__all__ = [
    "KEEPALIVE_SECS",
    "MAX_STREAMS",
    "MAX_STREAMS_PER_USER",
    "ROUTES",
    "StreamBudget",
    "sse_event",
]

log = Logger()

#: Streams the server serves at once, and streams one user may hold.
MAX_STREAMS = 256
MAX_STREAMS_PER_USER = 16
#: Seconds between keepalive comments.
KEEPALIVE_SECS = 30.0

_HEADERS = (("cache-control", "no-cache"), ("x-accel-buffering", "no"))


def sse_event(event: str, data: object) -> bytes:
    """One server-sent event; compact JSON never spans lines."""
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


@attrs.define
class StreamBudget:
    """How many streams are open, in all and per user."""

    total: int = 0
    per_user: dict[str, int] = attrs.field(factory=dict)

    def acquire(self, user_id: str) -> Callable[[], None]:
        """
        Count one more stream for C{user_id}, or refuse it with
        C{rate_limited}; returns the function that gives it back (once).
        """
        if self.total >= MAX_STREAMS:
            raise PortunusError(
                "rate_limited",
                f"the server already serves {MAX_STREAMS} live stats streams, its limit; "
                "retry later, or poll GET /v1/rules/<id>/stats",
                limit=MAX_STREAMS,
            )
        mine = self.per_user.get(user_id, 0)
        if mine >= MAX_STREAMS_PER_USER:
            raise PortunusError(
                "rate_limited",
                f"you already have {mine} live stats streams open, the limit per user; "
                "close one before opening another",
                limit=MAX_STREAMS_PER_USER,
            )
        self.total += 1
        self.per_user[user_id] = mine + 1
        released = False

        def release() -> None:
            nonlocal released
            if released:
                return
            released = True
            self.total -= 1
            left = self.per_user[user_id] - 1
            if left:
                self.per_user[user_id] = left
            else:
                del self.per_user[user_id]

        return release


@implementer(IPushProducer)
class _StatsStream:
    """
    One reader's stream of one rule.  It writes to the request only while
    the transport is not paused; meanwhile the newest snapshot waits in
    C{_pending} and older ones are dropped.
    """

    def __init__(
        self,
        rule_id: int,
        per_target: bool,
        snapshot: dict[str, Any],
        clock: IReactorTime,
        release: Callable[[], None],
    ) -> None:
        self._rule_id = rule_id
        self._per_target = per_target
        self._pending: dict[str, Any] | None = snapshot
        self._release = release
        self._unsubscribe: Callable[[], None] = lambda: None
        # twisted.web's Request: IRequest, and IConsumer and notifyFinish too.
        self._request: Any = None
        self._paused = False
        self._closed = False
        #: Snapshots dropped since the stream last caught up, and in all.
        self._skipped = 0
        self.lagged = 0
        self._keepalive = LoopingCall(self._comment)
        self._keepalive.clock = clock
        self._done: Deferred[None] = Deferred(lambda _: self._close())

    def follow(self, subscribe: Callable[..., Callable[[], None]]) -> None:
        """Subscribe to the rule's reports with C{subscribe(rule_id, callback)}."""
        self._unsubscribe = subscribe(self._rule_id, self.deliver)

    def run(self, request: IRequest) -> Deferred[None]:
        """Write the snapshot and follow the rule until it is removed or the reader leaves."""
        if self._closed:
            return self._done
        self._request = request
        request_: Any = request
        request_.registerProducer(self, True)
        request_.notifyFinish().addBoth(lambda _: self._close())
        self._flush()
        if not self._closed:
            self._keepalive.start(KEEPALIVE_SECS, now=False)
        return self._done

    def deliver(self, entry: dict[str, Any] | None) -> None:
        """The plane's callback: a new report, or C{None} for a removed rule."""
        if self._closed:
            return
        if entry is None:
            if self._pending is not None and self._request is not None:
                self._drop()
            self._pending = None
            self._write(sse_event("removed", {"rule_id": self._rule_id}))
            self._close()
            return
        if self._pending is not None and self._paused:
            self._drop()
        self._pending = entry
        self._flush()

    def _drop(self) -> None:
        self._skipped += 1
        self.lagged += 1

    def _flush(self) -> None:
        if self._paused or self._closed or self._request is None or self._pending is None:
            return
        data = stats_json(self._pending, self._rule_id, per_port=False, per_target=self._per_target)
        self._pending = None
        self._write(sse_event("stats", data))
        self._caught_up()

    def _caught_up(self) -> None:
        if self._skipped:
            log.warn(
                "stats stream of rule {rule_id} fell behind its reader: "
                "{skipped} snapshot(s) skipped",
                event="stats_stream.lagged",
                rule_id=str(self._rule_id),
                skipped=self._skipped,
                total_skipped=self.lagged,
            )
            self._skipped = 0

    def _write(self, data: bytes) -> None:
        if self._request is not None and not self._closed:
            self._request.write(data)

    def _comment(self) -> None:
        if not self._paused:
            self._write(b": keepalive\n\n")

    def _close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._unsubscribe()
        self._release()
        if self._keepalive.running:
            self._keepalive.stop()
        if self._request is not None and self._request.channel is not None:
            # Still connected: let the connection serve its next request.
            self._request.unregisterProducer()
        self._caught_up()
        if not self._done.called:
            self._done.callback(None)

    # IPushProducer: the connection's send buffer is full, or drained.

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        self._flush()

    def stopProducing(self) -> None:
        self._close()


@attrs.frozen
class _Streams:
    """What the stream route serves from: the context and the app's one budget."""

    ctx: ApiContext
    budget: StreamBudget = attrs.field(factory=StreamBudget)


ROUTES = Routes("rules", bind=_Streams)


@ROUTES.route(
    "GET",
    "/v1/rules/{rule_id}/stats/stream",
    "ruleStatsStream",
    "A rule's stats as server-sent events",
    answer="EventStream",
    media_type="text/event-stream",
    codes=("rule_not_found", "not_owner", "rate_limited"),
    query={"per_target": FLAG},
    headers={"Cache-Control": "no-cache"},
    description="The stream opens with an `event: stats` carrying the last snapshot "
    "(the JSON of GET /v1/rules/{rule_id}/stats, without per_port), then one `stats` "
    "event per report of the client, a `: keepalive` comment every 30 s, and "
    "`event: removed` when the rule goes away. Streams are limited in all and per "
    "user (rate_limited).",
)
async def stream(streams: _Streams, call: Call, rule_id: str) -> object:
    plane = streams.ctx.plane
    view = await owned_rule(plane, call, rule_id)
    snapshot = await plane.rule_stats(view.rule.id)
    release = streams.budget.acquire(call.who.user_id)
    follower = _StatsStream(
        view.rule.id,
        flag(call.request, b"per_target"),
        snapshot,
        streams.ctx.clock,
        release,
    )
    follower.follow(plane.subscribe_stats)
    return Stream(follower.run, headers=_HEADERS)
