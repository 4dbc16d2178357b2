"""
The open-file limit a forwarding process needs.

Every proxied TCP connection holds two descriptors (client and target),
every UDP flow one, and distributions often start services with a soft
limit of 1024.  A forwarder raises its soft limit to the hard one at start
and warns when even that is low.
"""

from __future__ import annotations

import resource

from twisted.logger import Logger

__all__ = ["RLIMIT_NOFILE_LOW", "raise_nofile_limit"]

log = Logger()

#: Below this many descriptors a forwarder is warned about (about 2,000
#: proxied connections).
RLIMIT_NOFILE_LOW = 4096


def raise_nofile_limit(component: str) -> int:
    """
    Raise the soft open-file limit to the hard one, log the result as
    C{<component>.rlimit_nofile} and warn (C{<component>.rlimit_nofile_low})
    if it stays under L{RLIMIT_NOFILE_LOW}.  Returns the soft limit now in
    force.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    log.info(
        "open-file limit {soft} (hard {hard})",
        event=f"{component}.rlimit_nofile",
        soft=soft,
        hard=hard,
    )
    if soft < RLIMIT_NOFILE_LOW:
        log.warn(
            "open-file limit {soft} is low: each connection needs two; "
            "raise LimitNOFILE (systemd) or ulimit -n to at least {low}",
            event=f"{component}.rlimit_nofile_low",
            soft=soft,
            low=RLIMIT_NOFILE_LOW,
        )
    return soft
