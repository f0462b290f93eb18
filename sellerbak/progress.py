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

from rich.markup import escape
from rich.progress import ProgressColumn
from rich.text import Text

from sellerbak.termsafe import safe


class SilentProgress:
    def dataset(self, source: str, name: str, expected: int | None = None) -> None:
        pass

    def bar(self, description: str, total: int | None, unit: str = "records"
            ) -> Callable[[int], None]:
        """A progress row for one step (restore, check, drill); returns its `advance`."""
        return _ignore

    def records(self, n: int) -> None:
        pass

    def uploaded(self, nbytes: int) -> None:
        pass

    def api_source(self, totals: Callable[[], tuple[int, int, float]]) -> None:
        """An API source's running totals (requests, throttled answers, seconds waited)."""


def _ignore(_n: int) -> None:
    pass


class RichProgress:
    """Per-dataset rows: records, and for API sources the requests and throttling waits.

    An API source registers a `totals` callable (`api_source`) that reads counters it keeps in
    memory shared with the export process (the export may run in a forked child); a small
    thread polls it and writes the current dataset's share beside its record count."""

    POLL_SECONDS = 0.25

    def __init__(self, progress: Any) -> None:
        self._p = progress
        self._task: Any = None
        self._upload: Any = None
        self._totals: Callable[[], tuple[int, int, float]] | None = None
        self._base: tuple[int, int, float] = (0, 0, 0.0)
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None

    def dataset(self, source: str, name: str, expected: int | None = None) -> None:
        """A row per dataset. `expected` (the previous snapshot's count) gives the bar its
        length and so an ETA; the count may end above or below it."""
        if self._task is not None:
            self._show()
            task = self._p.tasks[self._task]
            self._p.update(self._task, total=task.completed, visible=True)
        # the description is rich markup: names are escaped for it and for the terminal
        self._task = self._p.add_task(escape(safe(f"{source}: {name}")), total=expected or None,
                                      extra="", unit="records")
        if self._totals is not None:
            self._base = self._totals()

    def bar(self, description: str, total: int | None, unit: str = "records"
            ) -> Callable[[int], None]:
        task = self._p.add_task(description, total=total or None, extra="", unit=unit)
        return lambda n: self._p.advance(task, n)

    def records(self, n: int) -> None:
        if self._task is not None:
            self._p.advance(self._task, n)

    def uploaded(self, nbytes: int) -> None:
        if self._upload is None:
            self._upload = self._p.add_task("uploaded", total=None, unit="bytes", extra="")
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
    from rich.progress import (
        BarColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(bar_width=24),
               _AmountColumn(), _RateColumn(), TextColumn("ETA"),
               TimeRemainingColumn(compact=True), TextColumn("{task.fields[extra]}"),
               TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True), transient=False) as progress:
        shown = RichProgress(progress)
        try:
            yield shown
        finally:
            shown.close()


def _amount(value: float, unit: str) -> str:
    if unit == "bytes":
        from sellerbak.records import human_bytes

        return human_bytes(int(value))
    return f"{value:,.0f}"


class _AmountColumn(ProgressColumn):
    """`1,234 / 5,000 records` or `12.0 MiB uploaded`: units from the task."""

    def render(self, task: Any) -> Text:
        unit = task.fields.get("unit", "records")
        done = _amount(task.completed, unit)
        if task.total is not None:
            return Text(f"{done} / {_amount(task.total, unit)}")
        return Text(done if unit == "bytes" else f"{done} {unit}")


class _RateColumn(ProgressColumn):
    """Records or bytes per second, averaged over rich's recent window."""

    def render(self, task: Any) -> Text:
        speed = task.finished_speed or task.speed
        if not speed:
            return Text("")
        unit = task.fields.get("unit", "records")
        return Text(f"{_amount(speed, unit)}/s" if unit == "bytes" else f"{speed:,.0f}/s")
