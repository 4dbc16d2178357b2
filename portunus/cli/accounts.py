"""
C{portunus-server} user and grant commands: thin calls on C{/v1/users} and
C{/v1/grants} with the operator token, like every HTTP command.

Lists print as aligned columns, one object as C{key=value} lines (so a
display name or note with spaces stays readable and C{grep}-able), and
C{--format json} prints the API's JSON.  Refusals keep the API's codes and
so the registry's exit codes (2 for C{user_already_exists},
C{cannot_remove_self} and C{last_superadmin}, 8 for unknown users and
grants, 5 for RBAC).

L{portunus.cli.server}'s command table lists them.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from typing import IO, Any

from twisted.python import usage

from portunus.cli._http import path
from portunus.cli.commandline import Formatted
from portunus.cli.context import Context
from portunus.cli.exits import CliError
from portunus.cli.output import Output, cell, table

__all__ = [
    "GrantAddOptions",
    "GrantListOptions",
    "GrantRevokeOptions",
    "UserAddOptions",
    "UserGetOptions",
    "UserListOptions",
    "UserRemoveOptions",
    "grant_add",
    "grant_list",
    "grant_revoke",
    "user_add",
    "user_get",
    "user_list",
    "user_remove",
]


def _text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ",".join(str(v) for v in value) or "-"
    return cell(value)


def _print_fields(cmd: Output, value: Mapping[str, Any], keys: Sequence[str]) -> None:
    cmd.print(*(f"{key}={_text(value.get(key))}" for key in keys))


def _read_first_line(stream: IO[str]) -> str:
    """The first line of C{stream} without its line ending; C{""} at EOF."""
    line = stream.readline()
    if line.endswith("\n"):
        line = line[:-1]
    if line.endswith("\r"):
        line = line[:-1]
    return line


# ---------------------------------------------------------------------------
# Options


class _OneUser(Formatted):
    def parseArgs(self, user_id: str) -> None:  # type: ignore[override]
        self["user_id"] = user_id


class UserAddOptions(_OneUser):
    synopsis = (
        "user-add USER_ID --display-name NAME [--role superadmin|user] --password-stdin "
        "[--password-change-required] [--format text|json]"
    )
    longdesc = (
        "Create a user. The initial password is the first line of stdin "
        "(printf '%s\\n' \"$PW\" | portunus-server user-add ...), at least 12 characters."
    )
    optFlags = [
        ["password-stdin", None, "Read the initial password from stdin's first line (required)."],
        ["password-change-required", None, "Make the user change it at first login."],
    ]
    optParameters = [
        ["display-name", None, None, "The name the console shows (required)."],
        ["role", None, "user", "superadmin or user."],
    ]
    required_options = ("display-name",)


class UserListOptions(Formatted):
    synopsis = "user-list [--format text|json]"


class UserGetOptions(_OneUser):
    synopsis = "user-get USER_ID [--format text|json]"


class UserRemoveOptions(_OneUser):
    synopsis = "user-remove USER_ID [--format text|json]"
    longdesc = (
        "Remove a user with their grants, rules and sessions; the edges drop the rules. "
        "Prints what was removed."
    )


class GrantAddOptions(Formatted):
    synopsis = (
        "grant-add --user-id USER --client NAME|ID|* --listen-port-start N "
        "[--listen-port-end M] [--protocols tcp,udp] [--note TEXT] [--allow-local-targets] "
        "[--format text|json]"
    )
    longdesc = (
        "Let a user push rules on a client (or every client, *) within a port range.  "
        "Their targets may not be local (loopback, link-local, the edge's own addresses) "
        "unless --allow-local-targets."
    )
    optFlags = [
        [
            "allow-local-targets",
            None,
            "Let the user's rules target loopback, link-local and the edge's own addresses.",
        ]
    ]
    optParameters: list[list[Any]] = [
        ["user-id", None, None, "The user (required)."],
        ["client", None, None, "A client's name or id, or * for every client (required)."],
        ["listen-port-start", None, None, "First listen port the user may use (required).", int],
        ["listen-port-end", None, None, "Last listen port (default: the start port).", int],
        ["protocols", None, "tcp", "tcp, udp or tcp,udp."],
        ["note", None, None, "Why the grant exists (up to 256 characters)."],
    ]
    required_options = ("user-id", "client", "listen-port-start")


class GrantListOptions(Formatted):
    synopsis = "grant-list [--user-id USER] [--format text|json]"
    optParameters = [["user-id", None, None, "Only this user's grants."]]


class GrantRevokeOptions(Formatted):
    synopsis = "grant-revoke GRANT_ID [--format text|json]"
    longdesc = "Revoke a grant; the rules pushed under it are removed and the edges drop them."

    def parseArgs(self, grant_id: str) -> None:  # type: ignore[override]
        self["grant_id"] = grant_id


# ---------------------------------------------------------------------------
# Commands

_USER_FIELDS = (
    "user_id",
    "display_name",
    "role",
    "disabled",
    "password_change_required",
    "grant_count",
    "created_at",
)
_GRANT_FIELDS = (
    "grant_id",
    "user_id",
    "client",
    "client_id",
    "listen_port_start",
    "listen_port_end",
    "protocols",
    "allow_local_targets",
    "note",
    "created_at",
)


def _user_state(user: Mapping[str, Any]) -> str:
    if user.get("disabled"):
        return "disabled"
    if user.get("password_change_required"):
        return "password_change_required"
    return "active"


def _ports(grant: Mapping[str, Any]) -> str:
    start, end = grant["listen_port_start"], grant["listen_port_end"]
    return str(start) if start == end else f"{start}-{end}"


def _show_user(cmd: Output, opts: usage.Options, user: Mapping[str, Any]) -> None:
    if opts["format"] == "json":
        cmd.print_json(user)
    else:
        _print_fields(cmd, user, _USER_FIELDS)


def _show_grant(cmd: Output, opts: usage.Options, grant: Mapping[str, Any]) -> None:
    if opts["format"] == "json":
        cmd.print_json(grant)
    else:
        _print_fields(cmd, grant, _GRANT_FIELDS)


async def user_add(cmd: Context, opts: usage.Options) -> None:
    if not opts["password-stdin"]:
        raise CliError(
            "initial_password_required",
            "give the initial password on stdin's first line with --password-stdin "
            "(printf '%s\\n' \"$PW\" | portunus-server user-add ... --password-stdin)",
        )
    body: dict[str, Any] = {
        "user_id": opts["user_id"],
        "display_name": opts["display-name"],
        "role": opts["role"],
        "initial_password": _read_first_line(sys.stdin),
    }
    if opts["password-change-required"]:
        body["password_change_required"] = True
    _show_user(cmd, opts, await cmd.api.call("POST", "/v1/users", body))


async def user_list(cmd: Context, opts: usage.Options) -> None:
    users = await cmd.api.call("GET", "/v1/users")
    if opts["format"] == "json":
        cmd.print_json(users)
        return
    rows: list[Sequence[object]] = [
        ("USER_ID", "ROLE", "DISPLAY_NAME", "STATE", "GRANTS", "CREATED_AT")
    ]
    rows += [
        (
            u["user_id"],
            u["role"],
            u["display_name"],
            _user_state(u),
            u.get("grant_count", 0),
            u["created_at"],
        )
        for u in users
    ]
    cmd.print(*table(rows))


async def user_get(cmd: Context, opts: usage.Options) -> None:
    _show_user(cmd, opts, await cmd.api.call("GET", path("v1", "users", opts["user_id"])))


async def user_remove(cmd: Context, opts: usage.Options) -> None:
    answer = await cmd.api.call("DELETE", path("v1", "users", opts["user_id"]))
    if opts["format"] == "json":
        cmd.print_json(answer)
        return
    cmd.print(
        f"removed user_id={answer['user_id']} "
        f"revoked_grant_ids={_text(answer['revoked_grant_ids'])} "
        f"removed_rule_ids={_text(answer['removed_rule_ids'])} "
        f"removed_credential_ids={_text(answer['removed_credential_ids'])}"
    )


async def grant_add(cmd: Context, opts: usage.Options) -> None:
    protocols = [p.strip().lower() for p in opts["protocols"].split(",") if p.strip()]
    body: dict[str, Any] = {
        "user_id": opts["user-id"],
        "client": opts["client"],
        "listen_port_start": opts["listen-port-start"],
        "protocols": protocols,
    }
    if opts["listen-port-end"] is not None:
        body["listen_port_end"] = opts["listen-port-end"]
    if opts["note"] is not None:
        body["note"] = opts["note"]
    if opts["allow-local-targets"]:
        body["allow_local_targets"] = True
    _show_grant(cmd, opts, await cmd.api.call("POST", "/v1/grants", body))


async def grant_list(cmd: Context, opts: usage.Options) -> None:
    query = {"user_id": opts["user-id"]} if opts["user-id"] else None
    grants = await cmd.api.call("GET", "/v1/grants", query=query)
    if opts["format"] == "json":
        cmd.print_json(grants)
        return
    rows: list[Sequence[object]] = [
        ("GRANT_ID", "USER_ID", "CLIENT", "PORTS", "PROTOCOLS", "LOCAL", "CREATED_AT", "NOTE")
    ]
    rows += [
        (
            g["grant_id"],
            g["user_id"],
            g["client"],
            _ports(g),
            ",".join(g["protocols"]),
            "yes" if g.get("allow_local_targets") else "no",
            g["created_at"],
            g["note"],
        )
        for g in grants
    ]
    cmd.print(*table(rows))


async def grant_revoke(cmd: Context, opts: usage.Options) -> None:
    answer = await cmd.api.call("DELETE", path("v1", "grants", opts["grant_id"]))
    if opts["format"] == "json":
        cmd.print_json(answer)
        return
    cmd.print(
        f"revoked grant_id={answer['grant_id']} "
        f"removed_rule_ids={_text(answer['removed_rule_ids'])}"
    )
