"""Text from a repository or a source made safe to print on a terminal.

Names and fields that reach human output come from places sellerbak does not control: key files
anyone who can write `keys/` may plant (hostname, created, ...), dataset names from export files,
what a shop's API returns. Printed raw, an ESC or CSI sequence in one can move the cursor, rewrite
earlier lines, set the window title or hide text; a bidi override can make a name read
differently from what it is. `safe` escapes every such character; `--json` output needs none of
this (JSON escapes control characters itself).
"""

from __future__ import annotations

import unicodedata

# General categories escaped: Cc (C0, DEL, C1), Cf (format: bidi embeddings, overrides and
# isolates, zero-width characters), Zl and Zp (line and paragraph separators), Cs (surrogates).
_ESCAPED_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})


def safe(text: object) -> str:
    """`text` as a string with each control, format or separator character written as a
    Python-style escape (`\\x1b`, `\\u202e`), so it prints as what it is on one line."""
    return "".join(_escape(ch) for ch in str(text))


def _escape(ch: str) -> str:
    if ch.isascii() and ch.isprintable():  # the common case, without a table look-up
        return ch
    if unicodedata.category(ch) not in _ESCAPED_CATEGORIES:
        return ch
    code = ord(ch)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"
