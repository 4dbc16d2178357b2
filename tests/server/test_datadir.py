"""
Tests for L{portunus.server.datadir}.
"""

from __future__ import annotations

import os
import stat
import sys

from twisted.logger import LogEvent, Logger
from twisted.trial.unittest import SynchronousTestCase

from portunus.errors import PortunusError
from portunus.server.datadir import (
    ALLOW_UNSUPPORTED_FILESYSTEM_ENV,
    UNSUPPORTED_FILESYSTEMS,
    filesystem_magic,
    prepare_data_dir,
    resolve_data_dir,
)

TMPFS = 0x01021994
NFS = 0x6969
EXT4 = 0xEF53
CIFS = 0xFF534D42


class ResolveDataDirTests(SynchronousTestCase):
    """The data dir is chosen flag, systemd, XDG, home, then cwd."""

    def test_flag_wins(self) -> None:
        """C{--data-dir} beats every environment variable."""
        environ = {"STATE_DIRECTORY": "/var/lib/p", "XDG_STATE_HOME": "/x", "HOME": "/h"}
        self.assertEqual(resolve_data_dir("/srv/portunus", environ, "/cwd"), "/srv/portunus")

    def test_relative_flag(self) -> None:
        """A relative flag is taken from C{cwd} and returned absolute."""
        self.assertEqual(resolve_data_dir("state/../data", {}, "/cwd"), "/cwd/data")

    def test_empty_flag_skipped(self) -> None:
        """An empty flag counts as not given."""
        self.assertEqual(resolve_data_dir("", {"STATE_DIRECTORY": "/s"}, "/cwd"), "/s")

    def test_state_directory(self) -> None:
        """systemd's C{$STATE_DIRECTORY} comes next."""
        environ = {"STATE_DIRECTORY": "/var/lib/portunus", "HOME": "/h"}
        self.assertEqual(resolve_data_dir(None, environ, "/cwd"), "/var/lib/portunus")

    def test_state_directory_list(self) -> None:
        """With several C{StateDirectory=} entries, the first one is used."""
        environ = {"STATE_DIRECTORY": "/var/lib/a:/var/lib/b"}
        self.assertEqual(resolve_data_dir(None, environ, "/cwd"), "/var/lib/a")

    def test_state_directory_leading_empty(self) -> None:
        """Empty entries in the list are skipped."""
        self.assertEqual(resolve_data_dir(None, {"STATE_DIRECTORY": ":/b"}, "/cwd"), "/b")

    def test_xdg_state_home(self) -> None:
        """C{$XDG_STATE_HOME/portunus} after C{$STATE_DIRECTORY}."""
        environ = {"STATE_DIRECTORY": "", "XDG_STATE_HOME": "/x/state", "HOME": "/h"}
        self.assertEqual(resolve_data_dir(None, environ, "/cwd"), "/x/state/portunus")

    def test_relative_xdg_ignored(self) -> None:
        """The XDG spec says a relative C{$XDG_STATE_HOME} is invalid."""
        environ = {"XDG_STATE_HOME": "state", "HOME": "/home/op"}
        self.assertEqual(resolve_data_dir(None, environ, "/cwd"), "/home/op/.local/state/portunus")

    def test_home(self) -> None:
        """C{$HOME/.local/state/portunus} when nothing more specific is set."""
        environ = {"XDG_STATE_HOME": "", "HOME": "/home/op"}
        self.assertEqual(resolve_data_dir(None, environ, "/cwd"), "/home/op/.local/state/portunus")

    def test_fallback(self) -> None:
        """With nothing set at all, C{./portunus.state}, made absolute."""
        self.assertEqual(resolve_data_dir(None, {"HOME": ""}, "/cwd"), "/cwd/portunus.state")


class _FakeMagic:
    """A C{statfs} stand-in that records the paths it was asked about."""

    def __init__(self, magic: int | None) -> None:
        self.magic = magic
        self.paths: list[str] = []

    def __call__(self, path: str) -> int | None:
        self.paths.append(path)
        return self.magic


class PrepareDataDirTests(SynchronousTestCase):
    """The data dir is created private, and refused where SQLite is unsafe."""

    def setUp(self) -> None:
        self.base = self.mktemp()
        os.makedirs(self.base)
        self.events: list[LogEvent] = []
        self.log = Logger(observer=self.events.append)

    def test_creates_private_dir(self) -> None:
        """A missing dir is created, parents included, with mode 0700."""
        path = os.path.join(self.base, "a", "b")
        old = os.umask(0o022)
        try:
            prepare_data_dir(path, {}, magic_of=_FakeMagic(EXT4))
        finally:
            os.umask(old)
        self.assertTrue(os.path.isdir(path))
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o700)

    def test_existing_dir_kept(self) -> None:
        """An existing directory keeps the mode its owner gave it."""
        os.chmod(self.base, 0o750)
        prepare_data_dir(self.base, {}, magic_of=_FakeMagic(EXT4))
        self.assertEqual(stat.S_IMODE(os.stat(self.base).st_mode), 0o750)

    def test_not_a_directory(self) -> None:
        """A file where the data dir should be is refused, by path."""
        path = os.path.join(self.base, "file")
        with open(path, "w") as f:
            f.write("x")
        error = self.assertRaises(
            PortunusError, prepare_data_dir, path, {}, magic_of=_FakeMagic(EXT4)
        )
        self.assertEqual(error.code, "startup.data_dir_invalid")
        self.assertEqual(error.error.exit_code, 1)
        self.assertIn(path, error.message)
        self.assertIn("not a directory", error.message)

    def test_cannot_create(self) -> None:
        """A parent that is a file makes creation fail with a clear error."""
        parent = os.path.join(self.base, "file")
        with open(parent, "w") as f:
            f.write("x")
        error = self.assertRaises(
            PortunusError,
            prepare_data_dir,
            os.path.join(parent, "state"),
            {},
            magic_of=_FakeMagic(EXT4),
        )
        self.assertEqual(error.code, "startup.data_dir_invalid")
        self.assertIn("cannot be", error.message)

    def test_refuses_tmpfs(self) -> None:
        """
        tmpfs is refused with the path, the type, the reason and the escape
        hatch in the message, and exit code 1.
        """
        path = os.path.join(self.base, "state")
        error = self.assertRaises(
            PortunusError, prepare_data_dir, path, {}, magic_of=_FakeMagic(TMPFS)
        )
        self.assertEqual(error.code, "startup.unsupported_filesystem")
        self.assertEqual(error.error.exit_code, 1)
        self.assertIn(path, error.message)
        self.assertIn("tmpfs", error.message)
        self.assertIn("reboot", error.message)
        self.assertIn(f"{ALLOW_UNSUPPORTED_FILESYSTEM_ENV}=1", error.message)
        self.assertEqual(error.fields, {"path": path, "fs_type": "tmpfs"})

    def test_refusal_leaves_nothing(self) -> None:
        """The check runs on the nearest existing ancestor, before mkdir."""
        path = os.path.join(self.base, "a", "b")
        fake = _FakeMagic(NFS)
        error = self.assertRaises(PortunusError, prepare_data_dir, path, {}, magic_of=fake)
        self.assertIn("nfs", error.message)
        self.assertIn("lock", error.message)
        self.assertEqual(fake.paths, [self.base])
        self.assertFalse(os.path.exists(os.path.join(self.base, "a")))

    def test_existing_dir_checked_itself(self) -> None:
        """An existing data dir is checked directly (it may be a mount point)."""
        fake = _FakeMagic(EXT4)
        prepare_data_dir(self.base, {}, magic_of=fake)
        self.assertEqual(fake.paths, [self.base])

    def test_every_unsupported_type_refused(self) -> None:
        """NFS, SMB, CIFS, SMB2, tmpfs, ramfs, FUSE and Ceph are all refused."""
        self.assertEqual(
            set(UNSUPPORTED_FILESYSTEMS.values()),
            {"nfs", "smb", "cifs", "smb2", "tmpfs", "ramfs", "fuse", "ceph"},
        )
        for magic, name in UNSUPPORTED_FILESYSTEMS.items():
            error = self.assertRaises(
                PortunusError, prepare_data_dir, self.base, {}, magic_of=_FakeMagic(magic)
            )
            self.assertEqual(error.fields["fs_type"], name)

    def test_signed_magic(self) -> None:
        """A magic read as a negative 32-bit long still matches (CIFS)."""
        signed = CIFS - (1 << 32)
        error = self.assertRaises(
            PortunusError, prepare_data_dir, self.base, {}, magic_of=_FakeMagic(signed)
        )
        self.assertEqual(error.fields["fs_type"], "cifs")

    def test_escape_hatch(self) -> None:
        """With the variable set to 1, tmpfs starts with a warning event."""
        path = os.path.join(self.base, "state")
        prepare_data_dir(
            path,
            {ALLOW_UNSUPPORTED_FILESYSTEM_ENV: "1"},
            magic_of=_FakeMagic(TMPFS),
            log=self.log,
        )
        self.assertTrue(os.path.isdir(path))
        [event] = self.events
        self.assertEqual(event["event"], "startup.unsupported_filesystem_allowed")
        self.assertEqual(event["fs_type"], "tmpfs")
        self.assertEqual(event["path"], path)
        self.assertEqual(event["log_level"].name, "warn")

    def test_escape_hatch_needs_one(self) -> None:
        """Only C{1} opens the hatch; C{0} or C{yes} still refuse."""
        for value in ("0", "yes", ""):
            self.assertRaises(
                PortunusError,
                prepare_data_dir,
                self.base,
                {ALLOW_UNSUPPORTED_FILESYSTEM_ENV: value},
                magic_of=_FakeMagic(TMPFS),
            )

    def test_unknown_allowed(self) -> None:
        """An unknown magic, or none at all, is allowed without a warning."""
        for magic in (0x12345678, None):
            prepare_data_dir(self.base, {}, magic_of=_FakeMagic(magic), log=self.log)
        self.assertEqual(self.events, [])

    def test_statfs_failure_allowed(self) -> None:
        """A failing C{statfs} makes the filesystem unknown, not fatal."""

        def broken(path: str) -> int:
            raise PermissionError(13, "Permission denied", path)

        prepare_data_dir(self.base, {}, magic_of=broken)


class RealFilesystemTests(SynchronousTestCase):
    """The real C{statfs} on this machine."""

    def setUp(self) -> None:
        if not sys.platform.startswith("linux"):
            raise self.skipTest("statfs magic is Linux-only")

    def test_test_dir_accepted(self) -> None:
        """The test's own temporary dir is on a supported disk filesystem."""
        path = os.path.abspath(self.mktemp())
        magic = filesystem_magic(os.path.dirname(path))
        self.assertIsNotNone(magic)
        if magic in UNSUPPORTED_FILESYSTEMS:
            raise self.skipTest(f"the test dir itself is on {UNSUPPORTED_FILESYSTEMS[magic]}")
        prepare_data_dir(path, {})
        self.assertTrue(os.path.isdir(path))

    def test_missing_path_raises(self) -> None:
        """C{statfs} on a missing path reports the OS error."""
        error = self.assertRaises(OSError, filesystem_magic, "/nonexistent/portunus/x")
        self.assertEqual(error.filename, "/nonexistent/portunus/x")

    def test_dev_shm_refused(self) -> None:
        """C{/dev/shm} is tmpfs on Linux: a data dir there is refused."""
        if not os.path.isdir("/dev/shm"):
            raise self.skipTest("no /dev/shm here")
        if filesystem_magic("/dev/shm") != TMPFS:
            raise self.skipTest("/dev/shm is not tmpfs here")
        path = f"/dev/shm/portunus-test-{os.getpid()}-never-created"
        error = self.assertRaises(PortunusError, prepare_data_dir, path, {})
        self.assertEqual(error.code, "startup.unsupported_filesystem")
        self.assertIn("tmpfs", error.message)
        self.assertFalse(os.path.exists(path))
