"""
iperf3 helpers: a persistent server on a loopback port and a JSON client run.

The server is ``iperf3 -s -B 127.0.0.1 -p PORT --idle-timeout 30``; it
serves one test at a time, which is all the bench ever runs.  A client run
is ``iperf3 -c 127.0.0.1 -p PORT -t SECS -J --connect-timeout 3000`` plus
the section's options, bounded by a subprocess timeout, followed by a 0.5 s
pause; a transient failure is retried (see L{client}), and the server is
restarted if a failed test took it down.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from procs import LOOPBACK, BenchError, free_port, run_tool, spawn, stop, wait_bound

#: Pause after each test so the server has finished with it.
PAUSE_SECS = 0.5


class IperfServer:
    """
    @param host: the address to bind (and that clients reach it at).
    @param prefix: argv run before iperf3, e.g. C{ip netns exec TARGET}.
    """

    def __init__(
        self, workdir: Path, udp: bool, host: str = LOOPBACK, prefix: Sequence[str] = ()
    ) -> None:
        self.workdir = workdir
        self.port = free_port(udp_too=udp)
        self.host = host
        self.prefix = list(prefix)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        argv = [*self.prefix, "iperf3", "-s", "-B", self.host, "-p", str(self.port)]
        self.proc = spawn([*argv, "--idle-timeout", "30"], cwd=self.workdir)
        wait_bound(self.port, self.proc, address=self.host, in_namespace=bool(self.prefix))

    def ensure(self) -> None:
        """Restart the server if a failed test took it down."""
        if self.proc is None or self.proc.poll() is not None:
            self.start()

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)


def udp_holders(port: int) -> str:
    """Who holds UDP C{port} on loopback, as C{ss} shows it (for the log)."""
    try:
        out = run_tool(["ss", "-Huanp", f"sport = :{port}"], timeout=10)
    except (BenchError, OSError) as e:
        return f"ss failed: {e}"
    return " | ".join(" ".join(line.split()) for line in out.splitlines()) or "nobody"


@contextmanager
def iperf_server(
    workdir: Path, udp: bool = False, host: str = LOOPBACK, prefix: Sequence[str] = ()
) -> Iterator[IperfServer]:
    server = IperfServer(workdir, udp, host, prefix)
    try:
        server.start()
        yield server
    finally:
        server.stop()


#: iperf3 errors that say "try again", not "the relay is broken": the server
#: still finishing the previous test, or a spurious EAGAIN on the control
#: connection of a saturating UDP test.
TRANSIENT = ("server is busy", "Resource temporarily unavailable")
#: The server cannot bind its UDP stream socket: someone holds its port.
STUCK = "unable to start stream listener: Address already in use"
ATTEMPTS = 3
RETRY_AFTER_SECS = 1.0


def client(
    server: IperfServer,
    port: int,
    secs: int,
    extra: Sequence[str],
    omit: int = 0,
    host: str = LOOPBACK,
    prefix: Sequence[str] = (),
) -> dict[str, Any]:
    """Run one iperf3 client test against C{host}:C{port} (C{server} or a
    relay to it), after C{prefix} (e.g. C{ip netns exec CLIENT}); return its
    JSON report.

    A transient failure (L{TRANSIENT}) is retried after L{RETRY_AFTER_SECS},
    up to L{ATTEMPTS} runs in all; the report's C{"attempts"} says how many
    ran.  If the server's port is taken (L{STUCK}), the error says by whom.
    """
    server.ensure()
    for attempt in range(1, ATTEMPTS + 1):
        try:
            report = _client_once(port, secs, extra, omit, host, prefix)
        except BenchError as e:
            if STUCK in str(e):
                raise BenchError(f"{e}; UDP port {server.port}: {udp_holders(server.port)}") from e
            if attempt == ATTEMPTS or not any(t in str(e) for t in TRANSIENT):
                raise
            time.sleep(RETRY_AFTER_SECS)
            continue
        report["attempts"] = attempt
        time.sleep(PAUSE_SECS)
        return report
    raise AssertionError("unreachable")


def _client_once(
    port: int, secs: int, extra: Sequence[str], omit: int, host: str, prefix: Sequence[str]
) -> dict[str, Any]:
    argv = [*prefix, "iperf3", "-c", host, "-p", str(port), "-t", str(secs), "-J"]
    argv += ["--connect-timeout", "3000", *extra]
    if omit:
        argv += ["-O", str(omit)]
    out = run_tool(argv, timeout=secs + omit + 30, any_status=True)
    try:
        report: dict[str, Any] = json.loads(out)
    except ValueError as e:
        raise BenchError(f"iperf3 printed no JSON: {out[-300:]!r}") from e
    if "error" in report:
        raise BenchError(f"iperf3: {report['error']}")
    return report
