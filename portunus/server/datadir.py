"""
Where the server keeps its state, and whether that place is safe.

The data dir holds C{state.db} (SQLite in WAL mode), its lock file, the TLS
key pair and C{server.toml}.  L{resolve_data_dir} picks it the way Portunus
does; L{prepare_data_dir} creates it and refuses filesystems on which
SQLite's locking or WAL index cannot be trusted.

The filesystem check asks the kernel, not the mount table: C{statfs(2)} on
the path itself returns the C{f_type} magic of the filesystem the path
really lives on, through symlinks, bind mounts and mount namespaces, in
one system call.  Parsing C{/proc/self/mountinfo} instead would mean
resolving the path, un-escaping mount points and matching the longest
prefix, and would still be wrong for paths under a bind mount of another
filesystem's subtree.  Portunus uses the same magic numbers, so the same
filesystems are refused.  Where C{statfs} is unavailable (not Linux, no
libc symbol) the filesystem counts as unknown, and unknown is allowed.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import stat
import sys
from collections.abc import Callable, Mapping

from twisted.logger import Logger

from portunus.errors import PortunusError

__all__ = [
    "ALLOW_UNSUPPORTED_FILESYSTEM_ENV",
    "DATA_DIR_MODE",
    "UNSUPPORTED_FILESYSTEMS",
    "filesystem_magic",
    "prepare_data_dir",
    "resolve_data_dir",
]

#: Set to C{1} to start on a refused filesystem anyway.
ALLOW_UNSUPPORTED_FILESYSTEM_ENV = "PORTUNUS_ALLOW_UNSUPPORTED_FILESYSTEM"

#: A new data dir is private to the server user: it holds the TLS key.
DATA_DIR_MODE = 0o700

#: C{statfs} magic numbers (linux/magic.h) of filesystems refused for the
#: data dir, with the name the error message uses.
UNSUPPORTED_FILESYSTEMS: Mapping[int, str] = {
    0x6969: "nfs",
    0x517B: "smb",
    0xFF534D42: "cifs",
    0xFE534D42: "smb2",
    0x01021994: "tmpfs",
    0x858458F6: "ramfs",
    0x65735546: "fuse",
    0x00C36400: "ceph",
}

# Why each kind is refused: the operator needs the reason to judge the
# escape hatch, not just the name.
_WHY_NETWORK = (
    "a network filesystem does not give SQLite reliable POSIX locks or the "
    "shared-memory WAL index, so the database can be corrupted or two servers "
    "can both think they hold the lock"
)
_WHY_MEMORY = (
    "a memory filesystem loses the database, the rules and the TLS key at every "
    "reboot, and clients pinned to that key can no longer connect"
)
_WHY_FUSE = (
    "a FUSE filesystem may not implement the POSIX locks and shared mmap that "
    "SQLite's locking and WAL mode depend on, so the database can be corrupted"
)
_WHY: Mapping[str, str] = {
    "nfs": _WHY_NETWORK,
    "smb": _WHY_NETWORK,
    "cifs": _WHY_NETWORK,
    "smb2": _WHY_NETWORK,
    "ceph": _WHY_NETWORK,
    "tmpfs": _WHY_MEMORY,
    "ramfs": _WHY_MEMORY,
    "fuse": _WHY_FUSE,
}

_log = Logger()


def resolve_data_dir(flag: str | None, environ: Mapping[str, str], cwd: str) -> str:
    """
    The data dir to use, as an absolute path.

    Precedence, first non-empty wins: C{--data-dir}, then
    C{$STATE_DIRECTORY} (systemd's C{StateDirectory=}; when it lists several
    directories separated by colons the first is ours), then
    C{$XDG_STATE_HOME/portunus} (ignored when relative, as the XDG spec
    requires), then C{$HOME/.local/state/portunus}, then C{./portunus.state}.

    @param cwd: the directory relative paths are taken from; passed in so
        the resolution is a pure function of its arguments.
    """
    chosen: str | None = None
    if flag:
        chosen = flag
    if chosen is None:
        entries = [e for e in environ.get("STATE_DIRECTORY", "").split(":") if e]
        if entries:
            chosen = entries[0]
    if chosen is None:
        xdg = environ.get("XDG_STATE_HOME", "")
        if xdg and os.path.isabs(xdg):
            chosen = os.path.join(xdg, "portunus")
    if chosen is None:
        home = environ.get("HOME", "")
        if home:
            chosen = os.path.join(home, ".local", "state", "portunus")
    if chosen is None:
        chosen = "portunus.state"
    return os.path.normpath(os.path.join(cwd, chosen))


def _statfs_type_field() -> type[ctypes.c_long] | type[ctypes.c_uint]:
    # f_type is a __fsword_t: a long everywhere except s390x, where it is
    # an unsigned int (and the machine is big-endian, so reading a long
    # would give the wrong half).
    if platform.machine() == "s390x":
        return ctypes.c_uint
    return ctypes.c_long


def filesystem_magic(path: str) -> int | None:
    """
    The C{statfs(2)} C{f_type} of the filesystem holding C{path}, or
    C{None} when this platform cannot say (not Linux, or no C{statfs}
    symbol in the C library).

    @raise OSError: C{statfs} itself failed (the path does not exist, or
        cannot be searched).
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        statfs = libc.statfs
    except (OSError, AttributeError):
        return None
    statfs.argtypes = [ctypes.c_char_p, ctypes.c_void_p]
    statfs.restype = ctypes.c_int
    # struct statfs is 120 bytes on 64-bit Linux; f_type is its first field.
    buffer = ctypes.create_string_buffer(512)
    if statfs(os.fsencode(path), buffer) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), path)
    field = _statfs_type_field()
    value = field.from_buffer(buffer).value
    # Magics are 32-bit; on 32-bit systems the long is signed.
    return int(value) & 0xFFFFFFFF


def _nearest_existing(path: str) -> str:
    """C{path}, or its closest ancestor that exists (a new dir's filesystem)."""
    current = path
    while not os.path.lexists(current):
        parent = os.path.dirname(current)
        if parent == current:
            break
        current = parent
    return current


def _dir_error(path: str, problem: str) -> PortunusError:
    return PortunusError(
        "startup.data_dir_invalid",
        f"data dir {path}: {problem}; pass --data-dir (or set $STATE_DIRECTORY) "
        "to a directory the server user can create and write",
        path=path,
    )


def _check_filesystem(
    path: str,
    probe: str,
    environ: Mapping[str, str],
    magic_of: Callable[[str], int | None],
    log: Logger,
) -> None:
    try:
        magic = magic_of(probe)
    except OSError:
        # Whatever stops statfs will stop mkdir or the store with a clearer
        # error; the filesystem is merely unknown here.
        return
    if magic is None:
        return
    fs_type = UNSUPPORTED_FILESYSTEMS.get(magic & 0xFFFFFFFF)
    if fs_type is None:
        return
    if environ.get(ALLOW_UNSUPPORTED_FILESYSTEM_ENV) == "1":
        log.warn(
            "data dir {path} is on {fs_type}, which is not supported; starting anyway "
            "because " + ALLOW_UNSUPPORTED_FILESYSTEM_ENV + "=1",
            event="startup.unsupported_filesystem_allowed",
            path=path,
            fs_type=fs_type,
        )
        return
    raise PortunusError(
        "startup.unsupported_filesystem",
        f"data dir {path} is on {fs_type}, which is not supported: {_WHY[fs_type]}; "
        "move --data-dir to a local disk filesystem (ext4, XFS, btrfs, ZFS), or set "
        f"{ALLOW_UNSUPPORTED_FILESYSTEM_ENV}=1 to start anyway at your own risk",
        path=path,
        fs_type=fs_type,
    )


def prepare_data_dir(
    path: str,
    environ: Mapping[str, str],
    *,
    magic_of: Callable[[str], int | None] = filesystem_magic,
    log: Logger = _log,
) -> None:
    """
    Make C{path} ready to hold the server's state, or refuse.

    A missing directory is created (with its parents) with mode C{0700}:
    it will hold the TLS private key.  An existing directory keeps its
    mode, since the operator (or systemd's C{StateDirectoryMode=}) chose
    it.  The filesystem is checked before anything is created, on the
    nearest existing ancestor, so a refusal leaves nothing behind.

    @param environ: read for C{PORTUNUS_ALLOW_UNSUPPORTED_FILESYSTEM=1}.
    @param magic_of: returns the C{statfs} magic for a path (see
        L{filesystem_magic}); tests pass a fake.
    @raise PortunusError: C{startup.data_dir_invalid} when C{path} exists
        but is not a directory or cannot be created;
        C{startup.unsupported_filesystem} for NFS, SMB/CIFS, tmpfs, ramfs,
        FUSE or Ceph.
    """
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        exists = False
    except OSError as e:
        raise _dir_error(path, f"cannot be inspected ({e.strerror or e})") from e
    else:
        exists = True
        if not stat.S_ISDIR(mode):
            raise _dir_error(path, "exists but is not a directory")

    _check_filesystem(path, path if exists else _nearest_existing(path), environ, magic_of, log)

    if exists:
        return
    try:
        os.makedirs(path, mode=DATA_DIR_MODE)
        # makedirs' mode is filtered by the umask; the key needs exactly 0700.
        os.chmod(path, DATA_DIR_MODE)
    except OSError as e:
        if e.errno == errno.EEXIST and os.path.isdir(path):
            return
        raise _dir_error(path, f"cannot be created ({e.strerror or e})") from e
