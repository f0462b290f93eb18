"""Repository locks: shared for snapshot, exclusive for prune (key changes need none: each
key file is written and removed whole, and data never depends on which key files exist).

A lock is a sealed object `locks/<random id>` holding who took it (host, pid, time). Objects are
immutable, so a long-running holder refreshes its lock by writing a new one and deleting the old.
A lock is stale when it has not been refreshed for STALE_AFTER, or when it was taken on this host
by a process that no longer exists; stale locks are ignored and `unlock` removes them.

Taking a lock: write ours, then list the others; on a conflict remove ours and report the holder.
Two runs racing this way may both back off, never both proceed.
"""

from __future__ import annotations

import json
import os
import socket
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sellerbak.crypto.envelope import Kind
from sellerbak.errors import LockHeldError, SellerbakError
from sellerbak.repository.repo import Repository, lock_name, parse_hex_id

STALE_AFTER = timedelta(minutes=30)
REFRESH_EVERY = timedelta(minutes=5)


@dataclass
class LockInfo:
    lock_id: bytes
    exclusive: bool
    hostname: str
    pid: int
    time: datetime
    readable: bool = True

    def is_stale(self, now: datetime | None = None) -> bool:
        if not self.readable:
            return True
        now = now or datetime.now(UTC)
        if now - self.time > STALE_AFTER:
            return True
        return self.hostname == socket.gethostname() and not _pid_alive(self.pid)

    def describe(self) -> str:
        kind = "exclusive" if self.exclusive else "shared"
        return (f"{kind} lock held by pid {self.pid} on {self.hostname} since "
                f"{self.time.strftime('%Y-%m-%d %H:%M:%S UTC')}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def list_locks(repo: Repository) -> list[LockInfo]:
    locks = []
    for info in repo.store.list("locks/"):
        lid = parse_hex_id(info.name, "locks/")
        if lid is None:
            continue
        try:
            obj: dict[str, Any] = json.loads(repo.open_sealed(
                Kind.LOCK, lid, repo.store.get(info.name), info.name))
            when = datetime.fromisoformat(obj["time"])
            if when.tzinfo is None:
                when = when.replace(tzinfo=UTC)
            locks.append(LockInfo(lid, bool(obj["exclusive"]), str(obj["hostname"]),
                                  int(obj["pid"]), when))
        except (SellerbakError, ValueError, KeyError, TypeError):
            locks.append(LockInfo(lid, True, "?", 0, datetime.now(UTC), readable=False))
    return locks


class RepositoryLock:
    """Context manager holding a lock for as long as a command runs."""

    def __init__(self, repo: Repository, exclusive: bool) -> None:
        self.repo = repo
        self.exclusive = exclusive
        self.lock_id: bytes | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._mutex = threading.Lock()

    def _write(self) -> bytes:
        lid = os.urandom(32)
        body = json.dumps({"exclusive": self.exclusive, "hostname": socket.gethostname(),
                           "pid": os.getpid(),
                           "time": datetime.now(UTC).isoformat()}).encode()
        self.repo.store.put(lock_name(lid), self.repo.seal(Kind.LOCK, lid, body))
        return lid

    def acquire(self) -> None:
        self.lock_id = self._write()
        for other in list_locks(self.repo):
            if other.lock_id == self.lock_id or other.is_stale():
                continue
            if self.exclusive or other.exclusive:
                self.release()
                raise LockHeldError(f"repository is locked: {other.describe()} "
                                    "(if that process is gone, run 'sellerbak unlock')")
        self._thread = threading.Thread(target=self._refresh_loop, daemon=True,
                                        name="lock-refresh")
        self._thread.start()

    def _refresh_loop(self) -> None:
        while not self._stop.wait(REFRESH_EVERY.total_seconds()):
            with self._mutex:
                if self.lock_id is None:
                    return
                try:
                    new = self._write()
                except SellerbakError:
                    continue
                old, self.lock_id = self.lock_id, new
                self.repo.store.delete(lock_name(old))

    def release(self) -> None:
        self._stop.set()
        with self._mutex:
            if self.lock_id is not None:
                try:
                    self.repo.store.delete(lock_name(self.lock_id))
                finally:
                    self.lock_id = None

    def __enter__(self) -> RepositoryLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def remove_locks(repo: Repository, remove_all: bool = False) -> int:
    removed = 0
    for lock in list_locks(repo):
        if remove_all or lock.is_stale():
            repo.store.delete(lock_name(lock.lock_id))
            removed += 1
    return removed
