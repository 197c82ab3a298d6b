"""Ctrl-C during a run: what is saved, and how to resume.

A run writes every chunk (and a fit every checkpoint) atomically, so an interrupted run loses
only the chunk or steps in flight. `RunInterrupted` carries the count that is safely on disk,
so that the command line prints one line and exits 130 instead of a traceback."""

import contextlib
from collections.abc import Callable
from pathlib import Path


class RunInterrupted(KeyboardInterrupt):
    """A run stopped by Ctrl-C (SIGINT) with `saved` of `total` `unit` safely in `out`.

    Still a `KeyboardInterrupt`: code that does not know it stops as before."""

    def __init__(self, saved: int, total: int, unit: str, out: str | Path):
        super().__init__(saved, total, unit, str(out))
        self.saved, self.total, self.unit, self.out = saved, total, unit, Path(out)

    def __str__(self) -> str:
        return (
            f"interrupted: {self.saved}/{self.total} {self.unit} saved in {self.out}; "
            "rerun the same command to resume"
        )


class FiguresInterrupted(KeyboardInterrupt):
    """Ctrl-C while the figures of a finished run were drawn: its results (`what`) are
    complete and valid in `out`; only figures may be missing."""

    def __init__(self, what: str, out: str | Path, command: str):
        super().__init__(what, str(out), command)
        self.what, self.out, self.command = what, Path(out), command

    def __str__(self) -> str:
        return (
            f"interrupted while drawing figures: {self.what} in {self.out} is complete and "
            f"valid; {self.command} draws them"
        )


class SavedCount:
    """What a running loop has safely on disk, for `reported`: `total`, and `recount()`, which
    counts the saved items when the interrupt comes (files are renamed into place whole, so
    a file that exists is complete, even if the loop had not yet counted it)."""

    def __init__(self):
        self.total = 0
        self.recount: Callable[[], int] = lambda: 0


@contextlib.contextmanager
def reported(out: str | Path, unit: str):
    """Turn a KeyboardInterrupt in the body into `RunInterrupted`, counting what is saved with
    the yielded `SavedCount` (the body sets its `total` and `recount`)."""
    count = SavedCount()
    try:
        yield count
    except RunInterrupted:
        raise
    except KeyboardInterrupt:
        if not count.total:  # stopped before the work was counted: nothing to report
            raise
        raise RunInterrupted(count.recount(), count.total, unit, out) from None
