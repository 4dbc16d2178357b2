"""
The server's settings: C{<data-dir>/server.toml}, the environment and the
command line, merged into one validated L{ServerSettings}.

Precedence, strongest first: command-line flag (applied by the caller
through L{ServerSettings.with_overrides}), environment variable, the key
in C{server.toml}, the built-in default.  Only C{operator_http_listen} and
C{advertised_endpoint} can come from the environment or a flag, as in
Portunus.

Like the standalone parser, loading reports I{every} problem at once, in
one C{config_invalid} error whose message has one line per problem::

    server.toml: metrics_listen: 0.0.0.0 is not a loopback address; ...
    PORTUNUS_OPERATOR_HTTP_LISTEN: '7080' is not host:port; ...

Parsing is sans-IO (L{parse_server_settings} takes text);
L{load_server_settings} is the thin file-reading shell around it.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

import attrs

from portunus.addresses import (
    AddressError,
    addresses_overlap,
    bracket,
    format_host_port,
    ip_version,
    is_host_name,
    parse_port,
    split_host_port,
)
from portunus.bounds import (
    ACK_TIMEOUT_SECS,
    CONTROL_HANDSHAKE_TIMEOUT_SECS,
    CONTROL_HELLO_TIMEOUT_SECS,
    CONTROL_MAX_UNAUTHENTICATED,
    CONTROL_MAX_UNAUTHENTICATED_PER_SOURCE,
    RANGE_RULE_MAX_PORTS,
    SHUTDOWN_DRAIN_SECS,
    UDP_FLOW_IDLE_SECS,
    UDP_MAX_FLOWS,
    Bound,
)
from portunus.dataplane.resolver import ResolverSettings, resolver_settings_from_table
from portunus.errors import PortunusError
from portunus.fields import FieldChecker, unknown_key_message
from portunus.fields import describe_value as _describe
from portunus.fields import printable as _safe
from portunus.server.gate import GateLimits

__all__ = [
    "ADVERTISED_ENDPOINT_ENV",
    "CONTROL_LIMIT_KEYS",
    "OPERATOR_HTTP_LISTEN_ENV",
    "SERVER_TOML",
    "SERVER_TOML_KEYS",
    "AdvertisedEndpoint",
    "ListenAddress",
    "ListenerKind",
    "ServerConfigError",
    "ServerSettings",
    "SettingsIssue",
    "load_server_settings",
    "parse_advertised_endpoint",
    "parse_listen_address",
    "parse_server_settings",
]

#: The settings file's name inside the data dir.
SERVER_TOML = "server.toml"
#: Overrides C{operator_http_listen} (a C{--operator-http-listen} flag wins).
OPERATOR_HTTP_LISTEN_ENV = "PORTUNUS_OPERATOR_HTTP_LISTEN"
#: Overrides C{advertised_endpoint} (a C{--advertised-endpoint} flag wins).
ADVERTISED_ENDPOINT_ENV = "PORTUNUS_ADVERTISED_ENDPOINT"

#: Every key C{server.toml} accepts, in documentation order.
SERVER_TOML_KEYS: tuple[str, ...] = (
    "control_listen",
    "operator_http_listen",
    "metrics_listen",
    "tls_cert_path",
    "tls_key_path",
    "advertised_endpoint",
    "range_rule_max_ports",
    "udp_flow_idle_secs",
    "udp_max_flows_per_rule",
    "operator_token",
    "operator_http_public_origin",
    "shutdown_drain_timeout_secs",
    "ack_timeout_secs",
    "control_handshake_timeout_secs",
    "control_hello_timeout_secs",
    "control_max_unauthenticated",
    "control_max_unauthenticated_per_source",
    "resolver",
)

#: The C{server.toml} keys of L{GateLimits}: key -> (attribute, bound).
CONTROL_LIMIT_KEYS: Mapping[str, tuple[str, Bound[Any]]] = {
    "control_handshake_timeout_secs": ("handshake_timeout_secs", CONTROL_HANDSHAKE_TIMEOUT_SECS),
    "control_hello_timeout_secs": ("hello_timeout_secs", CONTROL_HELLO_TIMEOUT_SECS),
    "control_max_unauthenticated": ("max_unauthenticated", CONTROL_MAX_UNAUTHENTICATED),
    "control_max_unauthenticated_per_source": (
        "max_unauthenticated_per_source",
        CONTROL_MAX_UNAUTHENTICATED_PER_SOURCE,
    ),
}

# Keys Portunus's server.toml has that this server does not take: each gets
# a message saying so instead of a bare "unknown key".
_NOT_SUPPORTED: Mapping[str, str] = {
    "log_format": "is not used: choose the format with --log-format json|pretty; remove the line",
    "token_store_path": "is a legacy key that nothing reads any more; remove the line",
    "operator_store_path": "is a legacy key that nothing reads any more; remove the line",
}

#: Which listener L{ServerSettings.endpoint_description} describes.
ListenerKind = Literal["control", "operator_http", "metrics"]

_MAX_TOKEN_BYTES = 256
_LISTEN_EXAMPLE = "write it as host:port, e.g. 127.0.0.1:7080 or [::1]:7080"


# ---------------------------------------------------------------------------
# Values


@attrs.frozen
class ListenAddress:
    """
    An IP address and TCP port to listen on.

    @ivar host: an IP literal, IPv6 without brackets.
    """

    host: str
    port: int

    def __str__(self) -> str:
        return format_host_port(self.host, self.port)

    @property
    def is_loopback(self) -> bool:
        """Whether only this machine can connect."""
        return ipaddress.ip_address(self.host).is_loopback

    def endpoint_description(self) -> str:
        """
        This address as a Twisted server endpoint string, for
        L{twisted.internet.endpoints.serverFromString}: C{tcp:7443:interface=0.0.0.0},
        or C{tcp6:7081:interface=\\:\\:1} (colons escaped, as the endpoint
        parser requires).
        """
        kind = "tcp6" if ipaddress.ip_address(self.host).version == 6 else "tcp"
        return f"{kind}:{self.port}:interface={self.host.replace(':', chr(92) + ':')}"


@attrs.frozen
class AdvertisedEndpoint:
    """
    The address clients are told to dial (C{host:port} or a bare host).

    @ivar host: a DNS name or IP literal, IPv6 without brackets.
    @ivar port: C{None} for a bare host: the control port is used.
    """

    host: str
    port: int | None = None

    def __str__(self) -> str:
        if self.port is None:
            return bracket(self.host)
        return format_host_port(self.host, self.port)

    def with_port(self, default_port: int) -> str:
        """C{host:port} to hand to clients, C{default_port} filling a bare host."""
        port = self.port if self.port is not None else default_port
        return format_host_port(self.host, port)


def _redacted(value: str | None) -> str:
    return "None" if value is None else "'<redacted>'"


def _default_cert(settings: ServerSettings) -> str:
    return os.path.join(settings.data_dir, "server.crt")


def _default_key(settings: ServerSettings) -> str:
    return os.path.join(settings.data_dir, "server.key")


@attrs.frozen(kw_only=True)
class ServerSettings:
    """
    Validated server settings.  Build them with L{load_server_settings}
    (which checks everything); the constructor trusts its arguments.

    @ivar data_dir: absolute path of the data dir.
    @ivar tls_cert_path: absolute; a relative C{server.toml} value is taken
        from the data dir.
    @ivar operator_token: legacy bootstrap bearer; never in C{repr}.
    @ivar ack_timeout_secs: how long a push waits for the client's answer
        by default (Portunus's C{--ack-timeout}; a C{server.toml} key here).
    @ivar shutdown_drain_timeout_secs: accepted for Portunus compatibility.
    """

    data_dir: str
    control_listen: ListenAddress = ListenAddress("0.0.0.0", 7443)
    operator_http_listen: ListenAddress = ListenAddress("127.0.0.1", 7080)
    metrics_listen: ListenAddress = ListenAddress("127.0.0.1", 7081)
    tls_cert_path: str = attrs.field(
        default=attrs.Factory(_default_cert, takes_self=True),
    )
    tls_key_path: str = attrs.field(
        default=attrs.Factory(_default_key, takes_self=True),
    )
    advertised_endpoint: AdvertisedEndpoint | None = None
    range_rule_max_ports: int = RANGE_RULE_MAX_PORTS.fallback
    udp_flow_idle_secs: int = UDP_FLOW_IDLE_SECS.fallback
    udp_max_flows_per_rule: int = UDP_MAX_FLOWS.fallback
    operator_token: str | None = attrs.field(default=None, repr=_redacted)
    #: The exact C{Origin} browsers send when the console sits behind a
    #: proxy (C{https://ops.example.com}); C{None}: compare with C{Host}.
    operator_http_public_origin: str | None = None
    shutdown_drain_timeout_secs: float = SHUTDOWN_DRAIN_SECS.fallback
    ack_timeout_secs: float = ACK_TIMEOUT_SECS.fallback
    #: The control port's limits on connections not yet welcomed.
    control_limits: GateLimits = attrs.field(factory=GateLimits)
    resolver: ResolverSettings = attrs.field(factory=ResolverSettings)

    def endpoint_description(self, kind: ListenerKind) -> str:
        """The Twisted server endpoint string for one of the three listeners."""
        listeners: Mapping[str, ListenAddress] = {
            "control": self.control_listen,
            "operator_http": self.operator_http_listen,
            "metrics": self.metrics_listen,
        }
        return listeners[kind].endpoint_description()

    def with_overrides(
        self,
        *,
        control_listen: str | None = None,
        operator_http_listen: str | None = None,
        advertised_endpoint: str | None = None,
    ) -> ServerSettings:
        """
        Apply command-line flags, which beat the environment and the file.

        C{None} means the flag was not given.  A given value is checked as
        strictly as the file's: a host-less C{--advertised-endpoint} is an
        error here, not silently dropped as in the environment, and a listen
        address may not share a port with the other listeners.

        @raise ServerConfigError: naming the flag.
        """
        issues: list[SettingsIssue] = []
        changes: dict[str, object] = {}
        flags = {
            "control_listen": ("--control-listen", control_listen),
            "operator_http_listen": ("--operator-http-listen", operator_http_listen),
        }
        for field, (flag, text) in flags.items():
            if text is None:
                continue
            try:
                changes[field] = parse_listen_address(text)
            except ValueError as e:
                issues.append(SettingsIssue(flag, None, str(e)))
        listeners = ("control_listen", "operator_http_listen", "metrics_listen")
        for i, field in enumerate(listeners):
            if field not in changes:
                continue
            address: ListenAddress = changes[field]  # type: ignore[assignment]
            for other in listeners:
                # A pair of overridden flags is reported once, by the first.
                if other == field or (other in changes and listeners.index(other) < i):
                    continue
                theirs: ListenAddress = changes.get(other, getattr(self, other))  # type: ignore[assignment]
                if _overlap(address, theirs):
                    issues.append(
                        SettingsIssue(flags[field][0], None, _collision(address, other, theirs))
                    )
        if advertised_endpoint is not None:
            try:
                changes["advertised_endpoint"] = parse_advertised_endpoint(advertised_endpoint)
            except ValueError as e:
                issues.append(SettingsIssue("--advertised-endpoint", None, str(e)))
        if issues:
            raise ServerConfigError(issues)
        return attrs.evolve(self, **changes)  # type: ignore[arg-type]


@attrs.frozen
class SettingsIssue:
    """
    One problem, located: C{source} is C{server.toml}, an environment
    variable or a flag; C{field} the key (C{None} for the source as a whole).
    """

    source: str
    field: str | None
    message: str

    def __str__(self) -> str:
        if self.field:
            return f"{self.source}: {self.field}: {self.message}"
        return f"{self.source}: {self.message}"

    def to_json(self) -> dict[str, str | None]:
        """The issue as plain data, for JSON logs."""
        return {"source": self.source, "field": self.field, "message": self.message}


class ServerConfigError(PortunusError):
    """
    The settings cannot be used: a C{config_invalid} error carrying every
    issue, one line each in the message.
    """

    def __init__(self, issues: Iterable[SettingsIssue], path: str | None = None) -> None:
        self.issues: tuple[SettingsIssue, ...] = tuple(issues)
        if not self.issues:
            raise ValueError("ServerConfigError needs at least one issue")
        fields: dict[str, object] = {"issues": [i.to_json() for i in self.issues]}
        if path is not None:
            fields["path"] = path
        super().__init__("config_invalid", "\n".join(str(i) for i in self.issues), **fields)

    def __str__(self) -> str:
        return self.message


# ---------------------------------------------------------------------------
# Address grammar


def _split(text: str, example: str) -> tuple[str, int | None, bool]:
    """C{(host, port or None, bracketed)}; a malformed text's error ends in C{example}."""
    try:
        split = split_host_port(text)
    except AddressError as e:
        raise ValueError(f"{e}; {example}") from None
    port = None if split.port is None else parse_port(split.port)
    return split.host, port, split.bracketed


def parse_listen_address(text: str) -> ListenAddress:
    """
    Read C{host:port} where C{host} is an IP literal (IPv6 in brackets) and
    the port is within L{PORT}.

    @raise ValueError: with a message saying what is wrong and what to write.
    """
    text = text.strip()
    if not text:
        raise ValueError(f"is empty; {_LISTEN_EXAMPLE}")
    host, port, _ = _split(text, _LISTEN_EXAMPLE)
    if port is None:
        raise ValueError(f"'{_safe(text)}' has no port; {_LISTEN_EXAMPLE}")
    if not host:
        raise ValueError(
            f"'{_safe(text)}' has no address; use 0.0.0.0 (every IPv4 address), "
            f"[::] (every address) or one address of this machine; {_LISTEN_EXAMPLE}"
        )
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(
            f"'{_safe(host)}' is not an IP address (host names are not accepted for "
            f"listening); {_LISTEN_EXAMPLE}"
        ) from None
    if isinstance(ip, ipaddress.IPv6Address) and ip.scope_id:
        raise ValueError(f"'{_safe(host)}' has a zone index, which is not supported")
    return ListenAddress(ip.compressed, port)


def _host_less(text: str) -> bool:
    """Railway and friends set C{""}, C{":"} or C{":7443"} before a host exists."""
    stripped = text.strip()
    return not stripped or stripped.startswith(":")


def parse_advertised_endpoint(text: str) -> AdvertisedEndpoint:
    """
    Read C{host:port} or a bare C{host}: a DNS name or an IP literal (IPv6
    in brackets), no scheme, no path.

    @raise ValueError: with a message saying what is wrong and what to write.
    """
    example = "write it as host:port or host, e.g. edge.example.com:7443 or [2001:db8::1]:7443"
    text = text.strip()
    if not text:
        raise ValueError(f"is empty; {example}")
    if "://" in text:
        raise ValueError(f"'{_safe(text)}' has a scheme; drop it; {example}")
    if any(c in text for c in "/?#@") or any(c.isspace() for c in text):
        raise ValueError(
            f"'{_safe(text)}' is not a bare host:port (no path, query, user or spaces); {example}"
        )
    host, port, bracketed = _split(text, example)
    if not host:
        raise ValueError(f"'{_safe(text)}' has no host; {example}")
    if bracketed or ip_version(host) is not None:
        return AdvertisedEndpoint(ipaddress.ip_address(host).compressed, port)
    if not is_host_name(host):
        raise ValueError(
            f"'{_safe(host)}' is neither an IP address nor a valid host name (letters, "
            f"digits and hyphens in dot-separated labels); {example}"
        )
    return AdvertisedEndpoint(host.lower(), port)


def _overlap(a: ListenAddress, b: ListenAddress) -> bool:
    """Whether two listeners would fight over the same port ("::" is dual-stack here)."""
    return a.port == b.port and addresses_overlap(a.host, b.host, dual_stack=True)


def _collision(address: ListenAddress, other: str, theirs: ListenAddress) -> str:
    return f"{address} collides with {other} ({theirs}); give each listener its own port"


# ---------------------------------------------------------------------------
# Loading


def load_server_settings(data_dir: str, environ: Mapping[str, str]) -> ServerSettings:
    """
    Read C{<data_dir>/server.toml} (a missing file means all defaults) and
    the environment overrides.

    @param data_dir: the absolute data dir (see
        L{portunus.server.datadir.resolve_data_dir}).
    @raise ServerConfigError: listing every problem found.
    """
    path = os.path.join(data_dir, SERVER_TOML)
    text: str | None
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        text = None
    except OSError as e:
        reason = e.strerror or str(e)
        raise ServerConfigError(
            [
                SettingsIssue(
                    SERVER_TOML,
                    None,
                    f"cannot read {path} ({reason}); check that it is a file the "
                    "server user can read, or remove it to use the defaults",
                )
            ],
            path,
        ) from e
    else:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ServerConfigError(
                [
                    SettingsIssue(
                        SERVER_TOML,
                        None,
                        f"{path} is not valid UTF-8 (bad byte at offset {e.start}); "
                        "save it as UTF-8",
                    )
                ],
                path,
            ) from e
    return parse_server_settings(text, data_dir, environ)


def parse_server_settings(
    text: str | None, data_dir: str, environ: Mapping[str, str]
) -> ServerSettings:
    """
    Validate C{server.toml} text (C{None}: no file) and the environment.

    @raise ServerConfigError: listing every problem; never anything else.
    """
    path = os.path.join(data_dir, SERVER_TOML)
    document: Mapping[str, object] = {}
    if text is not None:
        try:
            document = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise ServerConfigError(
                [
                    SettingsIssue(
                        SERVER_TOML, None, f"TOML syntax error: {e}; fix {path} at that position"
                    )
                ],
                path,
            ) from None
        except (ValueError, RecursionError) as e:
            raise ServerConfigError(
                [SettingsIssue(SERVER_TOML, None, f"TOML value cannot be read ({e}); fix {path}")],
                path,
            ) from None
    return _Parser(data_dir, environ).settings(document, path)


class _Parser:
    """One validation pass over a decoded document plus the environment."""

    def __init__(self, data_dir: str, environ: Mapping[str, str]) -> None:
        self.data_dir = data_dir
        self.environ = environ
        self.issues: list[SettingsIssue] = []
        self.check = FieldChecker(lambda where, field, message, code: self.add(field, message))

    def add(self, field: str | None, message: str, source: str = SERVER_TOML) -> None:
        self.issues.append(SettingsIssue(source, field, message))

    def settings(self, document: Mapping[str, object], path: str) -> ServerSettings:
        for key in document:
            if key in _NOT_SUPPORTED:
                self.add(key, _NOT_SUPPORTED[key])
            elif key not in SERVER_TOML_KEYS:
                self.add(_safe(key), unknown_key_message(key, SERVER_TOML_KEYS))

        values: dict[str, object] = {}
        origins: dict[str, str] = {}
        for key in ("control_listen", "operator_http_listen", "metrics_listen"):
            address = self.check.parsed(
                document, key, None, key, parse_listen_address, f"{_LISTEN_EXAMPLE} in quotes"
            )
            if isinstance(address, ListenAddress):
                values[key] = address
                origins[key] = SERVER_TOML

        env_listen = self.environ.get(OPERATOR_HTTP_LISTEN_ENV, "").strip()
        if env_listen:
            try:
                values["operator_http_listen"] = parse_listen_address(env_listen)
                origins["operator_http_listen"] = OPERATOR_HTTP_LISTEN_ENV
            except ValueError as e:
                self.add(None, str(e), OPERATOR_HTTP_LISTEN_ENV)

        metrics = values.get("metrics_listen")
        if isinstance(metrics, ListenAddress) and not metrics.is_loopback:
            self.add(
                "metrics_listen",
                f"{metrics.host} is not a loopback address; metrics are unauthenticated, "
                "so they listen on this machine only: use 127.0.0.1:<port> or [::1]:<port> "
                "and scrape through a proxy",
            )

        for key in ("tls_cert_path", "tls_key_path"):
            tls_path = self._path(document, key)
            if tls_path is not None:
                values[key] = tls_path

        advertised = self._advertised(document)
        if advertised is not None:
            values["advertised_endpoint"] = advertised

        for key, bound in (
            ("range_rule_max_ports", RANGE_RULE_MAX_PORTS),
            ("udp_flow_idle_secs", UDP_FLOW_IDLE_SECS),
            ("udp_max_flows_per_rule", UDP_MAX_FLOWS),
        ):
            number = self.check.integer(document, key, None, key, bound)
            if isinstance(number, int):
                values[key] = number

        for key, seconds_bound in (
            ("shutdown_drain_timeout_secs", SHUTDOWN_DRAIN_SECS),
            ("ack_timeout_secs", ACK_TIMEOUT_SECS),
        ):
            seconds = self.check.duration(document, key, None, key, seconds_bound)
            if isinstance(seconds, float):
                values[key] = seconds

        gate: dict[str, float] = {}
        for key, (attribute, limit_bound) in CONTROL_LIMIT_KEYS.items():
            if limit_bound.integral:
                limit: object = self.check.integer(document, key, None, key, limit_bound)
            else:
                limit = self.check.duration(document, key, None, key, limit_bound)
            if isinstance(limit, int | float):
                gate[attribute] = limit
        if gate:
            values["control_limits"] = GateLimits(**gate)  # type: ignore[arg-type]

        token = self._token(document)
        if token is not None:
            values["operator_token"] = token

        origin = self._origin(document)
        if origin is not None:
            values["operator_http_public_origin"] = origin

        if "resolver" in document:
            table = document["resolver"]
            if not isinstance(table, dict):
                self.add(
                    "resolver",
                    f"must be a table, not {_describe(table)}; write it as a [resolver] section",
                )
            else:
                resolver, resolver_issues = resolver_settings_from_table(table)
                for field, message in resolver_issues:
                    self.add(field, message)
                values["resolver"] = resolver

        settings = ServerSettings(data_dir=self.data_dir, **values)  # type: ignore[arg-type]
        self._check_collisions(settings, origins)
        if settings.tls_cert_path == settings.tls_key_path:
            self.add(
                "tls_key_path",
                f"is the same file as tls_cert_path ({settings.tls_key_path}); "
                "the private key and the certificate are two files",
            )
        if self.issues:
            raise ServerConfigError(self.issues, path)
        return settings

    # -- keys ---------------------------------------------------------------

    def _origin(self, document: Mapping[str, object]) -> str | None:
        key = "operator_http_public_origin"
        if key not in document:
            return None
        raw = document[key]
        scheme, _, rest = raw.partition("://") if isinstance(raw, str) else ("", "", "")
        if (
            scheme not in ("http", "https")
            or not rest
            or any(ch in rest for ch in "/?#@ ")
            or rest.strip() != rest
        ):
            self.add(
                key,
                f'must be an origin such as "https://ops.example.com" (scheme and host[:port], '
                f"no path), not {_describe(raw)}",
            )
            return None
        assert isinstance(raw, str)
        return raw

    def _path(self, document: Mapping[str, object], key: str) -> str | None:
        if key not in document:
            return None
        raw = document[key]
        if not isinstance(raw, str):
            self.add(key, f"must be a string file path, not {_describe(raw)}")
            return None
        if not raw.strip():
            self.add(key, "is empty; give a file path, or leave the key out for the default")
            return None
        if "\x00" in raw:
            self.add(key, "contains a NUL character, which no file path can hold")
            return None
        return os.path.normpath(os.path.join(self.data_dir, raw))

    def _advertised(self, document: Mapping[str, object]) -> AdvertisedEndpoint | None:
        parsed = self.check.parsed(
            document,
            "advertised_endpoint",
            None,
            "advertised_endpoint",
            parse_advertised_endpoint,
            'e.g. advertised_endpoint = "edge.example.com:7443"',
        )
        result = parsed if isinstance(parsed, AdvertisedEndpoint) else None
        env = self.environ.get(ADVERTISED_ENDPOINT_ENV)
        if env is not None and not _host_less(env):
            try:
                result = parse_advertised_endpoint(env)
            except ValueError as e:
                self.add(None, str(e), ADVERTISED_ENDPOINT_ENV)
        return result

    def _token(self, document: Mapping[str, object]) -> str | None:
        # Messages never echo the value: it is a credential.
        if "operator_token" not in document:
            return None
        raw = document["operator_token"]
        if not isinstance(raw, str):
            self.add("operator_token", f"must be a string, not {_describe(raw)}")
            return None
        size = len(raw.encode("utf-8", "surrogatepass"))
        if not 1 <= size <= _MAX_TOKEN_BYTES:
            self.add(
                "operator_token",
                f"is {size} bytes long; use 1 to {_MAX_TOKEN_BYTES} bytes "
                "(portunus-server gen-token makes a good one)",
            )
            return None
        if not all("\x21" <= c <= "\x7e" for c in raw):
            self.add(
                "operator_token",
                "contains spaces, control or non-ASCII characters, which cannot be sent "
                "in an Authorization header; use printable ASCII only",
            )
            return None
        return raw

    def _check_collisions(self, settings: ServerSettings, origins: Mapping[str, str]) -> None:
        rank = {SERVER_TOML: 1, OPERATOR_HTTP_LISTEN_ENV: 2}
        keys: Sequence[str] = ("control_listen", "operator_http_listen", "metrics_listen")
        for i, first in enumerate(keys):
            for second in keys[i + 1 :]:
                a: ListenAddress = getattr(settings, first)
                b: ListenAddress = getattr(settings, second)
                if not _overlap(a, b):
                    continue
                # Blame the value the operator set most explicitly.
                first_rank = rank.get(origins.get(first, ""), 0)
                second_rank = rank.get(origins.get(second, ""), 0)
                if first_rank > second_rank:
                    blamed, mine, other, theirs = first, a, second, b
                else:
                    blamed, mine, other, theirs = second, b, first, a
                source = origins.get(blamed, SERVER_TOML)
                field = blamed if source == SERVER_TOML else None
                self.add(field, _collision(mine, other, theirs), source)
