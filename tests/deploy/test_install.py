"""
contrib/install.sh in a Debian bookworm chroot (mmdebstrap: python3,
python3-venv and systemd installed, systemd not running), offline: pip
installs from a wheelhouse of the dependencies and the project wheel.

The server's whole life (dry run, install, status, config, upgrade to a
newer wheel, uninstall --purge back to the file system it started from),
a client enrolling with --enroll against a real server, and a standalone
with no init system.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import stat
import subprocess
import tempfile
from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase

from tests.deploy._support import (
    CONTRIB,
    build_wheel,
    debian_tarball,
    require,
    shellcheck_clean,
    wheel_requirements,
    wheelhouse,
)
from tests.e2e.test_control_plane_process import SERVER_CLI, _ProcessCase

PACKAGES = ("python3", "python3-venv", "systemd")
INSTALLER = "/root/contrib/install.sh"
UNIT_DIR = "/etc/systemd/system"

# The shadow tools rewrite these (and keep a backup copy) when a user is
# added and removed; their contents are compared instead.
_ACCOUNT_FILES = ("passwd", "group", "shadow", "gshadow")
_ACCOUNT_BACKUPS = tuple(f"/etc/{name}-" for name in _ACCOUNT_FILES)

_wheels: dict[str, str] = {}


def wheels() -> dict[str, str]:
    """The project wheel as it is (0.1.0-like) and one with a newer version."""
    if not _wheels:
        out = tempfile.mkdtemp(prefix="portunus-wheels-")
        _wheels["current"] = build_wheel(os.path.join(out, "current"))
        _wheels["newer"] = build_wheel(os.path.join(out, "newer"), version="99.0.0")
        _wheels["house"] = wheelhouse(wheel_requirements(_wheels["current"]))
    return _wheels


class Chroot:
    """An extracted Debian root with the installer, the wheels and a wheelhouse."""

    def __init__(self, base: str) -> None:
        require("mmdebstrap", "unshare", "chroot", "tar", root=True)
        self.base = base
        self.root = os.path.join(base, "root")
        os.makedirs(self.root)
        tarball = debian_tarball("debian-bookworm-install", PACKAGES)
        subprocess.run(["tar", "-xf", tarball, "-C", self.root], check=True)
        contrib = os.path.join(self.root, "root", "contrib")
        os.makedirs(contrib)
        shutil.copy(os.path.join(CONTRIB, "install.sh"), contrib)
        for sub in ("systemd", "openrc"):
            shutil.copytree(os.path.join(CONTRIB, sub), os.path.join(contrib, sub))
        built = wheels()
        self.wheels = {}
        for name in ("current", "newer"):
            target = os.path.join(self.root, "root", "wheels", name)
            os.makedirs(target)
            shutil.copy(built[name], target)
            self.wheels[name] = "/root/wheels/" + name + "/" + os.path.basename(built[name])
        shutil.copytree(built["house"], os.path.join(self.root, "root", "wheelhouse"))

    def remove(self) -> None:
        """Delete the extracted tree (hundreds of MB) once the test is done."""
        shutil.rmtree(self.base, ignore_errors=True)

    def path(self, inside: str) -> str:
        return os.path.join(self.root, inside.lstrip("/"))

    def run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run C{argv} in the chroot (own mount namespace, /proc mounted)."""
        inner = " ".join(shlex.quote(a) for a in argv)
        script = (
            f"mount -t proc proc {shlex.quote(self.path('/proc'))}; "
            f"exec chroot {shlex.quote(self.root)} {inner}"
        )
        env = {
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": "/root",
            "LANG": "C.UTF-8",
            # Offline: the dependencies come from the wheelhouse only.
            "PIP_NO_INDEX": "1",
            "PIP_FIND_LINKS": "/root/wheelhouse",
        }
        result = subprocess.run(
            ["unshare", "--mount", "--propagation", "private", "--", "sh", "-ec", script],
            env=env,
            capture_output=True,
            text=True,
            check=False,
            timeout=600,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"{inner} exited {result.returncode}\n{result.stdout}\n{result.stderr}"
            )
        return result

    def install_sh(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run("/bin/sh", INSTALLER, *args, check=check)

    def listing(self) -> dict[str, tuple[Any, ...]]:
        """Every path below the root with its type, owner and mode (and size, mtime for files)."""
        entries: dict[str, tuple[Any, ...]] = {}
        for top, dirs, files in os.walk(self.root):
            rel = "/" + os.path.relpath(top, self.root).lstrip(".")
            if rel in ("/proc", "/sys", "/dev", "/tmp", "/run"):
                dirs[:] = []
            for name in dirs + files:
                path = os.path.join(top, name)
                st = os.lstat(path)
                key = os.path.join(rel, name)
                entry: tuple[Any, ...] = (stat.S_IFMT(st.st_mode), st.st_mode, st.st_uid, st.st_gid)
                if not stat.S_ISDIR(st.st_mode):
                    entry += (st.st_size, st.st_mtime_ns)
                entries[key] = entry
        return entries

    def accounts(self) -> dict[str, str]:
        contents = {}
        for name in _ACCOUNT_FILES:
            with open(self.path(f"/etc/{name}")) as f:
                contents[name] = f.read()
        return contents

    def owner(self, inside: str) -> tuple[str, str, int]:
        """(user, group, mode) of a path, by the chroot's own names."""
        st = os.stat(self.path(inside))
        names = {}
        for db, ident in (("passwd", st.st_uid), ("group", st.st_gid)):
            with open(self.path(f"/etc/{db}")) as f:
                for line in f:
                    fields = line.split(":")
                    if int(fields[2]) == ident:
                        names[db] = fields[0]
        return names["passwd"], names["group"], st.st_mode & 0o7777


def _diff(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    changed = [
        f"{path}: {before.get(path)} -> {after.get(path)}"
        for path in sorted(set(before) | set(after))
        if before.get(path) != after.get(path)
    ]
    return changed


class InstallerScriptTests(SynchronousTestCase):
    def test_posix_sh_and_shellcheck_clean(self) -> None:
        """install.sh parses under dash and passes shellcheck with no finding."""
        require("shellcheck", "dash")
        shellcheck_clean(self, os.path.join(CONTRIB, "install.sh"))

    def test_no_verb_prints_usage_and_fails(self) -> None:
        """No arguments: the usage text on stdout and exit 2, nothing else."""
        result = subprocess.run(
            ["sh", os.path.join(CONTRIB, "install.sh")], capture_output=True, text=True
        )
        self.assertEqual(result.returncode, 2)
        self.assertIn("install.sh [--dry-run] install server|client|standalone", result.stdout)


class ServerLifecycleTests(SynchronousTestCase):
    def test_install_status_config_upgrade_purge(self) -> None:
        """
        --dry-run changes nothing; install makes the user, dirs, venv, unit
        (enabled, not started: systemd is not running); status and config
        work; upgrade moves to the newer wheel; uninstall --purge leaves the
        file system as it was.
        """
        chroot = Chroot(self.mktemp())
        self.addCleanup(chroot.remove)
        pristine = chroot.listing()
        accounts = chroot.accounts()
        wheel = chroot.wheels["current"]

        dry = chroot.install_sh(
            "--dry-run", "install", "server", "--wheel", wheel,
            "--advertised-endpoint", "ctl.example.net:7443",
        )  # fmt: skip
        self.assertIn("installing portunus server (init: systemd)", dry.stdout)
        self.assertIn("would run: useradd --system --user-group", dry.stdout)
        self.assertIn("would run: python3 -m venv /opt/portunus/venv", dry.stdout)
        self.assertIn(f"would write {UNIT_DIR}/portunus-server.service", dry.stdout)
        self.assertEqual(_diff(pristine, chroot.listing()), [])

        out = chroot.install_sh(
            "install", "server", "--wheel", wheel, "--advertised-endpoint", "ctl.example.net:7443"
        ).stdout
        self.assertIn("systemd is installed but not running here", out)
        self.assertEqual(chroot.owner("/etc/portunus"), ("root", "portunus-server", 0o750))
        self.assertEqual(
            chroot.owner("/var/lib/portunus"), ("portunus-server", "portunus-server", 0o700)
        )
        self.assertEqual(chroot.owner("/etc/portunus/server.env")[2], 0o640)
        with open(chroot.path("/etc/portunus/server.env")) as f:
            self.assertIn("PORTUNUS_ADVERTISED_ENDPOINT=ctl.example.net:7443\n", f.read())
        with (
            open(chroot.path(f"{UNIT_DIR}/portunus-server.service")) as f,
            open(os.path.join(CONTRIB, "systemd", "portunus-server.service")) as g,
        ):
            self.assertEqual(f.read(), g.read())
        self.assertTrue(
            os.path.islink(
                chroot.path(f"{UNIT_DIR}/multi-user.target.wants/portunus-server.service")
            )
        )
        help_out = chroot.run("/opt/portunus/venv/bin/portunus-server", "--help").stdout
        self.assertIn("enroll-client", help_out)

        status = chroot.install_sh("status").stdout
        self.assertIn("role: server\n", status)
        self.assertIn("version: 0.1.0 ", status)
        self.assertIn("init: systemd\n", status)
        self.assertIn("data dir: /var/lib/portunus\n", status)

        refused = chroot.install_sh("service", "start", check=False)
        self.assertEqual(refused.returncode, 1)
        self.assertIn(
            "systemd is not running here; start the role by hand: "
            "/opt/portunus/venv/bin/portunus-server serve --data-dir /var/lib/portunus",
            refused.stderr,
        )

        chroot.install_sh("config", "set", "operator-http-listen", "127.0.0.1:7090")
        got = chroot.install_sh("config", "get", "operator-http-listen").stdout
        self.assertEqual(got, "127.0.0.1:7090\n")
        self.assertEqual(
            chroot.install_sh("config", "get", "advertised-endpoint").stdout,
            "ctl.example.net:7443\n",
        )
        bad = chroot.install_sh("config", "set", "operator-http-listen", "7090", check=False)
        self.assertEqual(bad.returncode, 1)
        self.assertIn("operator-http-listen: '7090' has no port", bad.stderr)

        installed = chroot.listing()
        for args in (("upgrade", "--wheel", chroot.wheels["newer"]), ("uninstall", "--purge")):
            dry = chroot.install_sh("--dry-run", *args)
            self.assertIn("would ", dry.stdout)
            self.assertEqual(_diff(installed, chroot.listing()), [], args)

        out = chroot.install_sh("upgrade", "--wheel", chroot.wheels["newer"]).stdout
        self.assertIn("upgraded portunus server: 0.1.0 -> 99.0.0", out)
        self.assertIn("version: 99.0.0 ", chroot.install_sh("status").stdout)
        with open(chroot.path("/etc/portunus/.install-meta")) as f:
            meta = dict(line.rstrip("\n").split("=", 1) for line in f)
        self.assertEqual(
            {k: meta[k] for k in ("role", "version", "init", "data_dir")},
            {
                "role": "server",
                "version": "99.0.0",
                "init": "systemd",
                "data_dir": "/var/lib/portunus",
            },
        )
        self.assertIn("upgraded_at", meta)

        out = chroot.install_sh("uninstall", "--purge").stdout
        self.assertIn("removed its configuration, state and user", out)
        after = chroot.listing()
        for backup in _ACCOUNT_BACKUPS:
            pristine.pop(backup, None), after.pop(backup, None)
        for name in _ACCOUNT_FILES:
            pristine.pop(f"/etc/{name}"), after.pop(f"/etc/{name}")
        self.assertEqual(_diff(pristine, after), [])
        self.assertEqual(chroot.accounts(), accounts)
        self.assertEqual(chroot.install_sh("status", check=False).returncode, 1)


class StandaloneWithoutInitTests(SynchronousTestCase):
    def test_no_init_installs_the_config_and_says_how_to_start(self) -> None:
        """--init none: no unit anywhere; the config checked, 0640; the command printed."""
        chroot = Chroot(self.mktemp())
        self.addCleanup(chroot.remove)
        config = chroot.path("/root/standalone.toml")
        with open(config, "w") as f:
            f.write('[[rule]]\nname = "web"\nlisten_port = 8080\ntarget = "127.0.0.1:80"\n')
        with open(chroot.path("/root/bad.toml"), "w") as f:
            f.write("[[rule]]\nname = 1\n")
        bad = chroot.install_sh(
            "--init", "none", "install", "standalone", "--wheel", chroot.wheels["current"],
            "--config", "/root/bad.toml", check=False,
        )  # fmt: skip
        self.assertEqual(bad.returncode, 1)
        self.assertIn("--config /root/bad.toml is not valid", bad.stderr)
        self.assertFalse(os.path.exists(chroot.path("/etc/portunus/standalone.toml")))

        out = chroot.install_sh(
            "--init", "none", "install", "standalone", "--wheel", chroot.wheels["current"],
            "--config", "/root/standalone.toml",
        ).stdout  # fmt: skip
        self.assertIn(
            "no init system found: start it with\n  /opt/portunus/venv/bin/twistd --nodaemon "
            "--pidfile= portunus-standalone --config /etc/portunus/standalone.toml\n",
            out,
        )
        self.assertEqual(chroot.owner("/etc/portunus/standalone.toml"), ("root", "portunus", 0o640))
        self.assertFalse(os.path.exists(chroot.path(f"{UNIT_DIR}/portunus-standalone.service")))
        self.assertFalse(os.path.exists(chroot.path("/etc/init.d/portunus-standalone")))
        check = chroot.run(
            "/opt/portunus/venv/bin/twistd", "--nodaemon", "--pidfile=", "portunus-standalone",
            "--config", "/etc/portunus/standalone.toml", "--check",
        )  # fmt: skip
        self.assertEqual(check.stdout, "ok\n")
        # OpenRC would get the init script (shown by a dry run).
        dry = chroot.install_sh(
            "--dry-run", "--init", "openrc", "install", "standalone",
            "--wheel", chroot.wheels["current"],
        ).stdout  # fmt: skip
        self.assertIn(
            "would write /etc/init.d/portunus-standalone (mode 0755, owner root:root)", dry
        )
        self.assertIn("would run: rc-update add portunus-standalone default", dry)

        out = chroot.install_sh("uninstall").stdout
        self.assertIn("kept /etc/portunus", out)
        self.assertTrue(os.path.exists(chroot.path("/etc/portunus/standalone.toml")))
        self.assertFalse(os.path.exists(chroot.path("/opt/portunus")))


class ClientEnrollTests(_ProcessCase):
    timeout = 900

    @inlineCallbacks
    def test_client_install_enrolls_and_protects_the_bundle(self) -> Any:
        """install client --enroll URI: bundle written 0640 root:portunus-client; unit enabled."""
        chroot = yield deferToThread(Chroot, self.mktemp())
        self.addCleanup(chroot.remove)
        server = self.start_server()
        yield server.wait_for("server.started")
        out, err, code = yield self.cli(SERVER_CLI, "enroll-client", "edge-01")
        self.assertEqual(code, 0, err.decode())
        uri = next(w for w in out.decode().split("'") if w.startswith("portunus://"))

        result = yield deferToThread(
            chroot.install_sh,
            "install", "client", "--wheel", chroot.wheels["current"], "--enroll", uri,
        )  # fmt: skip
        self.assertIn("installed portunus client", result.stdout)
        bundle = "/etc/portunus/client.bundle.json"
        self.assertEqual(chroot.owner(bundle), ("root", "portunus-client", 0o640))
        with open(chroot.path(bundle)) as f:
            self.assertEqual(json.load(f)["client_name"], "edge-01")
        self.assertTrue(
            os.path.islink(
                chroot.path(f"{UNIT_DIR}/multi-user.target.wants/portunus-client.service")
            )
        )
        status = yield deferToThread(chroot.install_sh, "status")
        self.assertIn(f"bundle: {bundle}\n", status.stdout)
        # The edge reads the bundle as its service user.
        check = yield deferToThread(
            chroot.run, "setpriv", "--reuid=portunus-client", "--regid=portunus-client",
            "--init-groups", "cat", bundle,
        )  # fmt: skip
        self.assertIn("edge-01", check.stdout)
