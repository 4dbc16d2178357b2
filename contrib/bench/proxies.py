"""
The variants under test: each starts a TCP (and optionally UDP) relay from a
fresh loopback port to a target port, and reports the port clients use.

    direct                 no relay: clients use the target port itself
    standalone             .venv/bin/twistd -n --pidfile= portunus-standalone
                           --config CFG --log-level info (splice, the Linux
                           default); CFG has one TCP rule (plus a UDP rule on
                           the same port for the UDP section),
                           shutdown_drain_secs = 0 and stats disabled
    standalone-userspace   the same with PORTUNUS_DISABLE_SPLICE=1
    standalone-2w          the same (splice) with --workers 2
    standalone-2w-userspace  --workers 2 and PORTUNUS_DISABLE_SPLICE=1
    haproxy                haproxy -db -f CFG: mode tcp, option splice-request
                           and splice-response, maxconn sized to the open-file
                           limit, maxpipes 256, timeouts; everything else
                           HAProxy's default (so nbthread = one per CPU)
    socat                  socat TCP4-LISTEN:P,bind=127.0.0.1,fork,reuseaddr,
                           backlog=1024 TCP4:127.0.0.1:T (socat's default
                           backlog is 5); for UDP also
                           socat -T 30 UDP4-LISTEN:P,bind=127.0.0.1,fork,
                           reuseaddr UDP4:127.0.0.1:T
    twisted-portforward    twistd -n --pidfile= portforward
                           -p tcp:P:interface=127.0.0.1 -d T -h 127.0.0.1

The forwarder logs at info level so the bench can see it start (its
per-connection events are all debug level) and whether it chose splice.
Readiness is read from /proc/net/{tcp,udp}, never by connecting: a probe
connection would reach the target (and confuse an iperf3 server).
"""

from __future__ import annotations

import contextlib
import json
import resource
import subprocess
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from procs import (
    LOOPBACK,
    VENV_BIN,
    BenchError,
    free_port,
    log,
    run_tool,
    spawn,
    stop,
    wait_bound,
    wait_until,
)

LABELS = {
    "direct": "direct (no proxy)",
    "standalone": "Portunus standalone, splice",
    "standalone-userspace": "Portunus standalone, userspace",
    "standalone-2w": "Portunus standalone, 2 workers, splice",
    "standalone-2w-userspace": "Portunus standalone, 2 workers, userspace",
    "haproxy": "HAProxy, mode tcp, splice",
    "socat": "socat, fork",
    "twisted-portforward": "twistd portforward",
}
ALL_TCP = tuple(LABELS)
#: HAProxy needs 2 descriptors per connection plus 2 per splice pipe, and
#: refuses to start if its open-file limit is lower; the bench runs at most
#: a few streams at once, so 256 pipes are plenty.
HAPROXY_MAXPIPES = 256
HAPROXY_MAXCONN_CAP = 20000


def haproxy_maxconn() -> int:
    """The most connections HAProxy can take under our open-file limit."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return min(HAPROXY_MAXCONN_CAP, (soft - 2 * HAPROXY_MAXPIPES - 200) // 2)


@dataclass(frozen=True)
class Placement:
    """Where a variant runs: a command prefix (C{ip netns exec EDGE}) and
    the addresses it listens on and forwards to; loopback by default."""

    prefix: tuple[str, ...] = ()
    listen: str = LOOPBACK
    target_host: str = LOOPBACK


ON_LOOPBACK = Placement()


@dataclass
class Proxy:
    key: str
    port: int
    #: The address clients connect to.
    host: str = LOOPBACK
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    log: Path | None = None
    #: Why the variant did not start; its trials then fail with this.
    error: str | None = None

    def check(self) -> None:
        if self.error is not None:
            raise BenchError(f"did not start: {self.error}")

    @property
    def pid(self) -> int:
        if not self.procs:
            raise BenchError(f"{self.key} has no process to measure")
        return self.procs[0].pid

    def events(self) -> list[str]:
        """The forwarder's logged event names (empty for other variants)."""
        if self.log is None or not self.log.exists():
            return []
        names = []
        for line in self.log.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError, AttributeError):
                names.append(json.loads(line).get("event", ""))
        return names

    def relay_mode(self) -> str | None:
        """ "splice"/"userspace" as the forwarder reported it, if it did."""
        events = self.events()
        if "proxy.splice_unsupported_fallback" in events:
            return "userspace (splice refused)"
        if "proxy.splice_selected" in events:
            return "splice"
        return "userspace" if self.log is not None else None

    def stop(self) -> None:
        for proc in reversed(self.procs):
            stop(proc)


def workers_available(workdir: Path) -> bool:
    """Does this checkout's portunus-standalone take C{--workers}?"""
    try:
        out = run_tool(
            [str(VENV_BIN / "twistd"), "portunus-standalone", "--help"], timeout=60, cwd=workdir
        )
    except BenchError:
        return False
    return "--workers" in out


def _standalone_config(port: int, target: int, udp: bool, where: Placement) -> str:
    rules = [("bench-tcp", "tcp")] + ([("bench-udp", "udp")] if udp else [])
    text = (
        "[global]\n"
        'log_level = "warn"\n'
        f'listen_addresses = ["{where.listen}"]\n'
        "shutdown_drain_secs = 0\n"
        "[stats]\n"
        "enabled = false\n"
    )
    for name, proto in rules:
        text += (
            f'[[rule]]\nname = "{name}"\nprotocol = "{proto}"\n'
            f'listen_port = {port}\ntarget = "{where.target_host}:{target}"\n'
        )
    return text


def start_standalone(
    key: str, target: int, workdir: Path, udp: bool, where: Placement = ON_LOOPBACK
) -> Proxy:
    port = free_port(udp_too=udp)
    config = workdir / f"{key}-{port}.toml"
    config.write_text(_standalone_config(port, target, udp, where))
    workers = 2 if key.startswith("standalone-2w") else 1
    argv = [*where.prefix, str(VENV_BIN / "twistd"), "-n", "--pidfile="]
    argv += ["portunus-standalone", "--config", str(config), "--log-level", "info"]
    if workers > 1:
        argv += ["--workers", str(workers)]
    env = {"PORTUNUS_DISABLE_SPLICE": "1" if key.endswith("userspace") else ""}
    logfile = workdir / f"{key}-{port}.log"
    with logfile.open("wb") as err:
        proc = spawn(argv, cwd=workdir, env=env, stderr=err)
    proxy = Proxy(key, port, where.listen, [proc], logfile)

    def started() -> bool:
        if proc.poll() is not None:
            tail = logfile.read_text(errors="replace")[-600:]
            raise BenchError(f"{key} exited with {proc.returncode}: {tail}")
        events = proxy.events()
        wanted = events.count("standalone.worker_started") >= workers if workers > 1 else True
        return "standalone.started" in events and wanted

    try:
        wait_until(started, f"{key} to start", timeout=30)
        wait_bound(port, proc, address=where.listen, in_namespace=bool(where.prefix))
    except BaseException:
        proxy.stop()
        raise
    return proxy


def haproxy_config(port: int, target: int, where: Placement = ON_LOOPBACK) -> str:
    return f"""global
    maxconn {haproxy_maxconn()}
    maxpipes {HAPROXY_MAXPIPES}

defaults
    mode tcp
    timeout connect 5s
    timeout client 10m
    timeout server 10m
    option splice-request
    option splice-response

frontend bench
    bind {where.listen}:{port}
    default_backend target

backend target
    server target {where.target_host}:{target}
"""


def _spawn_ready(
    proxy: Proxy,
    argv: list[str],
    workdir: Path,
    proto: str = "tcp",
    where: Placement = ON_LOOPBACK,
) -> subprocess.Popen[bytes]:
    """Start one process of C{proxy}, stderr to a log; wait for its port."""
    logfile = workdir / f"{proxy.key}-{proxy.port}-{proto}.err"
    with logfile.open("wb") as err:
        proc = spawn([*where.prefix, *argv], cwd=workdir, stderr=err)
    proxy.procs.append(proc)
    try:
        wait_bound(
            proxy.port, proc, proto=proto, address=where.listen, in_namespace=bool(where.prefix)
        )
    except BenchError as e:
        tail = " / ".join(logfile.read_text(errors="replace").strip().splitlines()[-3:])
        proxy.stop()
        raise BenchError(f"{e}: {tail}") from e
    except BaseException:
        proxy.stop()
        raise
    return proc


def start_haproxy(target: int, workdir: Path, where: Placement = ON_LOOPBACK) -> Proxy:
    proxy = Proxy("haproxy", free_port(), where.listen)
    config = workdir / f"haproxy-{proxy.port}.cfg"
    config.write_text(haproxy_config(proxy.port, target, where))
    _spawn_ready(proxy, ["haproxy", "-db", "-f", str(config)], workdir, where=where)
    return proxy


def start_socat(target: int, workdir: Path, udp: bool) -> Proxy:
    proxy = Proxy("socat", free_port(udp_too=udp))
    listen = f"{proxy.port},bind={LOOPBACK},fork,reuseaddr"
    tcp = ["socat", f"TCP4-LISTEN:{listen},backlog=1024", f"TCP4:{LOOPBACK}:{target}"]
    _spawn_ready(proxy, tcp, workdir)
    if udp:
        dgram = ["socat", "-T", "30", f"UDP4-LISTEN:{listen}", f"UDP4:{LOOPBACK}:{target}"]
        _spawn_ready(proxy, dgram, workdir, proto="udp")
    return proxy


def start_portforward(target: int, workdir: Path) -> Proxy:
    proxy = Proxy("twisted-portforward", free_port())
    argv = [str(VENV_BIN / "twistd"), "-n", "--pidfile=", "portforward"]
    argv += ["-p", f"tcp:{proxy.port}:interface={LOOPBACK}", "-d", str(target), "-h", LOOPBACK]
    _spawn_ready(proxy, argv, workdir)
    return proxy


def start(
    key: str, target: int, workdir: Path, udp: bool = False, where: Placement = ON_LOOPBACK
) -> Proxy:
    if key == "direct":
        return Proxy("direct", target, where.target_host)
    if key.startswith("standalone"):
        return start_standalone(key, target, workdir, udp, where)
    if key == "haproxy":
        return start_haproxy(target, workdir, where)
    if key == "socat":
        return start_socat(target, workdir, udp)
    if key == "twisted-portforward":
        return start_portforward(target, workdir)
    raise ValueError(key)


@contextlib.contextmanager
def running(
    keys: Sequence[str],
    target: int,
    workdir: Path,
    udp: bool = False,
    where: Placement = ON_LOOPBACK,
    starter: Callable[..., Proxy] | None = None,
) -> Iterator[dict[str, Proxy]]:
    """Start every variant in C{keys} towards C{target}; stop them all after.

    C{starter} (default L{start}) is called as C{starter(key, target,
    workdir, udp, where)}, for sections with variants of their own.
    """
    proxies: dict[str, Proxy] = {}
    try:
        for key in keys:
            try:
                proxies[key] = (starter or start)(key, target, workdir, udp, where)
            except BenchError as e:
                log(f"  ! {key} did not start: {e}")
                proxies[key] = Proxy(key, 0, error=str(e))
        yield proxies
    finally:
        for proxy in proxies.values():
            proxy.stop()
