"""Progress for long commands: a rich bar in a terminal, a few plain lines otherwise."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator


@contextlib.contextmanager
def progress_reporter(title: str, every_s: float = 10.0
                      ) -> Iterator[Callable[[int, int], None]]:
    """Yield ``report(done, total)``: a live bar on a terminal (stderr), else a line every
    ``every_s`` seconds and at the end, so logs of batch jobs stay short."""
    if sys.stderr.isatty():
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TimeRemainingColumn(), transient=True) as bar:
            task = bar.add_task(title, total=None)

            def report(done: int, total: int) -> None:
                bar.update(task, completed=done, total=total)

            yield report
        return
    last = [0.0]

    def report(done: int, total: int) -> None:
        now = time.monotonic()
        if done >= total or now - last[0] >= every_s:
            last[0] = now
            print(f"{title}: {done:,}/{total:,}", file=sys.stderr, flush=True)

    yield report
