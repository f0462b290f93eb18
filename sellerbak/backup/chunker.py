"""Record-aligned, content-defined chunking.

A chunk is a run of whole canonical record lines. After each record the chunker decides whether
to cut, from that record alone:

    cut  iff  BLAKE2b-64(key=K_chunker, id) < len(line) * 2**64 / target,  or the chunk >= max

so a record of L bytes ends a chunk with probability L/target and chunks average `target`
bytes whatever the record size. Because the decision depends on the record itself (its id and
length), not on its position, a changed, inserted or deleted record changes only the chunk it
falls in: every other chunk keeps its bytes and therefore its id, and is not stored again. The
hash is keyed, so boundaries say nothing about ids to someone without the key.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass


@dataclass(slots=True)
class Chunk:
    data: bytes
    records: int
    first_key: str
    last_key: str
    #: its keyed id, when the export process already computed it (spreading the hashing
    #: over both processes)
    chunk_id: bytes | None = None


class Chunker:
    def __init__(self, key: bytes, target: int, maximum: int) -> None:
        self._hash = hashlib.blake2b(key=key[:64], digest_size=8)
        self._scale = (1 << 64) // target
        self._max = maximum
        self._lines: list[bytes] = []
        self._size = 0
        self._first = ""
        self._last = ""

    @property
    def empty(self) -> bool:
        return not self._lines

    def is_boundary(self, key: str, line_len: int) -> bool:
        h = self._hash.copy()  # cheaper than keying a new hash per record
        h.update(key.encode("utf-8"))
        return int.from_bytes(h.digest(), "big") < line_len * self._scale

    def feed(self, key: str, line: bytes) -> Chunk | None:
        """Add one record; returns the finished chunk when this record ends one."""
        if not self._lines:
            self._first = key
        self._last = key
        self._lines.append(line)
        self._size += len(line)
        if self._size >= self._max or self.is_boundary(key, len(line)):
            return self._cut()
        return None

    def flush(self) -> Chunk | None:
        """The last, possibly short, chunk of a dataset."""
        return self._cut() if self._lines else None

    def _cut(self) -> Chunk:
        chunk = Chunk(b"".join(self._lines), len(self._lines), self._first, self._last)
        self._lines = []
        self._size = 0
        return chunk
