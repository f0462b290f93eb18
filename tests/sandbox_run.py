"""Run a command roughly as the generated system units confine it, without a service manager.

Run inside a private mount namespace (`unshare --mount --propagation private`):

    python tests/sandbox_run.py --rw DIR [--rw DIR ...] -- COMMAND [ARGS...]

- ProtectSystem=strict / ProtectHome=read-only: every mount becomes read-only, except the
  --rw directories (ReadWritePaths=, StateDirectory=, CacheDirectory=) and the API file systems
  /proc, /sys and /dev;
- PrivateTmp=yes: $TMPDIR points at one of the --rw directories (the test's private /tmp),
  since the test's own files live under the real /tmp;
- MemoryDenyWriteExecute=yes: the kernel's PR_SET_MDWE (Linux 6.3+), which refuses writable and
  executable mappings just as systemd's seccomp filter does;
- Nice=10.

Then it execs COMMAND. Any set-up step that fails makes it exit 120 with the reason, so a test
cannot pass on a sandbox that was not built.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys

PR_SET_MDWE = 65
PR_MDWE_REFUSE_EXEC_GAIN = 1
API_FILE_SYSTEMS = ("/proc", "/sys", "/dev")


def _die(message: str) -> None:
    print(f"sandbox_run: {message}", file=sys.stderr)
    sys.exit(120)


def _mount(*args: str) -> None:
    done = subprocess.run(["mount", *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        _die(f"mount {' '.join(args)}: {done.stderr.strip()}")


def _mount_points() -> list[str]:
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        points = [line.split()[4] for line in f]
    return [p.encode().decode("unicode_escape") for p in points]


def _inside(path: str, parents: list[str]) -> bool:
    return any(path == p or path.startswith(p.rstrip("/") + "/") for p in parents)


def main(argv: list[str]) -> None:
    if "--" not in argv:
        _die("usage: sandbox_run.py --rw DIR ... -- COMMAND ...")
    split = argv.index("--")
    options, command = argv[:split], argv[split + 1:]
    writable = [os.path.realpath(options[i + 1]) for i, o in enumerate(options) if o == "--rw"]
    tmpdir = os.environ.get("TMPDIR")
    if not tmpdir or not _inside(os.path.realpath(tmpdir), writable):
        _die("TMPDIR must be one of the --rw directories")
    for path in writable:  # their own mounts first, so the read-only remounts pass them by
        _mount("--bind", path, path)
    for point in sorted(set(_mount_points()), key=len):
        if _inside(point, list(API_FILE_SYSTEMS)) or _inside(point, writable):
            continue
        done = subprocess.run(["mount", "-o", "remount,bind,ro", point], capture_output=True,
                              text=True, check=False)
        if done.returncode != 0 and point == "/":
            _die(f"cannot make / read-only: {done.stderr.strip()}")
    probe = os.path.join(os.path.dirname(writable[0]), ".sandbox-probe")
    try:
        with open(probe, "w"):
            pass
    except OSError:
        pass
    else:
        os.unlink(probe)
        if not _inside(os.path.dirname(writable[0]), writable):
            _die(f"{os.path.dirname(writable[0])} is still writable")
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
        _die(f"prctl(PR_SET_MDWE) failed: {os.strerror(ctypes.get_errno())}")
    os.nice(10)
    os.execvp(command[0], command)


if __name__ == "__main__":
    main(sys.argv[1:])
