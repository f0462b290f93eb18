"""The key file this machine last opened each repository with, so the next open tries it first.

Kept in `state_dir/last-key/<repository id>`: one line, the key id; 0600 in a 0700 directory.
It is only a hint, never trusted: the key file it names is checked and unwrapped like any other,
so a missing, unreadable or malformed hint costs nothing but the order of the search
(repository/keysearch.py). It lets a machine whose passphrase opens a key file reach it with one
KDF run however many key files someone planted in `keys/`.
"""

from __future__ import annotations

from pathlib import Path

from sellerbak.crypto.keyfile import is_key_id
from sellerbak.localfiles import write_private

DIRECTORY = "last-key"


class LastKey:
    """The last-opened key ids under one state directory."""

    def __init__(self, state_dir: Path) -> None:
        self.dir = Path(state_dir) / DIRECTORY

    def path(self, repo_id: bytes) -> Path:
        return self.dir / repo_id.hex()

    def read(self, repo_id: bytes) -> str | None:
        """The key id last recorded for this repository, or None (no hint, or a bad one)."""
        try:
            text = self.path(repo_id).read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError):
            return None
        return text if is_key_id(text) else None

    def record(self, repo_id: bytes, key_id: str) -> None:
        """Remember `key_id` for the next open, unless it is already what is kept; raises
        SellerbakError (one line naming the file) if the file cannot be written."""
        if self.read(repo_id) == key_id:
            return
        write_private(self.path(repo_id), f"{key_id}\n".encode(), "the last-opened key id")
