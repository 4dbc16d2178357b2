"""
Child processes for the benchmarks: start them, wait for them, measure them, stop them.

Every process is started in its own session (so its whole group, e.g. socat's
forked children or the forwarder's workers, can be signalled at once), gets
SIGKILL if this process dies (PR_SET_PDEATHSIG), and is registered so that
L{stop_all} -- run from C{finally} blocks, C{atexit} and the SIGTERM/SIGINT
handlers -- ends it: SIGTERM to the group, then SIGKILL after a grace period.

Measurements read /proc: the RSS and CPU time of a process tree are the
sums over the process and its descendants.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import random
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import IO

LOOPBACK = "127.0.0.1"
REPO = Path(__file__).resolve().parents[2]
VENV_BIN = REPO / ".venv" / "bin"
HERE = Path(__file__).resolve().parent
TICKS_PER_SEC = os.sysconf("SC_CLK_TCK")
#: Ports for listeners and targets are picked from here up to the
#: ephemeral range (see L{free_port}).
PORTS_FROM = 20000
#: Open-file limit asked for (as root the hard limit can be raised to it).
WANTED_NOFILE = 65536

_PR_SET_PDEATHSIG = 1
_running: list[subprocess.Popen[bytes]] = []
#: Session ids of everything spawned (each child leads its own session).
_sessions: set[int] = set()


class BenchError(RuntimeError):
    """A benchmark step could not run (a child did not start, a tool failed)."""


# -- starting and stopping ---------------------------------------------------


def _child_setup() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def spawn(
    argv: Sequence[str],
    *,
    cwd: Path,
    env: dict[str, str] | None = None,
    stdout: int | IO[bytes] | None = subprocess.DEVNULL,
    stderr: int | IO[bytes] | None = subprocess.DEVNULL,
) -> subprocess.Popen[bytes]:
    """Start C{argv} in its own session; L{stop_all} will end it."""
    proc = subprocess.Popen(
        list(argv),
        cwd=cwd,
        env={**os.environ, **(env or {})},
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        stderr=stderr,
        start_new_session=True,
        preexec_fn=_child_setup,
    )
    _running.append(proc)
    _sessions.add(proc.pid)
    return proc


def stop(proc: subprocess.Popen[bytes], grace: float = 5.0) -> None:
    """SIGTERM the process group, SIGKILL it if still there after C{grace} s."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=grace)
    # The leader may be gone while forked children (socat) linger.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=grace)
    if proc in _running:
        _running.remove(proc)


def stop_all() -> None:
    while _running:
        stop(_running[-1])


def leftovers(patience: float = 5.0) -> list[str]:
    """Processes still alive in any session this run started: should be none.

    Zombies do not count (a killed socat's children are reaped by init, in
    its own time); live ones get C{patience} seconds to exit.
    """
    deadline = time.monotonic() + patience
    while True:
        left = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            with contextlib.suppress(OSError):
                stat = (entry / "stat").read_text()
                fields = stat[stat.rindex(")") + 2 :].split()
                if int(fields[3]) in _sessions and fields[0] != "Z":
                    left.append(f"{entry.name} {stat[stat.index('(') : stat.rindex(')') + 1]}")
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.5)


def _on_signal(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def install_cleanup() -> None:
    """Stop every child at exit, and turn SIGTERM/SIGHUP into a clean exit."""
    atexit.register(stop_all)
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _on_signal)


def run_tool(
    argv: Sequence[str], timeout: float, cwd: Path | None = None, any_status: bool = False
) -> str:
    """Run a bounded client command; return its stdout or raise L{BenchError}.

    A non-zero exit status raises too, unless C{any_status}.
    """
    try:
        done = subprocess.run(
            list(argv),
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=timeout,
            preexec_fn=_child_setup,
            check=False,
        )
    except subprocess.TimeoutExpired as e:
        raise BenchError(f"{argv[0]} timed out after {timeout:.0f}s") from e
    if done.returncode != 0 and not any_status:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise BenchError(f"{' '.join(argv)} exited {done.returncode}: {' / '.join(tail)}")
    return done.stdout


# -- ports and readiness -----------------------------------------------------


def _ephemeral_low() -> int:
    low = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0]
    return int(low)


def free_port(udp_too: bool = False) -> int:
    """A loopback port free for TCP (and UDP too if asked) right now.

    Picked below the kernel's ephemeral range: a relay's outgoing socket
    gets its source port from that range, and one that drew the target's
    own port while the target was not bound (iperf3 binds its UDP socket
    per test) would be connected to itself and hold the port.
    """
    low = _ephemeral_low()
    for _ in range(200):
        port = random.randrange(PORTS_FROM, low) if low > PORTS_FROM + 1000 else 0
        try:
            with socket.socket() as s:
                s.bind((LOOPBACK, port))
                port = int(s.getsockname()[1])
            if udp_too:
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                    u.bind((LOOPBACK, port))
        except OSError:
            continue
        return port
    raise BenchError("no free port")


def _bound(port: int, proto: str, address: str = LOOPBACK, pid: int | None = None) -> bool:
    """Is a TCP listener (or a UDP socket) bound to C{address}:C{port}?

    With C{pid}, looked up in that process's network namespace
    (C{/proc/PID/net}), else in ours.
    """
    wanted = f"{socket.inet_aton(address)[::-1].hex().upper()}:{port:04X}"
    table = Path(f"/proc/{pid}/net/{proto}" if pid else f"/proc/net/{proto}")
    lines = table.read_text().splitlines()[1:]
    for line in lines:
        fields = line.split()
        if fields[1] == wanted and (proto == "udp" or fields[3] == "0A"):
            return True
    return False


def wait_until(check: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise BenchError(f"timed out waiting for {what}")
        time.sleep(0.05)


def wait_bound(
    port: int,
    proc: subprocess.Popen[bytes] | None = None,
    proto: str = "tcp",
    address: str = LOOPBACK,
    in_namespace: bool = False,
) -> None:
    """Wait for a listener without connecting to it (a probe would reach the target).

    C{in_namespace}: C{proc} runs in another network namespace (started
    with C{ip netns exec}, which execs the command under the same pid);
    look there.
    """
    pid = proc.pid if in_namespace and proc is not None else None

    def ready() -> bool:
        if proc is not None and proc.poll() is not None:
            raise BenchError(f"{proc.args!r} exited with {proc.returncode}")
        return _bound(port, proto, address, pid)

    wait_until(ready, f"{proto} port {port}")


# -- measuring -----------------------------------------------------------------


def tree_pids(pid: int) -> list[int]:
    """C{pid} and all its descendants (that are still alive)."""
    pids = [pid]
    for p in pids:
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{p}/task"):
                children = Path(f"/proc/{p}/task/{task}/children").read_text()
                pids.extend(int(c) for c in children.split())
    return pids


def vm_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise BenchError(f"no VmRSS for {pid}")


def tree_rss(pid: int) -> int:
    """Sum of VmRSS over the tree (shared pages are counted once per process)."""
    total = 0
    for p in tree_pids(pid):
        with contextlib.suppress(OSError):
            total += vm_rss(p)
    return total


def tree_cpu_seconds(pid: int) -> float:
    """CPU time of the tree, in seconds: utime + stime of every live process,
    plus cutime + cstime (children that exited and were reaped: socat's
    per-connection children, for one)."""
    ticks = 0
    for p in tree_pids(pid):
        with contextlib.suppress(OSError):
            ticks += sum(int(f) for f in _stat_fields(p)[11:15])
    return ticks / TICKS_PER_SEC


def _stat_fields(pid: int | str) -> list[str]:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rindex(")") + 2 :].split()


def others_cpu() -> tuple[float, dict[int, float]]:
    """(monotonic time, CPU seconds of every process that is neither this
    one, nor one of its descendants, nor a kernel thread).

    Each process's figure includes its reaped children (cutime + cstime), so
    short-lived processes that other engineers' tests start and end in
    between count too, once their parent has reaped them.
    """
    ours = set(tree_pids(os.getpid()))
    cpu: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in ours:
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = _stat_fields(entry.name)
            if int(fields[1]) in (0, 2) and entry.name != "1":  # kthreadd and its threads
                continue
            cpu[int(entry.name)] = sum(int(f) for f in fields[11:15]) / TICKS_PER_SEC
    return time.monotonic(), cpu


def others_cores(
    before: tuple[float, dict[int, float]], after: tuple[float, dict[int, float]]
) -> float:
    """Cores' worth of CPU that processes outside this run used in between."""
    elapsed = after[0] - before[0]
    used = sum(secs - before[1].get(pid, 0.0) for pid, secs in after[1].items())
    return max(0.0, used / elapsed) if elapsed > 0 else 0.0


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def raise_nofile() -> tuple[int, int]:
    """Raise our open-file limit (children inherit it): hard too when root."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard < WANTED_NOFILE:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (WANTED_NOFILE, WANTED_NOFILE))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft, hard


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
