"""Shared pieces of the hostile-input suite (tests/test_hostile_*.py).

Every parser of bytes that come from outside the process (storage, export files, the config, the
TikTok Shop API) must end in a valid result or in one of sellerbak's own errors
(`SellerbakError` and its subclasses), never in a crash, a hang or a memory blow-up.

Scale: `SELLERBAK_FUZZ_EXAMPLES` examples per property (default 200, which keeps the suite
around a minute on two cores); `scripts/fuzz.sh` runs the same properties with many more.
Hang protection is twofold: a per-example hypothesis deadline (something quadratic shows up as
a DeadlineExceeded with the example that caused it), and a watchdog that dumps every thread's
stack and ends the process if one test runs far longer than its budget (an endless loop,
including one inside C code, which no deadline can interrupt).
"""

from __future__ import annotations

import faulthandler
import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

EXAMPLES = int(os.environ.get("SELLERBAK_FUZZ_EXAMPLES", "200"))
DEADLINE_MS = int(os.environ.get("SELLERBAK_FUZZ_DEADLINE_MS", "5000"))

settings.register_profile(
    "sellerbak-hostile",
    max_examples=EXAMPLES,
    deadline=timedelta(milliseconds=DEADLINE_MS),
    database=None,  # nothing written into the checkout; failures print a reproduction blob
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                           HealthCheck.function_scoped_fixture,
                           HealthCheck.large_base_example],
)
#: decorator for every property of the suite
HOSTILE = settings.get_profile("sellerbak-hostile")
#: a test running longer than this is taken to hang (seconds)
WATCHDOG_SECONDS = 120 + EXAMPLES // 2

#: nesting far past every recursion limit (the stdlib json and PyYAML recurse per level)
DEEP = 10_000


@contextmanager
def watchdog(seconds: float = WATCHDOG_SECONDS) -> Iterator[None]:
    """Dump all stacks and exit if the body has not finished after `seconds`."""
    faulthandler.dump_traceback_later(seconds, exit=True, file=sys.stderr)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()


# ------------------------------------------------------------------ hostile JSON

_RAW = "\x00raw:"
#: number spellings that JSON allows or that parsers accept, and that break naive code:
#: overflow to infinity, beyond 64 bits, beyond Python's int-to-str limit, non-JSON constants
RAW_NUMBERS = ["1e400", "-1e400", "1e-400", "18446744073709551616", "-9223372036854775809",
               "123456789012345678901234567890", "9" * 5000, "NaN", "Infinity", "-Infinity",
               "-0", "0.1e1", "1E+2"]


def raw(token: str) -> str:
    """A placeholder that `json_text` replaces by `token` unquoted."""
    return _RAW + token


def json_text(value: Any) -> str:
    """JSON text of `value`, with `raw(...)` placeholders written as bare tokens."""
    text = json.dumps(value)
    for token in RAW_NUMBERS:
        text = text.replace(json.dumps(raw(token)), token)
    return text


scalars = (st.none() | st.booleans() | st.integers()
           | st.integers(min_value=-(2**70), max_value=2**70)
           | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20)
           | st.sampled_from(["", "\x00", "\ud800", "a" * 300, "0" * 64, "ff" * 32, "-1",
                              "2024-01-01T00:00:00Z", "9999-12-31T23:59:59-23:59"])
           | st.sampled_from(RAW_NUMBERS).map(raw))
#: any JSON value, including the nasty spellings above (serialise with `json_text`)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=4),
    max_leaves=12)


def deep_json(kind: str = "list", depth: int = DEEP) -> str:
    if kind == "list":
        return "[" * depth + "]" * depth
    return '{"a":' * depth + "1" + "}" * depth


#: values that break code which trusts a member's type or range
SPECIAL_VALUES: list[Any] = [None, True, False, 0, -1, 2**31, 2**64, -(2**63) - 1, 1.5, -0.0,
                             "", "\x00", "\ud800", "a" * 300, "ff" * 32, [], [1], {}, {"a": 1},
                             *(raw(t) for t in RAW_NUMBERS)]


def _paths(doc: Any) -> list[list[Any]]:
    paths: list[list[Any]] = []

    def walk(node: Any, path: list[Any]) -> None:
        paths.append(path)
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, [*path, k])
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, [*path, i])

    walk(doc, [])
    return paths


def _replaced(doc: Any, path: list[Any], value: Any) -> Any:
    doc = json.loads(json.dumps(doc))
    if not path:
        return value
    parent = doc
    for step in path[:-1]:
        parent = parent[step]
    parent[path[-1]] = value
    return doc


def replacements(doc: Any) -> Iterator[str]:
    """JSON text of `doc` with one member (at any depth) replaced by one of SPECIAL_VALUES,
    for every member and value."""
    for path in _paths(doc):
        for value in SPECIAL_VALUES:
            yield json_text(_replaced(doc, path, value))


def mutate_json(doc: Any, data: st.DataObject, label: str = "mutation") -> Any:
    """A copy of `doc` with one member somewhere in it replaced, removed or added."""
    doc = json.loads(json.dumps(doc))
    path = data.draw(st.sampled_from(_paths(doc)), label=f"{label} path")
    action = data.draw(st.sampled_from(["replace", "delete", "add"]), label=f"{label} action")
    if not path:
        return data.draw(json_values, label=f"{label} value")
    parent = doc
    for step in path[:-1]:
        parent = parent[step]
    if action == "delete":
        del parent[path[-1]]
    elif action == "add" and isinstance(parent, dict):
        parent[data.draw(st.text(max_size=8), label=f"{label} key")] = data.draw(json_values)
    else:
        parent[path[-1]] = data.draw(json_values, label=f"{label} value")
    return doc


def flips(blob: bytes) -> Iterator[bytes]:
    """`blob` with one bit flipped: every bit of every byte at fuzz scale (1000 examples or
    more), one bit per byte in CI (rotating through the eight positions)."""
    every_bit = EXAMPLES >= 1000
    for i in range(len(blob) * 8):
        if every_bit or i % 8 == (i // 8) % 8:
            b = bytearray(blob)
            b[i // 8] ^= 1 << (i % 8)
            yield bytes(b)


def truncations(blob: bytes) -> Iterator[bytes]:
    """Every proper prefix of `blob`."""
    for n in range(len(blob)):
        yield blob[:n]
