"""
C{portunus-client}: the edge's command line.

    portunus-client enroll 'portunus://HOST:PORT/enroll?pin=sha256:<hex>&code=<code>' [--out PATH]
    portunus-client run [twistd portunus-client options]

C{enroll} redeems the code over pinned TLS and writes the bundle (0600),
printing its path; any failure exits 1.  C{run} is
C{twistd -n portunus-client ...}.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import react

from portunus.client.enroll import enroll
from portunus.control.enrollment import default_enroll_out, parse_enroll_uri, write_bundle
from portunus.errors import PortunusError

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="portunus-client",
        description="The Portunus edge. 'run' takes the options of "
        "'twistd -n portunus-client' (see --help there).",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="enroll|run")
    enroll_cmd = commands.add_parser(
        "enroll", help="Redeem an enrollment URI and write the bundle (0600)."
    )
    enroll_cmd.add_argument("uri", help="portunus://HOST:PORT/enroll?pin=sha256:<hex>&code=<code>")
    enroll_cmd.add_argument(
        "--out", "-o", default=None, help="Bundle path (default: Portunus' lookup order)."
    )
    commands.add_parser("run", help="Run the edge (twistd -n portunus-client ...).")
    return parser


@inlineCallbacks
def run_enroll(reactor: Any, options: argparse.Namespace, environ: dict[str, str], out: Any) -> Any:
    try:
        uri = parse_enroll_uri(options.uri)
    except PortunusError as e:
        out.write(f"error: {e.code}: {e.message}\n")
        return 1
    path = options.out or default_enroll_out(environ)
    try:
        bundle = yield enroll(reactor, uri)
        write_bundle(bundle, path)
    except PortunusError as e:
        out.write(f"error: {e.code}: {e.message}\n")
        return 1
    except OSError as e:
        out.write(f"error: client.enrollment_failed: cannot write {path}: {e.strerror}\n")
        return 1
    sys.stdout.write(f"{path}\n")
    return 0


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["run"]:
        from twisted.scripts.twistd import run

        sys.argv = ["twistd", "-n", "--pidfile=", "portunus-client", *args[1:]]
        run()
        return
    options = _parser().parse_args(args)

    def body(reactor: Any) -> Any:
        d = run_enroll(reactor, options, dict(os.environ), sys.stderr)

        def exit_with(code: int) -> None:
            if code:
                raise SystemExit(code)

        return d.addCallback(exit_with)

    react(body)
