"""
The Kubernetes manifests (contrib/k8s): parsed, and the fields that decide
how each role runs checked, including that the standalone's ConfigMap is a
config the forwarder accepts and that the images carry this version.
"""

from __future__ import annotations

import os
from typing import Any

import yaml
from twisted.trial.unittest import SynchronousTestCase

from portunus import __version__
from portunus.dataplane import SUPPORTED_PROTOCOLS
from portunus.server.settings import ADVERTISED_ENDPOINT_ENV, OPERATOR_HTTP_LISTEN_ENV
from portunus.standalone.config import parse_config
from tests.deploy._support import CONTRIB


def manifests(name: str) -> dict[str, dict[str, Any]]:
    """The documents of contrib/k8s/<name>.yaml by kind."""
    with open(os.path.join(CONTRIB, "k8s", f"{name}.yaml")) as f:
        documents = [d for d in yaml.safe_load_all(f) if d]
    by_kind = {d["kind"]: d for d in documents}
    assert len(by_kind) == len(documents), "one document per kind"
    return by_kind


def healthcheck(role: str, flag: str, path: str) -> list[str]:
    return ["python3", "-m", "portunus.healthcheck", role, flag, path]


class StandaloneManifestTests(SynchronousTestCase):
    def setUp(self) -> None:
        docs = manifests("standalone")
        self.config_map = docs["ConfigMap"]
        self.deployment = docs["Deployment"]
        self.pod = self.deployment["spec"]["template"]["spec"]
        [self.container] = self.pod["containers"]

    def test_one_pod_on_the_host_network_replaced_not_rolled(self) -> None:
        """1 replica, Recreate (ports cannot be shared), hostNetwork with cluster DNS."""
        spec = self.deployment["spec"]
        self.assertEqual((spec["replicas"], spec["strategy"]["type"]), (1, "Recreate"))
        self.assertTrue(self.pod["hostNetwork"])
        self.assertEqual(self.pod["dnsPolicy"], "ClusterFirstWithHostNet")
        self.assertGreaterEqual(self.pod["terminationGracePeriodSeconds"], 30)

    def test_non_root_read_only_with_only_the_port_capability(self) -> None:
        """uid 65532, read-only root, every capability dropped but NET_BIND_SERVICE."""
        self.assertEqual(
            {k: self.pod["securityContext"][k] for k in ("runAsNonRoot", "runAsUser")},
            {"runAsNonRoot": True, "runAsUser": 65532},
        )
        security = self.container["securityContext"]
        self.assertTrue(security["readOnlyRootFilesystem"])
        self.assertEqual(security["capabilities"], {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]})
        self.assertEqual(
            self.container["resources"],
            {
                "requests": {"cpu": "100m", "memory": "64Mi"},
                "limits": {"cpu": "500m", "memory": "256Mi"},
            },
        )

    def test_config_map_is_a_valid_config_mounted_where_the_image_reads_it(self) -> None:
        """The ConfigMap's TOML passes the forwarder's own validation; args and probes use it."""
        text = self.config_map["data"]["standalone.toml"]
        config = parse_config(text, "standalone.toml", SUPPORTED_PROTOCOLS)
        self.assertEqual([r.name for r in config.rules], ["web"])
        mounts = {m["name"]: m for m in self.container["volumeMounts"]}
        self.assertEqual(mounts["config"]["mountPath"], "/etc/portunus")
        [config_volume] = [v for v in self.pod["volumes"] if v["name"] == "config"]
        self.assertEqual(config_volume["configMap"]["name"], self.config_map["metadata"]["name"])
        path = "/etc/portunus/standalone.toml"
        self.assertEqual(self.container["args"], ["--config", path])
        probe = healthcheck("standalone", "--config", path)
        self.assertEqual(self.container["readinessProbe"]["exec"]["command"], probe)
        self.assertEqual(self.container["livenessProbe"]["exec"]["command"], probe)
        self.assertEqual(self.container["image"], f"portunus-standalone:{__version__}")


class ServerManifestTests(SynchronousTestCase):
    def setUp(self) -> None:
        docs = manifests("server")
        self.service = docs["Service"]
        self.stateful = docs["StatefulSet"]
        self.pod = self.stateful["spec"]["template"]["spec"]
        [self.container] = self.pod["containers"]

    def test_one_server_with_its_own_volume(self) -> None:
        """A StatefulSet of 1 (one SQLite writer) with a claim mounted at the data dir."""
        self.assertEqual(self.stateful["spec"]["replicas"], 1)
        [claim] = self.stateful["spec"]["volumeClaimTemplates"]
        self.assertEqual(claim["spec"]["accessModes"], ["ReadWriteOnce"])
        [mount] = self.container["volumeMounts"]
        self.assertEqual(
            (mount["name"], mount["mountPath"]), (claim["metadata"]["name"], "/var/lib/portunus")
        )
        self.assertEqual(self.container["args"], ["serve", "--data-dir", "/var/lib/portunus"])
        # fsGroup once, not at every mount: the key must stay 0600.
        self.assertEqual(self.pod["securityContext"]["fsGroupChangePolicy"], "OnRootMismatch")
        self.assertEqual(self.container["image"], f"portunus-server:{__version__}")

    def test_service_exposes_only_the_control_port(self) -> None:
        """The Service carries 7443 to the control port; the operator API stays on loopback."""
        self.assertEqual(
            self.service["spec"]["ports"],
            [{"name": "control", "port": 7443, "targetPort": "control", "protocol": "TCP"}],
        )
        self.assertEqual(
            self.service["spec"]["selector"],
            self.stateful["spec"]["selector"]["matchLabels"],
        )
        [port] = self.container["ports"]
        self.assertEqual((port["name"], port["containerPort"]), ("control", 7443))
        env = {e["name"]: e["value"] for e in self.container["env"]}
        self.assertEqual(set(env), {ADVERTISED_ENDPOINT_ENV, OPERATOR_HTTP_LISTEN_ENV})
        self.assertEqual(env[OPERATOR_HTTP_LISTEN_ENV], "127.0.0.1:7080")

    def test_locked_down_and_probed_by_the_health_check(self) -> None:
        """Non-root, read-only root, no capability, no privilege escalation; /v1/health probes."""
        self.assertTrue(self.pod["securityContext"]["runAsNonRoot"])
        security = self.container["securityContext"]
        self.assertEqual(
            (security["readOnlyRootFilesystem"], security["allowPrivilegeEscalation"]),
            (True, False),
        )
        self.assertEqual(security["capabilities"], {"drop": ["ALL"]})
        probe = healthcheck("server", "--data-dir", "/var/lib/portunus")
        self.assertEqual(self.container["readinessProbe"]["exec"]["command"], probe)
        self.assertEqual(self.container["livenessProbe"]["exec"]["command"], probe)
