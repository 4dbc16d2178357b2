"""
portunus-server bootstrap-superadmin, onboarding-token and reset-password:
offline commands on a real store in a temporary data dir, checked by
using what they print (a bearer token, a setup token, a password) against
the same L{Accounts} the API runs.
"""

from __future__ import annotations

import os
import stat
import sys
import time
from collections.abc import Callable
from io import StringIO
from typing import Any

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from portunus.cli import offline_accounts
from portunus.cli import server as cli
from portunus.errors import PortunusError
from portunus.server.auth.accounts import Accounts
from portunus.server.auth.principal import AuthMethod, Role
from portunus.server.auth.setupfile import SetupTokenFile
from portunus.server.auth.throttle import Throttle
from portunus.server.store import DB_NAME, Store, open_store, run_synchronously
from tests.server._apiharness import fast_passwords

PASSWORD = "correct horse battery"
NEW_PASSWORD = "a brand new passphrase"


class _Terminal(StringIO):
    """stdin as an interactive terminal."""

    def isatty(self) -> bool:
        return True


class OfflineAccountsTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.data_dir = os.path.abspath(self.mktemp())
        # Near the commands' wall clock, so the setup token's expiry means the same.
        self.clock = Clock()
        self.clock.advance(time.time())

    def run_cli(self, *argv: str) -> tuple[int, str, str]:
        out, err = StringIO(), StringIO()
        d = ensureDeferred(cli.run([*argv, "--data-dir", self.data_dir], None, {}, out, err))
        code: Any = self.successResultOf(d)
        return code, out.getvalue(), err.getvalue()

    def assertFails(self, argv: tuple[str, ...], exit_code: int, code: str) -> str:
        status, out, err = self.run_cli(*argv)
        self.assertEqual((status, out), (exit_code, ""), err)
        self.assertTrue(err.startswith(f"error: {code}: "), err)
        return err

    def accounts(self) -> tuple[Store, Accounts]:
        """The data dir's store (closed at cleanup) and accounts over it, as a server has."""
        store = open_store(self.data_dir, self.clock, runner=run_synchronously)
        self.addCleanup(store.close)
        accounts = Accounts(
            store.accounts,
            fast_passwords(),
            Throttle(self.clock),
            self.clock,
            setup_file=SetupTokenFile(self.data_dir),
        )
        return store, accounts

    def with_accounts(self, fn: Callable[[Accounts], Any]) -> Deferred[Any]:
        """C{fn(accounts)} (a Deferred or coroutine) on the data dir, which is closed after."""
        store, accounts = self.accounts()
        d: Deferred[Any] = ensureDeferred(fn(accounts))
        return d.addBoth(lambda result: store.close().addCallback(lambda _: result))

    def add_user(self, user_id: str, role: str = "user") -> None:
        body = {
            "user_id": user_id,
            "display_name": user_id.title(),
            "role": role,
            "initial_password": PASSWORD,
        }
        self.successResultOf(self.with_accounts(lambda accounts: accounts.create_user(body)))

    def login(self, user_id: str, password: str) -> Deferred[Any]:
        return self.with_accounts(lambda accounts: accounts.login(user_id, password, None, None))

    def hold_lock(self) -> None:
        """A running server: another holder of the data-dir lock."""
        self.accounts()

    def stdin(self, text: str, tty: bool = False) -> None:
        self.patch(sys, "stdin", _Terminal(text) if tty else StringIO(text))


class BootstrapSuperadminTests(OfflineAccountsTestCase):
    def test_token_authenticates(self) -> None:
        """The printed token is a bearer of the superadmin _superadmin, named by --name."""
        code, out, err = self.run_cli("bootstrap-superadmin", "--name", "break glass")
        self.assertEqual((code, err), (0, ""))
        self.assertRegex(out, r"^superadmin user_id=_superadmin token=[A-Za-z0-9_-]{43}\n$")
        token = out.split("token=")[1].strip()

        principal = self.successResultOf(
            self.with_accounts(lambda accounts: accounts.authenticate_bearer(token))
        )
        self.assertEqual(
            (principal.user_id, principal.role, principal.auth_method, principal.display_name),
            ("_superadmin", Role.SUPERADMIN, AuthMethod.BEARER, "break glass"),
        )

    def test_default_name(self) -> None:
        """Without --name the display name is ops, as in Portunus."""
        self.run_cli("bootstrap-superadmin")
        user = self.successResultOf(
            self.with_accounts(lambda accounts: accounts.get_user("_superadmin"))
        )
        self.assertEqual(user.display_name, "ops")

    def test_second_run_exits_2(self) -> None:
        """_superadmin exists: already_bootstrapped, exit 2, and the first token still works."""
        first = self.run_cli("bootstrap-superadmin")[1].split("token=")[1].strip()
        err = self.assertFails(("bootstrap-superadmin",), 2, "already_bootstrapped")
        self.assertIn("_superadmin", err)

        principal = self.successResultOf(
            self.with_accounts(lambda accounts: accounts.authenticate_bearer(first))
        )
        self.assertEqual(principal.user_id, "_superadmin")

    def test_after_onboarding_exits_2(self) -> None:
        """A superadmin who can log in exists: already_bootstrapped, nothing created."""
        self.add_user("alice", role="superadmin")
        self.assertFails(("bootstrap-superadmin",), 2, "already_bootstrapped")

        d = self.with_accounts(lambda accounts: accounts.get_user("_superadmin"))
        self.assertEqual(self.failureResultOf(d, PortunusError).value.code, "user_not_found")

    def test_bad_name_exits_3(self) -> None:
        """An empty or too long --name is invalid_display_name, exit 3, before the store."""
        self.assertFails(("bootstrap-superadmin", "--name", " "), 3, "invalid_display_name")
        self.assertFails(("bootstrap-superadmin", "--name", "x" * 65), 3, "invalid_display_name")
        self.assertFalse(os.path.exists(self.data_dir))

    def test_store_in_use(self) -> None:
        """A running server holds the lock: store_in_use with the offline commands' exit 75."""
        self.hold_lock()
        self.assertFails(("bootstrap-superadmin",), 75, "startup.store_in_use")


class OnboardingTokenTests(OfflineAccountsTestCase):
    def onboard(self, token: str, *, clock: Clock | None = None) -> Any:
        """Onboard alice with C{token}, at C{clock}'s time; the Deferred of the user."""
        if clock is not None:
            self.clock = clock
        body = {
            "user_id": "alice",
            "display_name": "Alice",
            "password": PASSWORD,
            "password_confirm": PASSWORD,
            "setup_token": token,
        }
        return self.with_accounts(lambda accounts: accounts.onboard(body, None))

    def token(self) -> str:
        code, out, err = self.run_cli("onboarding-token")
        self.assertEqual((code, err), (0, ""))
        self.assertRegex(out, r"^setup_token=[A-Za-z0-9_-]{43}\n$")
        return out.strip().partition("=")[2]

    def test_token_onboards(self) -> None:
        """The printed setup token onboards the first superadmin; afterwards exit 2."""
        user = self.successResultOf(self.onboard(self.token()))
        self.assertEqual((user.user_id, user.role), ("alice", "superadmin"))
        self.assertFails(("onboarding-token",), 2, "already_bootstrapped")

    def test_new_token_replaces_old(self) -> None:
        """Each run rotates the token: the one printed before stops working."""
        old = self.token()
        self.token()
        failure = self.failureResultOf(self.onboard(old), PortunusError)
        self.assertEqual(failure.value.code, "setup_token_invalid")

    def test_token_expires_after_30_minutes(self) -> None:
        """The printed token is refused 30 minutes after it was made."""
        token = self.token()
        later = Clock()
        later.advance(time.time() + 30 * 60 + 1)
        failure = self.failureResultOf(self.onboard(token, clock=later), PortunusError)
        self.assertEqual(failure.value.code, "setup_token_invalid")

    def test_bootstrap_superadmin_keeps_onboarding_open(self) -> None:
        """_superadmin cannot log in, so it does not close onboarding."""
        self.assertEqual(self.run_cli("bootstrap-superadmin")[0], 0)
        self.successResultOf(self.onboard(self.token()))

    def test_token_is_kept_in_a_0600_file(self) -> None:
        """The printed token is also in onboarding.token, mode 0600; onboarding removes it."""
        token = self.token()
        path = os.path.join(self.data_dir, "onboarding.token")
        with open(path) as f:
            self.assertEqual(f.read(), token + "\n")
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        self.successResultOf(self.onboard(token))
        self.assertFalse(os.path.exists(path))

    def test_while_the_server_runs_prints_its_token(self) -> None:
        """
        A running server holds the lock: the command prints the token the
        server keeps in onboarding.token, without rotating it (it still
        onboards).
        """
        _, server = self.accounts()
        token = self.successResultOf(ensureDeferred(server.start()))
        code, out, err = self.run_cli("onboarding-token")
        self.assertEqual((code, out, err), (0, f"setup_token={token}\n", ""))
        body = {
            "user_id": "alice",
            "password": PASSWORD,
            "password_confirm": PASSWORD,
            "setup_token": token,
        }
        self.successResultOf(ensureDeferred(server.onboard(body, None)))

    def test_while_the_server_runs_after_onboarding(self) -> None:
        """A running server without onboarding.token: setup_token_unavailable, exit 1."""
        self.add_user("alice", role="superadmin")
        self.hold_lock()
        err = self.assertFails(("onboarding-token",), 1, "setup_token_unavailable")
        self.assertIn("onboarding is closed", err)


class ResetPasswordTests(OfflineAccountsTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.add_user("alice")
        self.assertLogsInWith(PASSWORD)

    def assertLogsInWith(self, password: str) -> Any:
        """Log in as alice with C{password} and return the user."""
        return self.successResultOf(self.login("alice", password)).user

    def assertRefusesLogin(self, password: str) -> None:
        failure = self.failureResultOf(self.login("alice", password), PortunusError)
        self.assertEqual(failure.value.code, "invalid_login")

    def test_password_stdin(self) -> None:
        """--password-stdin sets stdin's first line and ends the user's sessions."""
        self.stdin(NEW_PASSWORD + "\nignored\n")
        code, out, err = self.run_cli("reset-password", "alice", "--password-stdin")
        self.assertEqual(
            (code, out, err), (0, "password_reset=ok user_id=alice sessions_revoked=1\n", "")
        )
        self.assertRefusesLogin(PASSWORD)
        self.assertFalse(self.assertLogsInWith(NEW_PASSWORD).password_change_required)

    def test_temporary(self) -> None:
        """--temporary prints a generated password once; the user must change it."""
        self.stdin("", tty=True)
        code, out, err = self.run_cli("reset-password", "--temporary", "alice")
        self.assertEqual((code, err), (0, ""))
        first, second = out.splitlines()
        self.assertEqual(first, "password_reset=ok user_id=alice sessions_revoked=1")
        self.assertRegex(second, r"^temporary_password=[A-Za-z0-9_-]{24}$")
        user = self.assertLogsInWith(second.partition("=")[2])
        self.assertTrue(user.password_change_required)

    def test_prompt_twice(self) -> None:
        """On a terminal without flags it prompts twice, without echo (getpass)."""
        self.stdin("", tty=True)
        answers = [NEW_PASSWORD, NEW_PASSWORD]
        prompts: list[str] = []

        def getpass(prompt: str) -> str:
            prompts.append(prompt)
            return answers.pop(0)

        self.patch(offline_accounts, "getpass", getpass)
        code, _, err = self.run_cli("reset-password", "alice")
        self.assertEqual((code, err), (0, ""), err)
        self.assertEqual(len(prompts), 2)
        self.assertIn("alice", prompts[0])
        self.assertLogsInWith(NEW_PASSWORD)

    def test_prompt_mismatch_exits_3(self) -> None:
        """Two different prompted passwords: password_mismatch, exit 3, nothing changed."""
        self.stdin("", tty=True)
        answers = [NEW_PASSWORD, NEW_PASSWORD + "!"]
        self.patch(offline_accounts, "getpass", lambda prompt: answers.pop(0))
        self.assertFails(("reset-password", "alice"), 3, "password_mismatch")
        self.assertLogsInWith(PASSWORD)

    def test_no_terminal_no_flag_exits_2(self) -> None:
        """Piped stdin without a flag: refused, naming both flags; nothing read or changed."""
        self.stdin(NEW_PASSWORD + "\n")
        self.patch(offline_accounts, "getpass", lambda prompt: self.fail("prompted"))
        err = self.assertFails(("reset-password", "alice"), 2, "usage")
        self.assertIn("--password-stdin", err)
        self.assertIn("--temporary", err)
        self.assertLogsInWith(PASSWORD)

    def test_both_flags_exit_2(self) -> None:
        """--temporary and --password-stdin together are a usage error."""
        code, _, err = self.run_cli("reset-password", "alice", "--temporary", "--password-stdin")
        self.assertEqual(code, 2)
        self.assertIn("not both", err)

    def test_unknown_user_exits_8(self) -> None:
        """An unknown user is user_not_found, exit 8."""
        self.stdin(NEW_PASSWORD + "\n")
        self.assertFails(("reset-password", "bob", "--password-stdin"), 8, "user_not_found")

    def test_reserved_user_exits_3(self) -> None:
        """Reserved machine users have no password to reset: exit 3."""
        self.run_cli("bootstrap-superadmin")
        self.assertFails(("reset-password", "_superadmin", "--temporary"), 3, "reserved_user_id")

    def test_short_password_exits_3(self) -> None:
        """Policy refusals are exit 3 and change nothing."""
        self.stdin("short\n")
        self.assertFails(("reset-password", "alice", "--password-stdin"), 3, "password_too_short")
        self.assertLogsInWith(PASSWORD)

    def test_store_in_use(self) -> None:
        """A running server holds the lock: store_in_use, exit 75, nothing printed."""
        self.hold_lock()
        self.assertFails(("reset-password", "alice", "--temporary"), 75, "startup.store_in_use")

    def test_missing_database_is_not_created(self) -> None:
        """A wrong --data-dir is user_not_found (exit 8), and no state.db appears there."""
        self.data_dir = os.path.abspath(self.mktemp())
        err = self.assertFails(("reset-password", "alice", "--temporary"), 8, "user_not_found")
        self.assertIn(self.data_dir, err)
        self.assertFalse(os.path.exists(os.path.join(self.data_dir, DB_NAME)))
