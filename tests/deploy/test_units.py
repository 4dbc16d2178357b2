"""
The service definitions: systemd units (contrib/systemd) checked by
C{systemd-analyze verify} and C{security} in a scratch root laid out as
install.sh installs, their hardening and limits; OpenRC scripts
(contrib/openrc) through C{sh -n}, shellcheck and their fields; and the
reason the server and the edge go without C{MemoryDenyWriteExecute}.
"""

from __future__ import annotations

import ctypes
import os
import re
import shlex
import shutil
import subprocess
import sys

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from tests.deploy._support import CONTRIB, require, shellcheck_clean

SYSTEMD = os.path.join(CONTRIB, "systemd")
OPENRC = os.path.join(CONTRIB, "openrc")
ROLES = ("server", "client", "standalone")
VENV_BIN = "/opt/portunus/venv/bin/"

#: Portunus' hardening (§11), every unit.
HARDENING = {
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectControlGroups": "yes",
    "RestrictNamespaces": "yes",
    "RestrictRealtime": "yes",
    "LockPersonality": "yes",
    "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
    "SystemCallFilter": "@system-service",
    "SystemCallErrorNumber": "EPERM",
}

PR_SET_MDWE = 65
PR_MDWE_REFUSE_EXEC_GAIN = 1


def unit(role: str) -> dict[str, list[str]]:
    """A unit's keys (all sections) and their values, in order."""
    keys: dict[str, list[str]] = {}
    with open(os.path.join(SYSTEMD, f"portunus-{role}.service")) as f:
        for line in f:
            line = line.strip()
            if line and not line.startswith(("#", "[")):
                key, value = line.split("=", 1)
                keys.setdefault(key, []).append(value)
    return keys


def one(keys: dict[str, list[str]], key: str) -> str:
    [value] = keys[key]
    return value


class SystemdUnitTests(SynchronousTestCase):
    def scratch_root(self) -> str:
        """A root with the host's system units and the binaries the units run."""
        root = os.path.abspath(self.mktemp())
        shutil.copytree(
            "/lib/systemd/system", os.path.join(root, "usr/lib/systemd/system"), symlinks=True
        )
        units = os.path.join(root, "etc/systemd/system")
        os.makedirs(units)
        for role in ROLES:
            shutil.copy(os.path.join(SYSTEMD, f"portunus-{role}.service"), units)
            for key in ("ExecStart", "ExecReload"):
                for line in unit(role).get(key, []):
                    binary = os.path.join(root, shlex.split(line)[0].lstrip("/"))
                    os.makedirs(os.path.dirname(binary), exist_ok=True)
                    with open(binary, "w") as f:
                        f.write("#!/bin/sh\n")
                    os.chmod(binary, 0o755)
        return root

    def test_systemd_analyze_verify_is_clean(self) -> None:
        """systemd-analyze verify: exit 0 and not one warning, for each unit."""
        require("systemd-analyze")
        root = self.scratch_root()
        for role in ROLES:
            path = os.path.join(root, "etc/systemd/system", f"portunus-{role}.service")
            result = subprocess.run(
                ["systemd-analyze", "verify", f"--root={root}", "--man=no", path],
                capture_output=True,
                text=True,
                check=False,
            )
            self.assertEqual(
                (result.returncode, result.stdout + result.stderr), (0, ""), f"portunus-{role}"
            )

    def test_systemd_analyze_security_rates_each_unit_ok(self) -> None:
        """The offline exposure rating of each unit is in systemd's 'OK' band."""
        require("systemd-analyze")
        root = self.scratch_root()
        for role in ROLES:
            result = subprocess.run(
                [
                    "systemd-analyze",
                    "security",
                    "--offline=true",
                    f"--root={root}",
                    "--no-pager",
                    f"portunus-{role}.service",
                ],
                capture_output=True,
                text=True,
                check=False,
            )
            last = result.stdout.strip().splitlines()[-1]
            self.assertRegex(last, r"exposure level for .*: [0-9.]+ OK", result.stderr)

    def test_every_unit_has_portunus_hardening(self) -> None:
        """The hardening list of Portunus' units, in all three."""
        for role in ROLES:
            keys = unit(role)
            for key, value in HARDENING.items():
                self.assertEqual(keys.get(key), [value], f"portunus-{role}: {key}")

    def test_users_limits_capabilities_and_reload(self) -> None:
        """Each role's user and open-file limit; port capability and reload where needed."""
        expected = {
            "server": ("portunus-server", "4096", None),
            "client": ("portunus-client", "16384", "CAP_NET_BIND_SERVICE"),
            "standalone": ("portunus", "65535", "CAP_NET_BIND_SERVICE"),
        }
        for role, (user, nofile, cap) in expected.items():
            keys = unit(role)
            self.assertEqual(one(keys, "User"), user)
            self.assertEqual(one(keys, "LimitNOFILE"), nofile)
            self.assertEqual(keys.get("AmbientCapabilities", [None]), [cap], role)
            self.assertTrue(one(keys, "ExecStart").startswith(VENV_BIN), role)
            self.assertEqual(one(keys, "Restart"), "on-failure")
        self.assertEqual(one(unit("standalone"), "ExecReload"), "/bin/kill -HUP $MAINPID")
        self.assertNotIn("ExecReload", unit("server"))
        self.assertNotIn("ExecReload", unit("client"))
        # The server needs no capability at all.
        self.assertEqual(one(unit("server"), "CapabilityBoundingSet"), "")

    def test_exec_start_runs_each_role(self) -> None:
        """ExecStart is the role's own command with its state where install.sh puts it."""
        self.assertEqual(
            one(unit("server"), "ExecStart"),
            VENV_BIN + "portunus-server serve --data-dir ${PORTUNUS_DATA_DIR}",
        )
        self.assertEqual(one(unit("server"), "ReadWritePaths"), "/var/lib/portunus")
        self.assertEqual(
            one(unit("client"), "ExecStart"),
            VENV_BIN + "portunus-client run --bundle /etc/portunus/client.bundle.json",
        )
        self.assertEqual(
            one(unit("standalone"), "ExecStart"),
            VENV_BIN + "twistd --nodaemon --pidfile= portunus-standalone "
            "--config /etc/portunus/standalone.toml",
        )
        self.assertEqual(one(unit("standalone"), "RuntimeDirectory"), "portunus")


def _mdwe_run(code: str) -> subprocess.CompletedProcess[str]:
    """Run C{code} in a fresh interpreter under PR_SET_MDWE (what MemoryDenyWriteExecute denies)."""
    prelude = (
        "import ctypes, sys\n"
        f"if ctypes.CDLL(None, use_errno=True).prctl({PR_SET_MDWE}, "
        f"{PR_MDWE_REFUSE_EXEC_GAIN}, 0, 0, 0) != 0: sys.exit(77)\n"
    )
    return subprocess.run(
        [sys.executable, "-c", prelude + code], capture_output=True, text=True, check=False
    )


class MemoryDenyWriteExecuteTests(SynchronousTestCase):
    def setUp(self) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        if not hasattr(libc, "prctl") or _mdwe_run("pass").returncode == 77:
            raise SkipTest("this kernel has no PR_SET_MDWE (Linux 6.3+)")

    def test_pyopenssl_callbacks_fail_without_writable_executable_memory(self) -> None:
        """Why the server and edge units omit MemoryDenyWriteExecute: pinning needs a callback."""
        result = _mdwe_run(
            "from OpenSSL import SSL\n"
            "SSL.Context(SSL.TLS_METHOD).set_verify(SSL.VERIFY_PEER, lambda *a: True)\n"
        )
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("write+execute memory", result.stderr)
        for role in ("server", "client"):
            self.assertNotIn("MemoryDenyWriteExecute", unit(role))
        self.assertEqual(one(unit("standalone"), "MemoryDenyWriteExecute"), "yes")

    def test_standalone_serves_under_memory_deny_write_execute(self) -> None:
        """The standalone's forwarding code paths never need W+X memory (its unit sets it)."""
        result = _mdwe_run(
            "from twisted.internet import reactor\n"
            "from portunus.standalone.config import parse_config\n"
            "from portunus.standalone.forwarder import forwarder_for\n"
            "from portunus.standalone.service import StandaloneService\n"
            "import portunus.dataplane as dp\n"
            'config = parse_config(\'[[rule]]\\nname = "a"\\nlisten_port = 1\\n'
            'target = "127.0.0.1:9"\\n\', "t.toml", dp.SUPPORTED_PROTOCOLS)\n'
            "forwarder_for(config, reactor)\n"
            "print('ok')\n"
        )
        self.assertEqual((result.returncode, result.stdout), (0, "ok\n"), result.stderr)


class OpenRCTests(SynchronousTestCase):
    def script(self, role: str) -> str:
        with open(os.path.join(OPENRC, f"portunus-{role}")) as f:
            return f.read()

    def test_scripts_parse_and_pass_shellcheck(self) -> None:
        """sh -n and shellcheck (as sh; openrc-run's variables declared) pass on each script."""
        require("shellcheck", "dash")
        for role in ROLES:
            shellcheck_clean(self, os.path.join(OPENRC, f"portunus-{role}"))

    def test_fields_that_matter(self) -> None:
        """supervise-daemon, respawn, the role's user, limits, capability, logs, depend."""
        expected = {
            "server": ("portunus-server:portunus-server", "-n 4096", False),
            "client": ("portunus-client:portunus-client", "-n 16384", True),
            "standalone": ("portunus:portunus", "-n 65535", True),
        }
        for role, (user, ulimit, cap) in expected.items():
            text = self.script(role)
            self.assertTrue(text.startswith("#!/sbin/openrc-run\n"), role)

            def field(name: str, text: str = text) -> str | None:
                match = re.search(rf'^{name}="?([^"\n]*)"?$', text, re.M)
                return match.group(1) if match else None

            self.assertEqual(field("supervisor"), "supervise-daemon", role)
            self.assertEqual(field("command_user"), user, role)
            self.assertEqual(field("rc_ulimit"), ulimit, role)
            self.assertEqual(field("respawn_delay"), "2", role)
            self.assertEqual(field("respawn_max"), "0", role)
            self.assertEqual(field("output_log"), f"/var/log/portunus-{role}.log", role)
            self.assertEqual(field("capabilities") == "^cap_net_bind_service", cap, role)
            self.assertIn("\tneed net\n\tafter firewall\n", text, role)
        self.assertIn('command_args="serve --data-dir ${datadir}', self.script("server"))
        self.assertIn("reload()", self.script("standalone"))
