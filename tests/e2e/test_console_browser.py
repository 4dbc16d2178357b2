"""
The web console in a real browser (Playwright driving Debian's Chromium,
headless) against a real twistd portunus-server and a real edge process,
all on 127.0.0.1.

One journey: onboarding with the setup token from the server's file, login,
enrolling an edge with the command the console shows, pushing a rule with
the form (after a refused one whose error lands next to its field), seeing
it Active and its live bytes after traffic, a tenant user with a grant who
sees only their own rule, an expired session, logout.  Every page is
photographed under the test's temp dir; with C{PORTUNUS_CONSOLE_SCREENSHOTS}
set to a directory (docs/console) the set is copied there too.

The browser runs in a thread (Playwright's sync API blocks), so the
reactor stays free for the processes and the loopback target; the thread
calls back into the reactor for the steps that need it.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import time
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import maybeDeferred
from twisted.internet.threads import blockingCallFromThread, deferToThread
from twisted.trial.unittest import SkipTest

from tests._net import LOOPBACK, echo_factory, free_port
from tests.e2e.test_control_plane_process import CLIENT_CLI, _ProcessCase, reactor

CHROMIUM = "/usr/bin/chromium"
#: Where to copy the screenshots as well (the docs' set): a directory.
SCREENSHOTS_ENV = "PORTUNUS_CONSOLE_SCREENSHOTS"
#: Every wait in the browser is bounded by this (milliseconds).
WAIT_MS = 30_000
ADMIN_PASSWORD = "correct horse battery staple"
TENANT_INITIAL = "tenant initial password"
TENANT_PASSWORD = "tenant chosen password"
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}


def _playwright_missing() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install -e '.[test]')"
    if not os.access(CHROMIUM, os.X_OK):
        return f"{CHROMIUM} is missing (apt-get install chromium; .ci/run does)"
    return None


class ConsoleBrowserTests(_ProcessCase):
    timeout = 420

    def setUp(self) -> None:
        missing = _playwright_missing()
        if missing is not None:
            if os.environ.get("CI") == "true":
                self.fail(f"the console's browser test must run in CI: {missing}")
            raise SkipTest(missing)
        super().setUp()
        self.shots = os.path.abspath(self.mktemp())
        os.makedirs(self.shots)

    # -- the reactor side, called from the browser thread ---------------------

    def on_reactor(self, fn: Callable[..., Any], *args: Any, timeout: float = 60) -> Any:
        """Run C{fn} in the reactor thread and wait (bounded) for its result."""

        def call() -> Any:
            return maybeDeferred(fn, *args).addTimeout(timeout, reactor)

        return blockingCallFromThread(reactor, call)

    def enroll_edge(self, uri: str) -> None:
        bundle = os.path.join(self.data_dir, "..", "console-edge.bundle.json")
        _, err, code = self.on_reactor(self.cli, CLIENT_CLI, "enroll", uri, "--out", bundle)
        self.assertEqual(code, 0, err.decode())
        edge = self.on_reactor(lambda: self.spawn("portunus-client", "--bundle", bundle))
        self.on_reactor(edge.wait_for, "control.connected")

    def traffic(self, port: int, size: int) -> None:
        payload = os.urandom(size)
        received, digest = self.on_reactor(self.send, port, payload)
        self.assertEqual((received, digest), (size, hashlib.sha256(payload).hexdigest()))

    # -- the test -------------------------------------------------------------

    def test_console_journey(self) -> Any:
        """
        Onboarding -> login -> enroll a real edge from the console's command
        -> push a rule (a refused one first) -> Active -> live bytes after
        traffic -> a tenant with a grant sees only their rule -> session
        expiry and logout.
        """
        server = self.start_server()
        target = reactor.listenTCP(0, echo_factory(), interface=LOOPBACK)
        self.addCleanup(target.stopListening)

        def started(opened: dict[str, Any]) -> Any:
            with open(opened["path"]) as f:
                token = f.read().strip()
            return deferToThread(self.journey, token, target.getHost().port)

        d = server.wait_for("operator.onboarding_open")
        d.addCallback(started)
        return d

    def journey(self, setup_token: str, target_port: int) -> None:
        from playwright.sync_api import expect, sync_playwright

        expect.set_options(timeout=WAIT_MS)
        base = f"http://{LOOPBACK}:{self.http_port}"
        admin_port = free_port()
        tenant_port = free_port()
        started = time.monotonic()
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True)
            try:
                context = browser.new_context(viewport=DESKTOP, base_url=base)
                page = context.new_page()
                page.set_default_timeout(WAIT_MS)
                errors: list[str] = []
                page.on("pageerror", lambda e: errors.append(str(e)))
                shot = self.photographer(page)

                # Onboarding: the console sends a fresh server there first.
                page.goto("/")
                expect(page).to_have_url(re.compile(r"/onboarding$"))
                expect(page.get_by_role("heading", name="Welcome to Portunus")).to_be_visible()
                shot("01-onboarding")
                page.get_by_label("Setup token").fill(setup_token)
                page.get_by_label("User id").fill("admin")
                page.get_by_label("Display name").fill("Ada Admin")
                page.get_by_label("Password", exact=True).fill(ADMIN_PASSWORD)
                page.get_by_label("Confirm password").fill("not the same password")
                page.get_by_role("button", name="Create superadmin").click()
                expect(page.locator(".field-error").first).to_be_visible()
                page.get_by_label("Confirm password").fill(ADMIN_PASSWORD)
                page.get_by_role("button", name="Create superadmin").click()

                # Login.
                expect(page).to_have_url(re.compile(r"/login$"))
                expect(page.get_by_text("Your superadmin account is ready")).to_be_visible()
                expect(page.get_by_label("User id")).to_have_value("admin")
                shot("02-login")
                page.get_by_label("Password", exact=True).fill(ADMIN_PASSWORD)
                page.get_by_role("button", name="Log in").click()
                expect(page.get_by_role("heading", name="Dashboard")).to_be_visible()
                expect(page.get_by_test_id("kpi-clients")).to_contain_text("0 / 0")

                # Connect a client: the command shown enrolls a real edge.
                page.get_by_role("link", name="Clients", exact=True).click()
                expect(page.get_by_text("No clients yet")).to_be_visible()
                shot("04-clients-empty")
                # Dialogs: focus moves in, Tab stays in, Escape closes, focus returns.
                opener = page.get_by_role("button", name="Connect a client").first
                opener.click()
                dialog = page.get_by_role("dialog")
                expect(dialog.get_by_label("Name", exact=True)).to_be_focused()
                page.keyboard.press("Shift+Tab")
                page.keyboard.press("Shift+Tab")
                expect(dialog.get_by_role("button", name="Create enrollment")).to_be_focused()
                page.keyboard.press("Escape")
                expect(dialog).to_have_count(0)
                expect(opener).to_be_focused()
                opener.click()
                dialog.get_by_label("Name", exact=True).fill("edge-01")
                dialog.get_by_role("button", name="Create enrollment").click()
                command = page.get_by_test_id("enroll-command")
                expect(command).to_contain_text("portunus-client enroll 'portunus://")
                expect(page.get_by_test_id("enroll-countdown")).to_have_text(
                    re.compile(r"^\d+:\d\d$")
                )
                shot("05-connect-client")
                uri = command.inner_text().split("'")[1]
                self.enroll_edge(uri)
                expect(page.get_by_test_id("enroll-status")).to_contain_text("edge-01 is connected")
                page.get_by_role("dialog").get_by_role("button", name="Done").click()
                edge_row = page.locator("tr[data-client='edge-01']")
                expect(edge_row).to_contain_text("Connected")
                shot("06-clients")

                # Push a rule: first refused (the error is shown at its field), then accepted.
                page.get_by_role("link", name="Rules", exact=True).click()
                expect(page.get_by_text("No rules yet")).to_be_visible()
                page.get_by_role("button", name="Push a rule").first.click()
                dialog = page.get_by_role("dialog")
                dialog.get_by_label("Rule name").fill("echo")
                dialog.get_by_label("Listen port or range").fill(str(admin_port))
                dialog.get_by_label("Host").fill("not a host!")
                dialog.get_by_label("Port", exact=True).fill(str(target_port))
                dialog.get_by_text("Advanced", exact=True).click()
                dialog.get_by_label("Listen addresses").fill(LOOPBACK)
                dialog.get_by_role("button", name="Push rule").click()
                host_error = dialog.locator("[data-error-for='targets[0].host']")
                expect(host_error).to_contain_text("neither an IP address nor a valid host name")
                expect(dialog.get_by_label("Host")).to_have_attribute("aria-invalid", "true")
                shot("07-push-rule-error")
                dialog.get_by_label("Host").fill(LOOPBACK)
                dialog.get_by_role("button", name="Push rule").click()
                expect(page.get_by_role("dialog")).to_have_count(0)
                rule_row = page.locator("tbody tr", has_text="echo")
                expect(rule_row).to_contain_text("Active")
                expect(rule_row).to_contain_text(f"TCP {admin_port}")
                shot("08-rules")

                # Traffic through the edge, then live bytes on the rule's page.
                self.traffic(admin_port, 256 * 1024)
                rule_row.get_by_role("link").first.click()
                expect(page.get_by_role("heading", name=re.compile(r"^echo"))).to_be_visible()
                expect(page.get_by_test_id("live-mode")).to_have_attribute(
                    "data-mode", re.compile("stream|polling")
                )
                bytes_in = page.get_by_test_id("stat-bytes-in").locator(".stat-value")
                expect(bytes_in).to_have_text("256 KiB")
                expect(page.get_by_test_id("stat-bytes-out").locator(".stat-value")).to_have_text(
                    "256 KiB"
                )
                # More while the page is open: the counters and the chart move live.
                self.traffic(admin_port, 1024 * 1024)
                expect(bytes_in).to_have_text("1.25 MiB")
                expect(page.locator(".chart-empty").first).to_be_hidden()
                shot("09-rule-detail")

                # The dashboard with data, and its chart.
                page.get_by_role("link", name="Dashboard", exact=True).click()
                expect(page.get_by_test_id("kpi-clients")).to_contain_text("1 / 1")
                expect(page.get_by_test_id("kpi-rules")).to_contain_text("1 / 1")
                expect(page.get_by_test_id("kpi-transferred")).to_contain_text("2.50 MiB")
                self.traffic(admin_port, 1024 * 1024)
                expect(page.get_by_test_id("kpi-transferred")).to_contain_text("4.50 MiB")
                expect(
                    page.get_by_test_id("kpi-throughput").locator(".kpi-value")
                ).not_to_have_text("0 B/s")
                expect(page.locator(".chart-empty")).to_be_hidden()
                shot("03-dashboard")

                # A tenant: a user with a grant on edge-01, one port.
                page.get_by_role("link", name="Users & grants", exact=True).click()
                page.get_by_role("button", name="Create user").click()
                dialog = page.get_by_role("dialog")
                dialog.get_by_label("User id").fill("tenant")
                dialog.get_by_label("Display name").fill("Tenant Team")
                dialog.get_by_label("Initial password").fill(TENANT_INITIAL)
                expect(
                    dialog.get_by_label("Require a password change at first login")
                ).to_be_checked()
                shot("10-create-user")
                dialog.get_by_role("button", name="Create user").click()
                expect(page).to_have_url(re.compile(r"/users/tenant$"))
                page.get_by_role("button", name="Add grant").click()
                dialog = page.get_by_role("dialog")
                dialog.get_by_label("Client").select_option(label="edge-01")
                dialog.get_by_label("First listen port").fill(str(tenant_port))
                dialog.get_by_label("Last listen port").fill(str(tenant_port))
                dialog.get_by_label("Note").fill("console test")
                # The tenant's target is this test's echo server on loopback.
                dialog.get_by_label(re.compile("^Allow local targets")).check()
                dialog.get_by_role("button", name="Add grant").click()
                grant_row = page.locator("tr[data-grant]")
                expect(grant_row).to_contain_text(str(tenant_port))
                expect(grant_row).to_contain_text("Allowed")
                expect(grant_row).to_contain_text("edge-01")
                shot("11-user-detail")
                page.get_by_role("link", name="Users", exact=True).click()
                expect(page.locator("tr[data-user='tenant']")).to_contain_text(
                    "Must change password"
                )
                shot("12-users")

                # The superadmin's other pages.
                page.get_by_role("link", name="Audit log", exact=True).click()
                expect(page.locator("tbody")).to_contain_text("rule.push")
                shot("13-audit")
                page.get_by_role("link", name="Metrics", exact=True).click()
                expect(page.get_by_test_id("metrics-text")).to_contain_text("portunus_")
                shot("14-metrics")
                page.get_by_role("link", name="Settings", exact=True).click()
                expect(page.get_by_role("heading", name="Client connect address")).to_be_visible()
                shot("15-settings")
                page.get_by_text("Dark", exact=True).click()
                expect(page.locator("html")).to_have_attribute("data-theme", "dark")
                page.get_by_role("link", name="Dashboard", exact=True).click()
                expect(page.locator(".chart-empty")).to_be_hidden()
                shot("16-dashboard-dark")
                page.get_by_role("link", name="Settings", exact=True).click()
                page.get_by_text("Light", exact=True).click()
                expect(page.locator("html")).to_have_attribute("data-theme", "light")

                # The same session on a phone.
                phone = browser.new_context(
                    viewport=PHONE,
                    base_url=base,
                    storage_state=context.storage_state(),
                    is_mobile=True,
                    has_touch=True,
                )
                mobile = phone.new_page()
                mobile.set_default_timeout(WAIT_MS)
                phone_shot = self.photographer(mobile)
                mobile.goto("/rules")
                expect(mobile.locator("tbody tr", has_text="echo")).to_contain_text("Active")
                phone_shot("17-phone-rules")
                mobile.goto("/")
                expect(mobile.get_by_test_id("kpi-rules")).to_contain_text("1 / 1")
                phone_shot("18-phone-dashboard")
                mobile.get_by_role("button", name="Open navigation").click()
                drawer_link = mobile.get_by_role("navigation", name="Main").get_by_role(
                    "link", name="Audit log"
                )
                expect(drawer_link).to_be_visible()
                phone_shot("19-phone-menu")
                mobile.keyboard.press("Escape")
                expect(drawer_link).to_be_hidden()
                phone.close()

                # A failover rule pushed with the form's "Several targets": the
                # first target is down (nothing listens), probes mark it so,
                # and traffic reaches the second; the rule page shows both.
                dead_port = free_port()
                failover_port = free_port()
                page.get_by_role("link", name="Rules", exact=True).click()
                page.get_by_role("button", name="Push a rule").first.click()
                dialog = page.get_by_role("dialog")
                dialog.get_by_label("Rule name").fill("failover")
                dialog.get_by_label("Listen port or range").fill(str(failover_port))
                dialog.get_by_text("Several targets", exact=True).click()
                targets = dialog.locator(".target-row")
                expect(targets).to_have_count(2)
                for index, (port, priority) in enumerate(((dead_port, 0), (target_port, 1))):
                    targets.nth(index).get_by_label("Host").fill(LOOPBACK)
                    targets.nth(index).get_by_label("Port", exact=True).fill(str(port))
                    targets.nth(index).get_by_label("Priority").fill(str(priority))
                dialog.get_by_label("Health-check interval (s)").fill("1")
                dialog.get_by_text("Advanced", exact=True).click()
                dialog.get_by_label("Listen addresses").fill(LOOPBACK)
                dialog.get_by_role("button", name="Push rule").click()
                expect(page.get_by_role("dialog")).to_have_count(0)
                failover_row = page.locator("tbody tr", has_text="failover")
                expect(failover_row).to_contain_text("Active")
                self.traffic(failover_port, 64 * 1024)
                failover_row.get_by_role("link").first.click()
                target_rows = page.get_by_role("table", name="Targets").locator("tbody tr")
                expect(target_rows).to_have_count(2)
                expect(target_rows.nth(0)).to_contain_text("Down")
                expect(target_rows.nth(1)).to_contain_text("Healthy")
                expect(target_rows.nth(1)).to_contain_text("64.0 KiB · 64.0 KiB")
                shot("23-rule-failover")

                # Logout, and the tenant's first login: a forced password change.
                page.get_by_role("button", name="Log out", exact=True).click()
                expect(page.get_by_text("You are logged out.")).to_be_visible()
                page.get_by_label("User id").fill("tenant")
                page.get_by_label("Password", exact=True).fill(TENANT_INITIAL)
                page.get_by_role("button", name="Log in").click()
                expect(page).to_have_url(re.compile(r"/password$"))
                shot("20-password-change")
                page.get_by_label("Temporary password").fill(TENANT_INITIAL)
                page.get_by_label("New password", exact=True).fill(TENANT_PASSWORD)
                page.get_by_label("Confirm new password").fill(TENANT_PASSWORD)
                page.get_by_role("button", name="Change password").click()
                expect(page.get_by_role("heading", name="Dashboard")).to_be_visible()
                expect(page.get_by_test_id("current-user")).to_have_text("Tenant Team")
                expect(page.get_by_role("link", name="Users & grants")).to_have_count(0)

                # A superadmin page is a permission page, not a blank one.
                page.goto("/users")
                expect(page.get_by_text("You do not have permission to see this")).to_be_visible()
                shot("21-forbidden")

                # The tenant pushes on their granted port and sees only their own rule.
                page.get_by_role("link", name="Rules", exact=True).click()
                expect(page.get_by_text("No rules yet")).to_be_visible()
                page.get_by_role("button", name="Push a rule").first.click()
                dialog = page.get_by_role("dialog")
                dialog.get_by_label("Rule name").fill("tenant-echo")
                dialog.get_by_label("Listen port or range").fill(str(tenant_port + 1))
                dialog.get_by_label("Host").fill(LOOPBACK)
                dialog.get_by_label("Port", exact=True).fill(str(target_port))
                dialog.get_by_role("button", name="Push rule").click()
                expect(dialog.locator("[data-error-for='listen']")).to_be_visible()
                dialog.get_by_label("Listen port or range").fill(str(tenant_port))
                dialog.get_by_text("Advanced", exact=True).click()
                dialog.get_by_label("Listen addresses").fill(LOOPBACK)
                dialog.get_by_role("button", name="Push rule").click()
                expect(page.get_by_role("dialog")).to_have_count(0)
                rows = page.locator("tbody tr")
                expect(rows).to_have_count(1)
                expect(rows.first).to_contain_text("tenant-echo")
                expect(rows.first).to_contain_text("Active")
                expect(page.locator("tbody")).not_to_contain_text("echo #")
                shot("22-tenant-rules")
                self.traffic(tenant_port, 4096)

                # A session that ends server-side sends the user to the login page.
                context.clear_cookies()
                expect(page).to_have_url(re.compile(r"/login$"))
                expect(page.get_by_text("Your session expired")).to_be_visible()
                page.get_by_label("User id").fill("tenant")
                page.get_by_label("Password", exact=True).fill(TENANT_PASSWORD)
                page.get_by_role("button", name="Log in").click()
                expect(page.get_by_role("heading", name="Rules")).to_be_visible()
                page.get_by_role("button", name="Log out", exact=True).click()
                expect(page.get_by_text("You are logged out.")).to_be_visible()
                page.goto("/rules")
                expect(page).to_have_url(re.compile(r"/login$"))
                self.assertEqual(errors, [], "the console threw in the browser")
                context.close()
            finally:
                browser.close()
        self.publish_screenshots()
        print(f"console journey: {time.monotonic() - started:.1f} s")

    # -- screenshots ----------------------------------------------------------

    def photographer(self, page: Any) -> Callable[[str], None]:
        def shot(name: str) -> None:
            # Let the last toast and transitions settle out of the picture.
            page.evaluate("document.getElementById('toasts')?.replaceChildren()")
            page.screenshot(path=os.path.join(self.shots, f"{name}.png"), animations="disabled")

        return shot

    def publish_screenshots(self) -> None:
        target = os.environ.get(SCREENSHOTS_ENV)
        if not target:
            return
        os.makedirs(target, exist_ok=True)
        for name in sorted(os.listdir(self.shots)):
            shutil.copyfile(os.path.join(self.shots, name), os.path.join(target, name))
