"""A fault-injecting TCP proxy for the storage-fault tests, on loopback in front of an S3 server.

Why TCP and not an HTTP forwarder: the faults a backup meets on the way to S3 happen below HTTP
(a connection reset half-way through a 16 MiB upload, a load balancer that accepts a request and
then says nothing), and the client's reaction to them (socket errors, read timeouts, pooled
connections that are dead) is only exercised if the bytes really stop. So the proxy relays raw
bytes and parses just enough HTTP/1.1 on the request side to know where each request starts and
ends (request line, headers, a `Content-Length` or chunked body); responses are relayed as they
come, unparsed. The S3 clients used here (botocore/urllib3) never pipeline, so a new request on
a connection means the previous response has been delivered, which is what lets the proxy answer
a request itself (503 SlowDown) on a connection whose earlier responses came from the server.

Faults are armed at run time, each for the next request(s) a predicate matches, and every fault
actually injected is counted by kind in `counts` (and listed in `events`):

- `reset_after(nbytes)`: forward the request head and the first `nbytes` bytes of its body, then
  reset both connections (RST): a connection reset mid-upload. `reset_after(0)` resets as soon
  as the request head has arrived, before anything reaches the server (for any request).
- `stall(...)`: stop answering. With `forward=False` the request is swallowed (read and
  dropped, never forwarded); with `forward=True` it reaches the server, which acts on it, but the
  answer is held back. Either way the client sees nothing until it gives up on its read timeout
  (or `max_seconds` pass), then the connection is closed.
- `slowdown(k)`: answer the next k requests with an S3 `503 SlowDown` XML error, without
  forwarding them (keep-alive; with `Expect: 100-continue` the body is never sent, so the
  connection is closed after the answer, as a server would).
- anything not armed passes through untouched (`clear()` disarms everything).
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit


@dataclass(frozen=True)
class Request:
    """What the proxy knows of a request when it decides on a fault: its method, its path with
    the query, and the body size it announced (-1 if chunked or not said)."""

    method: str
    path: str
    size: int


#: does this armed fault apply to the request?
Match = Callable[[Request], bool]

SLOWDOWN_XML = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message><Resource>/</Resource>"
    b"<RequestId>faultproxy</RequestId></Error>"
)
_HEAD_LIMIT = 64 * 1024


def any_request(request: Request) -> bool:
    return True


@dataclass
class Fault:
    kind: str  # "reset" | "stall" | "slowdown"
    match: Match
    times: int
    nbytes: int = 0
    forward: bool = False
    max_seconds: float = 120.0


@dataclass
class Event:
    kind: str
    method: str
    path: str
    at: float = field(default_factory=time.monotonic)


class _ClientGone(Exception):
    """The client closed its side (or the proxy is shutting down)."""


class _Reader:
    """Buffered reads from a socket, with the few primitives HTTP framing needs."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()

    def _fill(self) -> None:
        try:
            data = self.sock.recv(256 * 1024)
        except OSError:  # reset by the client, or closed under us by drop_connections()
            data = b""
        if not data:
            raise _ClientGone
        self.buf += data

    def until(self, marker: bytes, limit: int = _HEAD_LIMIT) -> bytes:
        while True:
            at = self.buf.find(marker)
            if at >= 0:
                out = bytes(self.buf[: at + len(marker)])
                del self.buf[: at + len(marker)]
                return out
            if len(self.buf) > limit:
                raise _ClientGone  # not HTTP as we know it: give up on the connection
            self._fill()

    def some(self, most: int) -> bytes:
        """Up to `most` bytes (at least one)."""
        if not self.buf:
            self._fill()
        out = bytes(self.buf[:most])
        del self.buf[:most]
        return out


def _header(head: bytes, name: str) -> str | None:
    want = name.lower().encode()
    for line in head.split(b"\r\n")[1:]:
        key, sep, value = line.partition(b":")
        if sep and key.strip().lower() == want:
            return value.strip().decode("latin-1")
    return None


def _rst(sock: socket.socket | None) -> None:
    """Close with a TCP reset rather than an orderly FIN."""
    if sock is None:
        return
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.close()


def _close(sock: socket.socket | None) -> None:
    if sock is None:
        return
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()


class _Connection:
    """One client connection and its upstream connection."""

    def __init__(self, proxy: FaultProxy, client: socket.socket) -> None:
        self.proxy = proxy
        self.client = client
        self.reader = _Reader(client)
        self.upstream: socket.socket | None = None
        self.send_lock = threading.Lock()  # client writes: relayed responses vs our own answers
        self.hold = threading.Event()  # set: responses from upstream are held back (stall)
        self.closed = threading.Event()
        self._current = ("?", "?")

    # -- lifecycle ----------------------------------------------------------------------------

    def run(self) -> None:
        try:
            while not self.closed.is_set():
                self._one_request()
        except (_ClientGone, OSError):
            pass
        finally:
            self.close()

    def close(self, reset: bool = False) -> None:
        if self.closed.is_set():
            return
        self.closed.set()
        if reset:
            _rst(self.client)
            _rst(self.upstream)
        else:
            _close(self.client)
            _close(self.upstream)
        self.proxy._forget(self)

    # -- requests -----------------------------------------------------------------------------

    def _one_request(self) -> None:
        head = self.reader.until(b"\r\n\r\n")
        request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
        parts = request_line.split(" ")
        method, path = (parts[0], parts[1]) if len(parts) >= 2 else ("?", "?")
        self._current = (method, path)
        length = _header(head, "content-length")
        size = int(length) if length and length.strip().isdigit() else -1
        fault = self.proxy._take(Request(method, path, size))
        if fault is not None and fault.kind != "reset":
            self.proxy._record(fault.kind, method, path)
        if fault is not None and fault.kind == "slowdown":
            self._answer_slowdown(head)
            return
        if fault is not None and fault.kind == "stall" and not fault.forward:
            self._swallow(head, fault.max_seconds)
            return
        if fault is not None and fault.kind == "reset" and fault.nbytes <= 0:
            # reset on the request head: nothing reaches the server (works for GETs too)
            self.proxy._record("reset", method, path)
            self.close(reset=True)
            raise _ClientGone
        self._connect_upstream()
        self._send_upstream(head)
        if fault is not None and fault.kind == "stall":
            self.hold.set()  # the server gets the request; its answer is held back
            self._relay_body(head, None)
            self._wait_for_client_to_give_up(fault.max_seconds)
            return
        if fault is None or fault.kind != "reset":
            self._relay_body(head, None)
        elif not self._relay_body(head, fault.nbytes):
            # the body was shorter than the limit: the request went through unharmed, so the
            # fault is re-armed for the next matching request rather than counted
            self.proxy._arm(Fault("reset", fault.match, 1, nbytes=fault.nbytes))

    def _connect_upstream(self) -> None:
        if self.upstream is not None:
            return
        try:
            self.upstream = socket.create_connection(self.proxy.upstream, timeout=5)
        except OSError:
            # the server is down: the client sees its connection closed, as with a dead host
            # behind a load balancer
            self.close(reset=True)
            raise _ClientGone from None
        self.upstream.settimeout(None)
        self.upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=self._relay_responses, args=(self.upstream,), daemon=True,
                         name="faultproxy-down").start()

    def _send_upstream(self, data: bytes) -> None:
        assert self.upstream is not None
        try:
            self.upstream.sendall(data)
        except OSError:
            self.close(reset=True)
            raise _ClientGone from None

    def _relay_body(self, head: bytes, limit: int | None) -> bool:
        """Forward the request body; with `limit`, reset both connections once that many body
        bytes have gone through (and raise _ClientGone). False if the body ended first."""
        sent = 0
        for piece in self._body(head):
            if limit is not None and sent + len(piece) > limit:
                self._send_upstream(piece[: max(0, limit - sent)])
                self.proxy._record("reset", *self._current)
                self.close(reset=True)
                raise _ClientGone
            self._send_upstream(piece)
            sent += len(piece)
        return limit is None

    def _body(self, head: bytes):  # noqa: ANN202 - a generator of byte strings
        """The request body's bytes as they arrive, framing included (chunked is relayed as
        is). Nothing for a request without a body."""
        if (_header(head, "transfer-encoding") or "").lower().find("chunked") >= 0:
            while True:
                size_line = self.reader.until(b"\r\n")
                yield size_line
                size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    # trailers (if any), then the empty line
                    while True:
                        line = self.reader.until(b"\r\n")
                        yield line
                        if line == b"\r\n":
                            return
                left = size + 2  # data and its CRLF
                while left:
                    piece = self.reader.some(left)
                    left -= len(piece)
                    yield piece
        left = int(_header(head, "content-length") or 0)
        while left:
            piece = self.reader.some(min(left, 256 * 1024))
            left -= len(piece)
            yield piece

    def _answer_slowdown(self, head: bytes) -> None:
        expects = (_header(head, "expect") or "").lower() == "100-continue"
        if not expects:
            for _ in self._body(head):
                pass  # read and drop: the connection stays usable
        answer = (
            b"HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\n"
            b"x-amz-request-id: faultproxy\r\n"
            + f"Content-Length: {len(SLOWDOWN_XML)}\r\n".encode()
            + (b"Connection: close\r\n" if expects else b"")
            + b"\r\n" + SLOWDOWN_XML
        )
        with self.send_lock:
            self.client.sendall(answer)
        if expects:
            # the client will not send the body it announced; this connection is done
            self.close()
            raise _ClientGone

    def _swallow(self, head: bytes, max_seconds: float) -> None:
        """Read and drop the request (so a large upload is not blocked on a full socket), then
        say nothing until the client gives up. (A client waiting for `100 Continue` sends the
        body anyway after a moment, as botocore does after one second.)"""
        deadline = time.monotonic() + max_seconds
        for _ in self._body(head):
            pass
        self._wait_for_client_to_give_up(max(0.0, deadline - time.monotonic()))

    def _wait_for_client_to_give_up(self, max_seconds: float) -> None:
        deadline = time.monotonic() + max_seconds
        self.client.settimeout(0.2)
        while time.monotonic() < deadline and not self.proxy._stopping.is_set():
            try:
                data = self.client.recv(64 * 1024)
            except TimeoutError:
                continue
            except OSError:
                break
            if not data:
                break  # the client timed out and closed: the stall did its job
        self.close()
        raise _ClientGone

    # -- responses ----------------------------------------------------------------------------

    def _relay_responses(self, upstream: socket.socket) -> None:
        try:
            while True:
                data = upstream.recv(256 * 1024)
                if not data:
                    break
                if self.hold.is_set():
                    continue  # a stalled answer: dropped on the floor
                with self.send_lock:
                    self.client.sendall(data)
        except OSError:
            pass
        if not self.hold.is_set():
            # the server closed (restarted, killed, or it closes after this answer)
            self.close()


class FaultProxy:
    """The proxy. `url` is what the client under test uses as its S3 endpoint."""

    def __init__(self, upstream: str | tuple[str, int]) -> None:
        if isinstance(upstream, str):
            parts = urlsplit(upstream)
            upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.upstream = upstream
        self.lock = threading.Lock()
        self.faults: list[Fault] = []
        self.counts: Counter[str] = Counter()
        self.events: list[Event] = []
        self.requests = 0
        #: called with every Request before any fault is chosen (tests use it to act at a
        #: precise point, e.g. kill the server when the third pack upload starts)
        self.on_request: Callable[[Request], None] | None = None
        self._connections: set[_Connection] = set()
        self._stopping = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self._thread = threading.Thread(target=self._accept, daemon=True, name="faultproxy")
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._listener.getsockname()[1]}"

    # -- arming -------------------------------------------------------------------------------

    def reset_after(self, nbytes: int, times: int = 1, match: Match = any_request) -> None:
        """Reset the connection once `nbytes` of the body of the next matching request(s) have
        been forwarded."""
        self._arm(Fault("reset", match, times, nbytes=nbytes))

    def stall(self, times: int = 1, match: Match = any_request, forward: bool = False,
              max_seconds: float = 120.0) -> None:
        """Say nothing in answer to the next matching request(s); see the module docstring."""
        self._arm(Fault("stall", match, times, forward=forward, max_seconds=max_seconds))

    def slowdown(self, times: int = 1, match: Match = any_request) -> None:
        """Answer the next `times` matching requests with 503 SlowDown."""
        self._arm(Fault("slowdown", match, times))

    def clear(self) -> None:
        """Pass everything through from now on."""
        with self.lock:
            self.faults.clear()

    def armed(self) -> int:
        """Faults still waiting for a request to happen to."""
        with self.lock:
            return sum(f.times for f in self.faults)

    def _arm(self, fault: Fault) -> None:
        with self.lock:
            self.faults.append(fault)

    def _take(self, request: Request) -> Fault | None:
        hook = self.on_request
        if hook is not None:
            hook(request)
        with self.lock:
            self.requests += 1
            for fault in self.faults:
                if fault.match(request):
                    fault.times -= 1
                    if fault.times <= 0:
                        self.faults.remove(fault)
                    return fault
        return None

    def _record(self, kind: str, method: str, path: str) -> None:
        with self.lock:
            self.counts[kind] += 1
            self.events.append(Event(kind, method, path))

    # -- serving ------------------------------------------------------------------------------

    def _accept(self) -> None:
        while not self._stopping.is_set():
            try:
                client, _addr = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = _Connection(self, client)
            with self.lock:
                self._connections.add(conn)
            threading.Thread(target=conn.run, daemon=True, name="faultproxy-up").start()

    def _forget(self, conn: _Connection) -> None:
        with self.lock:
            self._connections.discard(conn)

    def drop_connections(self) -> None:
        """Close every open connection (both sides), e.g. after the server was killed."""
        with self.lock:
            conns = list(self._connections)
        for conn in conns:
            conn.close(reset=True)

    def close(self) -> None:
        self._stopping.set()
        with contextlib.suppress(OSError):
            self._listener.close()
        self._thread.join(timeout=5)
        self.drop_connections()

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class FaultReport:
    """Injected faults by kind and by what the run under test made of them: "survived" (the
    run completed correctly after retries) or "failed cleanly" (one `error:` line, non-zero
    exit, repository intact). Written as JSON under the pytest temp dir and printed at the end
    of the module, so a run with `-s` shows it and CI keeps it."""

    def __init__(self, title: str) -> None:
        self.title = title
        self.rows: Counter[tuple[str, str]] = Counter()

    def add(self, counts: Counter[str] | dict[str, int], outcome: str) -> None:
        for kind, n in counts.items():
            if n:
                self.rows[(kind, outcome)] += n

    def as_dict(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for (kind, outcome), n in sorted(self.rows.items()):
            out.setdefault(kind, {})[outcome] = n
        return out

    def text(self) -> str:
        rows = self.as_dict()
        width = max((len(kind) for kind in rows), default=0)
        lines = [f"{self.title}: injected faults by kind"]
        for kind, outcomes in rows.items():
            detail = ", ".join(f"{n} {outcome}" for outcome, n in outcomes.items())
            lines.append(f"  {kind:<{width}} {sum(outcomes.values()):>4}  ({detail})")
        return "\n".join(lines)
