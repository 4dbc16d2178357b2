"""
The operator API's accounts contract: onboarding, login, console sessions,
logout and password changes, through the real Klein resource over real
accounts in a real store (L{ApiHarness}); time moves only on its Clock.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from portunus.server.auth.accounts import (
    SESSION_ABSOLUTE_SECS,
    SESSION_IDLE_SECS,
    SETUP_TOKEN_TTL_SECS,
)
from portunus.server.auth.throttle import MAX_ADDRESS_FAILURES
from tests.server._apiharness import TOKEN, ApiHarness
from tests.server._fakeplane import FakePlane

PASSWORD = "correct horse battery"
BOB_PASSWORD = "a long enough password"
NEW_PASSWORD = "a brand new passphrase"
HOUR = 3600

Answer = tuple[int, Any, Any]


class AccountsApiTestCase(SynchronousTestCase):
    """An API over a L{FakePlane} with one client; nobody has onboarded yet."""

    public_origin: str | None = None

    def setUp(self) -> None:
        self.plane = FakePlane()
        self.edge = self.plane.add_client("edge-01")
        self.api = ApiHarness(self, self.plane, public_origin=self.public_origin)
        self.clock = self.api.clock

    def assertError(
        self, answer: Answer, status: int, code: str, field: str | None = None
    ) -> dict[str, Any]:
        """C{answer} is the error envelope with C{status} and C{code} (and C{field})."""
        got_status, body, _ = answer
        self.assertIsInstance(body, dict, body)
        self.assertEqual((got_status, body["error"]["code"]), (status, code), body)
        self.assertIsInstance(body["error"]["message"], str)
        if field is not None:
            self.assertEqual(body["error"].get("field"), field, body)
        error: dict[str, Any] = body["error"]
        return error

    def onboarding(self, **changes: Any) -> Answer:
        """POST an onboarding body (valid unless C{changes} say otherwise)."""
        body: dict[str, Any] = {
            "user_id": "alice",
            "display_name": "Alice",
            "password": PASSWORD,
            "password_confirm": PASSWORD,
            "setup_token": self.api.setup_token,
        }
        for key, value in changes.items():
            if value is None:
                body.pop(key, None)
            else:
                body[key] = value
        return self.api.request("POST", "/v1/auth/onboarding", body, token=None)

    def login(self, user_id: str, password: str, headers: dict[str, str] | None = None) -> Answer:
        return self.api.request(
            "POST",
            "/v1/auth/login",
            {"user_id": user_id, "password": password},
            token=None,
            headers=headers,
        )

    def me(self, cookie: str) -> Answer:
        return self.api.request("GET", "/v1/users/me", token=None, cookie=cookie)

    def set_cookie(self, answer: Answer) -> tuple[str, str, list[str]]:
        """The one Set-Cookie header of C{answer}: its name, value and attributes."""
        headers = answer[2].headers.getRawHeaders(b"set-cookie") or []
        self.assertEqual(len(headers), 1, headers)
        first, *attributes = [part.strip() for part in headers[0].decode("ascii").split(";")]
        name, _, value = first.partition("=")
        return name, value, attributes

    def denials(self) -> list[Any]:
        return [e for e in self.api.audit.entries if e.outcome == "deny"]

    def tallied(self) -> list[str]:
        """The reasons of the requests refused before authentication, counted not stored."""
        return [reason for reason, _ in self.api.audit.unauthenticated_failures]


class OnboardedTestCase(AccountsApiTestCase):
    """As L{AccountsApiTestCase}, with C{alice} onboarded as the first superadmin."""

    def setUp(self) -> None:
        super().setUp()
        self.api.onboard("alice", PASSWORD)

    def change_password(self, cookie: str, **changes: Any) -> Answer:
        body: dict[str, Any] = {
            "current_password": PASSWORD,
            "new_password": NEW_PASSWORD,
            "new_password_confirm": NEW_PASSWORD,
        }
        body.update(changes)
        return self.api.browser(cookie, "POST", "/v1/users/me/password", body)


class OnboardingStatusTests(AccountsApiTestCase):
    def test_status_before_and_after(self) -> None:
        """GET /v1/auth/status is public and says whether onboarding is still open."""
        self.assertEqual(
            self.api.request("GET", "/v1/auth/status", token=None)[:2],
            (200, {"onboarding_required": True}),
        )
        self.api.onboard()
        self.assertEqual(
            self.api.request("GET", "/v1/auth/status", token=None)[:2],
            (200, {"onboarding_required": False}),
        )

    def test_bootstrap_required_without_credentials(self) -> None:
        """
        Before onboarding a request without a bearer is 503
        bootstrap_required: counted with its source, not an entry.
        """
        self.assertError(
            self.api.request("GET", "/v1/clients", token=None), 503, "bootstrap_required"
        )
        self.assertEqual(self.denials(), [])
        [(reason, remote)] = self.api.audit.unauthenticated_failures
        self.assertEqual(reason, "bootstrap_required")
        self.assertIsInstance(remote, str)

    def test_bootstrap_required_with_a_cookie(self) -> None:
        """Before onboarding a cookie is not even looked at: 503 bootstrap_required."""
        self.assertError(
            self.api.request("GET", "/v1/users/me", token=None, cookie="whatever"),
            503,
            "bootstrap_required",
        )

    def test_cookie_wins_over_bearer_before_onboarding(self) -> None:
        """A cookie sent with the operator token means the session, which cannot exist yet."""
        self.assertError(
            self.api.request("GET", "/v1/users/me", token=TOKEN, cookie="whatever"),
            503,
            "bootstrap_required",
        )

    def test_operator_token_works_before_onboarding(self) -> None:
        """The machine operator token (the _legacy superadmin) needs no onboarding."""
        status, body, _ = self.api.request("GET", "/v1/users/me")
        self.assertEqual(status, 200)
        self.assertEqual(
            (body["user_id"], body["role"], body["auth_method"]),
            ("_legacy", "superadmin", "bearer"),
        )
        self.assertEqual(self.api.request("GET", "/v1/clients")[0], 200)

    def test_unknown_bearer_before_onboarding(self) -> None:
        """
        An unknown bearer before onboarding is checked like any bearer:
        401 credential_invalid, not 503 (machine credentials skip onboarding).
        """
        self.assertError(
            self.api.request("GET", "/v1/clients", token="not-the-token"),
            401,
            "credential_invalid",
        )

    def test_public_routes_before_onboarding(self) -> None:
        """Health and status answer before onboarding without credentials."""
        self.assertEqual(self.api.request("GET", "/v1/health", token=None)[0], 200)
        self.assertEqual(self.api.request("GET", "/v1/auth/status", token=None)[0], 200)


class OnboardingTests(AccountsApiTestCase):
    def test_onboarding_creates_the_first_superadmin(self) -> None:
        """A valid body is 201 with the new superadmin, sets no cookie, and is audited."""
        status, body, response = self.onboarding()
        self.assertEqual(status, 201)
        self.assertEqual(body, {"user_id": "alice", "display_name": "Alice", "role": "superadmin"})
        self.assertIsNone(response.headers.getRawHeaders(b"set-cookie"))
        [entry] = self.api.audit.entries
        self.assertEqual(
            (entry.outcome, entry.actor, entry.action, entry.resource_kind, entry.resource_value),
            ("allow", "alice", "auth.onboarding", "user", "alice"),
        )
        self.assertEqual(self.login("alice", PASSWORD)[0], 200)

    def test_setup_token_never_reaches_the_audit(self) -> None:
        """The setup token and passwords are not in the onboarding audit entry."""
        self.onboarding()
        text = repr(self.api.audit.entries)
        assert self.api.setup_token is not None
        self.assertNotIn(self.api.setup_token, text)
        self.assertNotIn(PASSWORD, text)

    def test_display_name_defaults_to_user_id(self) -> None:
        """Without display_name the user id is shown."""
        status, body, _ = self.onboarding(display_name=None)
        self.assertEqual((status, body["display_name"]), (201, "alice"))

    def test_missing_setup_token(self) -> None:
        """No setup token is 401 setup_token_required naming the field."""
        self.assertError(
            self.onboarding(setup_token=None), 401, "setup_token_required", "setup_token"
        )
        self.assertError(self.onboarding(setup_token=""), 401, "setup_token_required")

    def test_wrong_setup_token(self) -> None:
        """A wrong setup token is 401 setup_token_invalid, and nobody is created."""
        self.assertError(
            self.onboarding(setup_token="x" * 43), 401, "setup_token_invalid", "setup_token"
        )
        self.assertError(self.login("alice", PASSWORD), 401, "invalid_login")
        self.assertEqual(self.onboarding()[0], 201)

    def test_expired_setup_token(self) -> None:
        """The setup token works for 30 minutes and is setup_token_invalid from then on."""
        self.clock.advance(SETUP_TOKEN_TTL_SECS - 1)
        self.assertError(self.onboarding(password="short"), 422, "password_too_short")
        self.clock.advance(1)
        self.assertError(self.onboarding(), 401, "setup_token_invalid")

    def test_rotated_setup_token(self) -> None:
        """Rotating the setup token retires the old one."""
        old = self.api.setup_token
        new = self.successResultOf(Deferred.fromCoroutine(self.api.accounts.rotate_setup_token()))
        self.assertError(self.onboarding(setup_token=old), 401, "setup_token_invalid")
        self.assertEqual(self.onboarding(setup_token=new)[0], 201)

    def test_onboarding_twice(self) -> None:
        """Once a superadmin exists onboarding is 409 already_bootstrapped, whatever the body."""
        self.assertEqual(self.onboarding()[0], 201)
        self.assertError(self.onboarding(user_id="mallory"), 409, "already_bootstrapped")
        self.assertError(self.onboarding(setup_token="x"), 409, "already_bootstrapped")

    def test_superadmin_created_by_token_closes_onboarding(self) -> None:
        """A human superadmin created with the operator token ends onboarding too."""
        self.api.add_user("root", role="superadmin")
        self.assertEqual(
            self.api.request("GET", "/v1/auth/status", token=None)[1],
            {"onboarding_required": False},
        )
        self.assertError(self.onboarding(), 409, "already_bootstrapped")

    def test_user_created_by_token_does_not_close_onboarding(self) -> None:
        """A plain user created before onboarding can log in but gets bootstrap_required."""
        self.api.add_user("bob")
        status, _, answer = self.login("bob", BOB_PASSWORD)
        self.assertEqual(status, 200)
        _, cookie, _ = self.set_cookie((status, None, answer))
        self.assertError(self.me(cookie), 503, "bootstrap_required")
        self.assertEqual(self.onboarding()[0], 201)
        self.assertEqual(self.me(cookie)[0], 200)

    def test_field_validation(self) -> None:
        """Each bad field is 422 with its code and field; nothing is created."""
        cases: list[tuple[dict[str, Any], str, str]] = [
            ({"user_id": "Alice"}, "invalid_user_id", "user_id"),
            ({"user_id": "1alice"}, "invalid_user_id", "user_id"),
            ({"user_id": "a" * 33}, "invalid_user_id", "user_id"),
            ({"user_id": 7}, "invalid_user_id", "user_id"),
            ({"user_id": None}, "invalid_user_id", "user_id"),
            ({"user_id": "_root"}, "reserved_user_id", "user_id"),
            ({"user_id": "_legacy"}, "reserved_user_id", "user_id"),
            (
                {"password": "elevenchars", "password_confirm": "elevenchars"},
                "password_too_short",
                "password",
            ),
            ({"password_confirm": PASSWORD + "!"}, "password_mismatch", "password_confirm"),
            ({"password_confirm": None}, "password_mismatch", "password_confirm"),
            ({"password": 12345678901234}, "password_invalid", "password"),
            ({"display_name": ""}, "invalid_display_name", "display_name"),
            ({"display_name": "   "}, "invalid_display_name", "display_name"),
            ({"display_name": "x" * 65}, "invalid_display_name", "display_name"),
            ({"display_name": "Al\nice"}, "invalid_display_name", "display_name"),
        ]
        for changes, code, field in cases:
            with self.subTest(changes=changes):
                self.assertError(self.onboarding(**changes), 422, code, field)
        self.assertEqual(
            self.api.request("GET", "/v1/auth/status", token=None)[1],
            {"onboarding_required": True},
        )
        self.assertEqual(self.onboarding()[0], 201)

    def test_longest_user_id_and_display_name(self) -> None:
        """A 32-character user id and a 64-character display name are accepted."""
        status, body, _ = self.onboarding(user_id="a" * 32, display_name="D" * 64)
        self.assertEqual((status, body["user_id"], body["display_name"]), (201, "a" * 32, "D" * 64))


class OnboardingThrottleTests(AccountsApiTestCase):
    def test_five_failures_lock_onboarding(self) -> None:
        """
        Five wrong setup tokens lock onboarding: 429 rate_limited with
        Retry-After, even for the right token, until 60 s have passed.
        """
        for _ in range(5):
            self.assertError(self.onboarding(setup_token="wrong"), 401, "setup_token_invalid")
        answer = self.onboarding()
        error = self.assertError(answer, 429, "rate_limited")
        self.assertEqual(error["retry_after"], 60)
        self.assertEqual(answer[2].headers.getRawHeaders(b"retry-after"), [b"60"])
        self.assertEqual(self.tallied()[-1], "rate_limited")
        self.clock.advance(59)
        answer = self.onboarding()
        self.assertError(answer, 429, "rate_limited")
        self.assertEqual(answer[2].headers.getRawHeaders(b"retry-after"), [b"1"])
        self.clock.advance(1)
        self.assertEqual(self.onboarding()[0], 201)

    def test_four_failures_do_not_lock(self) -> None:
        """Four wrong setup tokens still leave the right one working."""
        for _ in range(4):
            self.assertError(self.onboarding(setup_token="wrong"), 401, "setup_token_invalid")
        self.assertEqual(self.onboarding()[0], 201)


class LoginTests(OnboardedTestCase):
    def test_login(self) -> None:
        """A right password is 200 with who logged in and a session cookie."""
        answer = self.login("alice", PASSWORD)
        status, body, _ = answer
        self.assertEqual(status, 200)
        self.assertEqual(
            body,
            {
                "user_id": "alice",
                "role": "superadmin",
                "display_name": "Alice",
                "password_change_required": False,
            },
        )
        name, value, _ = self.set_cookie(answer)
        self.assertEqual(name, "portunus_session")
        self.assertEqual(len(value), 43)
        self.assertNotIn(value, repr(self.api.audit.entries))

    def test_cookie_attributes(self) -> None:
        """Over plain http the cookie is HttpOnly, SameSite=Lax, Path=/, 7 days, not Secure."""
        _, _, attributes = self.set_cookie(self.login("alice", PASSWORD))
        self.assertEqual(
            sorted(attributes), sorted(["Path=/", "HttpOnly", "SameSite=Lax", "Max-Age=604800"])
        )
        self.assertEqual(SESSION_ABSOLUTE_SECS, 604800)

    def test_cookie_secure_behind_https_proxy(self) -> None:
        """X-Forwarded-Proto: https adds Secure."""
        _, _, attributes = self.set_cookie(
            self.login("alice", PASSWORD, headers={"x-forwarded-proto": "https"})
        )
        self.assertIn("Secure", attributes)
        _, _, attributes = self.set_cookie(
            self.login("alice", PASSWORD, headers={"x-forwarded-proto": "http"})
        )
        self.assertNotIn("Secure", attributes)

    def test_each_login_is_a_new_session(self) -> None:
        """Two logins give two different cookies, both usable."""
        first = self.api.login("alice", PASSWORD)
        second = self.api.login("alice", PASSWORD)
        self.assertNotEqual(first, second)
        self.assertEqual(self.me(first)[0], 200)
        self.assertEqual(self.me(second)[0], 200)

    def test_failures_are_generic(self) -> None:
        """Unknown user, wrong password and malformed input are the same 401 invalid_login."""
        answers = [
            self.login("nobody", PASSWORD),
            self.login("alice", "wrong password here"),
            self.login("Not A User Id", PASSWORD),
            self.api.request(
                "POST", "/v1/auth/login", {"user_id": "alice", "password": 7}, token=None
            ),
            self.api.request("POST", "/v1/auth/login", {"password": PASSWORD}, token=None),
        ]
        errors = [self.assertError(answer, 401, "invalid_login") for answer in answers]
        self.assertEqual(len({json.dumps(e, sort_keys=True) for e in errors}), 1, errors)
        for answer in answers:
            self.assertIsNone(answer[2].headers.getRawHeaders(b"set-cookie"))

    def test_failed_login_is_counted_not_stored(self) -> None:
        """
        A failed login is not an audit entry (anyone can send them as fast
        as they like): it is counted as invalid_login, without the password.
        """
        before = list(self.api.audit.entries)
        self.login("alice", "wrong password here")
        self.assertEqual(self.api.audit.entries, before)
        self.assertEqual(self.tallied(), ["invalid_login"])
        self.assertNotIn("wrong password here", repr(self.api.audit.unauthenticated_failures))

    def test_successful_login_is_audited(self) -> None:
        """A login is an allow entry for the user who logged in."""
        self.login("alice", PASSWORD)
        entry = self.api.audit.entries[-1]
        self.assertEqual(
            (entry.outcome, entry.actor, entry.action, entry.resource_value),
            ("allow", "alice", "auth.login", "alice"),
        )

    def test_reserved_users_cannot_log_in(self) -> None:
        """The operator token's _legacy user has no password: invalid_login."""
        self.api.request("GET", "/v1/users/me")
        self.assertError(self.login("_legacy", ""), 401, "invalid_login")
        self.assertError(self.login("_legacy", TOKEN), 401, "invalid_login")


class SecureCookieByPublicOriginTests(AccountsApiTestCase):
    public_origin = "https://console.example.net"

    def test_https_public_origin_makes_cookies_secure(self) -> None:
        """With an https public origin the cookie carries Secure even over http."""
        self.api.onboard()
        _, _, attributes = self.set_cookie(self.login("alice", PASSWORD))
        self.assertIn("Secure", attributes)


class HttpPublicOriginTests(AccountsApiTestCase):
    public_origin = "http://console.example.net"

    def test_http_public_origin_keeps_cookies_plain(self) -> None:
        """An http public origin does not add Secure."""
        self.api.onboard()
        _, _, attributes = self.set_cookie(self.login("alice", PASSWORD))
        self.assertNotIn("Secure", attributes)


class LoginThrottleTests(OnboardedTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.api.add_user("bob", BOB_PASSWORD)

    def test_five_failures_lock_the_user(self) -> None:
        """Five wrong passwords lock that user: 429 with Retry-After, even for the right one."""
        for _ in range(5):
            self.assertError(self.login("alice", "wrong password here"), 401, "invalid_login")
        answer = self.login("alice", PASSWORD)
        error = self.assertError(answer, 429, "rate_limited")
        self.assertEqual(error["retry_after"], 60)
        self.assertEqual(answer[2].headers.getRawHeaders(b"retry-after"), [b"60"])
        self.clock.advance(60)
        self.assertEqual(self.login("alice", PASSWORD)[0], 200)

    def test_lock_doubles(self) -> None:
        """A failure after the first lock locks for twice as long."""
        for _ in range(5):
            self.login("alice", "wrong password here")
        self.clock.advance(60)
        self.assertError(self.login("alice", "wrong password here"), 401, "invalid_login")
        self.assertEqual(
            self.assertError(self.login("alice", PASSWORD), 429, "rate_limited")["retry_after"], 120
        )

    def test_other_user_not_locked(self) -> None:
        """Another user from the same address still logs in while one is locked."""
        for _ in range(5):
            self.login("alice", "wrong password here")
        self.assertError(self.login("alice", PASSWORD), 429, "rate_limited")
        self.assertEqual(self.login("bob", BOB_PASSWORD)[0], 200)

    def test_unknown_users_share_a_key(self) -> None:
        """Guesses at malformed user ids count together (subject _unknown)."""
        for n in range(5):
            self.login(f"Bad User {n}", "whatever password")
        self.assertError(self.login("Another Bad One", "x"), 429, "rate_limited")
        self.assertEqual(self.login("alice", PASSWORD)[0], 200)

    def test_success_clears_failures(self) -> None:
        """A successful login forgets the failures before it."""
        for _ in range(4):
            self.assertError(self.login("alice", "wrong password here"), 401, "invalid_login")
        self.assertEqual(self.login("alice", PASSWORD)[0], 200)
        for _ in range(4):
            self.assertError(self.login("alice", "wrong password here"), 401, "invalid_login")
        self.assertEqual(self.login("alice", PASSWORD)[0], 200)

    def test_spraying_one_address_is_locked(self) -> None:
        """
        Twenty wrong passwords from one address, each for another user id,
        lock logins from that address for every user: 429 naming the address.
        """
        for n in range(MAX_ADDRESS_FAILURES):
            self.assertError(self.login(f"user{n}", "wrong password here"), 401, "invalid_login")
        error = self.assertError(self.login("bob", BOB_PASSWORD), 429, "rate_limited")
        self.assertIn("from your address", error["message"])
        self.clock.advance(60)
        self.assertEqual(self.login("bob", BOB_PASSWORD)[0], 200)

    def test_rate_limited_is_counted(self) -> None:
        """A throttled login is counted with reason rate_limited, not stored."""
        for _ in range(6):
            self.login("alice", "wrong password here")
        self.assertEqual(self.tallied()[-1], "rate_limited")
        self.assertEqual(self.denials(), [])


class SessionTests(OnboardedTestCase):
    def test_me_with_the_cookie(self) -> None:
        """GET /v1/users/me with the cookie says who is logged in, by session."""
        cookie = self.api.login("alice", PASSWORD)
        self.assertEqual(
            self.me(cookie)[:2],
            (
                200,
                {
                    "user_id": "alice",
                    "role": "superadmin",
                    "display_name": "Alice",
                    "auth_method": "session",
                    "password_change_required": False,
                },
            ),
        )

    def test_cookie_reaches_other_routes(self) -> None:
        """The session cookie authenticates reads of the rest of the API."""
        cookie = self.api.login("alice", PASSWORD)
        status, body, _ = self.api.request("GET", "/v1/clients", token=None, cookie=cookie)
        self.assertEqual((status, [c["client_name"] for c in body]), (200, ["edge-01"]))

    def test_idle_expiry(self) -> None:
        """A session unused for 8 hours has ended: 401 credential_invalid."""
        fresh = self.api.login("alice", PASSWORD)
        idle = self.api.login("alice", PASSWORD)
        self.clock.advance(SESSION_IDLE_SECS - 1)
        self.assertEqual(self.me(fresh)[0], 200)
        self.clock.advance(1)
        self.assertError(self.me(idle), 401, "credential_invalid")
        self.assertEqual(self.me(fresh)[0], 200)

    def test_activity_refreshes_idle_timer(self) -> None:
        """Each request (more than a minute apart) restarts the 8-hour idle timer."""
        cookie = self.api.login("alice", PASSWORD)
        for _ in range(3):
            self.clock.advance(7 * HOUR)
            self.assertEqual(self.me(cookie)[0], 200)
        self.clock.advance(SESSION_IDLE_SECS)
        self.assertError(self.me(cookie), 401, "credential_invalid")

    def test_absolute_expiry(self) -> None:
        """A session ends 7 days after login even when used all along."""
        self.assertEqual(SESSION_ABSOLUTE_SECS, 7 * 24 * HOUR)
        cookie = self.api.login("alice", PASSWORD)
        for _ in range(27):
            self.clock.advance(6 * HOUR)
            self.assertEqual(self.me(cookie)[0], 200)
        self.clock.advance(6 * HOUR - 1)
        self.assertEqual(self.me(cookie)[0], 200)
        self.clock.advance(1)
        self.assertError(self.me(cookie), 401, "credential_invalid")

    def test_disabled_user(self) -> None:
        """A disabled user's session is 401 user_disabled, and they cannot log in again."""
        self.api.add_user("bob", BOB_PASSWORD)
        cookie = self.api.login("bob", BOB_PASSWORD)
        conn = sqlite3.connect(self.api.store.path)
        self.addCleanup(conn.close)
        conn.execute("UPDATE users SET disabled = 1 WHERE user_id = 'bob'")
        conn.commit()
        self.assertError(self.me(cookie), 401, "user_disabled")
        self.assertError(self.login("bob", BOB_PASSWORD), 401, "invalid_login")

    def test_unknown_cookie(self) -> None:
        """An unknown session cookie is 401 credential_invalid, counted (not an entry)."""
        self.assertError(self.me("forged"), 401, "credential_invalid")
        self.assertError(self.me(""), 401, "credential_invalid")
        self.assertEqual(self.tallied(), ["credential_invalid"] * 2)
        self.assertEqual(self.denials(), [])

    def test_no_bearer_fallback(self) -> None:
        """A bad cookie is refused even when a valid bearer comes with it."""
        self.assertError(
            self.api.request("GET", "/v1/users/me", token=TOKEN, cookie="forged"),
            401,
            "credential_invalid",
        )

    def test_cookie_wins_over_bearer(self) -> None:
        """With a valid cookie and the operator token, the request runs as the session's user."""
        self.api.add_user("bob", BOB_PASSWORD)
        cookie = self.api.login("bob", BOB_PASSWORD)
        status, body, _ = self.api.request("GET", "/v1/users/me", token=TOKEN, cookie=cookie)
        self.assertEqual((status, body["user_id"], body["auth_method"]), (200, "bob", "session"))
        self.assertError(
            self.api.request("GET", "/v1/users", token=TOKEN, cookie=cookie), 403, "role_required"
        )

    def test_no_credentials_after_onboarding(self) -> None:
        """After onboarding a request without credentials is 401 unauthenticated."""
        answer = self.api.request("GET", "/v1/users/me", token=None)
        self.assertError(answer, 401, "unauthenticated")
        self.assertEqual(
            answer[2].headers.getRawHeaders(b"www-authenticate"), [b'Bearer realm="portunus"']
        )

    def test_non_bearer_authorization(self) -> None:
        """An Authorization header that is not a bearer is unauthenticated."""
        self.assertError(
            self.api.request(
                "GET", "/v1/users/me", token=None, headers={"authorization": f"Basic {TOKEN}"}
            ),
            401,
            "unauthenticated",
        )


class LogoutTests(OnboardedTestCase):
    def test_logout_revokes_the_session(self) -> None:
        """Logout is 204, expires the cookie (Max-Age=0) and ends only that session."""
        cookie = self.api.login("alice", PASSWORD)
        other = self.api.login("alice", PASSWORD)
        answer = self.api.browser(cookie, "POST", "/v1/auth/logout")
        self.assertEqual(answer[:2], (204, None))
        name, value, attributes = self.set_cookie(answer)
        self.assertEqual((name, value), ("portunus_session", ""))
        self.assertIn("Max-Age=0", attributes)
        self.assertIn("Path=/", attributes)
        self.assertError(self.me(cookie), 401, "credential_invalid")
        self.assertEqual(self.me(other)[0], 200)

    def test_logout_is_audited(self) -> None:
        """Logout is an allow entry for the user."""
        cookie = self.api.login("alice", PASSWORD)
        self.api.browser(cookie, "POST", "/v1/auth/logout")
        entry = self.api.audit.entries[-1]
        self.assertEqual(
            (entry.outcome, entry.actor, entry.action), ("allow", "alice", "auth.logout")
        )

    def test_logout_twice(self) -> None:
        """Logging out with an ended session is 401 credential_invalid."""
        cookie = self.api.login("alice", PASSWORD)
        self.api.browser(cookie, "POST", "/v1/auth/logout")
        self.assertError(
            self.api.browser(cookie, "POST", "/v1/auth/logout"), 401, "credential_invalid"
        )

    def test_bearer_logout_is_harmless(self) -> None:
        """A bearer logout answers 204 and the token keeps working."""
        status, _, _ = self.api.request("POST", "/v1/auth/logout")
        self.assertEqual(status, 204)
        self.assertEqual(self.api.request("GET", "/v1/users/me")[0], 200)

    def test_logout_needs_csrf(self) -> None:
        """A cookie logout without the CSRF header is refused and the session lives on."""
        cookie = self.api.login("alice", PASSWORD)
        self.assertError(
            self.api.request("POST", "/v1/auth/logout", token=None, cookie=cookie),
            403,
            "csrf_origin_required",
        )
        self.assertEqual(self.me(cookie)[0], 200)


class PasswordChangeTests(OnboardedTestCase):
    def test_change(self) -> None:
        """A change is 204; the old password stops working and the new one logs in."""
        cookie = self.api.login("alice", PASSWORD)
        self.assertEqual(self.change_password(cookie)[:2], (204, None))
        self.assertError(self.login("alice", PASSWORD), 401, "invalid_login")
        self.assertEqual(self.login("alice", NEW_PASSWORD)[0], 200)

    def test_change_is_audited_without_secrets(self) -> None:
        """The change is an allow entry on the user; no password is in it."""
        cookie = self.api.login("alice", PASSWORD)
        self.change_password(cookie)
        entry = self.api.audit.entries[-1]
        self.assertEqual(
            (entry.outcome, entry.actor, entry.action, entry.resource_value),
            ("allow", "alice", "user.password_change", "alice"),
        )
        self.assertNotIn(PASSWORD, repr(entry))
        self.assertNotIn(NEW_PASSWORD, repr(entry))

    def test_current_password_required(self) -> None:
        """A wrong or missing current password is 422 password_invalid; nothing changes."""
        cookie = self.api.login("alice", PASSWORD)
        self.assertError(
            self.change_password(cookie, current_password="not my password"),
            422,
            "password_invalid",
            "current_password",
        )
        self.assertError(
            self.change_password(cookie, current_password=None),
            422,
            "password_invalid",
            "current_password",
        )
        self.assertEqual(self.login("alice", PASSWORD)[0], 200)

    def test_wrong_current_passwords_are_throttled(self) -> None:
        """Five wrong current passwords lock password changes for 60 s; then it works."""
        cookie = self.api.login("alice", PASSWORD)
        for _ in range(5):
            self.change_password(cookie, current_password="not my password")
        error = self.assertError(self.change_password(cookie), 429, "rate_limited")
        self.assertEqual(error["retry_after"], 60)
        self.api.clock.advance(60)
        self.assertEqual(self.change_password(cookie)[0], 204)

    def test_policy_and_confirmation(self) -> None:
        """The new password must meet the policy and be typed twice the same."""
        cookie = self.api.login("alice", PASSWORD)
        self.assertError(
            self.change_password(cookie, new_password="short", new_password_confirm="short"),
            422,
            "password_too_short",
            "new_password",
        )
        self.assertError(
            self.change_password(cookie, new_password="x" * 1025, new_password_confirm="x" * 1025),
            422,
            "password_too_long",
            "new_password",
        )
        self.assertError(
            self.change_password(cookie, new_password_confirm=NEW_PASSWORD + "!"),
            422,
            "password_mismatch",
            "new_password_confirm",
        )
        self.assertEqual(self.login("alice", PASSWORD)[0], 200)

    def test_other_sessions_end(self) -> None:
        """Changing one's password ends one's other sessions but keeps the current one."""
        current = self.api.login("alice", PASSWORD)
        other = self.api.login("alice", PASSWORD)
        self.api.add_user("bob", BOB_PASSWORD)
        bobs = self.api.login("bob", BOB_PASSWORD)
        self.assertEqual(self.change_password(current)[0], 204)
        self.assertEqual(self.me(current)[0], 200)
        self.assertError(self.me(other), 401, "credential_invalid")
        self.assertEqual(self.me(bobs)[0], 200)

    def test_bearer_has_no_password(self) -> None:
        """The operator token's user has no password to change: password_invalid."""
        self.assertError(
            self.api.request(
                "POST",
                "/v1/users/me/password",
                {
                    "current_password": "",
                    "new_password": NEW_PASSWORD,
                    "new_password_confirm": NEW_PASSWORD,
                },
            ),
            422,
            "password_invalid",
        )


class PasswordChangeGateTests(OnboardedTestCase):
    """A session whose user must change their password reaches three routes only."""

    def setUp(self) -> None:
        super().setUp()
        status, body, _ = self.api.request(
            "POST",
            "/v1/users",
            {
                "user_id": "bob",
                "initial_password": BOB_PASSWORD,
                "password_change_required": True,
            },
        )
        self.assertEqual(status, 201, body)
        self.cookie = self.api.login("bob", BOB_PASSWORD)

    def gated(self) -> list[tuple[str, str, object]]:
        return [
            ("GET", "/v1/clients", None),
            ("GET", f"/v1/clients/{self.edge.client_id}", None),
            ("GET", "/v1/rules", None),
            ("GET", "/v1/rules/1", None),
            (
                "POST",
                "/v1/rules",
                {"client": "edge-01", "listen": 8080, "targets": [{"host": "h", "port": 1}]},
            ),
            ("DELETE", "/v1/rules/1", None),
            ("GET", "/v1/users", None),
            ("POST", "/v1/grants", {}),
        ]

    def test_login_says_change_required(self) -> None:
        """Login and /v1/users/me say the password must be changed."""
        status, body, _ = self.login("bob", BOB_PASSWORD)
        self.assertEqual((status, body["password_change_required"]), (200, True))
        status, body, _ = self.me(self.cookie)
        self.assertEqual((status, body["password_change_required"]), (200, True))

    def test_everything_else_is_refused(self) -> None:
        """Every other route is 403 password_change_required, audited as a deny."""
        for method, path, body in self.gated():
            with self.subTest(method=method, path=path):
                self.assertError(
                    self.api.browser(self.cookie, method, path, body),
                    403,
                    "password_change_required",
                )
                entry = self.denials()[-1]
                self.assertEqual(
                    (entry.reason, entry.method, entry.path),
                    ("password_change_required", method, path),
                )
        self.assertNotIn("push_rule", [name for name, _ in self.plane.calls])

    def test_gate_denial_names_the_user(self) -> None:
        """The audit entry of a gated request names the session's user."""
        self.api.browser(self.cookie, "GET", "/v1/clients")
        entry = self.denials()[-1]
        self.assertEqual((entry.actor, entry.role), ("bob", "user"))

    def test_logout_is_allowed(self) -> None:
        """Logout works while the change is pending."""
        self.assertEqual(self.api.browser(self.cookie, "POST", "/v1/auth/logout")[0], 204)
        self.assertError(self.me(self.cookie), 401, "credential_invalid")

    def test_change_opens_the_gate(self) -> None:
        """After the change the same session reaches everything and the flag is clear."""
        answer = self.api.browser(
            self.cookie,
            "POST",
            "/v1/users/me/password",
            {
                "current_password": BOB_PASSWORD,
                "new_password": NEW_PASSWORD,
                "new_password_confirm": NEW_PASSWORD,
            },
        )
        self.assertEqual(answer[0], 204)
        self.assertEqual(self.api.browser(self.cookie, "GET", "/v1/clients")[0], 200)
        self.assertEqual(self.me(self.cookie)[1]["password_change_required"], False)
        self.assertEqual(self.login("bob", NEW_PASSWORD)[1]["password_change_required"], False)

    def test_reset_to_temporary_password_closes_the_gate(self) -> None:
        """A superadmin's temporary-password reset gates the user's next session."""
        self.api.add_user("carol", BOB_PASSWORD)
        status, body, _ = self.api.request(
            "POST", "/v1/users/carol/password", {"temporary_password": True}
        )
        self.assertEqual(status, 200, body)
        cookie = self.api.login("carol", body["temporary_password"])
        self.assertError(
            self.api.browser(cookie, "GET", "/v1/clients"), 403, "password_change_required"
        )
        self.assertEqual(self.me(cookie)[0], 200)
