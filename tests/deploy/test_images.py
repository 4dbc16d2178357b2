"""
The container images (contrib/container/Containerfile, built with
build.sh), each run from its own read-only file system as its own
non-root user with its volumes (see L{tests.deploy._images}):

- the server image answers C{/v1/health}, its health check passes, and
  the operator CLI runs from the same image;
- an edge from the edge image enrolls from C{PORTUNUS_ENROLL_URI} against
  the server image, forwards bytes, reports healthy, and on restart uses
  the bundle it wrote to its volume;
- the standalone image forwards bytes, also on a port below 1024 as a
  non-root user, and its health check passes.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import socket
from collections.abc import Mapping, Sequence
from typing import Any

import treq
from twisted.internet import reactor as _reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.threads import deferToThread
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase

from tests._net import (
    LOOPBACK,
    HashingClient,
    OneShotClientFactory,
    echo_factory,
    free_port,
    free_port_range,
)
from tests.deploy import _compose as compose
from tests.deploy._images import HOST_ENV, MountedImage, built_images
from tests.deploy._support import require
from tests.e2e._process import TwistdProcess, stop_all

reactor: Any = _reactor

#: Tries when a port picked free was taken before the process bound it.
PORT_TRIES = 3


def _free_low_port() -> int:
    """A TCP port below 1024 that nothing holds now (probed as root)."""
    for port in random.Random().sample(range(600, 1024), 200):
        with socket.socket() as s:
            try:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind(("0.0.0.0", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port below 1024")


class _ImageCase(TestCase):
    # A cold cache builds a Debian base and the images: minutes, once.
    timeout = 900

    @inlineCallbacks
    def setUp(self) -> Any:
        require("podman", "mmdebstrap", "unshare", "chroot", root=True)
        self.tags = yield deferToThread(built_images)
        self.processes: list[TwistdProcess] = []

    def tearDown(self) -> Any:
        return stop_all(reactor, self.processes)

    def mount(self, target: str) -> MountedImage:
        image = MountedImage(self.tags[target])
        self.addCleanup(image.unmount)
        return image

    def volumes(self, image: MountedImage) -> dict[str, str]:
        return image.volume_dirs(os.path.abspath(self.mktemp()))

    def spawn(
        self,
        image: MountedImage,
        command: Sequence[str],
        volumes: Mapping[str, str],
        env: Mapping[str, str] = {},
    ) -> TwistdProcess:
        process = TwistdProcess()
        argv = image.argv(command, volumes, env)
        reactor.spawnProcess(process, "/usr/bin/unshare", argv, env=HOST_ENV)
        self.processes.append(process)
        return process

    def once(
        self,
        image: MountedImage,
        command: Sequence[str],
        volumes: Mapping[str, str],
        env: Mapping[str, str] = {},
    ) -> Any:
        """Run a command in the image to its end: (stdout, stderr, exit code)."""
        argv = image.argv(command, volumes, env)
        return getProcessOutputAndValue("/usr/bin/unshare", argv[1:], env=HOST_ENV)

    @inlineCallbacks
    def start_server(self, image: MountedImage, volumes: Mapping[str, str]) -> Any:
        """
        The server as compose.server.yml runs it (its command and
        environment) on free ports instead of 7443/7080: (process, the
        environment it got, HTTP port).
        """
        service = compose.load("server")["services"]["server"]
        data = volumes["/var/lib/portunus"]
        uid, gid = image.user
        for attempt in range(PORT_TRIES):
            control, http, metrics = free_port(), free_port(), free_port()
            # metrics_listen has no flag or variable yet: server.toml moves it.
            toml = os.path.join(data, "server.toml")
            with open(toml, "w") as f:
                f.write(f'metrics_listen = "{LOOPBACK}:{metrics}"\n')
            os.chown(toml, uid, gid)
            command = image.command(
                [*service["command"], "--control-listen", f"{LOOPBACK}:{control}"]
            )
            env = dict(service["environment"])
            host = env["PORTUNUS_OPERATOR_HTTP_LISTEN"].rsplit(":", 1)[0]
            env["PORTUNUS_OPERATOR_HTTP_LISTEN"] = f"{host}:{http}"
            server = self.spawn(image, command, volumes, env)
            try:
                yield server.wait_for("server.started")
            except AssertionError:
                if b"bind_failed" in server.stderr and attempt + 1 < PORT_TRIES:
                    continue
                raise
            return server, env, http
        raise AssertionError("unreachable")

    def operator(
        self, image: MountedImage, volumes: Mapping[str, str], http: int, *args: str
    ) -> Any:
        """
        compose.server.yml's operator service (its entry point, which reads
        the token from the data volume, and environment) running C{args}.
        """
        service = compose.load("server")["services"]["operator"]
        env = dict(service["environment"])
        env["PORTUNUS_HTTP_ENDPOINT"] = f"{LOOPBACK}:{http}"
        return self.once(image, [*service["entrypoint"], *args], volumes, env)

    @inlineCallbacks
    def send(self, port: int, size: int) -> Any:
        payload = os.urandom(size)
        client = HashingClient(payload)
        reactor.connectTCP(LOOPBACK, port, OneShotClientFactory(client))
        received = yield client.done
        self.assertEqual(received, (len(payload), hashlib.sha256(payload).hexdigest()))

    def echo(self) -> int:
        target = reactor.listenTCP(0, echo_factory(), interface=LOOPBACK)
        self.addCleanup(target.stopListening)
        return int(target.getHost().port)

    @inlineCallbacks
    def stop(self, process: TwistdProcess) -> Any:
        process.signal(signal.SIGTERM)
        code = yield process.exited
        self.assertEqual(code, 0, process.stderr.decode()[-3000:])


class ImageMetadataTests(_ImageCase):
    def test_images_run_as_non_root_with_portunus_volumes(self) -> None:
        """Each image: user 65532, the three volumes, a health check, its entry point."""
        entry = {
            "server": ["portunus-server", "serve", "--data-dir", "/var/lib/portunus"],
            "edge": ["portunus-client", "run", "--bundle", "/etc/portunus/client.bundle.json"],
            "standalone": [
                "twistd",
                "--nodaemon",
                "--pidfile=",
                "portunus-standalone",
                "--config",
                "/etc/portunus/standalone.toml",
            ],
        }
        for target, command in entry.items():
            image = self.mount(target)
            self.assertEqual(image.user, (65532, 65532), target)
            self.assertEqual(
                image.volumes, ["/etc/portunus", "/run/portunus", "/var/lib/portunus"], target
            )
            self.assertEqual(image.command(), command, target)
            self.assertEqual(
                image.healthcheck()[:4], ["python3", "-m", "portunus.healthcheck", target]
            )
            st = os.stat(image.root + "/var/lib/portunus")
            self.assertEqual((st.st_uid, st.st_mode & 0o777), (65532, 0o700), target)
        self.assertIn("7443/tcp", self.mount("server").config["ExposedPorts"])


class ServerImageTests(_ImageCase):
    @inlineCallbacks
    def test_server_answers_health_and_runs_the_operator_cli(self) -> Any:
        """The server image serves /v1/health, passes its health check, runs the CLI, stops 0."""
        image = self.mount("server")
        volumes = self.volumes(image)
        server, env, http = yield self.start_server(image, volumes)

        response = yield treq.get(f"http://{LOOPBACK}:{http}/v1/health", persistent=False)
        self.assertEqual(response.code, 200)
        self.assertEqual(json.loads((yield treq.content(response))), {"status": "ok"})

        out, err, code = yield self.once(image, image.healthcheck(), volumes, env)
        self.assertEqual(code, 0, err.decode())
        self.assertIn(f"http://127.0.0.1:{http}/v1/health".encode(), out)

        out, err, code = yield self.operator(
            image, volumes, http, "list-clients", "--format", "json"
        )
        self.assertEqual((code, json.loads(out)), (0, []), err.decode())

        data = volumes["/var/lib/portunus"]
        st = os.stat(os.path.join(data, "state.db"))
        self.assertEqual((st.st_uid, st.st_mode & 0o777), (65532, 0o600))
        yield self.stop(server)


class EdgeImageTests(_ImageCase):
    @inlineCallbacks
    def test_edge_enrolls_from_the_environment_and_forwards(self) -> Any:
        """PORTUNUS_ENROLL_URI on first boot; bytes through a pushed rule; healthy; bundle kept."""
        server_image = self.mount("server")
        server_volumes = self.volumes(server_image)
        _, _, http = yield self.start_server(server_image, server_volumes)
        out, err, code = yield self.operator(
            server_image, server_volumes, http, "enroll-client", "edge-01"
        )
        self.assertEqual(code, 0, err.decode())
        uri = next(w for w in out.decode().split("'") if w.startswith("portunus://"))

        image = self.mount("edge")
        volumes = self.volumes(image)
        first_boot = compose.load("edge", {"PORTUNUS_ENROLL_URI": uri})["services"]["edge"]
        edge = self.spawn(image, image.command(), volumes, first_boot["environment"])
        yield edge.wait_for("client.enrolled")
        yield edge.wait_for("control.connected")
        bundle = os.path.join(volumes["/etc/portunus"], "client.bundle.json")
        st = os.stat(bundle)
        self.assertEqual((st.st_uid, st.st_mode & 0o777), (65532, 0o600))

        target = self.echo()
        for attempt in range(PORT_TRIES):
            listen = free_port_range(1)
            out, err, code = yield self.operator(
                server_image,
                server_volumes,
                http,
                "push-rule",
                "edge-01",
                str(listen),
                f"{LOOPBACK}:{target}",
            )
            if code == 5 and b"port_in_use" in err and attempt + 1 < PORT_TRIES:
                continue
            self.assertEqual(code, 0, err.decode())
            break
        yield edge.wait_for("rule.activated")
        yield self.send(listen, 1024 * 1024)

        out, err, code = yield self.once(image, image.healthcheck(), volumes)
        self.assertEqual(code, 0, err.decode())

        # The next start finds the bundle on the volume; the URI is unset.
        yield self.stop(edge)
        later = compose.load("edge")["services"]["edge"]
        self.assertEqual(later["environment"], {"PORTUNUS_ENROLL_URI": ""})
        edge = self.spawn(image, image.command(), volumes, later["environment"])
        yield edge.wait_for("control.connected")
        self.assertFalse([e for e in edge.events if e.get("event") == "client.enrolled"])
        yield edge.wait_for("rule.activated")
        yield self.send(listen, 64 * 1024)
        yield self.stop(edge)


class StandaloneImageTests(_ImageCase):
    @inlineCallbacks
    def test_standalone_forwards_and_binds_a_low_port_as_non_root(self) -> Any:
        """Two rules, one below 1024, served by uid 65532; healthy; SIGTERM exits 0."""
        image = self.mount("standalone")
        volumes = self.volumes(image)
        target = self.echo()
        for attempt in range(PORT_TRIES):
            high, low = free_port_range(1), _free_low_port()
            with open(os.path.join(volumes["/etc/portunus"], "standalone.toml"), "w") as f:
                f.write(
                    '[global]\nlog_level = "info"\n\n'
                    f'[[rule]]\nname = "high"\nlisten_port = {high}\n'
                    f'target = "{LOOPBACK}:{target}"\n\n'
                    f'[[rule]]\nname = "low"\nlisten_port = {low}\n'
                    f'target = "{LOOPBACK}:{target}"\n'
                )
            standalone = self.spawn(image, image.command(), volumes)
            try:
                yield standalone.wait_for("standalone.started")
            except AssertionError:
                if b"port_in_use" in standalone.stderr and attempt + 1 < PORT_TRIES:
                    continue
                raise
            break
        yield self.send(high, 1024 * 1024)
        yield self.send(low, 64 * 1024)

        out, err, code = yield self.once(image, image.healthcheck(), volumes)
        self.assertEqual((code, out), (0, b"healthy: 2 port(s) bound\n"), err.decode())
        yield self.stop(standalone)
