"""Run a source's export in a child process, streaming canonical, ordered records back.

Why: reading, parsing and canonically encoding records is the largest single-threaded cost of a
snapshot, and it holds the GIL. In a child process it runs on the second core, overlapping with
the parent's chunking, hashing, compression and uploads.

The child is forked (it inherits the configured source as is; nothing needs pickling) and talks
over a pipe:

    ("dataset", name, mode, deleted_ids)   a dataset starts; deleted ids come first, sorted
    ("chunks", [(data, records, first, last, chunk_id), ...])   a full dataset, already cut
                                           into chunks by the repository's boundary rule and
                                           identified by its keyed ids (~256 KiB a message)
    ("lines", [(key, line), ...])          a change set: canonical lines in id order, for the
                                           parent to merge into the previous snapshot
    ("restart",)                           records were not sorted after all: the dataset
                                           starts over, sorted (the parent drops what it cut)
    ("end", cursor, complete, problem, meta)
    ("done",) | ("error", class_name, message, exit_code)

Where fork is not available, or `SELLERBAK_NO_WORKER` is set, the same protocol runs in-process.
"""

from __future__ import annotations

import errno
import gc
import hmac
import logging
import multiprocessing
import os
import queue
import signal
import sqlite3
import tempfile
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import partial
from multiprocessing.connection import Connection
from typing import Any

try:
    import fcntl
except ImportError:  # not on Windows
    fcntl = None  # type: ignore[assignment]

from sellerbak import errors
from sellerbak.backup.chunker import Chunk, Chunker
from sellerbak.backup.exporters.base import DatasetExport, Source
from sellerbak.errors import SellerbakError, SourceError
from sellerbak.records import (
    Line,
    OutOfOrderError,
    encode_records,
    require_sorted,
    sort_records,
)

log = logging.getLogger(__name__)
BATCH_BYTES = 256 << 10
BATCH_LINES = 8192


class Restart(Exception):
    """The dataset's records start over from the top (now sorted)."""


def _encoded(export: DatasetExport, records: Iterable[Any]) -> Iterator[Line]:
    return iter(records) if export.encoded else encode_records(records, export.name)


def _lines_of(export: DatasetExport, tmpdir: str | None) -> Iterator[Line]:
    encoded = _encoded(export, export.records)
    if export.sorted or export.reopen is not None:
        return require_sorted(encoded, export.name)
    return sort_records(encoded, export.name, tmpdir)


@dataclass(frozen=True)
class ChunkerParams:
    key: bytes
    target: int
    maximum: int
    #: the repository's chunk-id key: the export process computes each chunk's id, which
    #: takes that hashing off the busier parent
    id_key: bytes


def produce(source: Source, cursors: dict[str, Any], full: bool, tmpdir: str | None,
            chunking: ChunkerParams) -> Iterator[tuple[Any, ...]]:
    """The message stream for one source (runs in the child)."""
    try:
        for export in source.export(cursors, full):
            deleted = (sorted({str(d) for d in export.deleted_ids})
                       if export.mode == "changes" else [])
            yield ("dataset", export.name, export.mode, deleted)
            batches = _line_batches if export.mode == "changes" else partial(
                _chunk_batches, chunking)
            try:
                yield from batches(_lines_of(export, tmpdir))
            except OutOfOrderError:
                if export.reopen is None:
                    raise
                yield ("restart",)
                yield from batches(sort_records(_encoded(export, export.reopen()),
                                                export.name, tmpdir))
            yield ("end", export.cursor, export.complete, export.problem, dict(export.meta))
        yield ("done",)
    except SellerbakError as exc:
        yield ("error", type(exc).__name__, str(exc), exc.exit_code)
    except OSError as exc:  # a local disk: sorting spills to temporary files
        where = "" if exc.errno not in (errno.ENOSPC, errno.EDQUOT) else (
            f" (temporary files go to {tmpdir or tempfile.gettempdir()}; set TMPDIR to use "
            "another disk)")
        yield ("error", "SourceError", f"source {source.name} failed: "
               f"{exc.strerror or type(exc).__name__}{where}", 1)
    except sqlite3.Error as exc:  # a state database (TikTok's customers order book)
        yield ("error", "SourceError", f"source {source.name} failed: its state database in "
               f"the state directory: {exc}", 1)
    except Exception as exc:  # noqa: BLE001 - reported as one line by the parent
        log.debug("export failed", exc_info=True)
        yield ("error", "SourceError", f"source {source.name} failed: {type(exc).__name__}", 1)


def _chunk_batches(params: ChunkerParams, lines: Iterator[Line]
                   ) -> Iterator[tuple[str, list[tuple[bytes, int, str, str, bytes]]]]:
    chunker = Chunker(params.key, params.target, params.maximum)
    batch: list[tuple[bytes, int, str, str, bytes]] = []
    size = 0
    for key, line in lines:
        chunk = chunker.feed(key, line)
        if chunk is not None:
            batch.append(_chunk_item(params, chunk))
            size += len(chunk.data)
            if size >= BATCH_BYTES:
                yield ("chunks", batch)
                batch, size = [], 0
    chunk = chunker.flush()
    if chunk is not None:
        batch.append(_chunk_item(params, chunk))
    if batch:
        yield ("chunks", batch)


def _chunk_item(params: ChunkerParams, chunk: Chunk) -> tuple[bytes, int, str, str, bytes]:
    return (chunk.data, chunk.records, chunk.first_key, chunk.last_key,
            hmac.digest(params.id_key, chunk.data, "sha256"))


def _line_batches(lines: Iterator[Line]) -> Iterator[tuple[str, list[Line]]]:
    batch: list[Line] = []
    size = 0
    for item in lines:
        batch.append(item)
        size += len(item[1])
        if size >= BATCH_BYTES or len(batch) >= BATCH_LINES:
            yield ("lines", batch)
            batch, size = [], 0
    if batch:
        yield ("lines", batch)


def _child(conn: Connection, parent_end: Connection, source: Source, cursors: dict[str, Any],
           full: bool, tmpdir: str | None, chunking: ChunkerParams) -> None:
    # the fork inherited the parent's reading end: holding it open would keep the pipe alive
    # after the parent died (kill -9), and this process blocked on a full pipe for ever
    parent_end.close()
    # Ctrl-C reaches the whole process group: the parent decides what it means and stops us
    # with SIGTERM, which ends this process quietly (no traceback), its `finally`s run
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _stop_quietly)
    try:
        for message in produce(source, cursors, full, tmpdir, chunking):
            conn.send(message)
    except (BrokenPipeError, EOFError):
        pass  # the parent went away: stop
    finally:
        conn.close()


def _stop_quietly(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)


#: room for a few batch messages in the pipe (Linux's default is 64 KiB: a 256 KiB message
#: would take 4 rounds of the export process waiting for this one to read)
PIPE_BYTES = 1 << 20


def _widen_pipe(conn: Connection) -> None:
    """Give the pipe room for a whole message where the system allows it (Linux: up to
    /proc/sys/fs/pipe-max-size, 1 MiB by default); elsewhere, or if refused, it stays as is."""
    set_size = getattr(fcntl, "F_SETPIPE_SZ", None) if fcntl is not None else None
    if set_size is None:
        return
    for size in (PIPE_BYTES, BATCH_BYTES):
        try:
            fcntl.fcntl(conn.fileno(), set_size, size)
            return
        except OSError:
            continue


#: messages received ahead of the snapshot engine (at most this many times BATCH_BYTES)
QUEUE_MESSAGES = 32
_EOF = ("eof",)


class _Pump:
    """Reads the export's messages into a bounded queue on a thread of its own.

    Why: a pipe holds at most 1 MiB, so without it the export process stalls whenever this
    process is briefly busy elsewhere (training a dictionary, waiting for the GIL), and each
    process spends a good part of the run waiting for the other. Reading releases the GIL."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._queue: queue.Queue[tuple[Any, ...]] = queue.Queue(maxsize=QUEUE_MESSAGES)
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="export-pump", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                message = self._conn.recv()
            except (EOFError, OSError):
                message = _EOF
            while True:
                try:
                    self._queue.put(message, timeout=0.1)
                    break
                except queue.Full:
                    if self._stopping.is_set():
                        return
            if message is _EOF:
                return

    def messages(self) -> Iterator[tuple[Any, ...]]:
        while True:
            message = self._queue.get()
            if message is _EOF:
                raise SourceError("the export process ended unexpectedly")
            yield message

    def stop(self) -> None:
        """Called once the export process is gone (the pipe then reads as ended)."""
        self._stopping.set()
        self._thread.join(timeout=5)


class ExportStream:
    """The parent's view of a running export: datasets one after another."""

    def __init__(self, source: Source, cursors: dict[str, Any], full: bool,
                 chunking: ChunkerParams, tmpdir: str | None = None) -> None:
        self._proc: Any = None
        self._conn: Connection | None = None
        #: the export sent its last message ("done" or "error") and ends on its own
        self._ended = False
        if _can_fork():
            ctx = multiprocessing.get_context("fork")
            parent, child = ctx.Pipe(duplex=False)
            _widen_pipe(child)
            self._proc = ctx.Process(target=_child,
                                     args=(child, parent, source, cursors, full, tmpdir,
                                           chunking),
                                     daemon=True, name=f"export-{source.name}")
            # what is alive now is frozen until the export ends: neither process's collector
            # walks it, so the pages the child shares with this process stay shared
            gc.collect()
            gc.freeze()
            self._proc.start()
            child.close()
            self._conn = parent
            self._pump: _Pump | None = _Pump(parent)
            self._pump.start()
            self._messages: Iterator[tuple[Any, ...]] = self._pump.messages()
        else:
            self._pump = None
            self._messages = produce(source, cursors, full, tmpdir, chunking)

    def _next(self) -> tuple[Any, ...]:
        message = next(self._messages)
        if message[0] in ("done", "error"):
            self._ended = True
        if message[0] == "error":
            _, cls_name, text, code = message
            cls = getattr(errors, cls_name, None)
            if not (isinstance(cls, type) and issubclass(cls, SellerbakError)):
                cls = SourceError
            exc = cls(text)
            exc.exit_code = code
            raise exc
        return message

    def datasets(self) -> Iterator[RemoteDataset]:
        while True:
            message = self._next()
            if message[0] == "done":
                return
            if message[0] != "dataset":
                raise SourceError(f"export protocol error: unexpected {message[0]!r}")
            _, name, mode, deleted = message
            dataset = RemoteDataset(self, name, mode, deleted)
            yield dataset
            dataset.drain()

    def close(self) -> None:
        if self._proc is not None:
            if not self._ended:  # interrupted or failed here: stop the export now
                self._proc.terminate()
            self._proc.join(timeout=5)
            if self._proc.is_alive():
                self._proc.kill()
                self._proc.join()
            gc.unfreeze()
        if self._pump is not None:  # the export's end of the pipe is closed: it stops
            self._pump.stop()
        if self._conn is not None:
            self._conn.close()


class RemoteDataset:
    """One dataset arriving from the export; attributes mirror DatasetExport."""

    def __init__(self, stream: ExportStream, name: str, mode: str, deleted: list[str]) -> None:
        self._stream = stream
        self.name = name
        self.mode = mode
        self.deleted_ids = deleted
        self.cursor: Any = None
        self.complete = True
        self.problem: str | None = None
        self.meta: dict[str, Any] = {}
        self._ended = False

    def lines(self) -> Iterator[Line]:
        """A change set's lines; raises Restart when the export starts the dataset over."""
        return self._items("lines")  # type: ignore[return-value]

    def chunks(self) -> Iterator[Chunk]:
        """A full dataset's chunks; raises Restart when the export starts the dataset over."""
        return (Chunk(*c) for c in self._items("chunks"))

    def _items(self, expect: str) -> Iterator[Any]:
        while not self._ended:
            message = self._stream._next()
            kind = message[0]
            if kind == expect:
                yield from message[1]
            elif kind == "restart":
                raise Restart
            elif kind == "end":
                _, self.cursor, self.complete, self.problem, self.meta = message
                self._ended = True
            else:
                raise SourceError(f"export protocol error: unexpected {kind!r}")

    def drain(self) -> None:
        for _ in self._items("lines" if self.mode == "changes" else "chunks"):
            pass


def _can_fork() -> bool:
    return (hasattr(os, "fork") and "fork" in multiprocessing.get_all_start_methods()
            and not os.environ.get("SELLERBAK_NO_WORKER"))
