"""Progress reporting, one protocol for every stage.

A stage reports as ``with progress.stage("Loading", total) as advance: advance(1)``.  The
pipeline never prints; the CLI passes a rich-backed reporter, library callers and tests the
silent :data:`QUIET`.
"""

from __future__ import annotations

import contextlib
from typing import Callable, ContextManager, Iterator, Protocol


class Progress(Protocol):
    def stage(self, name: str, total: int) -> ContextManager[Callable[[int], None]]: ...

    def warn(self, message: str) -> None:
        """Say something the user must know now, before the work goes on (a checkpoint left
        out): shown even when progress bars are not."""


class Quiet:
    """Reports nothing."""

    @contextlib.contextmanager
    def stage(self, name: str, total: int) -> Iterator[Callable[[int], None]]:
        yield lambda n=1: None

    def warn(self, message: str) -> None:
        pass


QUIET = Quiet()


class RichProgress:
    """Rich progress bars, one per stage, on stderr (``quiet``: none).  ``detail``, when
    given, is called at each refresh for a last column (the bytes fetched so far)."""

    def __init__(self, quiet: bool, detail: Callable[[], str] | None = None):
        from rich.console import Console

        self.console = Console(stderr=True, quiet=quiet)
        self.detail = detail

    def warn(self, message: str) -> None:
        import sys

        sys.stderr.write(f"warning: {message}\n")
        sys.stderr.flush()

    @contextlib.contextmanager
    def stage(self, name: str, total: int):
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn,
                                   TextColumn, TimeElapsedColumn, TimeRemainingColumn)
        from rich.text import Text

        columns = [TextColumn("{task.description:<28}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn(), TimeRemainingColumn()]
        if self.detail is not None:
            detail = self.detail

            class Detail(ProgressColumn):
                def render(self, task):
                    return Text(detail())

            columns.append(Detail())
        with Progress(*columns, console=self.console, transient=False) as bar:
            task = bar.add_task(name, total=total)
            yield lambda n=1: bar.advance(task, n)
