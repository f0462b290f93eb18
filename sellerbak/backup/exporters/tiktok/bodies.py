"""Reading TikTok Shop's answers with a size limit.

`requests` reads a response body whole, whatever its size. A list page of the Open API is at
most a few megabytes (100 orders of a few kilobytes each); an endless or gigabyte-sized
answer, from a broken proxy or a hostile network, must not take the run's memory with it.
"""

from __future__ import annotations

import requests

#: far above any documented answer (a page of 100 orders is about 1 MiB)
MAX_BODY_BYTES = 32 * 1024 * 1024
_PIECE = 64 * 1024


class BodyTooLarge(Exception):
    """The answer went on past the limit; what was read is dropped."""

    def __init__(self, limit: int) -> None:
        super().__init__(limit)
        self.mib = limit >> 20


def read_body(resp: requests.Response, limit: int | None = None) -> None:
    """Read the body of a response opened with `stream=True`, stopping past `limit` bytes
    (after decompression; MAX_BODY_BYTES by default). Afterwards `resp.content`, `resp.text`
    and `resp.json()` work as for a response read whole."""
    limit = MAX_BODY_BYTES if limit is None else limit
    pieces: list[bytes] = []
    size = 0
    for piece in resp.iter_content(_PIECE):
        size += len(piece)
        if size > limit:
            resp.close()  # the rest stays unread: this connection cannot be used again
            raise BodyTooLarge(limit)
        pieces.append(piece)
    # read to the end, so the connection goes back to the pool, as when requests reads it
    resp._content = b"".join(pieces)  # noqa: SLF001 - where requests itself keeps the body
    resp._content_consumed = True  # noqa: SLF001
