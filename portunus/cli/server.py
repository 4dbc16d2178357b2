"""
C{portunus-server}: the operator's command line.

Every command but C{gen-token} and the offline ones calls the running
server's HTTP API (C{--http-endpoint}, default C{127.0.0.1:7080}) with
C{Authorization: Bearer $PORTUNUS_OPERATOR_TOKEN}; unlike Portunus,
enrolling, revoking and renaming clients are online too, so they work
while the server runs and a revoke disconnects the client at once.

Errors print C{error: <code>: <message>} to stderr and exit with the code
the registry gives (3 validation, 4 client not connected or no token,
5 port in use, 6 activation failed, 7 ack timeout, 8 not found, 1 the
server cannot be reached, 2 bad usage).  See C{docs/cli.md}.

L{COMMANDS} is the command table; the commands live in their own modules
(L{portunus.cli.clients}, L{portunus.cli.rules} ...), which import only
the shared helpers.  L{run} does the work with an injected HTTP client
(StubTreq in tests); L{main} wires treq and runs it under
L{twisted.internet.task.react}.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Awaitable, Mapping, Sequence
from typing import IO, Any

from twisted.python import usage

from portunus.cli import accounts, audit, clients, housekeeping, offline_accounts, rules
from portunus.cli._http import (
    DEFAULT_ENDPOINT,
    ENDPOINT_ENV,
    REQUEST_TIMEOUT,
    TOKEN_ENV,
    OperatorClient,
)
from portunus.cli.commandline import (
    Command,
    Foreground,
    Program,
    react_main,
    run_program,
    sub_commands,
)
from portunus.cli.context import Context

__all__ = ["COMMANDS", "SERVE", "ServerOptions", "main", "run"]

#: Every portunus-server command but L{SERVE}, which L{main} hands to twistd.
COMMANDS: tuple[Command[Context], ...] = (
    Command(
        "gen-token",
        housekeeping.GenTokenOptions,
        "Print a new random operator token.",
        housekeeping.gen_token,
    ),
    Command(
        "enroll-client",
        clients.EnrollClientOptions,
        "Enroll a new edge client.",
        clients.enroll_client,
    ),
    Command("list-clients", clients.ListClientsOptions, "List clients.", clients.list_clients),
    Command("revoke", clients.RevokeOptions, "Revoke a client and disconnect it.", clients.revoke),
    Command(
        "rename-client", clients.RenameClientOptions, "Rename a client.", clients.rename_client
    ),
    Command(
        "delete-client",
        clients.DeleteClientOptions,
        "Delete a revoked client.",
        clients.delete_client,
    ),
    Command(
        "push-rule", rules.PushRuleOptions, "Push a forwarding rule to a client.", rules.push_rule
    ),
    Command("remove-rule", rules.RemoveRuleOptions, "Remove a rule.", rules.remove_rule),
    Command("list-rules", rules.ListRulesOptions, "List rules.", rules.list_rules),
    Command(
        "rule-stats", rules.RuleStatsOptions, "Show a rule's traffic counters.", rules.rule_stats
    ),
    Command(
        "backup",
        housekeeping.BackupOptions,
        "Back up the state database (offline).",
        housekeeping.backup,
    ),
    Command(
        "restore",
        housekeeping.RestoreOptions,
        "Restore the state database (server stopped).",
        housekeeping.restore,
    ),
    Command("user-add", accounts.UserAddOptions, "Create a user.", accounts.user_add),
    Command("user-list", accounts.UserListOptions, "List users.", accounts.user_list),
    Command("user-get", accounts.UserGetOptions, "Show a user.", accounts.user_get),
    Command(
        "user-remove",
        accounts.UserRemoveOptions,
        "Remove a user, their grants and rules.",
        accounts.user_remove,
    ),
    Command(
        "grant-add",
        accounts.GrantAddOptions,
        "Grant a user ports on a client.",
        accounts.grant_add,
    ),
    Command("grant-list", accounts.GrantListOptions, "List grants.", accounts.grant_list),
    Command(
        "grant-revoke",
        accounts.GrantRevokeOptions,
        "Revoke a grant and its rules.",
        accounts.grant_revoke,
    ),
    Command("audit", audit.AuditOptions, "Prune the audit log (server stopped).", audit.audit),
    Command(
        "bootstrap-superadmin",
        offline_accounts.BootstrapSuperadminOptions,
        "Create _superadmin and print its token (offline).",
        offline_accounts.bootstrap_superadmin,
    ),
    Command(
        "onboarding-token",
        offline_accounts.OnboardingTokenOptions,
        "Print a new onboarding setup token (offline).",
        offline_accounts.onboarding_token,
    ),
    Command(
        "reset-password",
        offline_accounts.ResetPasswordOptions,
        "Reset a user's password (offline, break-glass).",
        offline_accounts.reset_password,
    ),
)

SERVE = Foreground("serve", "portunus-server", "Run the control plane (twistd -n portunus-server).")


class ServerOptions(Program):
    program = "portunus-server"
    synopsis = "portunus-server [--http-endpoint HOST:PORT] COMMAND [options]"
    longdesc = (
        "Operate a Portunus control plane. Commands call the server's HTTP API with "
        f"Authorization: Bearer ${TOKEN_ENV}; serve takes the options of "
        "'twistd -n portunus-server' (see --help there)."
    )
    optParameters = [
        [
            "http-endpoint",
            None,
            None,
            f"The server's operator API (default ${ENDPOINT_ENV} or {DEFAULT_ENDPOINT}).",
        ]
    ]
    subCommands = sub_commands(COMMANDS, SERVE)


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

    def context(options: usage.Options) -> Context:
        endpoint = options["http-endpoint"] or env.get(ENDPOINT_ENV) or DEFAULT_ENDPOINT
        return Context(OperatorClient(http, endpoint, env.get(TOKEN_ENV) or None, timeout), out)

    return await run_program(ServerOptions(), COMMANDS, argv, context, out, err)


def main(argv: Sequence[str] | None = None) -> None:
    """The C{portunus-server} console script."""

    def work(reactor: Any, args: list[str]) -> Awaitable[int]:
        from treq.client import HTTPClient
        from twisted.web.client import Agent

        http = HTTPClient(Agent(reactor, connectTimeout=2))
        return run(args, http, os.environ, sys.stdout, sys.stderr)

    react_main(argv, SERVE, work)
