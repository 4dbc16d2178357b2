"""
Schemathesis against a real twistd portunus-server on 127.0.0.1: it reads
the server's own C{GET /v1/openapi.json} and sends generated requests, valid
and invalid, to every operation as the operator (bearer token).  Every
answer must be one the document describes (status, media type, schema) and
none may be a 5xx.

The run is bounded (at most 100 cases per operation and phase, a fixed seed, one
worker) and killed if it outlives L{RUN_TIMEOUT}.  The live stats stream is
left out: it answers for as long as the rule lives.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from twisted.internet import reactor as _reactor
from twisted.internet.defer import inlineCallbacks

from tests._net import LOOPBACK
from tests.e2e._process import TwistdProcess
from tests.e2e.test_control_plane_process import _ProcessCase

reactor: Any = _reactor

SCHEMATHESIS = os.path.join(os.path.dirname(sys.executable), "schemathesis")
#: The run takes about 20 s on a quiet 2-core machine (45 s of CPU); past
#: this it is killed and fails. Generous, because a loaded machine stretches it.
RUN_TIMEOUT = 420
CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
)


class SchemathesisTests(_ProcessCase):
    timeout = RUN_TIMEOUT + 60

    @inlineCallbacks
    def test_live_server_answers_as_documented(self) -> Any:
        """Schemathesis finds no answer outside the OpenAPI document and no 5xx."""
        server = self.start_server()
        yield server.wait_for("server.started")
        with open(os.path.join(self.data_dir, "operator.token")) as f:
            token = f.read().strip()
        base = f"http://{LOOPBACK}:{self.http_port}"
        argv = [
            SCHEMATHESIS,
            "run",
            f"{base}/v1/openapi.json",
            "--url",
            base,
            "--header",
            f"Authorization: Bearer {token}",
            "--checks",
            ",".join(CHECKS),
            "--max-examples",
            "100",
            "--seed",
            "20261125",
            "--workers",
            "1",
            "--request-timeout",
            "10",
            "--exclude-path",
            "/v1/rules/{rule_id}/stats/stream",
            # The bearer header authenticates; a generated session cookie
            # would take precedence and turn every request into a 401.
            "--generation-with-security-parameters",
            "false",
            "--generation-database",
            "none",
            "--no-color",
        ]
        workdir = os.path.abspath(self.mktemp())
        os.makedirs(workdir)
        # Any stdout/stderr collector does; this one also ends with the exit code.
        run = TwistdProcess()
        reactor.spawnProcess(run, SCHEMATHESIS, argv, env=dict(os.environ), path=workdir)
        self.processes.append(run)
        killer = reactor.callLater(RUN_TIMEOUT, run.transport.signalProcess, "KILL")
        code = yield run.exited
        if killer.active():
            killer.cancel()
        output = (run.stdout + run.stderr).decode("utf-8", "replace")
        self.assertEqual(code, 0, f"schemathesis exited {code} (-1: killed):\n{output}")
