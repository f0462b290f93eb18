"""The demo source: a deterministic synthetic TikTok Shop that advances night by night.

`DemoSource(name, seed=1, orders=2000, night=0)` is a US shop whose records look like the
TikTok Shop Partner API's (v202309+): string ids of 18-19 digits, Unix-second timestamps, money
as decimal strings beside a currency, masked phone numbers and relay buyer e-mails. Every value
is synthetic; names and streets come from small pools of common words.

The model (all of it a pure function of `seed`, `orders` and `night`):

* Night 0 is the moment `T0` (2026-01-01 00:00 UTC). `orders` orders were created in the
  200 days before it. Night k is `T0 + k` days; during the day before night k about 0.5% new
  orders are created (order ids grow with creation time, so id order is time order).
* Each order follows a lifecycle fixed at creation: UNPAID -> AWAITING_SHIPMENT ->
  AWAITING_COLLECTION -> IN_TRANSIT -> DELIVERED -> COMPLETED, or a cancellation (unpaid
  orders are cancelled by the system after a day; ~3.5% are cancelled by the buyer before
  shipping). A snapshot at night n shows every event before `T0 + n` days, so the orders that
  change in a night are the recent ones (about 1.2% of all orders each night, median age
  ~6 days), and an order older than `MAX_LIFE` never changes again. `update_time` is the time
  of the latest event. As in the API, UNPAID orders carry no `recipient_address`.
* A buyer places about three orders (each order is a new buyer with probability 1/3, else a
  uniformly chosen earlier buyer). `customers` has one record per buyer: contact and address
  of their newest order, order count, first and last order.
* The catalogue has `max(20, orders // 40)` products; each night ~2% of them change price and
  inventory (unsellable ones may also change status, e.g. to DELETED; nothing is removed), and
  now and then a product is added.
* Completed orders settle: one `ORDER` transaction per line item, one `SHIPPING_FEE` and
  sometimes an `ADJUSTMENT`, all on the statement of the day the order completed (so about two
  transactions per order). One statement per day, whose amounts are the sums of its
  transactions; it is PROCESSING until paid two nights later.

Incremental exports: the cursor is `{"model", "seed", "orders", "night"}`; with a cursor of
the same seed and orders and an earlier (or equal) night k, each dataset is exported as the
records created or changed after night k. Nothing is ever deleted (products turn DELETED).

Nothing holds a dataset in memory: records are generated one at a time from (seed, order
index, night). The source keeps an int32 per order (its buyer), two more per order once
`customers` is exported, and a few compact columns per product (about 200 bytes each).
Records share no mutable objects with each other or with the source.
"""

from __future__ import annotations

import bisect
import hashlib
import random
from array import array
from collections.abc import Iterator
from typing import Any

from .base import DatasetExport, Record

__all__ = ["DemoSource", "demo_stats", "DATASETS"]

DAY = 86_400
#: the moment of night 0 (2026-01-01T00:00:00Z)
T0 = 1_767_225_600
#: the orders of night 0 were created during this many days before T0
HISTORY_DAYS = 200
#: no order changes more than this long after its creation
MAX_LIFE = 25 * DAY
NEW_ORDER_RATE = 0.005
PRODUCT_CHURN = 0.02
NEW_PRODUCT_CHANCE = 0.3
NEW_BUYER_CHANCE = 1 / 3
CURRENCY = "USD"

DATASETS = ("products", "orders", "customers", "finance/statements", "finance/transactions")

_ID_EPOCH = 1_600_000_000
_ORDER_ID_BASE = 1 << 59  # 576460752303423488: TikTok order ids look like 5764...
_PRODUCT_ID_BASE = 1_729_000_000_000_000_000
_USER_ID_BASE = 7_000_000_000_000_000_000
_STATEMENT_ID_BASE = 7_238_000_000_000_000_000
_PAYMENT_ID_BASE = 3_459_000_000_000_000_000
_TRANSACTION_ID_BASE = 7_301_000_000_000_000_000
_WAREHOUSE_ID = "7068517275539719942"
_MAX_WINDOW = 1 << 24  # orders per creation window (ids keep 24 bits for the rank in it)
_LINE_ID_OFFSET = 1 << 58
_POPULAR_SLOTS = 16384
#: the first statement day (day d covers [T0 + (d - 1) days, T0 + d days))
_FIRST_DAY = 1 - HISTORY_DAYS
#: bumped when the model changes, so that old cursors give full exports
_MODEL = 1
# transactions before statements: a complete transactions stream leaves the statements' totals
_EXPORT_ORDER = ("products", "orders", "customers", "finance/transactions", "finance/statements")
_POW3 = (1, 3, 9, 27, 81, 243)

# order states
UNPAID, AWAITING_SHIPMENT, AWAITING_COLLECTION, IN_TRANSIT, DELIVERED, COMPLETED, CANCELLED = (
    range(7)
)
_STATUS = (
    "UNPAID",
    "AWAITING_SHIPMENT",
    "AWAITING_COLLECTION",
    "IN_TRANSIT",
    "DELIVERED",
    "COMPLETED",
    "CANCELLED",
)
# lifecycle kinds
_NORMAL, _UNPAID_CANCEL, _BUYER_CANCEL = range(3)

# ---------------------------------------------------------------------------------------------
# pools of synthetic words


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


_FIRST_NAMES = _words(
    "James Mary Robert Patricia John Jennifer Michael Linda David Elizabeth William Barbara "
    "Richard Susan Joseph Jessica Thomas Sarah Charles Karen Christopher Lisa Daniel Nancy "
    "Matthew Betty Anthony Sandra Mark Ashley Donald Kimberly Steven Emily Andrew Donna Paul "
    "Michelle Joshua Carol Kenneth Amanda Kevin Melissa Brian Deborah George Stephanie Timothy "
    "Rebecca Ronald Laura Jason Sharon Edward Cynthia Jeffrey Kathleen Ryan Amy Jacob Angela "
    "Gary Shirley Nicholas Brenda Eric Emma Jonathan Anna Stephen Pamela Larry Nicole Justin "
    "Samantha Scott Katherine Brandon Christine Benjamin Debra Samuel Rachel Gregory Carolyn "
    "Alexander Janet Patrick Maria Frank Olivia Raymond Heather Jack Helen Dennis Catherine "
    "Jerry Diane Tyler Julie Aaron Victoria Jose Joyce Adam Lauren Nathan Kelly Henry Christina "
    "Zachary Ruth Douglas Joan Peter Virginia Kyle Judith Noah Evelyn Ethan Hannah Jeremy "
    "Andrea Walter Megan Christian Cheryl Keith Jacqueline Roger Madison Terry Teresa Austin "
    "Abigail Sean Sophia Gerald Martha Carl Sara Harold Gloria Dylan Janice Arthur Kathryn "
    "Lawrence Ann Jordan Isabella Jesse Judy Bryan Charlotte Billy Julia Bruce Grace Gabriel "
    "Amber Joe Alice Logan Jean Alan Denise Juan Frances Albert Danielle Willie Marilyn Elijah "
    "Natalie Wayne Beverly Randy Diana Vincent Brittany Mason Theresa Roy Kayla Ralph Alexis "
    "Bobby Doris Russell Lori Bradley Tiffany Philip Kathy Eugene Marie Louis Ava Luis Mia"
)
_LAST_NAMES = _words(
    "Smith Johnson Williams Brown Jones Garcia Miller Davis Rodriguez Martinez Hernandez Lopez "
    "Gonzalez Wilson Anderson Thomas Taylor Moore Jackson Martin Lee Perez Thompson White "
    "Harris Sanchez Clark Ramirez Lewis Robinson Walker Young Allen King Wright Scott Torres "
    "Nguyen Hill Flores Green Adams Nelson Baker Hall Rivera Campbell Mitchell Carter Roberts "
    "Gomez Phillips Evans Turner Diaz Parker Cruz Edwards Collins Reyes Stewart Morris Morales "
    "Murphy Cook Rogers Gutierrez Ortiz Morgan Cooper Peterson Bailey Reed Kelly Howard Ramos "
    "Kim Cox Ward Richardson Watson Brooks Chavez Wood James Bennett Gray Mendoza Ruiz Hughes "
    "Price Alvarez Castillo Sanders Patel Myers Long Ross Foster Jimenez Powell Jenkins Perry "
    "Russell Sullivan Bell Coleman Butler Henderson Barnes Gonzales Fisher Vasquez Simmons "
    "Romero Jordan Patterson Alexander Hamilton Graham Reynolds Griffin Wallace Moreno West "
    "Cole Hayes Bryant Herrera Gibson Ellis Tran Medina Aguilar Stevens Murray Ford Castro "
    "Marshall Owens Harrison Fernandez Mcdonald Woods Washington Kennedy Wells Vargas Henry "
    "Chen Freeman Webb Tucker Guzman Burns Crawford Olson Simpson Porter Hunter Gordon Mendez"
)
_STREETS = _words(
    "Main Oak Pine Maple Cedar Elm Washington Lake Hill Park Walnut Sunset Lincoln Jackson "
    "Highland Church Willow Meadow River Spring Forest Madison Franklin Jefferson Adams Ridge "
    "Chestnut Lakeview Cherry Valley Mill Center North South Coleman Bristol Broadway Harbor "
    "Orchard Prospect Summit Union Vine Birch Aspen Magnolia Sycamore Dogwood Poplar Laurel"
)
_STREET_SUFFIXES = ("St", "Ave", "Rd", "Blvd", "Ln", "Dr", "Ct", "Way", "Pl", "Pkwy", "Cir", "Ter")
_UNITS = ("Apt", "Unit", "Suite", "#")
# city, county, state name, state code, zip prefix, phone area code, sales tax (basis points),
# retail delivery fee (cents)
_CITIES = (
    ("New York", "New York County", "New York", "NY", "100", "212", 888, 0),
    ("Brooklyn", "Kings County", "New York", "NY", "112", "718", 888, 0),
    ("Los Angeles", "Los Angeles County", "California", "CA", "900", "213", 950, 0),
    ("San Jose", "Santa Clara County", "California", "CA", "951", "408", 938, 0),
    ("San Diego", "San Diego County", "California", "CA", "921", "619", 775, 0),
    ("Sacramento", "Sacramento County", "California", "CA", "958", "916", 875, 0),
    ("Chicago", "Cook County", "Illinois", "IL", "606", "312", 1025, 0),
    ("Houston", "Harris County", "Texas", "TX", "770", "713", 825, 0),
    ("Dallas", "Dallas County", "Texas", "TX", "752", "214", 825, 0),
    ("Austin", "Travis County", "Texas", "TX", "787", "512", 825, 0),
    ("San Antonio", "Bexar County", "Texas", "TX", "782", "210", 825, 0),
    ("Phoenix", "Maricopa County", "Arizona", "AZ", "850", "602", 870, 0),
    ("Philadelphia", "Philadelphia County", "Pennsylvania", "PA", "191", "215", 800, 0),
    ("Pittsburgh", "Allegheny County", "Pennsylvania", "PA", "152", "412", 700, 0),
    ("Jacksonville", "Duval County", "Florida", "FL", "322", "904", 750, 0),
    ("Miami", "Miami-Dade County", "Florida", "FL", "331", "305", 700, 0),
    ("Orlando", "Orange County", "Florida", "FL", "328", "407", 650, 0),
    ("Tampa", "Hillsborough County", "Florida", "FL", "336", "813", 750, 0),
    ("Columbus", "Franklin County", "Ohio", "OH", "432", "614", 750, 0),
    ("Cleveland", "Cuyahoga County", "Ohio", "OH", "441", "216", 800, 0),
    ("Charlotte", "Mecklenburg County", "North Carolina", "NC", "282", "704", 725, 0),
    ("Raleigh", "Wake County", "North Carolina", "NC", "276", "919", 725, 0),
    ("Indianapolis", "Marion County", "Indiana", "IN", "462", "317", 700, 0),
    ("Seattle", "King County", "Washington", "WA", "981", "206", 1035, 0),
    ("Spokane", "Spokane County", "Washington", "WA", "992", "509", 910, 0),
    ("Denver", "Denver County", "Colorado", "CO", "802", "303", 881, 28),
    ("Colorado Springs", "El Paso County", "Colorado", "CO", "809", "719", 825, 28),
    ("Boston", "Suffolk County", "Massachusetts", "MA", "021", "617", 625, 0),
    ("Nashville", "Davidson County", "Tennessee", "TN", "372", "615", 925, 0),
    ("Memphis", "Shelby County", "Tennessee", "TN", "381", "901", 975, 0),
    ("Detroit", "Wayne County", "Michigan", "MI", "482", "313", 600, 0),
    ("Grand Rapids", "Kent County", "Michigan", "MI", "495", "616", 600, 0),
    ("Portland", "Multnomah County", "Oregon", "OR", "972", "503", 0, 0),
    ("Las Vegas", "Clark County", "Nevada", "NV", "891", "702", 838, 0),
    ("Baltimore", "Baltimore City", "Maryland", "MD", "212", "410", 600, 0),
    ("Milwaukee", "Milwaukee County", "Wisconsin", "WI", "532", "414", 790, 0),
    ("Albuquerque", "Bernalillo County", "New Mexico", "NM", "871", "505", 763, 0),
    ("Atlanta", "Fulton County", "Georgia", "GA", "303", "404", 890, 0),
    ("Minneapolis", "Hennepin County", "Minnesota", "MN", "554", "612", 903, 50),
    ("Saint Paul", "Ramsey County", "Minnesota", "MN", "551", "651", 888, 50),
    ("Kansas City", "Jackson County", "Missouri", "MO", "641", "816", 886, 0),
    ("Omaha", "Douglas County", "Nebraska", "NE", "681", "402", 700, 0),
    ("Louisville", "Jefferson County", "Kentucky", "KY", "402", "502", 600, 0),
    ("Newark", "Essex County", "New Jersey", "NJ", "071", "973", 663, 0),
    ("Salt Lake City", "Salt Lake County", "Utah", "UT", "841", "801", 775, 0),
    ("Oklahoma City", "Oklahoma County", "Oklahoma", "OK", "731", "405", 863, 0),
    ("Richmond", "Richmond City", "Virginia", "VA", "232", "804", 600, 0),
    ("Boise", "Ada County", "Idaho", "ID", "837", "208", 600, 0),
)
# category chain (names), nouns, variant kind, price range in cents
_CATEGORIES = (
    (
        ("Womenswear & Underwear", "Women's Tops", "T-shirts"),
        ("Oversized Tee", "Crop Top", "Ribbed Tank Top", "Graphic T-Shirt", "Long Sleeve Top"),
        "apparel",
        (899, 2999),
    ),
    (
        ("Sports & Outdoor", "Sports & Outdoor Clothing", "Leggings"),
        ("Yoga Leggings", "Biker Shorts", "Flare Leggings", "Running Tights", "Sports Bra"),
        "apparel",
        (1299, 3999),
    ),
    (
        ("Womenswear & Underwear", "Socks & Hosiery", "Socks"),
        ("Short Boat Invisible Socks", "Crew Socks 6-Pack", "Compression Socks", "Ankle Socks"),
        "pack",
        (599, 1999),
    ),
    (
        ("Beauty & Personal Care", "Skincare", "Serums & Essences"),
        ("Hydrating Serum", "Vitamin C Serum", "Night Repair Cream", "Clay Face Mask"),
        "volume",
        (999, 4599),
    ),
    (
        ("Beauty & Personal Care", "Makeup", "Lips"),
        ("Lip Oil", "Matte Liquid Lipstick", "Tinted Lip Balm Set", "Lip Liner Duo"),
        "shade",
        (699, 2499),
    ),
    (
        ("Home Supplies", "Kitchenware", "Kitchen Utensils & Gadgets"),
        ("Silicone Spatula Set", "Electric Milk Frother", "Glass Meal Prep Containers"),
        "color",
        (999, 3999),
    ),
    (
        ("Home Supplies", "Home Decor", "Lighting"),
        ("LED Strip Lights", "Sunset Projection Lamp", "Motion Sensor Night Light"),
        "color",
        (1199, 4999),
    ),
    (
        ("Phones & Electronics", "Phone Accessories", "Phone Cases"),
        ("Magnetic Phone Case", "Clear Shockproof Case", "Card Holder Phone Case"),
        "model",
        (799, 2999),
    ),
    (
        ("Phones & Electronics", "Audio & Video", "Earphones"),
        ("Wireless Earbuds", "Open-Ear Headphones", "Bluetooth Sleep Headband"),
        "color",
        (1999, 8999),
    ),
    (
        ("Pet Supplies", "Dog & Cat Toys", "Chew Toys"),
        ("Dog Chew Toy", "Interactive Cat Toy", "Snuffle Mat", "Pet Grooming Glove"),
        "size",
        (599, 2999),
    ),
    (
        ("Health", "Nutrition", "Supplements"),
        ("Gummy Multivitamins", "Collagen Powder", "Magnesium Glycinate Capsules"),
        "count",
        (1499, 4999),
    ),
    (
        ("Fashion Accessories", "Jewelry", "Necklaces"),
        ("Layered Gold Necklace", "Pearl Pendant Necklace", "Initial Charm Necklace"),
        "metal",
        (899, 3499),
    ),
)
_ADJECTIVES = _words(
    "Seamless Soft Premium Lightweight Portable Eco-Friendly Ultra-Thin Heavy-Duty Vintage "
    "Minimalist Breathable Waterproof Adjustable Cozy Classic Luxury Everyday Quick-Dry "
    "Stretchy Compact Rechargeable Non-Slip Reusable Handmade Organic Travel Deluxe"
)
_VARIANTS = {
    "apparel": (("Color", ("Black", "White", "Navy", "Beige", "Sage Green", "Pink")),
                ("Size", ("S", "M", "L", "XL"))),
    "pack": (("Color", ("Black", "White", "Mixed", "Grey")), ("Size", ("S/M", "L/XL"))),
    "volume": (("Size", ("30ml", "50ml", "100ml")),),
    "shade": (("Shade", ("Rose", "Nude", "Berry", "Coral", "Cherry", "Mauve")),),
    "color": (("Color", ("Black", "White", "Pink", "Grey", "Blue", "Green")),),
    "model": (("Model", ("iPhone 15", "iPhone 15 Pro", "iPhone 16", "iPhone 16 Pro Max",
                         "Galaxy S24", "Pixel 9")),),
    "size": (("Size", ("Small", "Medium", "Large")),),
    "count": (("Count", ("60 Count", "90 Count", "120 Count")),),
    "metal": (("Metal", ("Gold", "Silver", "Rose Gold")),),
}
_PRODUCT_STATUSES = (
    "ACTIVATE",
    "DELETED",
    "SELLER_DEACTIVATED",
    "PLATFORM_DEACTIVATED",
    "FREEZE",
    "DRAFT",
)
# weights of the statuses of unsellable products
_TAIL_STATUS_TABLE = (0,) * 15 + (1,) * 30 + (2,) * 25 + (3,) * 5 + (4,) * 10 + (5,) * 15
_DELETED = 1
_CARRIERS = (
    # name, tracking prefix, tracking digits
    ("USPS", "9400", 18),
    ("USPS", "9205", 18),
    ("UPS", "1Z", 16),
    ("FedEx", "", 12),
)
_CARRIER_TABLE = (0,) * 8 + (1,) * 4 + (2,) * 5 + (3,) * 3
_PAYMENT_METHODS = (
    ("Credit card",) * 9 + ("PayPal",) * 3 + ("Apple Pay",) * 4 + ("Google Pay",) * 2
    + ("Afterpay", "Debit card")
)
_BUYER_CANCEL_REASONS = (
    "No longer needed",
    "Need to change shipping address",
    "Found a better price",
    "Ordered by mistake",
    "Delivery takes too long",
)
_ADJUSTMENT_TYPES = (
    ("LOGISTICS_REIMBURSEMENT", 1),
    ("PLATFORM_REIMBURSEMENT", 1),
    ("SHIPPING_FEE_ADJUSTMENT", -1),
    ("CHARGE_BACK", -1),
)
_B32 = "abcdefghijklmnopqrstuvwxyz234567"
_B32_PAIRS = tuple(a + b for b in _B32 for a in _B32)  # index: 10 bits
_PRICE_FACTORS = (100, 100, 95, 90, 85, 80, 105, 110)
_VARIANT_KIND_ID = {kind: n for n, kind in enumerate(sorted(_VARIANTS))}


_MONEY_CACHE: dict[int, str] = {}


def _money(cents: int) -> str:
    """Cents as a decimal string: 1299 -> "12.99", -30 -> "-0.30"."""
    text = _MONEY_CACHE.get(cents)
    if text is None:
        units, rest = divmod(abs(cents), 100)
        text = f"-{units}.{rest:02d}" if cents < 0 else f"{units}.{rest:02d}"
        if -100_000 < cents < 100_000:  # the common amounts; at most 200k strings
            _MONEY_CACHE[cents] = text
    return text


def _seed_int(*parts: Any) -> int:
    """A 64-bit integer from the parts' text (stable across processes, unlike hash())."""
    text = "\x1f".join(str(p) for p in parts).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little")


class _Hasher:
    """512 pseudo-random bits per (domain, integer), keyed by the seed."""

    def __init__(self, seed: int, domain: str):
        key = hashlib.blake2b(f"sellerbak-demo:{seed}:{domain}".encode(), digest_size=32).digest()
        self._base = hashlib.blake2b(key=key, digest_size=64)

    def __call__(self, n: int) -> int:
        h = self._base.copy()
        h.update(n.to_bytes(8, "little", signed=True))
        return int.from_bytes(h.digest(), "little")


def _permute(n: int, salt: int) -> int:
    """A bijection of [0, 2**32) that looks random (for the low bits of ids)."""
    n = (n ^ salt) & 0xFFFFFFFF
    n = (n * 0x9E3779B1) & 0xFFFFFFFF
    n ^= n >> 15
    n = (n * 0x85EBCA77) & 0xFFFFFFFF
    n ^= n >> 13
    return n


# ---------------------------------------------------------------------------------------------


class DemoSource:
    """A synthetic shop; see the module docstring for the model.

    `orders` is the number of orders at night 0; `night` how many nights the shop has advanced.
    """

    type = "demo"

    def __init__(self, name: str, seed: int = 1, orders: int = 2000, night: int = 0):
        if int(orders) < 1 or int(orders) >= _MAX_WINDOW:
            raise ValueError(f"demo source {name!r}: orders must be in 1..{_MAX_WINDOW - 1}")
        if int(night) < 0:
            raise ValueError(f"demo source {name!r}: night must be >= 0")
        self.name = name
        self.seed = int(seed)
        self.orders = int(orders)
        self.night = int(night)
        self.now = T0 + self.night * DAY
        self._ohash = _Hasher(self.seed, "order")
        self._bhash = _Hasher(self.seed, "buyer")
        self._phash = _Hasher(self.seed, "product")
        self._vhash = _Hasher(self.seed, "product-version")
        self._shash = _Hasher(self.seed, "statement")
        self._build_windows()
        self._build_catalogue()
        self._buyer_of: array | None = None
        self._cust: tuple[array, array] | None = None
        self._totals: list[list[int]] | None = None

    def __repr__(self) -> str:
        return (f"DemoSource({self.name!r}, seed={self.seed}, orders={self.orders}, "
                f"night={self.night})")

    # ============================================================================ the exporter
    def export(self, cursors: dict[str, Any], full: bool) -> Iterator[DatasetExport]:
        """Yield products, orders, customers, finance/transactions, finance/statements.

        A cursor is `{"model": 1, "seed": s, "orders": n, "night": k}`; it gives a change set
        (records created or changed after night k) only when seed and orders match this source
        and k <= night, else the dataset is exported in full.
        """
        for ds in _EXPORT_ORDER:
            since = None if full else self._since((cursors or {}).get(ds))
            meta = {"seed": self.seed, "orders": self.orders, "night": self.night}
            if since is None:
                yield DatasetExport(name=ds, records=self._full(ds), mode="full",
                                    cursor=self._cursor(), meta=meta)
            else:
                meta["since_night"] = since
                yield DatasetExport(name=ds, records=self._changes(ds, since), mode="changes",
                                    cursor=self._cursor(), meta=meta)

    def _cursor(self) -> dict[str, int]:
        return {"model": _MODEL, "seed": self.seed, "orders": self.orders, "night": self.night}

    def _since(self, cursor: Any) -> int | None:
        if not isinstance(cursor, dict):
            return None
        k = cursor.get("night")
        if (
            cursor.get("model") != _MODEL
            or cursor.get("seed") != self.seed
            or cursor.get("orders") != self.orders
            or not isinstance(k, int)
            or isinstance(k, bool)
            or not 0 <= k <= self.night
        ):
            return None
        return k

    def _full(self, ds: str) -> Iterator[Record]:
        if ds == "products":
            return (self._product_record(p) for p in range(len(self._p_id)))
        if ds == "orders":
            return self._orders_since(0, None)
        if ds == "customers":
            return self._customers(None)
        if ds == "finance/statements":
            return self._statements(None)
        if ds == "finance/transactions":
            return self._transactions_since(0, None)
        raise KeyError(ds)

    def _changes(self, ds: str, k: int) -> Iterator[Record]:
        if ds == "products":
            return (self._product_record(p) for p in range(len(self._p_id))
                    if self._p_last[p] > k)
        t = T0 + k * DAY
        lo = self._first_index_at(t - MAX_LIFE)
        if ds == "orders":
            return self._orders_since(lo, t)
        if ds == "customers":
            return self._customers(k)
        if ds == "finance/statements":
            return self._statements(k)
        if ds == "finance/transactions":
            return self._transactions_since(lo, t)
        raise KeyError(ds)

    # ============================================================================ time windows
    def _build_windows(self) -> None:
        """Creation windows: first order index, count, start time, width (seconds)."""
        first, count = [0], [self.orders]
        start, width = [T0 - HISTORY_DAYS * DAY], [HISTORY_DAYS * DAY]
        total = self.orders
        for k in range(1, self.night + 1):
            u = _seed_int(self.seed, "new-orders", k) / 2**64
            new = max(1, round(total * NEW_ORDER_RATE * (0.7 + 0.6 * u)))
            if new >= _MAX_WINDOW:
                raise ValueError(f"demo source {self.name!r}: too many orders per night")
            first.append(total)
            count.append(new)
            start.append(T0 + (k - 1) * DAY)
            width.append(DAY)
            total += new
        self._w_first, self._w_count, self._w_start, self._w_width = first, count, start, width
        self._total = total

    def order_count(self, night: int | None = None) -> int:
        """How many orders exist at `night` (default: this source's night)."""
        n = self.night if night is None else night
        return self._w_first[n] + self._w_count[n]

    def _first_index_at(self, t: int) -> int:
        """An order index such that every order before it was created before t."""
        w = bisect.bisect_right(self._w_start, t) - 1
        if w < 0:
            return 0
        start, width, count = self._w_start[w], self._w_width[w], self._w_count[w]
        j = (t - start) * count // width - 2
        return self._w_first[w] + min(max(j, 0), count)

    def _iter_cores(self, lo: int, hi: int) -> Iterator[tuple]:
        """The cores of orders lo..hi-1, in index (= id = creation) order."""
        core = self._core
        w = max(bisect.bisect_right(self._w_first, lo) - 1, 0)
        i = lo
        while i < hi and w < len(self._w_first):
            first, count = self._w_first[w], self._w_count[w]
            end = min(first + count, hi)
            for x in range(i, end):
                yield core(x, w, x - first)
            i = end
            w += 1

    # ============================================================================ buyers
    def _buyers(self) -> array:
        """buyer_of[i]: the buyer of order i, named by the index of the buyer's first order."""
        if self._buyer_of is None:
            rnd = random.Random(_seed_int(self.seed, "buyers"))
            rand, below = rnd.random, rnd.randrange
            out = array("i", bytes(4 * self._total))
            known = array("i", [0])  # the buyers so far
            p = NEW_BUYER_CHANCE
            for i in range(1, self._total):
                if rand() < p:
                    out[i] = i
                    known.append(i)
                else:
                    out[i] = known[below(len(known))]
            self._buyer_of = out
        return self._buyer_of

    def _customer_aggregates(self) -> tuple[array, array]:
        """Per buyer (indexed by the first order): number of orders and the newest order."""
        if self._cust is None:
            buyer_of = self._buyers()
            count = array("i", bytes(4 * self._total))
            last = array("i", bytes(4 * self._total))
            for i, b in enumerate(buyer_of):
                count[b] += 1
                last[b] = i
            self._cust = (count, last)
        return self._cust

    @staticmethod
    def _user_id(b: int) -> str:
        return str(_USER_ID_BASE + (b << 36) + _permute(b, 0x5BD1E995) * 11)

    @staticmethod
    def _email(b: int) -> str:
        """A relay address like TikTok's (12 base-32 characters, unique per buyer)."""
        x = _permute(b, 0x1B873593) << 28 | _permute(b, 0x27D4EB2F) >> 4
        t = _B32_PAIRS
        return (f"{t[x & 1023]}{t[x >> 10 & 1023]}{t[x >> 20 & 1023]}{t[x >> 30 & 1023]}"
                f"{t[x >> 40 & 1023]}{t[x >> 50 & 1023]}@scs.tiktokw.us")

    def _address(self, b: int, variant: int) -> tuple:
        """(name, masked phone, street line, unit line, zip suffix, city) of a buyer's
        address: variant 0 is home, 1 another address, 2 a gift to someone else."""
        h = self._bhash(b)
        h, f = divmod(h, len(_FIRST_NAMES))
        h, last = divmod(h, len(_LAST_NAMES))
        h, tel = divmod(h, 10000)
        if variant == 2:
            h, f = divmod(h, len(_FIRST_NAMES))
            h, last = divmod(h, len(_LAST_NAMES))
            h, tel = divmod(h, 10000)
        for _ in range(variant + 1):
            h, num = divmod(h, 9800)
            h, street = divmod(h, len(_STREETS))
            h, suf = divmod(h, len(_STREET_SUFFIXES))
            h, unit = divmod(h, 100)
            h, city = divmod(h, len(_CITIES))
            h, zip2 = divmod(h, 100)
        line1 = f"{num + 100} {_STREETS[street]} {_STREET_SUFFIXES[suf]}"
        line2 = f"{_UNITS[unit % 4]} {unit % 40 + 1}{'ABCD'[unit % 4]}" if unit < 30 else ""
        c = _CITIES[city]
        return (f"{_FIRST_NAMES[f]} {_LAST_NAMES[last]}", f"(+1){c[5]}-***-{tel:04d}",
                line1, line2, f"{c[4]}{zip2:02d}", city)

    @staticmethod
    def _address_record(addr: tuple) -> Record:
        name, phone, line1, line2, postal, ci = addr
        city, _county, state, st, _zip3, _area, _tax, _rdf = _CITIES[ci]
        return {
            "name": name,
            "phone_number": phone,
            "full_address": f"{line1} {line2} {city}, {st} {postal}" if line2
            else f"{line1} {city}, {st} {postal}",
            "postal_code": postal,
            "region_code": "US",
            "district_info": [
                {"address_level": "L1", "address_level_name": "State", "address_name": state},
                {"address_level": "L3", "address_level_name": "City", "address_name": city},
            ],
        }

    def _customers(self, since: int | None) -> Iterator[Record]:
        buyer_of = self._buyers()
        count, last = self._customer_aggregates()
        total = self._total
        if since is None:
            buyers: Any = (b for b in range(total) if buyer_of[b] == b)
        else:
            buyers = sorted({buyer_of[i] for i in range(self.order_count(since), total)})
        for b in buyers:
            first_tc, first_oid, _v, _h = self._head_of(b)
            last_tc, last_oid, variant, _h = self._head_of(last[b])
            uid = self._user_id(b)
            addr = self._address(b, variant)
            yield {
                "id": uid,
                "user_id": uid,
                "buyer_email": self._email(b),
                "name": addr[0],
                "phone_number": addr[1],
                "recipient_address": self._address_record(addr),
                "region_code": "US",
                "order_count": count[b],
                "first_order_id": str(first_oid),
                "first_order_time": first_tc,
                "last_order_id": str(last_oid),
                "last_order_time": last_tc,
            }

    # ============================================================================ catalogue
    def _build_catalogue(self) -> None:
        """The catalogue as compact columns; full product facts are rebuilt on demand."""
        p0 = max(20, self.orders // 40)
        self._p0 = p0
        self._p_id = array("q")
        self._p_ct = array("q")
        self._p_price = array("i")  # base price (cents) of the first sku
        self._p_bumps = array("H")  # base-3 digits: sku s costs price + 100 * digit s
        self._p_nsku = bytearray()
        self._p_sellable = bytearray()
        self._p_title: list[str] = []
        self._p_names: list[str] = []  # seller sku code, then sku names; \x1f-separated
        status = bytearray()
        start, width = T0 - 2 * HISTORY_DAYS * DAY, HISTORY_DAYS * DAY
        for p in range(p0):
            lo = start + p * width // p0
            span = max(1, start + (p + 1) * width // p0 - lo)
            status.append(self._add_product(p, lo + self._phash(p) % span))
        # sellable products by popularity (Zipf-like), as a lookup table of 16384 slots
        sellable = [p for p in range(p0) if self._p_sellable[p]]
        random.Random(_seed_int(self.seed, "popularity")).shuffle(sellable)
        weights = [1.0 / (r + 3) ** 0.9 for r in range(len(sellable))]
        scale = _POPULAR_SLOTS / sum(weights)
        table = array("i")
        acc = 0.0
        for rank, p in enumerate(sellable):
            acc += weights[rank] * scale
            table.extend([p] * (round(acc) - len(table)))
        table.extend([sellable[0]] * (_POPULAR_SLOTS - len(table)))
        self._popular = table
        # churn: the last night each product changed (or was created), and its status
        last = array("i", bytes(4 * p0))
        for k in range(1, self.night + 1):
            rnd = random.Random(_seed_int(self.seed, "product-churn", k))
            n_prev = len(self._p_id)
            for p in rnd.sample(range(n_prev), max(1, round(PRODUCT_CHURN * n_prev))):
                last[p] = k
                if not self._p_sellable[p] and status[p] != _DELETED and rnd.random() < 0.5:
                    status[p] = _TAIL_STATUS_TABLE[rnd.randrange(len(_TAIL_STATUS_TABLE))]
            if rnd.random() < NEW_PRODUCT_CHANCE:
                status.append(self._add_product(n_prev, T0 + (k - 1) * DAY + rnd.randrange(DAY)))
                last.append(k)
        self._p_last = last
        self._p_status = status

    def _add_product(self, p: int, ct: int) -> int:
        """Append product p's columns; returns its initial status."""
        pid, title, _cat, skus, _image, sellable, status, code = self._product_facts(p, ct)
        self._p_id.append(int(pid))
        self._p_ct.append(ct)
        self._p_price.append(skus[0][3] - 100 * skus[0][5])
        self._p_bumps.append(sum(sku[5] * 3**s for s, sku in enumerate(skus)))
        self._p_nsku.append(len(skus))
        self._p_sellable.append(sellable)
        self._p_title.append(title)
        self._p_names.append("\x1f".join([code] + [sku[2] for sku in skus]))
        return status

    def _product_facts(self, p: int, ct: int) -> tuple:
        """(id, title, category, skus, image, sellable, initial status, sku code) of product p
        created at ct; a sku is (id, seller sku, name, base price, attributes, price digit)."""
        h = self._phash(p) >> 64
        h, cat = divmod(h, len(_CATEGORIES))
        _chain, nouns, vkind, (lo, hi) = _CATEGORIES[cat]
        h, a1 = divmod(h, len(_ADJECTIVES))
        h, a2 = divmod(h, len(_ADJECTIVES))
        h, noun = divmod(h, len(nouns))
        words = [_ADJECTIVES[a1]] + ([_ADJECTIVES[a2]] if a2 != a1 else []) + [nouns[noun]]
        title = " ".join(words)
        h, low = divmod(h, (1 << 24) - 64)
        pid = _PRODUCT_ID_BASE + ((ct - _ID_EPOCH) << 24) + low
        h, price = divmod(h, (hi - lo) // 100 + 1)
        price = lo + price * 100
        # variants: one or two attributes, 1-6 skus
        combos: list[tuple[tuple[int, str, int, str], ...]] = [()]
        kid = _VARIANT_KIND_ID[vkind]
        for a, (aname, values) in enumerate(_VARIANTS[vkind]):
            h, nvals = divmod(h, min(3, len(values)))
            h, first = divmod(h, len(values))
            picked = [(first + x) % len(values) for x in range(nvals + 1)]
            combos = [c + ((100000 + 7 * a + kid, aname, 7_000_000 + 100 * kid + 10 * a + v,
                            values[v]),)
                      for c in combos for v in picked]
        code = "".join(w[0] for w in words).upper()
        skus = []
        for s, combo in enumerate(combos[:6]):
            h, bump = divmod(h, 3)
            sku_name = ", ".join(c[3] for c in combo) or "Default"
            skus.append((str(pid + 1 + s), f"{code}-{p:05d}-{s + 1:02d}", sku_name,
                         price + bump * 100, combo, bump))
        h, img = divmod(h, 1 << 128)
        h, sell = divmod(h, 100)
        sellable = sell < 88 or p < 5 or ct >= T0  # products added after night 0 sell
        h, st = divmod(h, len(_TAIL_STATUS_TABLE))
        return (str(pid), title, cat, skus, f"tos-maliva-i-o3syd03w52-us/{img:032x}",
                sellable, 0 if sellable else _TAIL_STATUS_TABLE[st], code)

    def _product_record(self, p: int) -> Record:
        ct = self._p_ct[p]
        pid, title, cat, skus, image, _sellable, _st0, _code = self._product_facts(p, ct)
        created = 0 if ct < T0 else (ct - T0) // DAY + 1
        v = self._p_last[p]
        status = _PRODUCT_STATUSES[self._p_status[p]]
        h = self._vhash((p << 20) | v)
        h, d = divmod(h, DAY)
        ut = ct if v == created else max(ct, T0 + (v - 1) * DAY + d)
        h, f = divmod(h, len(_PRICE_FACTORS))
        factor = _PRICE_FACTORS[f] if v != created else 100
        chain = _CATEGORIES[cat][0]
        cat_base = 600000 + cat * 1000
        out_skus = []
        for sku_id, seller_sku, _name, base, combo, _digit in skus:
            sale = base if factor == 100 else base * factor // 100 // 100 * 100 + 99
            h, qty = divmod(h, 400)
            out_skus.append({
                "id": sku_id,
                "seller_sku": seller_sku,
                "price": {"currency": CURRENCY, "sale_price": _money(sale),
                          "tax_exclusive_price": _money(sale)},
                "list_price": {"amount": _money(base), "currency": CURRENCY},
                "inventory": [{"warehouse_id": _WAREHOUSE_ID,
                               "quantity": 0 if status == "DELETED" else qty}],
                "sales_attributes": [
                    {"id": str(aid), "name": an, "value_id": str(vid), "value_name": vn}
                    for aid, an, vid, vn in combo
                ],
            })
        return {
            "id": pid,
            "title": title,
            "status": status,
            "create_time": ct,
            "update_time": ut,
            "description": f"<p>{title}.</p><ul><li>{chain[-1]}</li><li>Ships from the US in "
                           f"1-3 business days</li><li>30-day returns</li></ul>",
            "category_chains": [
                {"id": str(cat_base + lvl), "is_leaf": lvl == len(chain) - 1,
                 "local_name": name, "parent_id": str(cat_base + lvl - 1) if lvl else "0"}
                for lvl, name in enumerate(chain)
            ],
            "main_images": [{
                "uri": image, "width": 800, "height": 800,
                "urls": [f"https://p16-oec-va.ibyteimg.com/{image}~tplv-o3syd03w52-origin"
                         f"-jpeg.jpeg"],
            }],
            "skus": out_skus,
            "sales_regions": ["US"],
            "is_not_for_sale": False,
            "is_cod_allowed": False,
            "audit": {"status": "APPROVED" if status != "DRAFT" else "NONE"},
            "package_weight": {"unit": "POUND", "value": f"{0.2 + (cat % 5) * 0.3:.1f}"},
        }

    # ============================================================================ orders
    def _core_of(self, i: int) -> tuple:
        w = bisect.bisect_right(self._w_first, i) - 1
        return self._core(i, w, i - self._w_first[w])

    def _head_of(self, i: int) -> tuple[int, int, int, int]:
        w = bisect.bisect_right(self._w_first, i) - 1
        return self._head(i, w, i - self._w_first[w])

    def _head(self, i: int, w: int, j: int) -> tuple[int, int, int, int]:
        """(create time, order id, address variant, unused hash bits) of order i, rank j in
        creation window w."""
        h = self._ohash(i)
        start, width, count = self._w_start[w], self._w_width[w], self._w_count[w]
        lo = start + j * width // count
        span = start + (j + 1) * width // count - lo
        if span > 1:
            h, d = divmod(h, span)
            tc = lo + d
        else:
            tc = lo
        h, r = divmod(h, 100)
        variant = 0 if r < 88 else 1 if r < 95 else 2  # home, another address, a gift
        return tc, _ORDER_ID_BASE + ((tc - _ID_EPOCH) << 26) + (j << 2), variant, h

    def _core(self, i: int, w: int, j: int) -> tuple:
        """Everything about order i (rank j in window w) that is not text (see _C_*)."""
        tc, oid, variant, h = self._head(i, w, j)
        # lifecycle
        h, u = divmod(h, 1000)
        if u < 25:
            h, d = divmod(h, 7200)
            kind, events = _UNPAID_CANCEL, ((tc, UNPAID), (tc + DAY + d, CANCELLED))
        else:
            h, d = divmod(h, 900)
            paid = tc + 20 + d
            h, fast = divmod(h, 100)
            if fast < 45:  # ready to ship the same day
                h, d = divmod(h, 6 * 3600)
                rts = paid + 1800 + d
            else:
                h, d = divmod(h, 40 * 3600)
                rts = paid + 8 * 3600 + d
            if u < 60:
                h, d = divmod(h, rts - paid - 1200)
                kind, events = _BUYER_CANCEL, ((tc, UNPAID), (paid, AWAITING_SHIPMENT),
                                               (paid + 600 + d, CANCELLED))
            else:
                h, d = divmod(h, 5 * 3600)
                coll = rts + 900 + d
                h, d = divmod(h, 4 * DAY)
                deliv = coll + 40 * 3600 + d
                h, d = divmod(h, 6 * DAY)
                kind, events = _NORMAL, ((tc, UNPAID), (paid, AWAITING_SHIPMENT),
                                         (rts, AWAITING_COLLECTION), (coll, IN_TRANSIT),
                                         (deliv, DELIVERED), (deliv + 7 * DAY + d, COMPLETED))
        # line items: (product, sku, original price, seller discount, platform discount)
        h, r = divmod(h, 100)
        n_items = 1 if r < 84 else 2 if r < 96 else 3 if r < 99 else 4
        h, promo = divmod(h, 100)
        pct = (10, 15, 20)[promo % 3] if promo < 30 else 0
        h, coupon = divmod(h, 100)
        plat = 100 * (1 + coupon % 5) if coupon < 12 else 0
        popular, nsku, price, bumps = self._popular, self._p_nsku, self._p_price, self._p_bumps
        h, r = divmod(h, _POPULAR_SLOTS * 6)
        p = popular[r % _POPULAR_SLOTS]
        s = r // _POPULAR_SLOTS % nsku[p]
        orig_total = orig = price[p] + 100 * (bumps[p] // _POW3[s] % 3)
        sd_total = sd = orig * pct // 100
        pd_total = pd = min(plat, orig - sd - 100)
        lines = [(p, s, orig, sd, pd)]
        for _k in range(1, n_items):
            h, r = divmod(h, _POPULAR_SLOTS * 4 * 6)
            if r & 3:  # another product (else one more unit of the same sku)
                p = popular[(r >> 2) % _POPULAR_SLOTS]
                s = (r // (4 * _POPULAR_SLOTS)) % nsku[p]
                orig = price[p] + 100 * (bumps[p] // _POW3[s] % 3)
            sd = orig * pct // 100
            orig_total += orig
            sd_total += sd
            lines.append((p, s, orig, sd, 0))
        sub_total = orig_total - sd_total - pd_total
        ship_orig = 599 if n_items < 3 else 799
        h, r = divmod(h, 100)
        if sub_total >= 2500:
            ship_sd, ship_pd = 0, ship_orig  # free shipping from the platform
        elif r < 20:
            ship_sd, ship_pd = ship_orig, 0  # free shipping from the seller
        else:
            ship_sd = ship_pd = 0
        h, aff = divmod(h, 100)
        h, adj = divmod(h, 1000)
        return (i, tc, oid, kind, events, lines, orig_total, sd_total, pd_total, sub_total,
                ship_orig, ship_sd, ship_pd, aff < 20, adj, variant, h)

    def _orders_since(self, lo: int, since: int | None) -> Iterator[Record]:
        now = self.now
        record = self._order_record
        for core in self._iter_cores(lo, self._total):
            rec = record(core, now, since)
            if rec is not None:
                yield rec

    def _order_record(self, core: tuple, now: int, since: int | None = None) -> Record | None:
        (i, tc, oid, kind, events, lines, orig_total, sd_total, pd_total, sub_total,
         ship_orig, ship_sd, ship_pd, _aff, _adj, variant, h) = core
        state, ut = UNPAID, tc
        for t, s in events:
            if t >= now:
                break
            state, ut = s, t
        if since is not None and ut < since:
            return None
        b = self._buyers()[i]
        addr = self._address(b, variant)
        city = _CITIES[addr[5]]
        tax = (sub_total * city[6] + 5000) // 10000
        ship_fee = ship_orig - ship_sd - ship_pd
        p_id, p_names = self._p_id, self._p_names
        oid_s = str(oid)
        line_items = []
        for k, (p, s, orig, sd, pd) in enumerate(lines):
            pid = p_id[p]
            names = p_names[p].split("\x1f")
            line_items.append({
                "id": str(oid + _LINE_ID_OFFSET + k),
                "sku_id": str(pid + 1 + s),
                "product_id": str(pid),
                "product_name": self._p_title[p],
                "sku_name": names[s + 1],
                "seller_sku": f"{names[0]}-{p:05d}-{s + 1:02d}",
                "original_price": _money(orig),
                "sale_price": _money(orig - sd - pd),
                "seller_discount": _money(sd),
                "platform_discount": _money(pd),
            })
        payment = {
            "currency": CURRENCY,
            "original_total_product_price": _money(orig_total),
            "seller_discount": _money(sd_total),
            "platform_discount": _money(pd_total),
            "sub_total": _money(sub_total),
            "shipping_fee": _money(ship_fee),
            "tax": _money(tax),
            "total_amount": _money(sub_total + ship_fee + tax + city[7]),
        }
        if city[7]:
            payment["retail_delivery_fee"] = _money(city[7])
        h, pm = divmod(h, len(_PAYMENT_METHODS))
        rec: Record = {
            "id": oid_s,
            "status": _STATUS[state],
            "create_time": tc,
            "update_time": ut,
            "user_id": self._user_id(b),
            "buyer_email": self._email(b),
            "line_items": line_items,
            "payment": payment,
            "payment_method_name": _PAYMENT_METHODS[pm],
        }
        if state == CANCELLED:
            cancel = events[-1][0]
            if kind == _UNPAID_CANCEL:
                initiator, reason = "SYSTEM", "Payment overdue"
            else:
                initiator = "BUYER"
                reason = _BUYER_CANCEL_REASONS[h % len(_BUYER_CANCEL_REASONS)]
                rec["paid_time"] = events[1][0]
                rec["recipient_address"] = self._address_record(addr)
            rec["cancel_time"] = cancel
            rec["cancellation_initiator"] = initiator
            rec["cancel_reason"] = reason
            return rec
        if state >= AWAITING_SHIPMENT:
            rec["paid_time"] = events[1][0]
            rec["recipient_address"] = self._address_record(addr)
        if state >= AWAITING_COLLECTION:
            h, c = divmod(h, len(_CARRIER_TABLE))
            cname, prefix, digits = _CARRIERS[_CARRIER_TABLE[c]]
            h, tn = divmod(h, 10**digits)
            rec["rts_time"] = events[2][0]
            rec["tracking_number"] = f"{prefix}{tn:0{digits}d}"
            rec["shipping_provider"] = cname
        if state >= IN_TRANSIT:
            rec["collection_time"] = events[3][0]
        if state >= DELIVERED:
            rec["delivery_time"] = events[4][0]
        return rec

    # ============================================================================ finance
    @staticmethod
    def _settlement(core: tuple) -> list[tuple]:
        """The transactions of a completed order, as tuples (type, number, ...):
        ("ORDER", k, sku line, revenue, referral fee, affiliate commission) per line item,
        ("SHIPPING_FEE", 5, buyer paid, platform discount, actual cost, shipping cost) and
        sometimes ("ADJUSTMENT", 6, adjustment type, amount)."""
        lines, aff, adj = core[5], core[13], core[14]
        out: list[tuple] = []
        for k, line in enumerate(lines):
            rev = line[2] - line[3]
            fee = -((rev * 6 + 50) // 100)
            afee = -((rev * 10 + 50) // 100) if aff else 0
            out.append(("ORDER", k, line, rev, fee, afee))
        ship_orig, ship_sd, ship_pd = core[10], core[11], core[12]
        paid = ship_orig - ship_sd - ship_pd
        actual = 650 + 120 * (len(lines) - 1)
        out.append(("SHIPPING_FEE", 5, paid, ship_pd, actual, paid + ship_pd - actual))
        if adj < 60:
            atype, sign = _ADJUSTMENT_TYPES[adj % len(_ADJUSTMENT_TYPES)]
            out.append(("ADJUSTMENT", 6, atype, sign * (100 + adj * 7)))
        return out

    def _statement_ids(self, d: int) -> tuple[str, str]:
        x = d + 100_000
        return (str(_STATEMENT_ID_BASE + (x << 32) + _permute(x, 0x68E31DA4)),
                str(_PAYMENT_ID_BASE + (x << 32) + _permute(x, 0x1B56C4E9)))

    def _transactions_since(self, lo: int, since: int | None) -> Iterator[Record]:
        """Transactions settled at or after `since` (all when None), from orders lo.."""
        now = self.now
        totals = self._new_totals() if since is None and self._totals is None else None
        p_id = self._p_id
        for core in self._iter_cores(lo, self._total):
            events = core[4]
            if core[3] != _NORMAL:
                continue
            settled = events[-1][0]
            if settled >= now or (since is not None and settled < since):
                continue
            i, tc, oid = core[0], core[1], core[2]
            d = (settled - T0) // DAY + 1
            sid = self._statement_ids(d)[0]
            oid_s = str(oid)
            base = _TRANSACTION_ID_BASE + (i << 24) + (_permute(i, 0x3C6EF372) & 0xFFFFF)
            for tx in self._settlement(core):
                rec: Record = {
                    "id": str(base + (tx[1] << 20)),
                    "type": tx[0],
                    "order_id": oid_s,
                    "order_create_time": tc,
                    "statement_id": sid,
                    "create_time": settled,
                    "currency": CURRENCY,
                }
                kind = tx[0]
                if kind == "ORDER":
                    _k, _n, (p, s, orig, sd, _pd), rev, fee, afee = tx
                    rec.update({
                        "sku_id": str(p_id[p] + 1 + s),
                        "settlement_amount": _money(rev + fee + afee),
                        "revenue_amount": _money(rev),
                        "revenue_breakdown": {"subtotal_before_discount_amount": _money(orig),
                                              "seller_discount_amount": _money(-sd)},
                        "fee_tax_amount": _money(fee + afee),
                        "fee_tax_breakdown": {"fee": {
                            "referral_fee_amount": _money(fee),
                            "affiliate_commission_amount": _money(afee)}},
                    })
                    if totals is not None:
                        tot = totals[d - _FIRST_DAY]
                        tot[0] += rev
                        tot[1] += fee + afee
                elif kind == "SHIPPING_FEE":
                    _k, _n, paid, ship_pd, actual, ship = tx
                    rec.update({
                        "settlement_amount": _money(ship),
                        "shipping_cost_amount": _money(ship),
                        "shipping_cost_breakdown": {
                            "customer_paid_shipping_fee_amount": _money(paid),
                            "platform_shipping_fee_discount_amount": _money(ship_pd),
                            "actual_shipping_fee_amount": _money(-actual)},
                    })
                    if totals is not None:
                        totals[d - _FIRST_DAY][2] += ship
                else:
                    settle = tx[3]
                    rec.update({
                        "adjustment_id": str(base + (tx[1] << 20) + 1),
                        "adjustment_order_id": oid_s,
                        "adjustment_type": tx[2],
                        "adjustment_amount": _money(settle),
                        "settlement_amount": _money(settle),
                    })
                    if totals is not None:
                        totals[d - _FIRST_DAY][3] += settle
                if totals is not None:
                    totals[d - _FIRST_DAY][4] += 1
                yield rec
        if totals is not None:
            self._totals = totals  # a complete pass: the statements can reuse it

    def _new_totals(self) -> list[list[int]]:
        """Per day from _FIRST_DAY to night: revenue, fees, shipping, adjustments, count."""
        return [[0, 0, 0, 0, 0] for _ in range(self.night - _FIRST_DAY + 1)]

    def _day_totals(self, first_day: int = _FIRST_DAY) -> list[list[int]]:
        """The totals per statement day (see _new_totals), exact for days >= first_day: only
        orders that may have settled on those days are walked."""
        if self._totals is not None:
            return self._totals
        totals = self._new_totals()
        now = self.now
        lo = self._first_index_at(T0 + (first_day - 1) * DAY - MAX_LIFE)
        for core in self._iter_cores(lo, self._total):
            if core[3] != _NORMAL or core[4][-1][0] >= now:
                continue
            tot = totals[(core[4][-1][0] - T0) // DAY + 1 - _FIRST_DAY]
            for tx in self._settlement(core):
                if tx[0] == "ORDER":
                    tot[0] += tx[3]
                    tot[1] += tx[4] + tx[5]
                elif tx[0] == "SHIPPING_FEE":
                    tot[2] += tx[5]
                else:
                    tot[3] += tx[3]
                tot[4] += 1
        if first_day == _FIRST_DAY:
            self._totals = totals
        return totals

    def _statements(self, since: int | None) -> Iterator[Record]:
        n = self.night
        # all days, or those created or paid after night `since`
        days = range(_FIRST_DAY if since is None else max(_FIRST_DAY, since - 1), n + 1)
        totals = self._day_totals(days[0])
        for d in days:
            if since is not None and d <= since and d + 2 > n:
                continue
            rev, fee, ship, adj, _count = totals[d - _FIRST_DAY]
            sid, pay_id = self._statement_ids(d)
            rec: Record = {
                "id": sid,
                "statement_time": T0 + (d - 1) * DAY,
                "currency": CURRENCY,
                "revenue_amount": _money(rev),
                "net_sales_amount": _money(rev),
                "fee_amount": _money(fee),
                "shipping_cost_amount": _money(ship),
                "adjustment_amount": _money(adj),
                "settlement_amount": _money(rev + fee + ship + adj),
                "payment_status": "PROCESSING",
            }
            if d + 2 <= n:  # paid during the day before night d + 2
                rec["payment_status"] = "PAID"
                rec["payment_id"] = pay_id
                rec["payment_time"] = T0 + (d + 1) * DAY + 3600 + self._shash(d) % (6 * 3600)
            yield rec

    # ============================================================================ statistics
    def stats(self) -> dict[str, int]:
        """Record count per dataset (walks all orders once for the transactions)."""
        buyer_of = self._buyers()
        return {
            "products": len(self._p_id),
            "orders": self._total,
            "customers": sum(1 for b in range(self._total) if buyer_of[b] == b),
            "finance/statements": self.night - _FIRST_DAY + 1,
            "finance/transactions": sum(t[4] for t in self._day_totals()),
        }


def demo_stats(seed: int = 1, orders: int = 2000, night: int = 0) -> dict[str, int]:
    """Record counts per dataset of DemoSource(seed, orders, night)."""
    return DemoSource("stats", seed=seed, orders=orders, night=night).stats()
