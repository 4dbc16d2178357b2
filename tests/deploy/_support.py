"""
What the deployment tests share: finding the tools (skip on a developer
machine without them, fail in CI), the build cache outside the clone, and
the artifacts that are slow to make (a Debian root file system from
mmdebstrap, a wheelhouse of the dependencies, the project wheel).

Everything slow is keyed by a hash of its inputs and kept in the cache
directory (C{$PORTUNUS_CI_CACHE}, else C{/var/cache/portunus-ci} for root,
else C{~/.cache/portunus-ci}); a run only rebuilds what changed.  A file
lock serialises runs that share the cache.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from email.parser import Parser
from typing import Any

from twisted.trial.unittest import SkipTest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONTRIB = os.path.join(ROOT, "contrib")

#: Files and directories a wheel is built from.
_WHEEL_SOURCES = ("pyproject.toml", "setup.cfg", "README.md", "portunus", "twisted")


def require(*tools: str, root: bool = False) -> None:
    """
    Skip the test unless every tool is on C{PATH} (and, with C{root}, the
    test runs as root); under C{CI=true} fail instead, since CI installs
    them (.ci/run).
    """
    missing = [tool for tool in tools if shutil.which(tool) is None]
    why = ""
    if missing:
        why = f"{', '.join(missing)} not installed (apt-get install; .ci/run does)"
    elif root and os.geteuid() != 0:
        why = "needs root (mounts, chroot, users)"
    if why:
        if os.environ.get("CI") == "true":
            raise AssertionError(f"deployment tests must run in CI: {why}")
        raise SkipTest(why)


def shellcheck_clean(case: Any, path: str) -> None:
    """Assert that C{path} parses under dash and shellcheck finds nothing."""
    for argv in (["dash", "-n", path], ["shellcheck", path]):
        result = subprocess.run(argv, capture_output=True, text=True, check=False)
        case.assertEqual((result.returncode, result.stdout + result.stderr), (0, ""), argv)


def cache_dir() -> str:
    path = os.environ.get("PORTUNUS_CI_CACHE") or (
        "/var/cache/portunus-ci"
        if os.geteuid() == 0
        else os.path.join(os.path.expanduser("~"), ".cache", "portunus-ci")
    )
    os.makedirs(path, exist_ok=True)
    return path


@contextmanager
def cache_lock() -> Iterator[None]:
    with open(os.path.join(cache_dir(), "lock"), "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def run(argv: Sequence[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    """Run C{argv}; on failure raise with its output (the test shows why)."""
    result = subprocess.run(list(argv), capture_output=True, text=True, **kwargs)  # type: ignore[call-overload]
    if result.returncode != 0:
        raise AssertionError(
            f"{' '.join(argv)} exited {result.returncode}\n"
            f"stdout:\n{result.stdout[-4000:]}\nstderr:\n{result.stderr[-4000:]}"
        )
    return result


def digest(*parts: bytes | str) -> str:
    h = hashlib.sha256()
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        h.update(len(data).to_bytes(8, "big"))
        h.update(data)
    return h.hexdigest()[:16]


def file_digest(*paths: str) -> str:
    contents: list[bytes | str] = []
    for path in paths:
        with open(path, "rb") as f:
            contents += [os.path.basename(path), f.read()]
    return digest(*contents)


# ---------------------------------------------------------------------------
# Wheels


def build_wheel(out_dir: str, version: str | None = None) -> str:
    """
    Build this project's wheel into C{out_dir} from a copy of the sources
    (the checkout stays clean); C{version} replaces the project's version.
    """
    with tempfile.TemporaryDirectory() as src:
        for name in _WHEEL_SOURCES:
            source = os.path.join(ROOT, name)
            if os.path.isdir(source):
                shutil.copytree(
                    source,
                    os.path.join(src, name),
                    ignore=shutil.ignore_patterns("__pycache__", "dropin.cache"),
                )
            elif os.path.exists(source):
                shutil.copy(source, src)
        if version is not None:
            _set_version(src, version)
        run(
            [
                sys.executable,
                "-m",
                "pip",
                "wheel",
                "--quiet",
                "--no-deps",
                "--wheel-dir",
                out_dir,
                src,
            ]
        )
    [wheel] = [n for n in os.listdir(out_dir) if n.startswith("portunus-") and n.endswith(".whl")]
    return os.path.join(out_dir, wheel)


def _set_version(src: str, version: str) -> None:
    for name, old, new in (
        ("pyproject.toml", 'version = "', f'version = "{version}"'),
        (os.path.join("portunus", "__init__.py"), '__version__ = "', f'__version__ = "{version}"'),
    ):
        path = os.path.join(src, name)
        with open(path) as f:
            lines = f.read().splitlines(keepends=True)
        with open(path, "w") as f:
            for line in lines:
                f.write(new + "\n" if line.startswith(old) else line)


def wheel_requirements(wheel: str) -> list[str]:
    """The wheel's C{Requires-Dist} lines, extras left out."""
    with zipfile.ZipFile(wheel) as whl:
        name = next(n for n in whl.namelist() if n.endswith(".dist-info/METADATA"))
        meta = Parser().parsestr(whl.read(name).decode())
    return [r for r in meta.get_all("Requires-Dist") or [] if "extra ==" not in r]


def wheel_digest(wheel: str) -> str:
    """A digest of the wheel's contents (its zip timestamps change every build)."""
    with zipfile.ZipFile(wheel) as whl:
        parts: list[bytes | str] = []
        for name in sorted(whl.namelist()):
            parts += [name, whl.read(name)]
    return digest(*parts)


def wheelhouse(requirements: Sequence[str]) -> str:
    """
    A directory of binary wheels for C{requirements} and everything they
    need, for this interpreter's platform (the images' and the chroots'
    Python is Debian bookworm's 3.11, as CI's).  Kept per requirement list.
    """
    path = os.path.join(cache_dir(), f"wheelhouse-{digest(*requirements)}")
    if not os.path.isdir(path):
        tmp = path + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--quiet",
                "--only-binary=:all:",
                "--dest",
                tmp,
                *requirements,
            ]
        )
        os.rename(tmp, path)
    return path


# ---------------------------------------------------------------------------
# Debian root file systems


def debian_tarball(name: str, packages: Sequence[str] = ()) -> str:
    """
    A Debian bookworm minbase root file system with C{packages}, as a
    tarball made by mmdebstrap, kept per package list.
    """
    key = digest("bookworm", "minbase", *packages)
    path = os.path.join(cache_dir(), f"{name}-{key}.tar")
    if not os.path.exists(path):
        tmp = path[: -len(".tar")] + ".partial.tar"
        argv = ["mmdebstrap", "--quiet", "--variant=minbase"]
        if packages:
            argv.append("--include=" + ",".join(packages))
        run([*argv, "bookworm", tmp])
        os.rename(tmp, path)
    return path
