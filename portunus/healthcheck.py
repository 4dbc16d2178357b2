"""
C{python -m portunus.healthcheck server|edge|standalone}: is this role
doing its job right now?  Exit 0 if so; otherwise print why on stderr and
exit 1.  Container images, Compose files and Kubernetes probes run it.

- C{server}: C{GET /v1/health} on the operator API answers 200 with
  C{{"status": "ok"}}.  The address is the one the server itself uses:
  C{--operator-http-listen}, else C{PORTUNUS_OPERATOR_HTTP_LISTEN}, else
  C{operator_http_listen} in C{<data-dir>/server.toml}, else the default;
  a wildcard address is asked on loopback.
- C{edge}: this user holds an established TCP connection to the
  C{server_endpoint} of the bundle, i.e. the control session is up.  While
  the server is unreachable the edge is unhealthy, though it keeps
  forwarding the rules it has.
- C{standalone}: every port of every rule in the config is bound (TCP
  listening, UDP bound), read from C{/proc/net}; nothing is dialled, so
  no connection reaches a target.

The C{/proc/net} parsers are sans-IO (they take the files' text).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import socket
import sys
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping, Sequence

import attrs

__all__ = ["Socket", "has_session", "health_url", "main", "parse_proc_net", "unbound_ports"]

#: Seconds the server check waits for an answer.
HTTP_TIMEOUT_SECS = 3.0

# /proc/net/{tcp,udp} "st" column values (include/net/tcp_states.h).
_TCP_ESTABLISHED = 0x01
_TCP_LISTEN = 0x0A
_UDP_UNCONNECTED = 0x07

_WILDCARDS = {"0.0.0.0": "127.0.0.1", "::": "::1"}


@attrs.frozen
class Socket:
    """One row of C{/proc/net/tcp[6]} or C{/proc/net/udp[6]}."""

    local: tuple[str, int]
    remote: tuple[str, int]
    state: int
    uid: int


def _address(field: str) -> tuple[str, int]:
    hex_ip, hex_port = field.split(":")
    raw = bytes.fromhex(hex_ip)
    # The kernel prints the address as 32-bit words in host byte order.
    ordered = b"".join(
        raw[i : i + 4][::-1] if sys.byteorder == "little" else raw[i : i + 4]
        for i in range(0, len(raw), 4)
    )
    return str(ipaddress.ip_address(ordered)), int(hex_port, 16)


def parse_proc_net(text: str) -> list[Socket]:
    """The sockets listed in the text of one C{/proc/net/{tcp,udp}[6]} file."""
    sockets = []
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 8:
            continue
        sockets.append(
            Socket(
                local=_address(fields[1]),
                remote=_address(fields[2]),
                state=int(fields[3], 16),
                uid=int(fields[7]),
            )
        )
    return sockets


def unbound_ports(
    wanted: Iterable[tuple[str, int]], tcp: Sequence[Socket], udp: Sequence[Socket]
) -> list[tuple[str, int]]:
    """
    The C{(protocol, port)} pairs of C{wanted} that no socket serves: no
    listening TCP socket, or no unconnected UDP socket, on that port.
    """
    listening = {s.local[1] for s in tcp if s.state == _TCP_LISTEN}
    bound = {s.local[1] for s in udp if s.state == _UDP_UNCONNECTED}
    serving = {"tcp": listening, "udp": bound}
    return [(proto, port) for proto, port in wanted if port not in serving[proto]]


def has_session(sockets: Sequence[Socket], addresses: Iterable[str], port: int, uid: int) -> bool:
    """Whether C{uid} holds an established TCP connection to one of C{addresses}:C{port}."""
    peers = {str(ipaddress.ip_address(a)) for a in addresses}
    mapped = {f"::ffff:{a}" for a in peers if ":" not in a}
    return any(
        s.state == _TCP_ESTABLISHED
        and s.uid == uid
        and s.remote[1] == port
        and s.remote[0] in peers | mapped
        for s in sockets
    )


def _read_proc_net(names: Sequence[str]) -> list[Socket]:
    sockets: list[Socket] = []
    for name in names:
        try:
            with open(f"/proc/net/{name}") as f:
                sockets.extend(parse_proc_net(f.read()))
        except FileNotFoundError:
            # No IPv6 in this network namespace.
            continue
    return sockets


class Unhealthy(Exception):
    """Why the role is not healthy, in one line."""


def health_url(host: str, port: int) -> str:
    """The health URL of an operator API listening on C{host}:C{port}."""
    host = _WILDCARDS.get(host, host)
    return f"http://{f'[{host}]' if ':' in host else host}:{port}/v1/health"


def check_server(data_dir: str, listen: str | None, environ: Mapping[str, str]) -> str:
    from portunus.server.settings import ServerConfigError, load_server_settings

    try:
        settings = load_server_settings(data_dir, environ).with_overrides(
            operator_http_listen=listen
        )
    except ServerConfigError as e:
        raise Unhealthy(e.message) from None
    url = health_url(settings.operator_http_listen.host, settings.operator_http_listen.port)
    try:
        with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT_SECS) as response:
            status, body = response.status, response.read(4096)
    except urllib.error.HTTPError as e:
        status, body = e.code, e.read(4096)
    except OSError as e:
        raise Unhealthy(f"{url}: {getattr(e, 'reason', e)}") from None
    try:
        ok = status == 200 and json.loads(body).get("status") == "ok"
    except (ValueError, AttributeError):
        ok = False
    if not ok:
        raise Unhealthy(f"{url} answered {status}: {body[:200]!r}")
    return f"{url}: ok"


def check_edge(bundle_path: str) -> str:
    from portunus.control.enrollment import parse_endpoint, read_bundle
    from portunus.errors import PortunusError

    try:
        bundle = read_bundle(bundle_path)
    except PortunusError as e:
        raise Unhealthy(e.message) from None
    host, port = parse_endpoint(bundle.server_endpoint)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as e:
        raise Unhealthy(f"cannot resolve {host}: {e}") from None
    addresses = [str(info[4][0]) for info in infos]
    if not has_session(_read_proc_net(["tcp", "tcp6"]), addresses, port, os.getuid()):
        raise Unhealthy(f"no control session to {bundle.server_endpoint}")
    return f"connected to {bundle.server_endpoint}"


def check_standalone(config_path: str) -> str:
    from portunus.dataplane import SUPPORTED_PROTOCOLS
    from portunus.standalone.config import ConfigError, load_config

    try:
        config = load_config(config_path, SUPPORTED_PROTOCOLS)
    except ConfigError as e:
        raise Unhealthy(f"{len(e.issues)} problem(s) in {config_path}") from None
    wanted = [(rule.protocol.value, port) for rule in config.rules for port in rule.listen]
    missing = unbound_ports(
        wanted, _read_proc_net(["tcp", "tcp6"]), _read_proc_net(["udp", "udp6"])
    )
    if missing:
        shown = ", ".join(f"{proto}/{port}" for proto, port in missing[:10])
        more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
        raise Unhealthy(f"not bound: {shown}{more}")
    return f"{len(wanted)} port(s) bound"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m portunus.healthcheck",
        description="Exit 0 if the role is healthy, else print why and exit 1.",
    )
    roles = parser.add_subparsers(dest="role", required=True, metavar="server|edge|standalone")
    server = roles.add_parser("server", help="The operator API answers /v1/health.")
    server.add_argument("--data-dir", default="/var/lib/portunus")
    server.add_argument("--operator-http-listen", default=None)
    edge = roles.add_parser("edge", help="The control session to the server is up.")
    edge.add_argument("--bundle", default="/etc/portunus/client.bundle.json")
    standalone = roles.add_parser("standalone", help="Every rule's ports are bound.")
    standalone.add_argument("--config", default="/etc/portunus/standalone.toml")
    return parser


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    options = _parser().parse_args(argv)
    env = os.environ if environ is None else environ
    try:
        if options.role == "server":
            line = check_server(options.data_dir, options.operator_http_listen, env)
        elif options.role == "edge":
            line = check_edge(options.bundle)
        else:
            line = check_standalone(options.config)
    except Unhealthy as e:
        sys.stderr.write(f"unhealthy: {e}\n")
        return 1
    sys.stdout.write(f"healthy: {line}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
