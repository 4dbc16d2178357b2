"""
C{portunus-client}'s command line: the same parsing, help, version and
usage errors as C{portunus-server}, C{enroll}'s outputs and exit 1 for
any failure, and C{run} handed to twistd.  The enrollment itself (TLS,
the server's answer) is tested in tests/client and tests/e2e; here
L{portunus.cli.client.enroll} is replaced by a fake server's answer.
"""

from __future__ import annotations

import os
import sys
from io import StringIO
from typing import Any

from twisted.internet.defer import Deferred, ensureDeferred, fail, succeed
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from portunus import __version__
from portunus.cli import client as cli
from portunus.control.enrollment import Bundle, EnrollUri, read_bundle
from portunus.errors import PortunusError

PIN = "3f" * 32
URI = f"portunus://ctl.example.com:7443/enroll?pin=sha256:{PIN}&code=Zk9code"
BUNDLE = Bundle(
    client_name="edge-01",
    client_id="01J00000000000000000000000",
    server_endpoint="ctl.example.com:7443",
    server_cert_sha256=PIN,
    token="tok_secret",
)


class ClientCliTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        self.env = {"XDG_CONFIG_HOME": os.path.join(self.dir, "config")}
        self.redeemed: list[tuple[Any, EnrollUri]] = []
        self.answer: Deferred[Bundle] = succeed(BUNDLE)
        self.patch(cli, "enroll", self.fake_enroll)

    def fake_enroll(self, reactor: Any, uri: EnrollUri) -> Deferred[Bundle]:
        self.redeemed.append((reactor, uri))
        return self.answer

    def cli(self, *argv: str) -> tuple[int, str, str]:
        out, err = StringIO(), StringIO()
        d = ensureDeferred(cli.run(argv, self.reactor, self.env, out, err))
        return self.successResultOf(d), out.getvalue(), err.getvalue()


class ParsingTests(ClientCliTestCase):
    def test_help(self) -> None:
        """--help and -h list the commands on stdout, exit 0; COMMAND --help shows its options."""
        for flag in ("--help", "-h"):
            code, out, err = self.cli(flag)
            self.assertEqual((code, err), (0, ""))
            self.assertTrue(out.startswith("Usage: portunus-client COMMAND [options]\n"), out)
            self.assertRegex(out, r"\n +enroll +Redeem")
            self.assertRegex(out, r"\n +run +Run the edge")
        code, out, _ = self.cli("enroll", "--help")
        self.assertEqual(code, 0)
        self.assertTrue(out.startswith("Usage: portunus-client enroll URI [--out PATH]\n"), out)
        self.assertIn("-o, --out=", out)
        self.assertEqual(self.redeemed, [])

    def test_version(self) -> None:
        """--version prints the program and Portunus' version."""
        self.assertEqual(self.cli("--version"), (0, f"portunus-client {__version__}\n", ""))

    def test_usage_errors_exit_2(self) -> None:
        """No command, an unknown one, a missing URI or an unknown option is exit 2."""
        for argv in ((), ("frobnicate",), ("enroll",), ("enroll", URI, "--bogus"), ("--", "run")):
            code, out, err = self.cli(*argv)
            self.assertEqual((code, out), (2, ""), argv)
            self.assertTrue(err.startswith("error: usage: "), err)
            self.assertTrue(err.endswith("; run portunus-client [COMMAND] --help\n"), err)
        self.assertEqual(self.redeemed, [])


class EnrollTests(ClientCliTestCase):
    def test_enroll_writes_the_bundle_and_prints_its_path(self) -> None:
        """Without --out the bundle goes to the lookup order's first place, mode 0600."""
        code, out, err = self.cli("enroll", URI)
        path = os.path.join(self.dir, "config", "portunus", "client.bundle.json")
        self.assertEqual((code, out, err), (0, f"{path}\n", ""))
        self.assertEqual(read_bundle(path), BUNDLE)
        self.assertEqual(os.stat(path).st_mode & 0o777, 0o600)
        [(reactor, uri)] = self.redeemed
        self.assertIs(reactor, self.reactor)
        self.assertEqual((uri.host, uri.port, uri.pin), ("ctl.example.com", 7443, PIN))

    def test_out_before_or_after_the_uri(self) -> None:
        """--out PATH, --out=PATH and -o PATH may come before or after the URI."""
        shapes = (
            lambda path: ("enroll", URI, "--out", path),
            lambda path: ("enroll", "-o", path, URI),
            lambda path: ("enroll", f"--out={path}", URI),
        )
        for n, shape in enumerate(shapes):
            path = os.path.join(self.dir, f"{n}.json")
            self.assertEqual(self.cli(*shape(path)), (0, f"{path}\n", ""))
            self.assertEqual(read_bundle(path), BUNDLE)

    def test_malformed_uri_exits_1_before_dialling(self) -> None:
        """A bad URI is client.enroll_uri_invalid, exit 1, and nothing is dialled or written."""
        code, out, err = self.cli("enroll", "https://ctl.example.com/enroll")
        self.assertEqual((code, out), (1, ""))
        self.assertTrue(err.startswith("error: client.enroll_uri_invalid: "), err)
        self.assertEqual(self.redeemed, [])
        self.assertFalse(os.path.exists(os.path.join(self.dir, "config")))

    def test_refused_enrollment_exits_1(self) -> None:
        """The server's refusal is printed as its code and message, exit 1."""
        self.answer = fail(PortunusError("client.enrollment_failed", "the server refused it"))
        self.assertEqual(
            self.cli("enroll", URI),
            (1, "", "error: client.enrollment_failed: the server refused it\n"),
        )

    def test_unwritable_bundle_exits_1(self) -> None:
        """A bundle path that cannot be written is client.enrollment_failed, exit 1."""
        blocker = os.path.join(self.dir, "file")
        with open(blocker, "w"):
            pass
        path = os.path.join(blocker, "bundle.json")
        code, out, err = self.cli("enroll", URI, "--out", path)
        self.assertEqual((code, out), (1, ""))
        self.assertTrue(err.startswith(f"error: client.enrollment_failed: cannot write {path}: "))


class MainTests(SynchronousTestCase):
    def test_run_is_twistd_in_the_foreground(self) -> None:
        """portunus-client run ARGS is twistd --nodaemon --pidfile= portunus-client ARGS."""
        from twisted.scripts import twistd

        seen: list[list[str]] = []
        self.patch(sys, "argv", ["portunus-client"])
        self.patch(twistd, "run", lambda: seen.append(list(sys.argv)))
        cli.main(["run", "--bundle", "b.json", "--workers", "2"])
        self.assertEqual(
            seen,
            [
                [
                    "twistd",
                    "--nodaemon",
                    "--pidfile=",
                    "portunus-client",
                    "--bundle",
                    "b.json",
                    "--workers",
                    "2",
                ]
            ],
        )

    def test_main_runs_under_react(self) -> None:
        """Other commands run under task.react, which exits with their status."""
        from twisted.internet import task

        outcomes: list[Any] = []

        def fake_react(start: Any, argv: Any = ()) -> None:
            start(MemoryReactorClock()).addBoth(outcomes.append)

        self.patch(task, "react", fake_react)
        self.patch(sys, "stdout", StringIO())
        self.patch(sys, "stderr", StringIO())
        cli.main(["--version"])
        cli.main(["enroll", "not a uri"])
        self.assertIsNone(outcomes[0])
        self.assertEqual(sys.stdout.getvalue(), f"portunus-client {__version__}\n")
        self.assertIsInstance(outcomes[1].value, SystemExit)
        self.assertEqual(outcomes[1].value.code, 1)
