"""No core dumps: a crashed or signalled run must not leave its memory on disk.

The process holds the repository passphrase, the derived keys, TikTok tokens and customer
records in memory. A core dump (SIGABRT, SIGSEGV in a C extension, SIGQUIT from a terminal)
would write all of that into a file that outlives the run, often somewhere world-readable
(/var/crash, /var/lib/systemd/coredump, the working directory). So at start-up:

- RLIMIT_CORE is set to 0 (soft and hard), so the kernel writes no core file; children such as
  a `{command:}` secret helper inherit the limit, and the hard limit cannot be raised again
  without privilege;
- on Linux the process is marked non-dumpable (prctl PR_SET_DUMPABLE 0): no core even through
  a `|` core_pattern handler (systemd-coredump, apport), and other processes of the same user
  cannot ptrace it or read /proc/<pid>/mem or /environ. Forked export workers inherit the flag.

The systemd units also set LimitCORE=0. Each step is best effort: a platform without prctl or
setrlimit keeps going, since refusing to run would protect nothing.
"""

from __future__ import annotations

import contextlib
import ctypes
import sys

try:
    import resource
except ImportError:  # not on Windows
    resource = None  # type: ignore[assignment]

PR_SET_DUMPABLE = 4


def disable_core_dumps() -> None:
    """Apply both settings; call first thing in `main`, before any secret is read."""
    if resource is not None:
        with contextlib.suppress(OSError, ValueError):  # a platform without the limit
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if sys.platform.startswith("linux"):
        try:  # a plain foreign call (no callbacks), so it works under MemoryDenyWriteExecute
            prctl = ctypes.CDLL(None, use_errno=True).prctl
            prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong,
                              ctypes.c_ulong]
            prctl.restype = ctypes.c_int
            prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
        except Exception:  # noqa: BLE001 - no libc symbol (musl static, ...): the rlimit stays
            pass
