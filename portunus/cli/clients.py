"""
C{portunus-server} client commands, online: C{enroll-client},
C{list-clients}, C{revoke}, C{rename-client} and C{delete-client}.
Clients are named by id or by name wherever a command takes C{CLIENT}.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from twisted.python import usage

from portunus.bounds import ENROLLMENT_TTL_SECS
from portunus.cli._http import OperatorClient, path
from portunus.cli.commandline import Formatted, Subcommand
from portunus.cli.context import Context
from portunus.cli.exits import CliError
from portunus.cli.output import table

__all__ = [
    "DeleteClientOptions",
    "EnrollClientOptions",
    "ListClientsOptions",
    "RenameClientOptions",
    "RevokeOptions",
    "delete_client",
    "enroll_client",
    "list_clients",
    "rename_client",
    "revoke",
]


class EnrollClientOptions(Subcommand):
    synopsis = "enroll-client NAME [--address HOST] [--ttl-secs N]"
    longdesc = "Create a client and print the one-time command that enrolls it on the edge."
    optParameters = [
        ["address", None, None, "Host or IP the client dials (default: the advertised one)."],
        [
            "ttl-secs",
            None,
            ENROLLMENT_TTL_SECS.fallback,
            f"Seconds the enrollment code stays valid ({ENROLLMENT_TTL_SECS.span('..')}).",
            int,
        ],
    ]

    def parseArgs(self, name: str) -> None:  # type: ignore[override]
        self["name"] = name


class ListClientsOptions(Formatted):
    synopsis = "list-clients [--format text|json]"


class _OneClient(Subcommand):
    def parseArgs(self, client: str) -> None:  # type: ignore[override]
        self["client"] = client


class RevokeOptions(_OneClient):
    synopsis = "revoke CLIENT"
    longdesc = "Revoke a client (id or name): its token stops working and it is disconnected."


class DeleteClientOptions(_OneClient):
    synopsis = "delete-client CLIENT"
    longdesc = "Delete a revoked client (id or name) and its rules."


class RenameClientOptions(Subcommand):
    synopsis = "rename-client --client-id ID --name NAME"
    optParameters = [
        ["client-id", None, None, "The client's id (list-clients shows it)."],
        ["name", None, None, "The new name."],
    ]
    required_options = ("client-id", "name")


async def find_client(api: OperatorClient, ref: str) -> dict[str, Any]:
    """The client C{ref} names, by id first, then by name."""
    clients: list[dict[str, Any]] = await api.call("GET", "/v1/clients")
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


async def enroll_client(cmd: Context, opts: usage.Options) -> None:
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


async def list_clients(cmd: Context, opts: usage.Options) -> None:
    clients = await cmd.api.call("GET", "/v1/clients")
    if opts["format"] == "json":
        cmd.print_json(clients)
        return
    rows: list[Sequence[object]] = [("CLIENT_ID", "NAME", "STATE", "REMOTE_ADDR", "CONNECTED_AT")]
    rows += [
        (c["client_id"], c["client_name"], c["state"], c["remote_addr"], c["connected_at"])
        for c in clients
    ]
    cmd.print(*table(rows))


async def revoke(cmd: Context, opts: usage.Options) -> None:
    client = await find_client(cmd.api, opts["client"])
    await cmd.api.call("POST", path("v1", "clients", client["client_id"], "revoke"))
    cmd.print(f"revoked client_id={client['client_id']} client_name={client['client_name']}")


async def delete_client(cmd: Context, opts: usage.Options) -> None:
    client = await find_client(cmd.api, opts["client"])
    await cmd.api.call("DELETE", path("v1", "clients", client["client_id"]))
    cmd.print(f"deleted client_id={client['client_id']} client_name={client['client_name']}")


async def rename_client(cmd: Context, opts: usage.Options) -> None:
    answer = await cmd.api.call(
        "PATCH", path("v1", "clients", opts["client-id"]), {"name": opts["name"]}
    )
    cmd.print(f"client_id={answer['client_id']}", f"client_name={answer['client_name']}")
