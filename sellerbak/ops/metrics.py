"""Prometheus metrics in node_exporter's textfile-collector format (`metrics.textfile: PATH`).

node_exporter reads every `*.prom` file of its `--collector.textfile.directory` on each scrape,
so the file must never be seen half written: it is written to a temporary file in the same
directory (the collector ignores names not ending in `.prom`) and renamed over the old one.

snapshot, check, prune, forget and drill all write the same file. Each run replaces only its own
command's samples and keeps the others', so one file describes every command. Two values
survive a run on purpose:

- `sellerbak_last_success_timestamp_seconds` keeps the time of the last *successful* run when
  this run failed, so an alert such as
  `time() - sellerbak_last_success_timestamp_seconds{command="snapshot"} > 36 * 3600`
  fires after missed or failing nights, not only after a missing file;
- per-dataset records and bytes are replaced per source: `snapshot --source A` leaves B's
  datasets as they were.

The file holds command, source and dataset names, counts, sizes and times: never a secret or a
record's content.
"""

from __future__ import annotations

import contextlib
import fcntl
import math
import os
import re
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from sellerbak.ops.outcome import RunOutcome

PREFIX = "sellerbak_"
LAST_RUN = "sellerbak_last_run_timestamp_seconds"
LAST_SUCCESS = "sellerbak_last_success_timestamp_seconds"
DURATION = "sellerbak_last_run_duration_seconds"
EXIT_CODE = "sellerbak_last_run_exit_code"
SUCCESS = "sellerbak_last_run_success"
ADDED = "sellerbak_last_run_added_bytes"
DATASET_RECORDS = "sellerbak_dataset_records"
DATASET_BYTES = "sellerbak_dataset_bytes"

HELP = {
    LAST_RUN: "When the last run of the command ended (Unix time).",
    LAST_SUCCESS: "When the last successful run (exit code 0) of the command ended "
                  "(Unix time); kept when a later run fails.",
    DURATION: "How long the last run of the command took.",
    EXIT_CODE: "Exit code of the last run: 0 ok, 1 failed, 2 usage or config, 3 source "
               "incomplete, 10 no repository, 11 locked, 12 wrong passphrase.",
    SUCCESS: "1 when the last run of the command succeeded, else 0.",
    ADDED: "Bytes the last run added to the repository.",
    DATASET_RECORDS: "Records in the dataset as stored (snapshot) or verified (drill) by the "
                     "last run of the command that reported this source.",
    DATASET_BYTES: "Canonical size of the dataset as stored (snapshot) or verified (drill).",
}
#: help for the per-command gauges commands put in RunOutcome.gauges, by key
GAUGE_HELP = {
    "rto_seconds": "Recovery time: how long the drill's restore took.",
    "rpo_seconds": "Recovery point: age of the oldest newest-snapshot the drill restored.",
    "verified": "1 when every dataset of the drill verified, else 0.",
    "bytes_freed": "Bytes the last run removed from the repository.",
    "bytes_read": "Bytes the last run read from the repository.",
    "errors": "Problems the last run found.",
    "snapshots": "Snapshots the last run looked at.",
    "packs": "Pack objects the last run looked at.",
    "packs_deleted": "Pack objects the last run deleted.",
    "packs_repacked": "Pack objects the last run rewrote to drop unused data.",
    "retained_objects": "Unused objects the last run could not delete yet: still under S3 "
                        "Object Lock retention.",
    "snapshots_removed": "Snapshots the last run removed.",
    "snapshots_kept": "Snapshots the retention policy kept.",
}
_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_HELP_LINE = re.compile(r"#\s+HELP\s+(\S+)\s?(.*)")

Labels = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Sample:
    name: str
    labels: Labels
    value: float

    def label(self, key: str) -> str | None:
        return dict(self.labels).get(key)


def write_run_metrics(path: Path, outcome: RunOutcome) -> None:
    """Merge this run's samples into the textfile at `path`, atomically."""
    path = Path(path)
    directory = path.parent
    with _dir_lock(directory):
        old_samples, old_help = _read_existing(path)
        samples = merge(old_samples, outcome)
        text = render(samples, old_help)
        _atomic_write(path, text)


def gauge_name(key: str) -> str:
    """The metric name of a RunOutcome gauge: `rto_seconds` -> `sellerbak_rto_seconds`."""
    return PREFIX + re.sub(r"[^a-zA-Z0-9_]", "_", key).strip("_").lower()


def run_samples(outcome: RunOutcome) -> list[Sample]:
    """This run's samples, before merging with the file."""
    cmd = (("command", outcome.command),)
    ended = outcome.finished if outcome.finished is not None else time.time()
    out = [Sample(LAST_RUN, cmd, ended), Sample(DURATION, cmd, outcome.duration),
           Sample(EXIT_CODE, cmd, float(outcome.exit_code if outcome.exit_code is not None
                                        else 1)),
           Sample(SUCCESS, cmd, 1.0 if outcome.success else 0.0)]
    if outcome.success:
        out.append(Sample(LAST_SUCCESS, cmd, ended))
    if outcome.bytes_added is not None:
        out.append(Sample(ADDED, cmd, float(outcome.bytes_added)))
    for d in outcome.datasets:
        labels = (("command", outcome.command), ("dataset", d.dataset), ("source", d.source))
        out.append(Sample(DATASET_RECORDS, labels, float(d.records)))
        out.append(Sample(DATASET_BYTES, labels, float(d.bytes)))
    fixed = set(HELP)
    for key, value in outcome.gauges.items():
        name = gauge_name(key)
        if name == PREFIX or name in fixed or not _NAME.fullmatch(name):
            continue  # never let a gauge overwrite a fixed metric
        out.append(Sample(name, cmd, float(value)))
    return out


def merge(old: Iterable[Sample], outcome: RunOutcome) -> list[Sample]:
    """The file's samples after this run: other commands' untouched, this command's replaced,
    except the last success time (kept on failure) and datasets of sources it did not report.
    """
    new = run_samples(outcome)
    reported_sources = {d.source for d in outcome.datasets}

    def keep(s: Sample) -> bool:
        if not s.name.startswith(PREFIX):
            return False  # the file is sellerbak's alone; anything else is dropped
        if s.label("command") != outcome.command:
            return True
        if s.name == LAST_SUCCESS:
            return not outcome.success
        if s.name in (DATASET_RECORDS, DATASET_BYTES):
            return s.label("source") not in reported_sources
        return False

    kept = [s for s in old if keep(s)]
    by_key = {(s.name, s.labels): s for s in kept}
    by_key.update({(s.name, s.labels): s for s in new})
    return list(by_key.values())


def render(samples: Iterable[Sample], old_help: dict[str, str] | None = None) -> str:
    """The exposition text: one HELP and TYPE pair per metric, samples sorted by labels."""
    families: dict[str, list[Sample]] = {}
    for s in samples:
        families.setdefault(s.name, []).append(s)
    lines: list[str] = []
    for name in sorted(families):
        key = name[len(PREFIX):]
        text = HELP.get(name) or GAUGE_HELP.get(key) or (old_help or {}).get(name) \
            or f"sellerbak: {key.replace('_', ' ')} reported by the last run of the command."
        lines.append(f"# HELP {name} {_escape_help(text)}")
        lines.append(f"# TYPE {name} gauge")
        for s in sorted(families[name], key=lambda s: s.labels):
            labels = ",".join(f'{k}="{_escape_label(v)}"' for k, v in s.labels)
            lines.append(f"{name}{{{labels}}} {_format_value(s.value)}" if labels
                         else f"{name} {_format_value(s.value)}")
    return "\n".join(lines) + "\n" if lines else ""


# ----- reading the previous file ------------------------------------------------------------


def parse(text: str) -> tuple[list[Sample], dict[str, str]]:
    """Samples and HELP texts of an exposition-format text; lines that do not parse are
    dropped (a damaged file heals on the next write instead of blocking it)."""
    samples: list[Sample] = []
    helps: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        if line.startswith("#"):
            m = _HELP_LINE.match(line)
            if m:
                helps[m.group(1)] = _unescape(m.group(2), label=False)
            continue
        sample = _parse_sample(line)
        if sample is not None:
            samples.append(sample)
    return samples, helps


def _parse_sample(line: str) -> Sample | None:
    m = _NAME.match(line)
    if not m:
        return None
    name, rest = m.group(0), line[m.end():]
    labels: list[tuple[str, str]] = []
    if rest.startswith("{"):
        parsed = _parse_labels(rest)
        if parsed is None:
            return None
        labels, rest = parsed
    parts = rest.split()
    if not parts or len(parts) > 2:
        return None
    try:
        value = float(parts[0])
    except ValueError:
        return None
    return Sample(name, tuple(sorted(labels)), value)


def _parse_labels(text: str) -> tuple[list[tuple[str, str]], str] | None:
    """`{a="x",b="y"} rest` -> ([("a", "x"), ("b", "y")], " rest")."""
    i = 1
    labels: list[tuple[str, str]] = []
    while True:
        while i < len(text) and text[i] in " \t,":
            i += 1
        if i < len(text) and text[i] == "}":
            return labels, text[i + 1:]
        m = _LABEL.match(text, i)
        if not m:
            return None
        key = m.group(0)
        i = m.end()
        while i < len(text) and text[i] in " \t":
            i += 1
        if text[i:i + 2] != '="':
            return None
        i += 2
        value: list[str] = []
        while i < len(text) and text[i] != '"':
            if text[i] == "\\" and i + 1 < len(text):
                value.append(text[i:i + 2])
                i += 2
            else:
                value.append(text[i])
                i += 1
        if i >= len(text):
            return None
        labels.append((key, _unescape("".join(value), label=True)))
        i += 1


def _read_existing(path: Path) -> tuple[list[Sample], dict[str, str]]:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return [], {}
    return parse(text)


# ----- writing ------------------------------------------------------------------------------


@contextlib.contextmanager
def _dir_lock(directory: Path) -> Iterator[None]:
    """Serialise read-merge-write cycles of concurrent runs (a snapshot ending while a check
    ends) with a lock on the directory itself: no extra file for the collector to see."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        # readable by the collector, which usually runs as another user; nothing secret inside
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _format_value(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value.is_integer() and abs(value) < 2 ** 53:
        return str(int(value))
    return repr(value)


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _escape_help(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n")


def _unescape(value: str, label: bool) -> str:
    out: list[str] = []
    i = 0
    while i < len(value):
        c = value[i]
        if c == "\\" and i + 1 < len(value):
            nxt = value[i + 1]
            if nxt == "n":
                out.append("\n")
            elif nxt == "\\" or (label and nxt == '"'):
                out.append(nxt)
            else:
                out.append(c + nxt)
            i += 2
        else:
            out.append(c)
            i += 1
    return "".join(out)
