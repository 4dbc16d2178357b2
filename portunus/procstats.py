"""
What this process costs the host: memory, descriptors, CPU time.

Every role can report these (the standalone's stats socket does, metrics
will), so this module depends on nothing in Portunus and reads no reactor.
Figures the platform cannot give are C{None} rather than a guess: resident
memory and open descriptors come from C{/proc} (Linux), the descriptor
limit and CPU times from the standard library.
"""

from __future__ import annotations

import os
import resource

import attrs

__all__ = ["ProcessStats", "open_descriptors", "read_process_stats"]

_DEFAULT_PROC = "/proc/self"


@attrs.frozen
class ProcessStats:
    """One reading of the process's resource use."""

    #: Resident set size (C{VmRSS}), in bytes.
    rss_bytes: int | None
    #: Descriptors open now.
    fd_open: int | None
    #: The soft C{RLIMIT_NOFILE}: how many descriptors the process may open.
    fd_limit: int | None
    #: CPU seconds spent in user mode and in the kernel since the start.
    cpu_user_secs: float
    cpu_system_secs: float


def read_process_stats(proc: str = _DEFAULT_PROC) -> ProcessStats:
    """
    Read the current figures.

    @param proc: the C{/proc} directory to read memory and descriptors
        from; tests point it elsewhere to see a platform without one.
    """
    times = os.times()
    return ProcessStats(
        rss_bytes=_rss_bytes(proc),
        fd_open=_fd_open(proc),
        fd_limit=_fd_limit(),
        cpu_user_secs=times.user,
        cpu_system_secs=times.system,
    )


def _rss_bytes(proc: str) -> int | None:
    try:
        with open(os.path.join(proc, "status"), encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    # "VmRSS:     12345 kB": the kernel always reports kB.
                    fields = line.split()
                    return int(fields[1]) * 1024 if len(fields) >= 2 else None
    except (OSError, ValueError):
        return None
    return None


def open_descriptors(proc: str = _DEFAULT_PROC) -> int | None:
    """How many descriptors the process has open now; C{None} without C{/proc}."""
    return _fd_open(proc)


def _fd_open(proc: str) -> int | None:
    try:
        # Listing the directory opens one descriptor, which it lists too.
        return len(os.listdir(os.path.join(proc, "fd"))) - 1
    except OSError:
        return None


def _fd_limit() -> int | None:
    try:
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (OSError, ValueError):
        return None
    return None if soft == resource.RLIM_INFINITY else soft
