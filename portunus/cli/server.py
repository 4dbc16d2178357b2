"""
C{portunus-server}: the operator's command line.

Every command but C{gen-token} calls the running server's HTTP API
(C{--http-endpoint}, default C{127.0.0.1:7080}) with
C{Authorization: Bearer $PORTUNUS_OPERATOR_TOKEN}; unlike Portunus,
enrolling, revoking and renaming clients are online too, so they work while
the server runs and a revoke disconnects the client at once.

Errors print C{error: <code>: <message>} to stderr and exit with the code
the registry gives (3 validation, 4 client not connected or no token,
5 port in use, 6 activation failed, 7 ack timeout, 8 not found, 1 the
server cannot be reached, 2 bad usage).  See C{docs/cli.md}.

L{run} does the work with an injected HTTP client (StubTreq in tests);
L{main} wires treq and runs it under L{twisted.internet.task.react}.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import IO, Any

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.python import usage

from portunus.cli._http import (
    DEFAULT_ENDPOINT,
    ENDPOINT_ENV,
    REQUEST_TIMEOUT,
    TOKEN_ENV,
    CliError,
    OperatorClient,
    path,
)
from portunus.errors import PortunusError

__all__ = ["ServerOptions", "main", "run"]

_RATE_FLAGS = (
    ("bandwidth-in-bps", "bytes per second clients may send"),
    ("bandwidth-out-bps", "bytes per second clients may receive"),
    ("new-connections-per-sec", "new connections per second"),
    ("concurrent-connections", "connections open at once"),
    ("bandwidth-in-burst", "bytes the inbound cap may burst"),
    ("bandwidth-out-burst", "bytes the outbound cap may burst"),
    ("new-connections-burst", "connections the rate may burst"),
)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError("must be a positive integer")
    return value


_positive_int.coerceDoc = "A positive integer."  # type: ignore[attr-defined]


def _format(text: str) -> str:
    if text not in ("text", "json"):
        raise ValueError("use text or json")
    return text


_format.coerceDoc = "text (default) or json."  # type: ignore[attr-defined]


class _Sub(usage.Options):
    """
    A subcommand's options, which may come before or after its arguments
    (C{enroll-client NAME --ttl-secs 60}), as operators type them.
    """

    def parseOptions(self, options: Sequence[str] | None = None) -> None:
        args = list(sys.argv[1:] if options is None else options)
        takes_value = {name[:-1] for name in self.longOpt if name.endswith("=")}
        flags: list[str] = []
        positional: list[str] = []
        rest = iter(args)
        for arg in rest:
            if arg == "--":
                positional.extend(rest)
            elif arg.startswith("--") and len(arg) > 2:
                flags.append(arg)
                if "=" not in arg and arg[2:] in takes_value:
                    value = next(rest, None)
                    if value is not None:
                        flags.append(value)
            else:
                positional.append(arg)
        super().parseOptions([*flags, "--", *positional])


class _Formatted(_Sub):
    optParameters = [["format", None, "text", "Output: text or json.", _format]]


class GenTokenOptions(_Sub):
    synopsis = "gen-token"
    longdesc = (
        "Print a new random operator token (32 bytes, URL-safe base64). Put it in "
        "server.toml as operator_token and in PORTUNUS_OPERATOR_TOKEN."
    )


class EnrollClientOptions(_Sub):
    synopsis = "enroll-client NAME [--address HOST] [--ttl-secs N]"
    longdesc = "Create a client and print the one-time command that enrolls it on the edge."
    optParameters = [
        ["address", None, None, "Host or IP the client dials (default: the advertised one)."],
        ["ttl-secs", None, 600, "Seconds the enrollment code stays valid (1..86400).", int],
    ]

    def parseArgs(self, name: str) -> None:  # type: ignore[override]
        self["name"] = name


class ListClientsOptions(_Formatted):
    synopsis = "list-clients [--format text|json]"


class _OneClient(_Sub):
    def parseArgs(self, client: str) -> None:  # type: ignore[override]
        self["client"] = client


class RevokeOptions(_OneClient):
    synopsis = "revoke CLIENT"
    longdesc = "Revoke a client (id or name): its token stops working and it is disconnected."


class DeleteClientOptions(_OneClient):
    synopsis = "delete-client CLIENT"
    longdesc = "Delete a revoked client (id or name) and its rules."


class RenameClientOptions(_Sub):
    synopsis = "rename-client --client-id ID --name NAME"
    optParameters = [
        ["client-id", None, None, "The client's id (list-clients shows it)."],
        ["name", None, None, "The new name."],
    ]

    def postOptions(self) -> None:
        for key in ("client-id", "name"):
            if not self[key]:
                raise usage.UsageError(f"--{key} is required")


class PushRuleOptions(_Sub):
    synopsis = "push-rule CLIENT LISTEN [TARGET] [options]"
    longdesc = (
        "Push a rule to a client and wait until it is active; print its id. LISTEN is N or "
        "A-B; TARGET is host:port or host:A-B. Give the targets one way: TARGET, --target "
        "(repeatable) or --targets-json."
    )
    optFlags = [["prefer-ipv6", None, "Dial IPv6 addresses of DNS targets first."]]
    optParameters = [
        ["protocol", None, "tcp", "tcp or udp."],
        ["targets-json", None, None, 'JSON list: [{"host","port","priority"?,"proxy_protocol"?}]'],
        ["sni", None, None, "Route by TLS SNI host (exact or *.example.com)."],
        ["health-check-interval-secs", None, None, "Probe targets every N s (1..3600).", int],
        ["ack-timeout", None, 2.0, "Seconds to wait for the client to confirm.", float],
        ["name", None, None, "A name for the rule (default: rule)."],
    ] + [[flag, None, None, f"Cap: {doc}.", _positive_int] for flag, doc in _RATE_FLAGS]

    def __init__(self) -> None:
        super().__init__()
        self["targets"] = []

    def opt_target(self, value: str) -> None:
        """host:port[@priority]; repeat for failover targets."""
        self["targets"].append(value)

    def parseArgs(self, client: str, listen: str, target: str | None = None) -> None:  # type: ignore[override]
        self["client"] = client
        self["listen"] = listen
        self["target"] = target


class RemoveRuleOptions(_Sub):
    synopsis = "remove-rule ID"

    def parseArgs(self, rule_id: str) -> None:  # type: ignore[override]
        self["rule_id"] = rule_id


class ListRulesOptions(_Formatted):
    synopsis = "list-rules [--client CLIENT] [--format text|json]"
    optParameters = [["client", None, None, "Only this client's rules (id or name)."]]


class RuleStatsOptions(_Formatted):
    synopsis = "rule-stats ID [--per-port | --per-target] [--format text|json]"
    optFlags = [
        ["per-port", None, "One line per listen port."],
        ["per-target", None, "One line per target, with its health."],
    ]

    def parseArgs(self, rule_id: str) -> None:  # type: ignore[override]
        self["rule_id"] = rule_id

    def postOptions(self) -> None:
        if self["per-port"] and self["per-target"]:
            raise usage.UsageError("give --per-port or --per-target, not both")


class _Offline(_Sub):
    """An offline command: works on the data dir's files, not the API."""

    optParameters = [
        ["data-dir", None, None, "The server's data dir (default: the server's lookup order)."],
    ]


class BackupOptions(_Offline):
    synopsis = "backup --out PATH [--data-dir DIR]"
    longdesc = (
        "Copy state.db with SQLite's online backup (safe while the server runs). "
        "PATH may be a directory: portunus-state-<UTC time>.db is written inside. "
        "An existing file is never overwritten."
    )
    optParameters = [["out", None, None, "Destination file or directory (required)."]]

    def postOptions(self) -> None:
        if not self["out"]:
            raise usage.UsageError("--out is required")


class RestoreOptions(_Offline):
    synopsis = "restore --in PATH [--force] [--data-dir DIR]"
    longdesc = (
        "Replace state.db with a backup (checked and migrated first). The server "
        "must be stopped; --force replaces an existing state.db."
    )
    optParameters = [["in", None, None, "The backup file (required)."]]
    optFlags = [["force", None, "Replace an existing state.db."]]

    def postOptions(self) -> None:
        if not self["in"]:
            raise usage.UsageError("--in is required")


class ServerOptions(usage.Options):
    synopsis = "portunus-server [--http-endpoint HOST:PORT] COMMAND [options]"
    longdesc = (
        "Operate a Portunus control plane. Commands call the server's HTTP API with "
        f"Authorization: Bearer ${TOKEN_ENV}."
    )
    optParameters = [
        [
            "http-endpoint",
            None,
            None,
            f"The server's operator API (default ${ENDPOINT_ENV} or {DEFAULT_ENDPOINT}).",
        ]
    ]
    subCommands = [
        ["gen-token", None, GenTokenOptions, "Print a new random operator token."],
        ["enroll-client", None, EnrollClientOptions, "Enroll a new edge client."],
        ["list-clients", None, ListClientsOptions, "List clients."],
        ["revoke", None, RevokeOptions, "Revoke a client and disconnect it."],
        ["rename-client", None, RenameClientOptions, "Rename a client."],
        ["delete-client", None, DeleteClientOptions, "Delete a revoked client."],
        ["push-rule", None, PushRuleOptions, "Push a forwarding rule to a client."],
        ["remove-rule", None, RemoveRuleOptions, "Remove a rule."],
        ["list-rules", None, ListRulesOptions, "List rules."],
        ["rule-stats", None, RuleStatsOptions, "Show a rule's traffic counters."],
        ["backup", None, BackupOptions, "Back up the state database (offline)."],
        ["restore", None, RestoreOptions, "Restore the state database (server stopped)."],
    ]

    def postOptions(self) -> None:
        if self.subCommand is None:
            raise usage.UsageError("give a command; --help lists them")


# ---------------------------------------------------------------------------
# Commands


class _Command:
    """One run: the API client and where output goes."""

    def __init__(self, api: OperatorClient, out: IO[str]) -> None:
        self.api = api
        self.out = out

    def print(self, *lines: str) -> None:
        for line in lines:
            self.out.write(line + "\n")

    def print_json(self, value: object) -> None:
        self.print(json.dumps(value, indent=2, sort_keys=True))

    async def client(self, ref: str) -> dict[str, Any]:
        """The client C{ref} names, by id first, then by name."""
        clients: list[dict[str, Any]] = await self.api.call("GET", "/v1/clients")
        for client in clients:
            if client["client_id"] == ref:
                return client
        named = [c for c in clients if c["client_name"] == ref]
        if len(named) > 1:
            ids = ", ".join(c["client_id"] for c in named)
            raise CliError(
                "client_name_ambiguous",
                f"{len(named)} clients are called {ref!r} ({ids}); give the client id",
            )
        if not named:
            raise CliError(
                "client_not_found", f"no client has the id or name {ref!r}; see list-clients"
            )
        return named[0]


def _cell(value: object) -> str:
    return "-" if value is None or value == "" else str(value)


def _table(rows: Sequence[Sequence[object]]) -> list[str]:
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
    return [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    ]


async def gen_token(cmd: _Command, opts: usage.Options) -> None:
    cmd.print(secrets.token_urlsafe(32))


async def enroll_client(cmd: _Command, opts: usage.Options) -> None:
    body: dict[str, Any] = {"name": opts["name"], "ttl_secs": opts["ttl-secs"]}
    if opts["address"] is not None:
        body["address"] = opts["address"]
    answer = await cmd.api.call("POST", "/v1/client-enrollments", body)
    cmd.print(
        f"client_id={answer['client_id']}",
        f"client_name={answer['client_name']}",
        f"expires_at={answer['expires_at']}",
        answer["command"],
    )


async def list_clients(cmd: _Command, opts: usage.Options) -> None:
    clients = await cmd.api.call("GET", "/v1/clients")
    if opts["format"] == "json":
        cmd.print_json(clients)
        return
    rows: list[Sequence[object]] = [("CLIENT_ID", "NAME", "STATE", "REMOTE_ADDR", "CONNECTED_AT")]
    rows += [
        (c["client_id"], c["client_name"], c["state"], c["remote_addr"], c["connected_at"])
        for c in clients
    ]
    cmd.print(*_table(rows))


async def revoke(cmd: _Command, opts: usage.Options) -> None:
    client = await cmd.client(opts["client"])
    await cmd.api.call("POST", path("v1", "clients", client["client_id"], "revoke"))
    cmd.print(f"revoked client_id={client['client_id']} client_name={client['client_name']}")


async def delete_client(cmd: _Command, opts: usage.Options) -> None:
    client = await cmd.client(opts["client"])
    await cmd.api.call("DELETE", path("v1", "clients", client["client_id"]))
    cmd.print(f"deleted client_id={client['client_id']} client_name={client['client_name']}")


async def rename_client(cmd: _Command, opts: usage.Options) -> None:
    answer = await cmd.api.call(
        "PATCH", path("v1", "clients", opts["client-id"]), {"name": opts["name"]}
    )
    cmd.print(f"client_id={answer['client_id']}", f"client_name={answer['client_name']}")


def _split_host_port(text: str, what: str) -> tuple[str, str]:
    text = text.strip()
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise CliError("invalid_target", f"{what} {text!r}: write [IPv6]:port")
        return host, rest[1:]
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port:
        raise CliError("invalid_target", f"{what} {text!r}: write host:port or host:A-B")
    if ":" in host:
        raise CliError("invalid_target", f"{what} {text!r}: bracket IPv6 hosts, [{host}]:{port}")
    return host, port


def _port_value(text: str) -> int | str:
    return int(text) if text.isdigit() else text


def _targets(opts: usage.Options) -> list[dict[str, Any]]:
    """The one target shape given, as the API's targets list."""
    shapes = [
        name
        for name, given in (
            ("TARGET", opts["target"] is not None),
            ("--target", bool(opts["targets"])),
            ("--targets-json", opts["targets-json"] is not None),
        )
        if given
    ]
    if not shapes:
        raise CliError(
            "rule_shape_missing", "give the target: TARGET, --target host:port or --targets-json"
        )
    if len(shapes) > 1:
        raise CliError(
            "rule_shape_conflict", f"give the targets one way, not {' and '.join(shapes)}"
        )
    if opts["target"] is not None:
        host, port = _split_host_port(opts["target"], "TARGET")
        return [{"host": host, "port": _port_value(port)}]
    if opts["targets"]:
        targets = []
        for index, text in enumerate(opts["targets"]):
            spec, at, prio = text.partition("@")
            host, port = _split_host_port(spec, "--target")
            priority: int = index
            if at:
                if not prio.isdigit():
                    raise CliError(
                        "invalid_target",
                        f"--target {text!r}: the priority after @ must be a whole number",
                    )
                priority = int(prio)
            targets.append({"host": host, "port": _port_value(port), "priority": priority})
        return targets
    try:
        parsed = json.loads(opts["targets-json"])
    except ValueError as e:
        raise CliError("validation_failed", f"--targets-json is not valid JSON: {e}") from None
    if not isinstance(parsed, list):
        raise CliError("validation_failed", "--targets-json must be a JSON list of targets")
    return parsed


def _is_range(listen: str) -> bool:
    return "-" in listen.strip().strip("-")


async def push_rule(cmd: _Command, opts: usage.Options) -> None:
    protocol = opts["protocol"].strip().lower()
    if opts["sni"] is not None and (protocol == "udp" or _is_range(opts["listen"])):
        raise CliError(
            "validation.sni_on_unsupported_rule",
            "--sni needs a single-port TCP rule; drop --sni or use one TCP listen port",
            exit_code=2,
        )
    interval = opts["health-check-interval-secs"]
    if interval is not None and not 1 <= interval <= 3600:
        raise CliError(
            "health_check_interval_out_of_range",
            f"--health-check-interval-secs {interval}: use 1 to 3600 seconds",
        )
    listen = opts["listen"].strip()
    body: dict[str, Any] = {
        "client": opts["client"],
        "protocol": protocol,
        "listen": _port_value(listen),
        "targets": _targets(opts),
        "ack_timeout_secs": opts["ack-timeout"],
    }
    if opts["name"] is not None:
        body["name"] = opts["name"]
    if opts["prefer-ipv6"]:
        body["prefer_ipv6"] = True
    if interval is not None:
        body["health_check_interval_secs"] = interval
    if opts["sni"] is not None:
        body["sni_pattern"] = opts["sni"].strip().lower()
    caps = {flag.replace("-", "_"): opts[flag] for flag, _ in _RATE_FLAGS if opts[flag] is not None}
    if caps:
        body["rate_limit"] = caps
    # The server waits for the client's answer; give it the time it was asked for.
    limit = max(REQUEST_TIMEOUT, opts["ack-timeout"] + 10)
    answer = await cmd.api.call("POST", "/v1/rules", body, timeout=limit)
    cmd.print(str(answer["rule"]["id"]))


async def remove_rule(cmd: _Command, opts: usage.Options) -> None:
    await cmd.api.call("DELETE", path("v1", "rules", opts["rule_id"]))


def _targets_text(rule: Mapping[str, Any]) -> str:
    shown = []
    for target in rule.get("targets", []):
        host = f"[{target['host']}]" if ":" in target["host"] else target["host"]
        text = f"{host}:{target['ports']}"
        if target.get("priority"):
            text += f"@{target['priority']}"
        shown.append(text)
    return ",".join(shown)


def _caps_text(rule: Mapping[str, Any]) -> str:
    caps = rule.get("rate_limit") or {}
    short = {
        "bandwidth_in_bps": "in",
        "bandwidth_out_bps": "out",
        "new_connections_per_sec": "cps",
        "concurrent_connections": "conc",
        "bandwidth_in_burst": "inb",
        "bandwidth_out_burst": "outb",
        "new_connections_burst": "cpsb",
    }
    return ",".join(f"{short.get(k, k)}={v}" for k, v in caps.items())


async def list_rules(cmd: _Command, opts: usage.Options) -> None:
    query = {"client": opts["client"]} if opts["client"] else None
    views = await cmd.api.call("GET", "/v1/rules", query=query)
    if opts["format"] == "json":
        cmd.print_json(views)
        return
    rows: list[Sequence[object]] = [
        ("RULE_ID", "NAME", "CLIENT", "PROTO", "LISTEN", "TARGETS", "STATE", "CAPS")
    ]
    for view in views:
        rule = view["rule"]
        state = view["state"]
        if view.get("state_reason"):
            state += f":{view['state_reason']}"
        rows.append(
            (
                rule["id"],
                rule["name"],
                view["client_name"],
                rule["protocol"],
                rule["listen"],
                _targets_text(rule),
                state,
                _caps_text(rule),
            )
        )
    cmd.print(*_table(rows))


def _pairs(values: Mapping[str, Any], skip: Sequence[str] = ()) -> str:
    return " ".join(
        f"{k}={_cell(v)}" for k, v in values.items() if k not in skip and not isinstance(v, list)
    )


async def rule_stats(cmd: _Command, opts: usage.Options) -> None:
    rule_id = opts["rule_id"]
    view = await cmd.api.call("GET", path("v1", "rules", rule_id))
    stats = await cmd.api.call(
        "GET",
        path("v1", "rules", rule_id, "stats"),
        query={"per_port": "true"} if opts["per-port"] else None,
    )
    if opts["format"] == "json":
        cmd.print_json(stats)
        return
    rule = view["rule"]
    cmd.print(
        f"rule_id={rule['id']} client={view['client_name']} protocol={rule['protocol']} "
        f"bytes_in={stats.get('bytes_in', 0)} bytes_out={stats.get('bytes_out', 0)} "
        f"active={stats.get('active_connections', 0)} "
        f"dns_failures={stats.get('dns_failures', 0)} "
        f"target_failovers_total={stats.get('target_failovers_total', 0)} "
        f"updated_at={_cell(stats.get('updated_at'))}"
    )
    if opts["per-port"]:
        per_port = stats.get("per_port") or []
        if isinstance(per_port, dict):
            per_port = [dict(counters, port=port) for port, counters in per_port.items()]
        for row in per_port:
            cmd.print(f"port={row.get('port')} " + _pairs(row, skip=("port",)))
    if opts["per-target"]:
        if len(rule.get("targets", [])) < 2:
            cmd.print("(single-target rule, no per-target state)")
            return
        for row in stats.get("per_target") or []:
            cmd.print(_pairs(row))


def _data_dir(opts: usage.Options) -> str:
    from portunus.server.datadir import resolve_data_dir

    return resolve_data_dir(opts["data-dir"], os.environ, os.getcwd())


async def backup(cmd: _Command, opts: usage.Options) -> None:
    from portunus.server.store import backup as backup_store

    try:
        written = backup_store(_data_dir(opts), opts["out"])
    except PortunusError as e:
        raise CliError(e.code, e.message) from None
    cmd.print(f"backup={written}")


async def restore(cmd: _Command, opts: usage.Options) -> None:
    from portunus.server.store import restore as restore_store

    data_dir = _data_dir(opts)
    try:
        restore_store(data_dir, opts["in"], force=bool(opts["force"]))
    except PortunusError as e:
        raise CliError(e.code, e.message) from None
    cmd.print(f"restore=ok data_dir={data_dir}")


_COMMANDS: dict[str, Callable[[_Command, usage.Options], Awaitable[None]]] = {
    "backup": backup,
    "restore": restore,
    "gen-token": gen_token,
    "enroll-client": enroll_client,
    "list-clients": list_clients,
    "revoke": revoke,
    "rename-client": rename_client,
    "delete-client": delete_client,
    "push-rule": push_rule,
    "remove-rule": remove_rule,
    "list-rules": list_rules,
    "rule-stats": rule_stats,
}


def register(
    name: str,
    options: type[usage.Options],
    doc: str,
    command: Callable[[_Command, usage.Options], Awaitable[None]],
) -> None:
    """
    Add a command defined in another module.  Those modules build on this
    one's helpers, so they register themselves when imported (below).
    """
    ServerOptions.subCommands.append([name, None, options, doc])
    _COMMANDS[name] = command


# Commands kept in their own modules; each calls register() when imported.
from portunus.cli import accounts as _accounts  # noqa: E402, F401
from portunus.cli import audit as _audit  # noqa: E402, F401
from portunus.cli import offline_accounts as _offline_accounts  # noqa: E402, F401


async def run(
    argv: Sequence[str],
    http: Any,
    env: Mapping[str, str],
    out: IO[str],
    err: IO[str],
    timeout: float | None = REQUEST_TIMEOUT,
) -> int:
    """
    Run C{portunus-server argv} with C{http} (treq's interface) and
    return the exit status; output goes to C{out}, errors to C{err}.
    """
    options = ServerOptions()
    try:
        options.parseOptions(list(argv))
    except usage.UsageError as e:
        err.write(f"error: usage: {e}; run portunus-server [COMMAND] --help\n")
        return 2
    endpoint = options["http-endpoint"] or env.get(ENDPOINT_ENV) or DEFAULT_ENDPOINT
    api = OperatorClient(http, endpoint, env.get(TOKEN_ENV) or None, timeout)
    assert options.subCommand is not None
    try:
        await _COMMANDS[options.subCommand](_Command(api, out), options.subOptions)
    except CliError as e:
        err.write(f"error: {e.code}: {e.message}\n")
        return e.exit_code
    return 0


def main(argv: Sequence[str] | None = None) -> None:
    """The C{portunus-server} console script."""
    from twisted.internet import task

    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["serve"]:
        # The same service as twistd -n portunus-server (same options).
        from twisted.scripts.twistd import run as twistd

        sys.argv = ["twistd", "--nodaemon", "--pidfile=", "portunus-server", *args[1:]]
        twistd()
        return

    async def work(reactor: Any) -> None:
        from treq.client import HTTPClient
        from twisted.web.client import Agent

        http = HTTPClient(Agent(reactor, connectTimeout=2))
        code = await run(args, http, os.environ, sys.stdout, sys.stderr)
        if code:
            raise SystemExit(code)

    def start(reactor: Any) -> Deferred[None]:
        return ensureDeferred(work(reactor))

    task.react(start)
