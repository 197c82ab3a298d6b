"""The skeleton of a chunked run, shared by the sweep and the mean-field runner.

A chunked run is a list of `ChunkTask`s, a function that computes one chunk, and a function that
assembles the finished chunks into the dataset. Everything else is the same for every kind of
run and lives here once: the lock of the output directory, its claim by the config (another
config is refused), the resume from verified chunk files, the progress bar, the count that
Ctrl-C reports, the write of `dataset.nc`, and `SolveFailures` after writing when a solve failed
and `solver.allow_failures` is false. The lock and claim alone are `claimed_run`, which the
theory, pretrained and fit runners use too."""

import contextlib
from collections.abc import Callable, Hashable, Iterator, Sequence
from pathlib import Path

import xarray as xr
from tqdm.auto import tqdm

from ._errors import SolveFailures
from ._interrupt import reported
from ._schedule import ChunkTask, compute_chunks, finished_chunks
from ._store import RunDirectory, fingerprint


@contextlib.contextmanager
def claimed_run(
    out: str | Path, config, numerics: dict, *, shared: bool = False
) -> Iterator[RunDirectory]:
    """`out` as the `RunDirectory` of `config`'s run for the `with` block: locked (`shared`:
    by one of the processes of a distributed run), claimed by `fingerprint(numerics)` (a
    directory of another config is refused) and rid of the temporaries killed writers left."""
    run = RunDirectory(out)
    with run.lock(shared=shared):
        run.claim(config.to_yaml(), fingerprint(numerics))
        run.remove_temporaries()
        yield run


def run_chunks(
    config,
    out: str | Path,
    tasks: Sequence[ChunkTask],
    compute: Callable[[ChunkTask, object, tqdm], xr.Dataset],
    assemble: Callable[[dict[Hashable, xr.Dataset]], xr.Dataset],
    failure_message: Callable[[xr.Dataset], str],
    *,
    numerics: dict,
    unit: str,
    progress: bool,
    devices: Sequence,
    process_index: int = 0,
    process_count: int = 1,
    on_chunk: Callable[[int], None] | None = None,
) -> xr.Dataset:
    """Compute the `tasks` of `config` into directory `out`, resuming from verified chunks.

    **Arguments:**
    - `config`: a validated config (its `name`, `to_yaml()` and `solver.allow_failures`).
    - `out`: the output directory, locked for the run (shared by the processes of a
      distributed run, `process_count > 1`) and claimed by `fingerprint(numerics)`.
    - `tasks`: every chunk of the run; those whose file is verified are not computed again.
    - `compute(task, device, bar)`: the dataset of one chunk, on `device` (`bar`: the progress
      bar, e.g. for `compile_notice`).
    - `assemble(pieces)`: the run's dataset from {task.key: chunk}; its attribute
      `failed_solves` counts the failed solves.
    - `failure_message(dataset)`: the message of `SolveFailures` when solves failed.
    - `numerics`: the config's `numerics()`, whose fingerprint claims `out`.
    - `unit`: the progress bar's unit.
    - `progress`: show the progress bar.
    - `devices`, `process_index`, `process_count`: as for `compute_chunks`.
    - `on_chunk`: called with the running count of chunks computed in this call, after each
      chunk is safely on disk.

    **Returns:** the dataset of `assemble`, written to `out/dataset.nc` by process 0. Raises
    `SolveFailures` after writing if a solve failed and `config.solver.allow_failures` is false,
    and `RunInterrupted` on Ctrl-C with the number of chunks on disk."""
    with (
        claimed_run(out, config, numerics, shared=process_count > 1) as run,
        reported(run.out, "chunks") as saved,
    ):
        pieces, todo = finished_chunks(run, tasks)
        saved.total = len(tasks)
        saved.recount = _recount(run, todo, pieces, len(tasks))
        computed = 0
        with tqdm(
            total=len(tasks),
            initial=len(pieces),
            unit=unit,
            disable=not progress,
            desc=config.name,
            dynamic_ncols=True,
        ) as bar:

            def done(task: ChunkTask, computed_here: bool) -> None:
                nonlocal computed
                bar.update(1)
                if computed_here:
                    computed += 1
                    if on_chunk is not None:
                        on_chunk(computed)

            pieces |= compute_chunks(
                run,
                todo,
                lambda task, device: compute(task, device, bar),
                devices=devices,
                process_index=process_index,
                process_count=process_count,
                on_done=done,
            )
        dataset = assemble(pieces)
        if process_index == 0:  # one process writes the dataset; all return it
            run.write_dataset(dataset)
    failed = int(dataset.attrs["failed_solves"])
    if failed and not config.solver.allow_failures:
        raise SolveFailures(failure_message(dataset), dataset)
    return dataset


def _recount(run: RunDirectory, todo: list[ChunkTask], pieces: dict, total: int):
    """The number of chunks on disk, counted when Ctrl-C comes: those found valid, those
    computed, and one whose file was renamed into place (whole) before it was counted. A
    stale file of a chunk still to do is not counted."""

    def on_disk(task: ChunkTask) -> bool:
        return (run.out / task.path).is_file()

    stale = {task.key for task in todo if on_disk(task)}
    return lambda: (
        total
        - len(todo)
        + sum(task.key in pieces or (task.key not in stale and on_disk(task)) for task in todo)
    )
