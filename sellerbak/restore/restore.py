"""Restore a snapshot's datasets to files, verified end to end before they get their real name.

Every dataset is written into a staging folder inside the target, checked against the manifest
(record count and SHA-256 of the canonical bytes; every chunk is also authenticated and its keyed
id recomputed on the way) and fsynced; only when all of them verified are they renamed into
place. A failed or interrupted restore leaves no dataset file behind, complete-looking or not.
Files are created 0600, directories 0700.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import hashlib
import json
import os
import queue
import shutil
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from sellerbak.errors import IntegrityError, SellerbakError, UsageError
from sellerbak.localfiles import DIR_MODE, disk_error, private_dirs
from sellerbak.records import parse_line
from sellerbak.repository.check import pack_sizes
from sellerbak.repository.dataset_names import (
    DatasetNameError,
    check_names,
    name_problem,
    shown,
)
from sellerbak.repository.datasets import iter_chunk_runs, iter_chunks
from sellerbak.repository.index import Index
from sellerbak.repository.manifest import DatasetEntry, Manifest
from sellerbak.repository.packs import ChunkReader
from sellerbak.repository.repo import Repository
from sellerbak.restore.csvcells import neutralise

FORMATS = ("jsonl", "csv")
_WRITE_BATCH = 1 << 20
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


@dataclass
class RestoredDataset:
    name: str
    path: Path
    records: int
    bytes: int
    sha256: str


def dataset_path(target: Path, dataset: str, fmt: str) -> Path:
    if name_problem(dataset) is not None:  # the snapshot writer's own rule
        raise IntegrityError(f"snapshot names an unsafe dataset path {shown(dataset)}")
    parts = dataset.split("/")
    return target.joinpath(*parts[:-1], f"{parts[-1]}.{fmt}")


def restore_snapshot(repo: Repository, manifest: Manifest, target: Path,
                     datasets: list[str] | None = None, fmt: str = "jsonl",
                     index: Index | None = None,
                     on_records: Callable[[int], None] | None = None,
                     csv_raw: bool = False) -> list[RestoredDataset]:
    """Restore `datasets` (default: all) of `manifest` into `target`. With fmt "csv", cells a
    spreadsheet would run as a formula are neutralised (see csvcells) unless `csv_raw`."""
    if fmt not in FORMATS:
        raise UsageError(f"--format must be one of {', '.join(FORMATS)}")
    names = sorted(manifest.datasets)
    if datasets:
        unknown = [d for d in datasets if d not in manifest.datasets]
        if unknown:
            raise UsageError(f"snapshot {manifest.short_id} has no dataset {unknown[0]!r} "
                             f"(it has: {', '.join(names)})")
        names = [n for n in names if n in datasets]
    try:  # every name, and no two landing on one path (a file `a.jsonl` and a dir `a.jsonl`)
        check_names(names)
    except DatasetNameError as exc:
        raise IntegrityError(f"snapshot {manifest.short_id}: {exc} (restore such datasets "
                             "one at a time, with --dataset, into different targets)") from None
    index = index or Index.load(repo)
    reader = ChunkReader(repo, index)
    # every pack is checked against its indexed size the first time it is read: a missing,
    # truncated or replaced pack stops the restore even where the blobs read are intact
    reader.expect_sizes(pack_sizes(repo))
    # all or nothing: every dataset is written and verified in a staging folder inside the
    # target, and only then moved to its final name
    try:
        _mkdirs(target)
        staging = Path(tempfile.mkdtemp(prefix=".sellerbak-restore-", dir=target))
    except OSError as exc:
        raise disk_error(str(target), exc) from None
    try:
        staged = [restore_dataset(reader, manifest.datasets[name],
                                  dataset_path(staging, name, fmt), fmt, on_records,
                                  csv_raw)
                  for name in names]
        out = []
        with _TargetDirs(target) as folders:
            # every folder is reached (and checked) before the first dataset moves
            places = [(done, folders.open(dataset_path(target, done.name, fmt)))
                      for done in staged]
            for done, (folder_fd, leaf) in places:
                # rename(2) replaces a symlink at the final name, never what it points to
                os.replace(done.path, leaf, dst_dir_fd=folder_fd)
                final = dataset_path(target, done.name, fmt)
                out.append(RestoredDataset(done.name, final, done.records, done.bytes,
                                           done.sha256))
        return out
    except OSError as exc:  # moving into place: a full disk (a directory) or permissions
        raise disk_error(str(target), exc) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


class _TargetDirs:
    """The folders inside the target that datasets go to (`finance/` ...), each reached from
    the target through descriptors opened with O_NOFOLLOW, and created 0700 if missing. A
    symlink planted where such a folder should be (`TARGET/finance -> /elsewhere`) is refused,
    naming it, so no file outside the target is ever created or replaced. The target itself is
    the user's choice and may be a symlink."""

    def __init__(self, target: Path) -> None:
        self._target = target
        self._fds: dict[tuple[str, ...], int] = {}

    def __enter__(self) -> _TargetDirs:
        self._fds[()] = os.open(self._target, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        return self

    def __exit__(self, *exc: object) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def open(self, final: Path) -> tuple[int, str]:
        """(descriptor of the folder `final` goes into, its file name)."""
        parts = final.relative_to(self._target).parts
        for depth in range(1, len(parts)):
            key = parts[:depth]
            if key in self._fds:
                continue
            parent, name = self._fds[key[:-1]], key[-1]
            created = False
            try:
                os.mkdir(name, DIR_MODE, dir_fd=parent)
                created = True
            except FileExistsError:
                pass
            try:
                fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
            except OSError as exc:
                if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                    raise
                raise SellerbakError(
                    f"cannot restore into {self._target.joinpath(*key)}: it is not a folder "
                    "(a symbolic link or a file); restore writes only inside the target, so "
                    "remove it or choose another target") from None
            if created:
                os.fchmod(fd, DIR_MODE)  # the umask may have taken bits off mkdir's mode
            self._fds[key] = fd
        return self._fds[parts[:-1]], parts[-1]


def restore_dataset(reader: ChunkReader, entry: DatasetEntry, path: Path, fmt: str,
                    on_records: Callable[[int], None] | None = None,
                    csv_raw: bool = False) -> RestoredDataset:
    _mkdirs(path.parent)
    tmp = path.with_name(f".{path.name}.sellerbak-partial")
    hasher = hashlib.sha256()
    records = 0
    try:
        with (_open_new(tmp) as fh,
              _BackgroundWriter(fh if fmt == "jsonl" else None, hasher) as out):
            pieces: list[bytes] = []
            size = reported = 0
            for run_records, plain in iter_chunk_runs(reader, entry):
                pieces.append(plain)
                size += len(plain)
                records += run_records
                if size >= _WRITE_BATCH:  # hash and hand over in large pieces: per-call
                    out.write(b"".join(pieces))  # costs dominate at chunk size
                    pieces, size = [], 0
                    if on_records:
                        on_records(records - reported)
                        reported = records
            out.write(b"".join(pieces))
            out.finish()
            if records != entry.records or hasher.hexdigest() != entry.sha256:
                raise IntegrityError(f"dataset {entry.name}: restored data does not match the "
                                     "manifest (record count or SHA-256 differ)")
            fh.flush()
            os.fsync(fh.fileno())
        if fmt == "csv":
            _write_csv(reader, entry, tmp, csv_raw)
        os.replace(tmp, path)
    except OSError as exc:
        _unlink(tmp)
        if exc.errno == errno.ENOSPC:
            raise SellerbakError(f"cannot write {path}: no space left on device") from None
        raise SellerbakError(f"cannot write {path}: {exc.strerror or exc}") from None
    except BaseException:
        _unlink(tmp)
        raise
    return RestoredDataset(entry.name, path, records, entry.bytes, entry.sha256)


class _BackgroundWriter:
    """Hashes and writes (to a file, if given) in a thread of its own, so both (they release
    the GIL) overlap reading, which is what the restore's own thread spends its time on. A
    write error surfaces at the next write or at finish()."""

    def __init__(self, fh: BinaryIO | None, hasher: Any, depth: int = 4) -> None:
        self._fh = fh
        self._hasher = hasher
        self._queue: queue.Queue[bytes | None] = queue.Queue(depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True, name="restore-write")
        self._thread.start()

    def _run(self) -> None:
        while (data := self._queue.get()) is not None:
            self._hasher.update(data)
            if self._error is None and self._fh is not None:
                try:
                    self._fh.write(data)
                except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
                    self._error = exc

    def write(self, data: bytes) -> None:
        if self._error is not None:
            raise self._error
        self._queue.put(data)

    def finish(self) -> None:
        if not self._thread.is_alive():
            return
        self._queue.put(None)
        self._thread.join()
        if self._error is not None:
            raise self._error

    def __enter__(self) -> _BackgroundWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()


def _write_csv(reader: ChunkReader, entry: DatasetEntry, tmp: Path,
               csv_raw: bool = False) -> None:
    """CSV: columns in the source's order if it had one, then any others sorted; nested values
    as JSON. Two passes over the verified data (first for the column set) keep memory flat.
    The data was verified as canonical JSONL before this runs, so neutralising cells (unless
    `csv_raw`) changes what a spreadsheet shows, never what was verified."""
    cell: Callable[[object], str] = _cell if csv_raw else lambda value: neutralise(_cell(value))
    columns: list[str] = entry.meta.get("columns") or []
    if not isinstance(columns, list) or not all(isinstance(c, str) for c in columns):
        raise IntegrityError(f"dataset {entry.name}: the snapshot's column list is malformed")
    columns = list(columns)
    seen = set(columns)
    extra: set[str] = set()
    for _ref, plain in iter_chunks(reader, entry):
        for line in plain.splitlines():
            extra.update(k for k in parse_line(line, entry.name) if k not in seen)
    columns += sorted(extra)
    with _open_new(tmp, truncate=True) as raw:
        import io

        fh = io.TextIOWrapper(raw, encoding="utf-8", newline="")
        writer = csv.writer(fh)
        try:
            writer.writerow([cell(c) for c in columns])  # column names come from records too
            for _ref, plain in iter_chunks(reader, entry):
                for line in plain.splitlines():
                    rec = parse_line(line, entry.name)
                    writer.writerow([cell(rec.get(c)) for c in columns])
            fh.flush()
        except UnicodeEncodeError:  # a lone surrogate: JSON can spell it, UTF-8 cannot
            raise IntegrityError(f"dataset {entry.name}: a stored record holds text that is "
                                 "not valid Unicode") from None
        os.fsync(raw.fileno())
        fh.detach()


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _open_new(path: Path, truncate: bool = False):  # type: ignore[no-untyped-def]
    # O_NOFOLLOW: a link planted at the temporary name is never written through
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | (os.O_TRUNC if truncate else os.O_EXCL)
    if not truncate:
        _unlink(path)
    return os.fdopen(os.open(path, flags, 0o600), "wb")


def _mkdirs(path: Path) -> None:
    private_dirs(path)  # every directory it creates 0700, not only the last


def _unlink(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
