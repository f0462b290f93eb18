"""Local files that hold secrets or customer data: the state directory (tokens, the demo shop's
night, the customers order book), restored datasets and a file:// repository.

Such files are the owner's alone whatever the umask: directories sellerbak creates are 0700 (every
missing parent too, not only the last one, which is all `Path.mkdir(parents=True)` gives a mode
to) and files 0600. Small state files are replaced atomically (temporary file, fsync, rename), so
a crash or a full disk never leaves half of one; a failed write is one line naming the file.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from pathlib import Path

from sellerbak.errors import SellerbakError

DIR_MODE = 0o700
FILE_MODE = 0o600


def private_dirs(directory: Path) -> None:
    """Create `directory` and any missing parents, each 0700; existing ones are left as
    they are (they are the owner's choice)."""
    missing = []
    directory = Path(directory)
    while not directory.is_dir():
        missing.append(directory)
        if directory == directory.parent:
            break
        directory = directory.parent
    for d in reversed(missing):
        try:
            d.mkdir(mode=DIR_MODE)
        except FileExistsError:
            continue
        os.chmod(d, DIR_MODE)  # the umask may have taken bits off mkdir's mode


def write_private(path: Path, data: bytes, what: str) -> None:
    """Replace `path` with `data` atomically, mode 0600, in a 0700 directory if it creates one.
    `what` names the file in the error line (e.g. "the demo shop's state")."""
    path = Path(path)
    tmp: str | None = None
    try:
        private_dirs(path.parent)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), FILE_MODE)
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        tmp = None
    except OSError as exc:
        raise disk_error(f"{what} ({path})", exc) from None
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def disk_error(what: str, exc: OSError) -> SellerbakError:
    """One line for a failed local write; a full disk and a permission problem say so."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return SellerbakError(f"cannot write {what}: no space left on device")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return SellerbakError(f"cannot write {what}: permission denied ({exc.strerror})")
    return SellerbakError(f"cannot write {what}: {exc.strerror or type(exc).__name__}")
