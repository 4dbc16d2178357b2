"""
The container images under test, built once per input and run from their
own file system.

Building: a Debian bookworm base made by mmdebstrap and imported into
podman, then C{contrib/container/build.sh} with that base and an offline
wheelhouse.  The images are tagged with a hash of everything they are made
from (base, Containerfile, build.sh, the wheel's contents, the dependency
list), so a run with nothing changed builds nothing, and podman's layer
cache keeps the dependency layer across code changes.

Running: C{podman run} needs cgroups and rlimits this sandbox (and CI)
does not give, so L{MountedImage} mounts the image read-only and runs its
entry point the way a runtime would: in a private mount namespace with
C{/proc} and the image's volumes bind-mounted from host directories,
C{chroot}ed, as the image's user, in its working directory, with its
environment.  The network namespace is the host's, so everything meets on
127.0.0.1.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from typing import Any

from tests.deploy._support import (
    CONTRIB,
    build_wheel,
    cache_lock,
    debian_tarball,
    digest,
    file_digest,
    run,
    wheel_digest,
    wheel_requirements,
    wheelhouse,
)

ENGINE = ("podman", "--cgroup-manager=cgroupfs")
BASE = "localhost/portunus-ci-base:bookworm"
PREFIX = "localhost/portunus-ci-"
TARGETS = ("server", "edge", "standalone")
CONTAINERFILE = os.path.join(CONTRIB, "container", "Containerfile")
BUILD_SH = os.path.join(CONTRIB, "container", "build.sh")

# The process environment a command under test gets (no test secrets).
HOST_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}

_built: dict[str, str] | BaseException | None = None


def _exists(tag: str) -> bool:
    return subprocess.run([*ENGINE, "image", "exists", tag], check=False).returncode == 0


def _base_image() -> str:
    if not _exists(BASE):
        run([*ENGINE, "import", debian_tarball("debian-bookworm-minbase"), BASE])
    return run([*ENGINE, "image", "inspect", "--format", "{{.Id}}", BASE]).stdout.strip()


def _prune(keep: str) -> None:
    """Drop this suite's images of earlier inputs (their layers go with them)."""
    listed = run([*ENGINE, "images", "--format", "{{.Repository}}:{{.Tag}}"]).stdout.split()
    stale = [
        ref
        for ref in listed
        if ref.startswith(PREFIX) and ref.rsplit(":", 1)[1] not in (keep, "latest")
    ]
    if stale:
        subprocess.run([*ENGINE, "rmi", *stale], check=False, capture_output=True)


def _build() -> dict[str, str]:
    with cache_lock(), tempfile.TemporaryDirectory() as tmp:
        base_id = _base_image()
        wheel = build_wheel(tmp)
        requirements = wheel_requirements(wheel)
        house = wheelhouse(requirements)
        key = digest(
            base_id, file_digest(CONTAINERFILE, BUILD_SH), wheel_digest(wheel), *requirements
        )
        tags = {target: f"{PREFIX}portunus-{target}:{key}" for target in TARGETS}
        if not all(_exists(tag) for tag in tags.values()):
            run(
                [
                    "sh",
                    BUILD_SH,
                    "--engine",
                    " ".join(ENGINE),
                    "--base",
                    BASE,
                    "--wheel",
                    wheel,
                    "--wheelhouse",
                    house,
                    "--tag",
                    key,
                    "--prefix",
                    PREFIX,
                    "--",
                    "--isolation=chroot",
                ]
            )
            _prune(key)
        return tags


def built_images() -> dict[str, str]:
    """The image tag of each target; built on first use (blocking: call in a thread)."""
    global _built
    if _built is None:
        try:
            _built = _build()
        except BaseException as e:
            _built = e
    if isinstance(_built, BaseException):
        raise AssertionError(f"building the images failed: {_built}")
    return _built


class MountedImage:
    """An image's root file system, mounted read-only, and how to run in it."""

    def __init__(self, tag: str) -> None:
        self.tag = tag
        [inspected] = json.loads(run([*ENGINE, "image", "inspect", tag]).stdout)
        self.config: dict[str, Any] = inspected["Config"]
        # Docker-format images keep the health check beside the config.
        self.health: dict[str, Any] = inspected.get("Healthcheck") or {}
        self.root = run([*ENGINE, "image", "mount", tag]).stdout.strip()

    def unmount(self) -> None:
        subprocess.run([*ENGINE, "image", "unmount", self.tag], check=False, capture_output=True)

    @property
    def user(self) -> tuple[int, int]:
        uid, gid = self.config["User"].split(":")
        return int(uid), int(gid)

    @property
    def volumes(self) -> list[str]:
        return sorted(self.config.get("Volumes") or {})

    def volume_dirs(self, base: str) -> dict[str, str]:
        """
        A host directory for each of the image's volumes, with the owner
        and mode of the image's directory, as a new named volume gets.
        """
        dirs = {}
        for path in self.volumes:
            host = os.path.join(base, path.strip("/").replace("/", "_"))
            os.makedirs(host)
            st = os.stat(self.root + path)
            os.chown(host, st.st_uid, st.st_gid)
            os.chmod(host, st.st_mode & 0o7777)
            dirs[path] = host
        return dirs

    def _home(self) -> str:
        uid = str(self.user[0])
        with open(os.path.join(self.root, "etc", "passwd")) as f:
            for line in f:
                fields = line.rstrip("\n").split(":")
                if fields[2] == uid:
                    return fields[5]
        return "/"

    def command(self, args: Sequence[str] | None = None) -> list[str]:
        """The entry point with C{args}, or with the image's CMD when None."""
        cmd = (self.config.get("Cmd") or []) if args is None else list(args)
        return [*(self.config.get("Entrypoint") or []), *cmd]

    def healthcheck(self) -> list[str]:
        test = self.health["Test"]
        assert test[0] == "CMD", test
        return list(test[1:])

    def argv(
        self,
        command: Sequence[str],
        volumes: Mapping[str, str],
        env: Mapping[str, str] = {},
    ) -> list[str]:
        """
        C{unshare} argv that runs C{command} in the image with C{volumes}
        (image path -> host directory) and C{env} on top of the image's.
        """
        environ = dict(e.split("=", 1) for e in self.config.get("Env") or [])
        environ.setdefault("HOME", self._home())
        environ.update(env)
        uid, gid = self.user
        mounts = [f"mount -t proc proc {shlex.quote(self.root + '/proc')}"] + [
            f"mount --bind {shlex.quote(host)} {shlex.quote(self.root + path)}"
            for path, host in volumes.items()
        ]
        inner = [
            "/usr/sbin/chroot",
            f"--userspec={uid}:{gid}",
            self.root,
            "/usr/bin/env",
            "-i",
            f"--chdir={self.config.get('WorkingDir') or '/'}",
            *(f"{k}={v}" for k, v in environ.items()),
            *command,
        ]
        script = "; ".join([*mounts, "exec " + shlex.join(inner)])
        return ["unshare", "--mount", "--propagation", "private", "--", "sh", "-ec", script]
