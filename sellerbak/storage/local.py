"""`file:///path` backend: the repository as a directory tree on a local or mounted disk.

Writes go to a temporary file in the same directory, are fsynced, then hard-linked to their final
name: `link` fails if the name exists, so an object is never overwritten and a crash never leaves
a half-written object under its real name. Directories are 0700 and files 0600.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

from sellerbak.errors import ObjectExistsError, ObjectNotFoundError, StorageError
from sellerbak.localfiles import private_dirs
from sellerbak.storage.base import ObjectInfo, Store

_TMP_PREFIX = ".tmp-"


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
        path = self._path(name)
        tmp = path.parent / f"{_TMP_PREFIX}{secrets.token_hex(8)}"
        try:
            private_dirs(path.parent)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                view = memoryview(data)
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
                os.fsync(fd)
            finally:
                os.close(fd)
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise ObjectExistsError(f"object {name} already exists; not overwritten") from None
            _fsync_dir(path.parent)
        except OSError as exc:
            raise _os_error("write", name, exc) from exc
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    def get(self, name: str) -> bytes:
        try:
            return self._path(name).read_bytes()
        except FileNotFoundError:
            raise ObjectNotFoundError(f"object {name} is missing") from None
        except OSError as exc:
            raise _os_error("read", name, exc) from exc

    def get_range(self, name: str, offset: int, length: int) -> bytes:
        try:
            with open(self._path(name), "rb") as fh:
                if offset < 0:
                    size = fh.seek(0, os.SEEK_END)
                    offset = max(0, size + offset)
                fh.seek(offset)
                return fh.read(length)
        except FileNotFoundError:
            raise ObjectNotFoundError(f"object {name} is missing") from None
        except OSError as exc:
            raise _os_error("read", name, exc) from exc

    def exists(self, name: str) -> bool:
        return self._path(name).is_file()

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        base = self.root
        if not base.is_dir():
            return
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames.sort()
            rel_dir = os.path.relpath(dirpath, base)
            for fname in sorted(filenames):
                if fname.startswith(_TMP_PREFIX):
                    continue
                name = fname if rel_dir == "." else f"{rel_dir.replace(os.sep, '/')}/{fname}"
                if name.startswith(prefix):
                    try:
                        size = os.stat(os.path.join(dirpath, fname)).st_size
                    except FileNotFoundError:
                        continue
                    yield ObjectInfo(name, size)

    def delete(self, name: str) -> None:
        try:
            os.unlink(self._path(name))
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise _os_error("delete", name, exc) from exc


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
