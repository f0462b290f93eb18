"""Progress display: a rich progress bar on a terminal, silence otherwise.

Under systemd, in scripts, with -q or --json nothing is drawn; the commands print their one-line
summary instead.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any


class SilentProgress:
    def dataset(self, source: str, name: str) -> None:
        pass

    def records(self, n: int) -> None:
        pass

    def uploaded(self, nbytes: int) -> None:
        pass

    def api_source(self, totals: Callable[[], tuple[int, int, float]]) -> None:
        """An API source's running totals (requests, throttled answers, seconds waited)."""


class RichProgress:
    """Per-dataset rows: records, and for API sources the requests and throttling waits.

    An API source registers a `totals` callable (`api_source`) that reads counters it keeps in
    memory shared with the export process (the export may run in a forked child); a small
    thread polls it and writes the current dataset's share beside its record count."""

    POLL_SECONDS = 0.25

    def __init__(self, progress: Any) -> None:
        self._p = progress
        self._task: Any = None
        self._upload = progress.add_task("uploaded", total=None, unit="bytes", extra="")
        self._totals: Callable[[], tuple[int, int, float]] | None = None
        self._base: tuple[int, int, float] = (0, 0, 0.0)
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None

    def dataset(self, source: str, name: str) -> None:
        if self._task is not None:
            self._show()
            self._p.update(self._task, visible=True)
        self._task = self._p.add_task(f"{source}: {name}", total=None, extra="")
        if self._totals is not None:
            self._base = self._totals()

    def records(self, n: int) -> None:
        if self._task is not None:
            self._p.advance(self._task, n)

    def uploaded(self, nbytes: int) -> None:
        self._p.advance(self._upload, nbytes)

    def api_source(self, totals: Callable[[], tuple[int, int, float]]) -> None:
        self._show()
        self._totals = totals
        self._base = totals()
        if self._poller is None:
            self._poller = threading.Thread(target=self._poll, daemon=True,
                                            name="progress-api")
            self._poller.start()

    def _poll(self) -> None:
        while not self._stop.wait(self.POLL_SECONDS):
            self._show()

    def _show(self) -> None:
        totals, task = self._totals, self._task
        if totals is None or task is None:
            return
        r, t, w = (a - b for a, b in zip(totals(), self._base, strict=True))
        if r <= 0:
            return
        text = f"{int(r):,} requests"
        if t or w >= 1:
            text += f", {int(t)} throttled, {w:.0f}s waiting"
        self._p.update(task, extra=text)

    def close(self) -> None:
        self._stop.set()
        if self._poller is not None:
            self._poller.join()
        self._show()


@contextmanager
def make_progress(settings: Any) -> Iterator[Any]:
    if settings.quiet or settings.json or not sys.stderr.isatty():
        yield SilentProgress()
        return
    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    columns = (SpinnerColumn(), TextColumn("{task.description}"),
               TextColumn("{task.completed:,.0f}"), TextColumn("{task.fields[extra]}"),
               TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True), transient=False) as progress:
        shown = RichProgress(progress)
        try:
            yield shown
        finally:
            shown.close()
