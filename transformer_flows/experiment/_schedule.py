"""Which device and which process computes which chunk of a sweep (no numerics here).

A sweep is a list of chunks, each computed by one call of a compiled program. `compute_chunks`
spreads them:

- **over the local devices**: one worker thread per device, each computing whole chunks on its
  own device (the program is the same per chunk whatever the device count, so the numbers are
  bitwise those of one device). With one device the chunks run in the calling thread, as before.
- **over the processes of a distributed run** (`jax.distributed`): every process shares the
  output directory (`RunDirectory.lock(shared=True)`) and computes only chunks it has claimed
  (`RunDirectory.claim_chunk`: an atomic claim file under an flock, taken over when its owner
  died). Each process starts at its own offset in the chunk list, so they rarely contend, and
  after its own pass it waits for the chunks others hold, taking over any whose owner died.

The calling thread does all the file work (claims, chunk writes, the progress bar, `on_chunk`);
workers only compute. Every chunk file is checked (fingerprint, length) before it is trusted.
"""

import concurrent.futures
import dataclasses
import time
from collections.abc import Callable, Hashable, Sequence

import xarray as xr

from ._store import ChunkClaim, RunDirectory

# How often a process waiting for chunks that other processes compute looks at the directory.
POLL_SECONDS = 0.25


@dataclasses.dataclass(frozen=True)
class ChunkTask:
    """One chunk: its key (for the caller), its path in the run directory, the fingerprint its
    file must carry and its number of combos."""

    key: Hashable
    path: str
    fingerprint: str
    size: int


def finished_chunks(
    run: RunDirectory, tasks: Sequence[ChunkTask]
) -> tuple[dict[Hashable, xr.Dataset], list[ChunkTask]]:
    """({task.key: chunk} of the tasks whose verified file exists, the other tasks in order).

    In an exclusive run a damaged or stale file is reported and deleted here; a shared run (a
    distributed run's process) leaves it for the process that claims the chunk."""
    pieces: dict[Hashable, xr.Dataset] = {}
    todo: list[ChunkTask] = []
    for task in tasks:
        piece = _read(run, task, reject=not run.shared)
        if piece is None:
            todo.append(task)
        else:
            pieces[task.key] = piece
    return pieces, todo


def compute_chunks(
    run: RunDirectory,
    todo: Sequence[ChunkTask],
    compute: Callable[[ChunkTask, object], xr.Dataset],
    *,
    devices: Sequence,
    process_index: int = 0,
    process_count: int = 1,
    on_done: Callable[[ChunkTask, bool], None] | None = None,
) -> dict[Hashable, xr.Dataset]:
    """The chunks of `todo` (the unfinished tasks of `finished_chunks`), each computed with
    `compute(task, device)` (in a worker thread when there are several devices) and written,
    or, in a shared run, read once another process has written it. Returns {task.key: chunk}.

    `run` must be locked; `run.shared` (a distributed run) makes every write go through a
    chunk claim and makes this process wait for the chunks other processes hold (taking over
    those whose owner died). `on_done(task, computed_here)` is called for every chunk, after a
    chunk computed here is safely on disk; an exception there stops the run (chunks in flight
    on other devices are finished and discarded; nothing is half-written).
    """
    if not devices:
        raise ValueError("compute_chunks needs at least one device; got an empty list.")
    todo = list(todo)
    if process_count > 1 and todo:
        # Each process starts at its own share of the list, then goes on round it.
        offset = process_index * len(todo) // process_count
        todo = todo[offset:] + todo[:offset]
    pieces: dict[Hashable, xr.Dataset] = {}
    _Scheduler(run, compute, devices, pieces, on_done).run(todo)
    return pieces


def _read(run: RunDirectory, task: ChunkTask, *, reject: bool) -> xr.Dataset | None:
    return run.read_chunk(task.path, task.fingerprint, task.size, reject=reject)


class _Scheduler:
    """Hands chunks to idle devices; the calling thread claims, writes and reports."""

    def __init__(self, run, compute, devices, pieces, on_done):
        self.run_directory = run
        self.compute = compute
        self.devices = list(devices)
        self.pieces = pieces
        self.on_done = on_done
        self.claims: dict[Hashable, ChunkClaim] = {}

    def run(self, todo: list[ChunkTask]) -> None:
        pending = list(todo)  # not yet started here, in this process's order
        executor = (
            concurrent.futures.ThreadPoolExecutor(len(self.devices), "chunk-device")
            if len(self.devices) > 1
            else None
        )
        in_flight: dict[concurrent.futures.Future, tuple[ChunkTask, object]] = {}
        idle = list(self.devices)
        try:
            while pending or in_flight:
                started, held = False, []
                while idle and pending:
                    task = pending.pop(0)
                    if not self._own(task):
                        if task.key not in self.pieces:
                            held.append(task)  # a live process of this run computes it
                        continue
                    started = True
                    device = idle.pop(0)
                    if executor is None:
                        self._save(task, self.compute(task, device))
                        idle.append(device)
                    else:
                        in_flight[executor.submit(self.compute, task, device)] = (task, device)
                pending = held + pending
                if in_flight:
                    done, _ = concurrent.futures.wait(
                        in_flight, return_when=concurrent.futures.FIRST_COMPLETED
                    )
                    for future in done:
                        task, device = in_flight.pop(future)
                        self._save(task, future.result())
                        idle.append(device)
                elif pending and not started:
                    # Everything left is held by other processes: wait for their files (or
                    # for their claims to go stale, if they die).
                    time.sleep(POLL_SECONDS)
        finally:
            if executor is not None:
                for future in in_flight:
                    future.cancel()
                executor.shutdown(wait=True)
            for claim in self.claims.values():
                claim.release()
            self.claims.clear()

    def _own(self, task: ChunkTask) -> bool:
        """Whether this process is to compute `task` now (claimed if the run is shared). A
        chunk finished meanwhile by another process is read into `pieces` instead."""
        run = self.run_directory
        if not run.shared:
            return True
        piece = _read(run, task, reject=False)
        if piece is not None:  # finished by another process: no claim needed
            self._read_elsewhere(task, piece)
            return False
        claim = run.claim_chunk(task.path)
        if claim is None:
            return False  # a live process computes it
        piece = _read(run, task, reject=True)  # finished just before we claimed it?
        if piece is not None:
            claim.release()
            self._read_elsewhere(task, piece)
            return False
        self.claims[task.key] = claim
        return True

    def _save(self, task: ChunkTask, piece: xr.Dataset) -> None:
        self.run_directory.write_chunk(task.path, piece, task.fingerprint)
        claim = self.claims.pop(task.key, None)
        if claim is not None:
            claim.release()
        self.pieces[task.key] = piece
        if self.on_done is not None:
            self.on_done(task, True)

    def _read_elsewhere(self, task: ChunkTask, piece: xr.Dataset) -> None:
        self.pieces[task.key] = piece
        if self.on_done is not None:
            self.on_done(task, False)


def initialize_distributed(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> tuple[int, int]:
    """Start JAX's distributed runtime (`jax.distributed.initialize`) for a multi-process
    sweep; returns (process index, process count). Call it before any other JAX work.

    Without arguments the coordinator, process count and id come from the cluster environment
    JAX detects (SLURM, Open MPI, TPU pods, ...); otherwise pass all three: `coordinator`
    "HOST:PORT" of process 0, `num_processes` N >= 1 and this process's `process_id` in
    [0, N)."""
    import jax

    given = (coordinator, num_processes, process_id)
    if any(value is not None for value in given) and None in given:
        raise ValueError(
            f"pass all of coordinator, num_processes and process_id (got coordinator="
            f"{coordinator!r}, num_processes={num_processes!r}, process_id={process_id!r}), "
            "or none of them to take them from the cluster environment (e.g. SLURM)."
        )
    if coordinator is not None:
        host, _, port = coordinator.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(
                f"coordinator {coordinator!r} is not HOST:PORT; pass e.g. 127.0.0.1:12345 or "
                "node001:12345 (the host of process 0 and a free port)."
            )
        if not isinstance(num_processes, int) or num_processes < 1:
            raise ValueError(f"num_processes must be an integer >= 1, got {num_processes!r}.")
        if not isinstance(process_id, int) or not 0 <= process_id < num_processes:
            raise ValueError(
                f"process_id must be an integer in [0, {num_processes}), got {process_id!r}."
            )
    jax.distributed.initialize(
        coordinator_address=coordinator, num_processes=num_processes, process_id=process_id
    )
    return jax.process_index(), jax.process_count()
