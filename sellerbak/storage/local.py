"""`file:///path` backend: the repository as a directory tree on a local or mounted disk.

Writes go to a temporary file in the same directory, are fsynced, then hard-linked to their final
name: `link` fails if the name exists, so an object is never overwritten and a crash never leaves
a half-written object under its real name. Directories are 0700 and files 0600.

Reads trust nothing below the root: every directory on the way to an object is opened relative
to its parent with O_NOFOLLOW, and the object itself with O_NOFOLLOW | O_NONBLOCK and checked to
be a regular file before a byte is read. So a symlink (to /dev/zero, to someone else's file, or
a symlinked `snapshots/` directory) is refused rather than followed, and a FIFO cannot block the
run. Writes reach their folder the same way, so a symlinked folder never receives an object.
The root itself may be a symlink: it is the owner's configured location.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path

from sellerbak.errors import ObjectExistsError, ObjectNotFoundError, StorageError
from sellerbak.localfiles import DIR_MODE, private_dirs
from sellerbak.storage.base import NotAnObjectError, ObjectInfo, Store, check_size

_TMP_PREFIX = ".tmp-"
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def _kind(mode: int) -> str:
    """What a non-regular directory entry is, in words for an error line."""
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def _os_error(action: str, name: str, exc: OSError) -> StorageError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StorageError(f"cannot {action} {name}: no space left on the repository's disk")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return StorageError(f"cannot {action} {name}: permission denied ({exc.strerror})")
    return StorageError(f"cannot {action} {name}: {exc.strerror or exc}")


class LocalStore(Store):
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.location = f"file://{self.root}"

    def _path(self, name: str) -> Path:
        parts = name.split("/")
        if not name or any(p in ("", ".", "..") or p.startswith(_TMP_PREFIX) for p in parts):
            raise StorageError(f"invalid object name {name!r}")
        return self.root.joinpath(*parts)

    def put(self, name: str, data: bytes) -> None:
        tmp = f"{_TMP_PREFIX}{secrets.token_hex(8)}"
        parent = -1
        try:
            private_dirs(self.root)
            parent, leaf = self._open_parent(name, create=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                         0o600, dir_fd=parent)
            try:
                view = memoryview(data)
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
                os.fsync(fd)
            finally:
                os.close(fd)
            try:
                os.link(tmp, leaf, src_dir_fd=parent, dst_dir_fd=parent)
            except FileExistsError:
                raise ObjectExistsError(f"object {name} already exists; not overwritten") from None
            os.fsync(parent)  # the new directory entry
        except OSError as exc:
            raise _os_error("write", name, exc) from exc
        finally:
            if parent >= 0:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp, dir_fd=parent)
                os.close(parent)

    def _not_an_object(self, name: str, what: str, mode: int) -> NotAnObjectError:
        return NotAnObjectError(f"object {name} in {self.location}: {what} is {_kind(mode)} "
                                "where the repository has only plain files and folders; "
                                "refused, not followed or read")

    def _open_parent(self, name: str, create: bool = False) -> tuple[int, str]:
        """A descriptor of the directory holding `name`, reached without following any
        symlink below the root, and the object's last name part. The caller closes it.
        With `create`, missing folders are made (0700) on the way."""
        parts = name.split("/")
        self._path(name)  # validates the name
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for depth, part in enumerate(parts[:-1], start=1):
                made = False
                if create:
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(part, DIR_MODE, dir_fd=fd)
                        made = True
                try:
                    child = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except OSError as exc:
                    if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                        raise
                    mode = os.lstat(part, dir_fd=fd).st_mode
                    raise self._not_an_object(name, "/".join(parts[:depth]), mode) from None
                os.close(fd)
                fd = child
                if made:
                    os.fchmod(fd, DIR_MODE)  # the umask may have taken bits off mkdir's mode
        except BaseException:
            os.close(fd)
            raise
        return fd, parts[-1]

    def _open_object(self, name: str) -> tuple[int, os.stat_result]:
        """An open descriptor of the regular file holding `name`, and its status; anything
        else in its place raises NotAnObjectError without being read (module docstring)."""
        parent, leaf = self._open_parent(name)
        try:
            try:
                fd = os.open(leaf, _READ_FLAGS, dir_fd=parent)
            except OSError as exc:
                if exc.errno not in (errno.ELOOP, errno.ENXIO, errno.EOPNOTSUPP):
                    raise
                raise self._not_an_object(name, name, os.lstat(leaf, dir_fd=parent).st_mode
                                          ) from None
        finally:
            os.close(parent)
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            os.close(fd)
            raise self._not_an_object(name, name, info.st_mode)
        return fd, info

    def get(self, name: str, limit: int | None = None) -> bytes:
        try:
            fd, info = self._open_object(name)
            with os.fdopen(fd, "rb") as fh:
                check_size(name, info.st_size, limit)
                data = fh.read() if limit is None else fh.read(limit + 1)  # it may have grown
        except FileNotFoundError:
            raise ObjectNotFoundError(f"object {name} is missing") from None
        except OSError as exc:
            raise _os_error("read", name, exc) from exc
        check_size(name, len(data), limit)
        return data

    def get_range(self, name: str, offset: int, length: int) -> bytes:
        try:
            fd, info = self._open_object(name)
            with os.fdopen(fd, "rb") as fh:
                if offset < 0:
                    offset = max(0, info.st_size + offset)
                fh.seek(offset)
                return fh.read(length)
        except FileNotFoundError:
            raise ObjectNotFoundError(f"object {name} is missing") from None
        except OSError as exc:
            raise _os_error("read", name, exc) from exc

    def exists(self, name: str) -> bool:
        try:
            parent, leaf = self._open_parent(name)
            try:
                mode = os.lstat(leaf, dir_fd=parent).st_mode
            finally:
                os.close(parent)
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise _os_error("check", name, exc) from exc
        if not stat.S_ISREG(mode):
            raise self._not_an_object(name, name, mode)
        return True

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        base = self.root
        if not base.is_dir():
            return
        # file-like entries that are not regular files (symlinks, FIFOs, devices) are listed
        # by their own name and lstat size, so a get of them fails loudly (NotAnObjectError)
        # instead of them hiding; a symlinked directory, which os.walk does not descend into,
        # would hide everything below it, so meeting one is that error at once
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames.sort()
            rel_dir = os.path.relpath(dirpath, base)
            rel = "" if rel_dir == "." else f"{rel_dir.replace(os.sep, '/')}/"
            for dname in dirnames:
                name = rel + dname
                if (name.startswith(prefix) or prefix.startswith(f"{name}/")) and \
                        os.path.islink(os.path.join(dirpath, dname)):
                    raise self._not_an_object(f"{name}/", name, stat.S_IFLNK)
            for fname in sorted(filenames):
                if fname.startswith(_TMP_PREFIX):
                    continue
                name = rel + fname
                if name.startswith(prefix):
                    try:
                        size = os.lstat(os.path.join(dirpath, fname)).st_size
                    except FileNotFoundError:
                        continue
                    yield ObjectInfo(name, size)

    def delete(self, name: str) -> None:
        try:
            parent, leaf = self._open_parent(name)  # never unlinks through a symlinked folder
            try:
                os.unlink(leaf, dir_fd=parent)
            finally:
                os.close(parent)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise _os_error("delete", name, exc) from exc
