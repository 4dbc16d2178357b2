"""
C{portunus-server} break-glass account commands: C{bootstrap-superadmin},
C{onboarding-token} and C{reset-password}.

They work on the data dir, not the API, for when nobody can authenticate:
each opens C{state.db} with the data-dir lock (so they refuse with
C{startup.store_in_use} while the server runs, as C{restore} does), runs
the same L{Accounts} logic the API uses with transactions and Argon2
(at the product's cost) inline, and closes the store.

C{onboarding-token} also works while the server runs: the server holds
the lock and keeps the current setup token in C{onboarding.token} (0600),
so the command prints that file.  Reading the file needs only what the
lock needs (the data dir), no API endpoint or credential, and never
rotates the token under the running server.

Passwords come from stdin's first line (C{--password-stdin}) or from a
no-echo prompt; both read C{sys.stdin} when the command runs.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Awaitable, Callable
from getpass import getpass
from typing import TypeVar

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.python import usage

from portunus.cli.exits import CliError
from portunus.cli.offline import Offline, data_dir, offline_store
from portunus.cli.output import Output
from portunus.errors import PortunusError
from portunus.server.auth.accounts import Accounts, check_display_name
from portunus.server.auth.passwords import Passwords, check_confirmation
from portunus.server.auth.principal import SUPERADMIN_USER
from portunus.server.auth.setupfile import SetupTokenFile
from portunus.server.auth.throttle import Throttle

__all__ = [
    "BootstrapSuperadminOptions",
    "OnboardingTokenOptions",
    "ResetPasswordOptions",
    "bootstrap_superadmin",
    "onboarding_token",
    "reset_password",
]

T = TypeVar("T")


class _WallClock(Clock):
    """Real time for a short offline run: nothing is scheduled, only read."""

    def seconds(self) -> float:
        return time.time()


def _inline(fn: Callable[[], T]) -> Deferred[T]:
    # Offline there is no event loop to keep responsive: hash right here.
    return defer.execute(fn)


async def _with_accounts(
    opts: usage.Options,
    work: Callable[[Accounts], Awaitable[T]],
    *,
    must_exist: str | None = None,
) -> T:
    """
    Run C{work} on L{Accounts} over the data dir's store, locked for the
    run.  With C{must_exist} (an error code), a data dir without
    C{state.db} is refused with it instead of creating an empty one.
    """
    clock = _WallClock()
    async with offline_store(opts, clock, missing=must_exist) as store:
        accounts = Accounts(
            store.accounts,
            Passwords(_inline),
            Throttle(clock),
            clock,
            setup_file=SetupTokenFile(data_dir(opts)),
        )
        return await work(accounts)


# ---------------------------------------------------------------------------
# Options


class BootstrapSuperadminOptions(Offline):
    synopsis = "bootstrap-superadmin [--name DISPLAY_NAME] [--data-dir DIR]"
    longdesc = (
        "With the server stopped, create the reserved superadmin _superadmin and print its "
        "bearer token once. Refused once a superadmin who can log in exists."
    )
    optParameters = [["name", None, "ops", "Its display name (1 to 64 characters)."]]


class OnboardingTokenOptions(Offline):
    synopsis = "onboarding-token [--data-dir DIR]"
    longdesc = (
        "Print the onboarding setup token: while the server runs, the current one (from "
        "onboarding.token in the data dir); with the server stopped, a new one (valid 30 "
        "minutes). Refused once a superadmin who can log in exists."
    )


class ResetPasswordOptions(Offline):
    synopsis = "reset-password USER_ID [--temporary | --password-stdin] [--data-dir DIR]"
    longdesc = (
        "With the server stopped, set a user's password and end their console sessions. "
        "Without --temporary or --password-stdin, prompts twice (a terminal is needed)."
    )
    optFlags = [
        ["temporary", None, "Generate a password, print it once; the user must change it."],
        ["password-stdin", None, "Read the new password from stdin's first line."],
    ]
    exclusive_flags = (("temporary", "password-stdin"),)

    def parseArgs(self, user_id: str) -> None:  # type: ignore[override]
        self["user_id"] = user_id


# ---------------------------------------------------------------------------
# Commands


async def bootstrap_superadmin(cmd: Output, opts: usage.Options) -> None:
    name = check_display_name(opts["name"], "--name")

    async def work(accounts: Accounts) -> str:
        try:
            await accounts.get_user(SUPERADMIN_USER)
        except PortunusError as e:
            if e.code != "user_not_found":
                raise
        else:
            raise PortunusError(
                "already_bootstrapped",
                f"{SUPERADMIN_USER} exists already and its token was printed when it was "
                f"made; if it is lost, remove {SUPERADMIN_USER} (user-remove) and run this again",
            )
        await accounts.start()
        return await accounts.issue_superadmin_token(name)

    token = await _with_accounts(opts, work)
    cmd.print(f"superadmin user_id={SUPERADMIN_USER} token={token}")


async def onboarding_token(cmd: Output, opts: usage.Options) -> None:
    async def work(accounts: Accounts) -> str:
        token = await accounts.start()
        if token is None:
            raise PortunusError(
                "already_bootstrapped",
                "a superadmin who can log in exists, so onboarding is closed; log in, or "
                "run reset-password for a superadmin who cannot",
            )
        return token

    try:
        token = await _with_accounts(opts, work)
    except PortunusError as e:
        if e.code != "startup.store_in_use":
            raise
        token = _running_servers_token(data_dir(opts))
    cmd.print(f"setup_token={token}")


def _running_servers_token(where: str) -> str:
    """The setup token a running server keeps in C{where}'s onboarding.token."""
    setup = SetupTokenFile(where)
    try:
        token = setup.read()
    except OSError as e:
        raise CliError(
            "setup_token_unavailable",
            f"the server is running but {setup.path} cannot be read ({e.strerror}); "
            "run this as the user the server runs as",
        ) from None
    if token is None:
        raise CliError(
            "setup_token_unavailable",
            f"the server is running and there is no {setup.path}: onboarding is closed "
            "(a superadmin who can log in exists), or the server could not write the file "
            "(its log says operator.onboarding_file_failed)",
        )
    return token


def _new_password(opts: usage.Options) -> str | None:
    """The password to set: from stdin, prompted twice, or C{None} for a temporary one."""
    if opts["temporary"]:
        return None
    stdin = sys.stdin
    if opts["password-stdin"]:
        line = stdin.readline()
        return line[:-1].rstrip("\r") if line.endswith("\n") else line
    if not stdin.isatty():
        raise CliError(
            "usage",
            "stdin is not a terminal, so there is nobody to prompt: pass --password-stdin "
            "(the first line of stdin is the password) or --temporary",
            exit_code=2,
        )
    first = getpass(f"New password for {opts['user_id']}: ")
    again = getpass("Type it again: ")
    check_confirmation(first, again, "the second password")
    return first


async def reset_password(cmd: Output, opts: usage.Options) -> None:
    user_id = opts["user_id"]
    # Read (or prompt) before taking the lock, so a slow typist never
    # keeps the server from starting.
    password = _new_password(opts)

    async def work(accounts: Accounts) -> tuple[int, str | None]:
        result = await accounts.reset_password(user_id, password, password is None, None)
        return result.sessions_revoked, result.temporary_password

    revoked, temporary = await _with_accounts(opts, work, must_exist="user_not_found")
    cmd.print(f"password_reset=ok user_id={user_id} sessions_revoked={revoked}")
    if temporary is not None:
        cmd.print(f"temporary_password={temporary}")
