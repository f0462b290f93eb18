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
import logging
import os
import random
import socket
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sellerbak.crypto.envelope import Kind
from sellerbak.durations import format_duration
from sellerbak.errors import LockHeldError, ObjectNotFoundError, SellerbakError
from sellerbak.repository.repo import MAX_LOCK_BYTES, Repository, lock_name, parse_hex_id

STALE_AFTER = timedelta(minutes=30)
REFRESH_EVERY = timedelta(minutes=5)
log = logging.getLogger(__name__)


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
                Kind.LOCK, lid, repo.store.get(info.name, MAX_LOCK_BYTES), info.name))
            when = datetime.fromisoformat(obj["time"])
            if when.tzinfo is None:
                when = when.replace(tzinfo=UTC)
            pid = int(obj["pid"])
            if not 0 < pid < 1 << 31:  # os.kill() takes a C int
                raise ValueError("pid out of range")
            locks.append(LockInfo(lid, bool(obj["exclusive"]), str(obj["hostname"]), pid,
                                  when))
        except (SellerbakError, ValueError, KeyError, TypeError, OverflowError,
                RecursionError):
            locks.append(LockInfo(lid, True, "?", 0, datetime.now(UTC), readable=False))
    return locks


class RepositoryLock:
    """Context manager holding a lock for as long as a command runs."""

    def __init__(self, repo: Repository, exclusive: bool,
                 wait: timedelta | None = None) -> None:
        self.repo = repo
        self.exclusive = exclusive
        #: how long to keep trying while another process holds a conflicting lock
        self.wait = wait or timedelta(0)
        self.lock_id: bytes | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._mutex = threading.Lock()
        self._refreshed = time.monotonic()
        #: why the lock was lost, once a check found it gone or not ours
        self._lost: str | None = None

    def _write(self) -> bytes:
        lid = os.urandom(32)
        body = json.dumps({"exclusive": self.exclusive, "hostname": socket.gethostname(),
                           "pid": os.getpid(),
                           "time": datetime.now(UTC).isoformat()}).encode()
        self.repo.store.put(lock_name(lid), self.repo.seal(Kind.LOCK, lid, body))
        return lid

    def acquire(self) -> None:
        """Take the lock, retrying with backoff for up to `wait` while it is held."""
        deadline = time.monotonic() + self.wait.total_seconds()
        delay = 1.0
        while True:
            holder = self._try_acquire()
            if holder is None:
                break
            if time.monotonic() + delay > deadline:
                waited = " (waited " + format_duration(self.wait) + ")" if self.wait else ""
                raise LockHeldError(f"repository is locked: {holder.describe()}{waited}; if "
                                    "that process is gone, run 'sellerbak unlock'")
            time.sleep(delay + random.uniform(0, delay / 2))
            delay = min(delay * 2, 30.0)
        self._refreshed = time.monotonic()
        self._lost = None
        self._stop.clear()
        self._thread = threading.Thread(target=self._refresh_loop, daemon=True,
                                        name="lock-refresh")
        self._thread.start()

    def _try_acquire(self) -> LockInfo | None:
        """Write our lock and look at the others: None if we hold it now, else the holder
        (our lock removed again)."""
        self.lock_id = self._write()
        for other in list_locks(self.repo):
            if other.lock_id == self.lock_id or other.is_stale():
                continue
            if self.exclusive or other.exclusive:
                self.release()
                return other
        return None

    def _refresh_loop(self) -> None:
        while not self._stop.wait(REFRESH_EVERY.total_seconds()):
            if not self.refresh_once():
                return

    def refresh_once(self) -> bool:
        """Replace our lock object by a fresh one; False once the lock is lost (then nothing
        is written: a lock someone removed must not come back to life by a refresh)."""
        with self._mutex:
            if self.lock_id is None:
                return False
            try:
                problem = self._lost_because(self.lock_id)
            except SellerbakError as exc:  # storage trouble: try again at the next refresh
                log.warning("could not refresh the repository lock: %s", exc)
                return True
            if problem is not None:
                self._lost, self.lock_id = problem, None
                return False
            try:
                new = self._write()
            except SellerbakError as exc:
                log.warning("could not refresh the repository lock: %s", exc)
                return True
            old, self.lock_id = self.lock_id, new
            self._refreshed = time.monotonic()
            try:
                self.repo.store.delete(lock_name(old))
            except SellerbakError as exc:  # the old one goes stale by itself
                log.warning("could not remove the previous lock object: %s", exc)
            return True

    def _lost_because(self, lid: bytes) -> str | None:
        """Why the lock object `lid` no longer stands for our lock, or None if it does: it
        must still be in the store and say it is this process's lock of our kind."""
        name = lock_name(lid)
        try:
            data = self.repo.store.get(name, MAX_LOCK_BYTES)
        except ObjectNotFoundError:
            return "its lock object was removed (by 'sellerbak unlock --remove-all'?)"
        try:
            obj = json.loads(self.repo.open_sealed(Kind.LOCK, lid, data, name))
            ours = (obj["hostname"] == socket.gethostname() and obj["pid"] == os.getpid()
                    and obj["exclusive"] is self.exclusive)
        except (SellerbakError, ValueError, KeyError, TypeError, RecursionError):
            ours = False
        return None if ours else "its lock object was replaced by one that is not ours"

    def ensure_held(self) -> None:
        """Raise if the lock may have been lost, before anything is committed (a snapshot's
        manifest) or deleted (prune, forget). Lost means: not refreshed for longer than others
        wait before calling it stale (a suspended machine, a storage outage), or its object is
        gone from the store or not ours (another host ran `unlock --remove-all`, and may have
        taken the repository since). Either way committing now could break the repository;
        the check reads the lock object itself, so it costs one GET."""
        with self._mutex:
            if self._lost is not None:
                raise LockHeldError(f"lost the repository lock: {self._lost}; nothing was "
                                    "deleted or committed, run the command again")
            if self.lock_id is None:
                raise LockHeldError("the repository lock was released")
            unrefreshed = time.monotonic() - self._refreshed
            if unrefreshed > (STALE_AFTER - REFRESH_EVERY).total_seconds():
                raise LockHeldError(f"lost the repository lock: not refreshed for "
                                    f"{format_duration(timedelta(seconds=unrefreshed))}; "
                                    "nothing was committed, run the command again")
            problem = self._lost_because(self.lock_id)
            if problem is not None:
                self._lost, self.lock_id = problem, None  # not ours to delete any more
                raise LockHeldError(f"lost the repository lock: {problem}; nothing was "
                                    "deleted or committed, run the command again")

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

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is None:
            self.release()
            return
        # the command already failed (often because storage is down): the lock goes stale by
        # itself, and a failure to remove it must not replace the real error
        try:
            self.release()
        except SellerbakError as release_error:
            log.warning("could not remove the repository lock: %s", release_error)


def remove_locks(repo: Repository, remove_all: bool = False) -> int:
    removed = 0
    for lock in list_locks(repo):
        if remove_all or lock.is_stale():
            repo.store.delete(lock_name(lock.lock_id))
            removed += 1
    return removed
