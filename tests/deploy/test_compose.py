"""
The Compose files (contrib/container/compose.*.yml): the fields that
decide what is exposed and how each role finds its state.  Their commands
and environments are also run for real, in the images, by
L{tests.deploy.test_images}.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from portunus.cli._http import ENDPOINT_ENV, TOKEN_ENV
from portunus.client.tap import ENROLL_URI_ENV
from portunus.server.settings import ADVERTISED_ENDPOINT_ENV, OPERATOR_HTTP_LISTEN_ENV
from tests.deploy._compose import interpolate, load


def _seconds(value: str) -> int:
    assert value.endswith("s"), value
    return int(value[:-1])


class ComposeTests(SynchronousTestCase):
    def test_server_publishes_control_and_keeps_the_operator_api_on_loopback(self) -> None:
        """7443 is published; 7080 only on the host's 127.0.0.1; state on a named volume."""
        services = load("server")["services"]
        server = services["server"]
        self.assertEqual(server["image"], "portunus-server:latest")
        self.assertEqual(server["ports"], ["7443:7443", "127.0.0.1:7080:7080"])
        self.assertEqual(server["volumes"], ["portunus-data:/var/lib/portunus"])
        self.assertEqual(
            set(server["environment"]), {OPERATOR_HTTP_LISTEN_ENV, ADVERTISED_ENDPOINT_ENV}
        )
        self.assertEqual(server["environment"][OPERATOR_HTTP_LISTEN_ENV], "0.0.0.0:7080")
        self.assertTrue(server["read_only"])
        self.assertGreaterEqual(_seconds(server["stop_grace_period"]), 30)

    def test_operator_sidecar_shares_the_servers_network_and_reads_its_token(self) -> None:
        """The operator profile: the server's namespace, the data volume read-only, the CLI."""
        operator = load("server")["services"]["operator"]
        self.assertEqual(operator["profiles"], ["operator"])
        self.assertEqual(operator["network_mode"], "service:server")
        self.assertEqual(operator["volumes"], ["portunus-data:/var/lib/portunus:ro"])
        self.assertEqual(set(operator["environment"]), {ENDPOINT_ENV, TOKEN_ENV})
        self.assertEqual(operator["environment"][ENDPOINT_ENV], "127.0.0.1:7080")
        self.assertIn("exec portunus-server", operator["entrypoint"][2])

    def test_edge_uses_host_networking_and_enrolls_from_the_environment(self) -> None:
        """The edge: host network, PORTUNUS_ENROLL_URI passed through, bundle on a volume."""
        edge = load("edge", {"PORTUNUS_ENROLL_URI": "portunus://x"})["services"]["edge"]
        self.assertEqual(edge["network_mode"], "host")
        self.assertEqual(edge["environment"], {ENROLL_URI_ENV: "portunus://x"})
        self.assertEqual(edge["volumes"], ["portunus-edge:/etc/portunus"])
        self.assertNotIn("ports", edge)
        self.assertGreaterEqual(_seconds(edge["stop_grace_period"]), 30)

    def test_standalone_mounts_its_config_read_only(self) -> None:
        """The standalone: host network, read-only root, standalone.toml mounted read-only."""
        standalone = load("standalone")["services"]["standalone"]
        self.assertEqual(standalone["network_mode"], "host")
        self.assertTrue(standalone["read_only"])
        self.assertEqual(
            standalone["volumes"], ["./standalone.toml:/etc/portunus/standalone.toml:ro"]
        )

    def test_version_variable_picks_the_image_tag(self) -> None:
        """PORTUNUS_VERSION selects the tag build.sh gave (default latest)."""
        for role, service in (("server", "server"), ("edge", "edge"), ("standalone", "standalone")):
            image = load(role, {"PORTUNUS_VERSION": "0.1.0"})["services"][service]["image"]
            self.assertEqual(image, f"portunus-{role}:0.1.0")

    def test_interpolation_follows_compose(self) -> None:
        """$$ is a literal dollar; ${X:-d} falls back on unset and on empty."""
        self.assertEqual(
            interpolate("$${A} ${B:-d} ${C:-d} ${D}", {"B": "", "C": "c"}), "${A} d c "
        )
