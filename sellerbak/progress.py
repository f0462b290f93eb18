"""Progress display: a rich progress bar on a terminal, silence otherwise.

Under systemd, in scripts, with -q or --json nothing is drawn; the commands print their one-line
summary instead.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


class SilentProgress:
    def dataset(self, source: str, name: str) -> None:
        pass

    def records(self, n: int) -> None:
        pass

    def uploaded(self, nbytes: int) -> None:
        pass


class RichProgress:
    def __init__(self, progress: Any) -> None:
        self._p = progress
        self._task: Any = None
        self._upload = progress.add_task("uploaded", total=None, unit="bytes")

    def dataset(self, source: str, name: str) -> None:
        if self._task is not None:
            self._p.update(self._task, visible=True)
        self._task = self._p.add_task(f"{source}: {name}", total=None)

    def records(self, n: int) -> None:
        if self._task is not None:
            self._p.advance(self._task, n)

    def uploaded(self, nbytes: int) -> None:
        self._p.advance(self._upload, nbytes)


@contextmanager
def make_progress(settings: Any) -> Iterator[Any]:
    if settings.quiet or settings.json or not sys.stderr.isatty():
        yield SilentProgress()
        return
    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    columns = (SpinnerColumn(), TextColumn("{task.description}"),
               TextColumn("{task.completed:,.0f}"), TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True), transient=False) as progress:
        yield RichProgress(progress)
