"""The derived `customers` dataset: one record per buyer `user_id`, kept up to date from orders.

A customer record is

    {"id": user_id, "user_id": user_id, <contact fields>, "order_count": n,
     "first_order_id", "first_order_time", "last_order_id", "last_order_time"}

where each contact field (buyer_email, buyer_nickname, cpf, cpf_name, recipient_address) is
taken from the buyer's newest order (by create_time) that carries it -- an UNPAID order has no
address, and should not erase the one the buyer's previous orders had.

A night's run sees only the orders that changed, but a buyer's count and first order need all of
their orders. So an *order book* is kept in the state directory: one row per order with its
buyer, create_time and which contact fields it carries -- ids and times only, never the contact
values themselves (those stay in the encrypted repository). The book is versioned with the
snapshot chain: each run copies the book named by the previous snapshot's customers cursor into
a new generation and names that one in its own cursor, so a run that fails before its snapshot is
stored leaves the book the next run starts from untouched. If the book is missing (new machine,
lost state), the exporter reads all orders again.

Only buyers whose record can have changed are re-exported: those with a new order, an order
whose contact fields came or went, or a changed order that is the source of one of their fields.
A field whose source order did not change this run is read back with Get Order Detail, in
batches of 50 (rare: it takes an order that was placed earlier but became visible later).
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from sellerbak.backup.exporters.base import Record
from sellerbak.backup.exporters.tiktok.paging import usable_id
from sellerbak.localfiles import private_dirs

CONTACT_FIELDS = ("buyer_email", "buyer_nickname", "cpf", "cpf_name", "recipient_address")


def _order_key(create_time: int, order_id: str) -> tuple[int, int, str]:
    return (create_time, len(order_id), order_id)


def _has(order: Record, name: str) -> bool:
    return order.get(name) not in (None, "", {}, [])


class CustomerBook:
    """One run's view of the order book, plus the contact values of the orders seen."""

    def __init__(self, directory: Path, previous: str | None, full: bool) -> None:
        self.dir = directory
        private_dirs(self.dir)
        self.generation = secrets.token_hex(8)
        self.path = self.dir / f"customers-{self.generation}.sqlite"
        if not full and previous is not None:
            shutil.copyfile(self._file(previous), self.path)
        self.path.touch(mode=0o600)
        self.path.chmod(0o600)
        self.db = sqlite3.connect(self.path)
        self.db.execute("CREATE TABLE IF NOT EXISTS orders (id TEXT PRIMARY KEY, "
                        "user_id TEXT NOT NULL, create_time INTEGER NOT NULL, "
                        "fields INTEGER NOT NULL) WITHOUT ROWID")
        self.db.execute("CREATE INDEX IF NOT EXISTS by_user ON orders (user_id)")
        if full:
            self.db.execute("DELETE FROM orders")
        #: buyers with a new order or a change in which contact fields an order carries
        self.flagged: set[str] = set()
        #: buyer -> ids of their orders seen this run
        self.changed: dict[str, set[str]] = {}
        #: (order id, field) -> value, for the newest seen order per buyer and field
        self.values: dict[tuple[str, str], Any] = {}
        self._best: dict[tuple[str, str], tuple[tuple[int, int, str], str]] = {}
        #: orders fed without a usable buyer id (user_id) or create_time
        self.unusable = 0

    def _file(self, generation: str) -> Path:
        return self.dir / f"customers-{generation}.sqlite"

    @staticmethod
    def exists(directory: Path, generation: Any) -> bool:
        return (isinstance(generation, str) and generation.isalnum()
                and (directory / f"customers-{generation}.sqlite").is_file())

    @staticmethod
    def clean(directory: Path, keep: set[str]) -> None:
        """Remove book generations no snapshot cursor can name any more."""
        for f in directory.glob("customers-*.sqlite"):
            if f.stem.removeprefix("customers-") not in keep:
                with contextlib.suppress(OSError):
                    f.unlink()

    def feed(self, order: Record) -> None:
        uid, oid = order.get("user_id"), order.get("id")
        ct = order.get("create_time")
        if not usable_id(uid) or not isinstance(ct, int) or isinstance(ct, bool):
            self.unusable += 1  # its buyer's record cannot be kept right: counted, reported
            return
        oid = str(oid)
        mask = sum(1 << i for i, f in enumerate(CONTACT_FIELDS) if _has(order, f))
        row = self.db.execute("SELECT fields FROM orders WHERE id = ?", (oid,)).fetchone()
        if row is None or row[0] != mask:
            self.flagged.add(uid)
        self.db.execute("INSERT OR REPLACE INTO orders VALUES (?, ?, ?, ?)", (oid, uid, ct, mask))
        self.changed.setdefault(uid, set()).add(oid)
        key = _order_key(ct, oid)
        for f in CONTACT_FIELDS:
            if not _has(order, f):
                continue
            best = self._best.get((uid, f))
            if best is None or best[0] < key:
                if best is not None:
                    self.values.pop((best[1], f), None)
                self._best[(uid, f)] = (key, oid)
                self.values[(oid, f)] = order[f]

    def records(self, fetch_orders: Callable[[list[str]], Iterator[Record]]
                ) -> Iterator[Record]:
        """The customer records that changed this run, ascending by id; `fetch_orders` reads
        orders by id (at most 50 a call) when a field's source order was not seen."""
        self.db.commit()
        plans: list[tuple[str, list[tuple[str, int, int]], dict[str, str]]] = []
        missing: set[str] = set()
        for uid in sorted(self.changed):
            rows = self.db.execute("SELECT id, create_time, fields FROM orders "
                                   "WHERE user_id = ?", (uid,)).fetchall()
            rows.sort(key=lambda r: _order_key(r[1], r[0]))
            sources: dict[str, str] = {}
            for i, f in enumerate(CONTACT_FIELDS):
                for oid, _ct, mask in reversed(rows):
                    if mask >> i & 1:
                        sources[f] = oid
                        break
            if uid not in self.flagged and not (self.changed[uid] & set(sources.values())):
                continue  # no new order, and no order the record takes a field from changed
            plans.append((uid, rows, sources))
            missing.update(oid for f, oid in sources.items() if (oid, f) not in self.values)
        if missing:
            ids = sorted(missing)
            for i in range(0, len(ids), 50):
                for order in fetch_orders(ids[i:i + 50]):
                    for f in CONTACT_FIELDS:
                        if _has(order, f):
                            self.values[(str(order["id"]), f)] = order[f]
        for uid, rows, sources in plans:
            rec: Record = {"id": uid, "user_id": uid, "order_count": len(rows),
                           "first_order_id": rows[0][0], "first_order_time": rows[0][1],
                           "last_order_id": rows[-1][0], "last_order_time": rows[-1][1]}
            for f, oid in sources.items():
                if (oid, f) in self.values:
                    rec[f] = self.values[(oid, f)]
            yield rec

    def close(self) -> None:
        self.db.commit()
        self.db.close()
