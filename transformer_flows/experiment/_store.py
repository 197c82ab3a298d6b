"""Storage of the experiment layer: file names, atomic writes, fingerprints, locking, resume.

This is the only module of the experiment layer that touches an output directory; commands and
runners ask it (STYLE.md §8.3). Layout of an output directory OUT (the `--out` of a command):

- `OUT/.lock`: the lock file. A run holds an exclusive `fcntl.flock` on it for its whole life
  and writes its pid, host, start time and command line into it (JSON), so a second run on the
  same OUT is refused with a message that names the holder. The lock belongs to the open file,
  so it dies with its process: a killed run never leaves OUT locked. The file itself stays
  (deleting a lock file races with its next holder); its content is emptied on release.
- `OUT/config.yaml`: the resolved config of the run. Its first line is a comment
  `# fingerprint: <sha256>` (`FINGERPRINT_HEADER`), the fingerprint of the config's numerics;
  a later run with another fingerprint is refused, one with the same fingerprint resumes (and
  rewrites the file, so presentation-only keys may change).
- `OUT/chunks/<group>/chunk_#####.nc` (`chunk_path`): one netCDF-4 file per finished chunk,
  with the attributes `fingerprint` (of the config's numerics and the chunk's inputs),
  `complete` (= 1) and `num_combos` (its length along the `combo` dimension). A chunk is trusted
  only if it opens, carries `complete = 1`, the expected fingerprint and the expected number of
  combos; otherwise it is reported (`StoreWarning`), deleted and recomputed by the caller. So
  deleting config.yaml and rerunning with another seed recomputes every chunk instead of
  silently reusing the old ones.
- `OUT/dataset.nc`: the assembled dataset (`write_dataset` / `read_dataset`).
- Several writers (the processes of one `jax.distributed` run, docs/scaling.md): each holds a
  *shared* flock on `OUT/.lock` (`lock(shared=True)`), which excludes plain runs, and writes a
  chunk only while it owns `OUT/chunks/<group>/chunk_#####.nc.claim` (`claim_chunk`): a file
  linked into place atomically (fails if it exists) while its owner holds an flock on it. A
  claim whose flock is free belongs to a killed process and is taken over; a plain run removes
  such leftovers with the temporaries.
- Every file is written to a temporary `<name>.tmp-<pid>-<8 hex digits>` in its own folder,
  flushed, fsynced and renamed over its final name (`atomic_write`), so a final name only ever
  holds a whole file. Temporaries left by killed writers are removed by
  `RunDirectory.remove_temporaries` under the lock (no live writer can own one then): only in
  the folders a run writes (OUT itself and OUT/chunks/<group>), only for the names it writes
  there, and only regular files. A user's `OUT/notes/draft.tmp1` is never touched.

A run touches only its own files (docs/security.md):

- A non-empty OUT that holds no run of this library (no `config.yaml`, and entries other than
  the ones a run writes) is refused: `claim` names what it found. `allow_nonempty_out()` (the
  command line's `--allow-nonempty-out`) claims it anyway; nothing there is deleted.
- Control files (`.lock`, `config.yaml`, chunks, `dataset.nc`) and the folders above them in
  OUT are opened without following symbolic links: a symlinked or non-regular one is refused
  with StoreError (never followed, never deleted).

Storage format: netCDF-4 through h5netcdf (HDF5 via h5py): one self-contained file per chunk,
so a chunk is committed by one rename. HDF5 checksums its metadata, so a truncated or
overwritten header is detected; raw array bytes carry no checksum.

The module is a façade: `RunDirectory` composes the lock (`_run_lock`), the claim of the
directory by a config and its fingerprints (`_run_claim`) and the chunk store (`_chunk_store`),
over the file names, atomic writes and path checks of `_run_files`. Every name those modules
define for the rest of the package is importable from here.
"""

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import xarray as xr

from . import _chunk_store, _run_claim
from ._chunk_store import (
    _CHUNK_FILE as _CHUNK_FILE,
    _CLAIM_NAME as _CLAIM_NAME,
    _STORE_ATTRS as _STORE_ATTRS,
    CLAIM_SUFFIX as CLAIM_SUFFIX,
    COMPLETE_ATTR as COMPLETE_ATTR,
    FINGERPRINT_ATTR as FINGERPRINT_ATTR,
    NUM_COMBOS_ATTR as NUM_COMBOS_ATTR,
    ChunkClaim as ChunkClaim,
    _chunk_problem as _chunk_problem,
    _take_stale_claim as _take_stale_claim,
    chunk_path as chunk_path,
)
from ._run_claim import (
    _ALLOW_NONEMPTY as _ALLOW_NONEMPTY,
    FINGERPRINT_HEADER as FINGERPRINT_HEADER,
    _canonical as _canonical,
    _header_fingerprint as _header_fingerprint,
    allow_nonempty_out as allow_nonempty_out,
    fingerprint as fingerprint,
)
from ._run_files import (
    _DAMAGED_FILE_ERRORS as _DAMAGED_FILE_ERRORS,
    _NOFOLLOW as _NOFOLLOW,
    _RUN_NAMES as _RUN_NAMES,
    _TEMPORARY as _TEMPORARY,
    CHUNKS_DIR as CHUNKS_DIR,
    COMBO_DIM as COMBO_DIM,
    CONFIG_FILE as CONFIG_FILE,
    DATASET_FILE as DATASET_FILE,
    ENGINE as ENGINE,
    LOCK_FILE as LOCK_FILE,
    StoreError as StoreError,
    StoreWarning as StoreWarning,
    _as_int as _as_int,
    _commit as _commit,
    _describe as _describe,
    _fsync_directory as _fsync_directory,
    _fsync_file as _fsync_file,
    _is_real_directory as _is_real_directory,
    _is_regular as _is_regular,
    _open_loaded as _open_loaded,
    _probe_attrs as _probe_attrs,
    _temporary_for as _temporary_for,
    atomic_to_netcdf as atomic_to_netcdf,
    atomic_write as atomic_write,
    atomic_write_bytes as atomic_write_bytes,
    atomic_write_text as atomic_write_text,
    resolve,
)
from ._run_lock import (
    RunLock as RunLock,
    _read_holder as _read_holder,
    _write_holder as _write_holder,
)


class RunDirectory:
    """One output directory `out` of a run: lock, config claim, chunks, dataset.

    Typical use by a runner:

        run = RunDirectory(out)
        with run.lock():
            run.claim(config.to_yaml(), fingerprint(numerics))
            run.remove_temporaries()
            for group, index, inputs in chunks:
                key = fingerprint({"config": numerics, "chunk": inputs})
                piece = run.read_chunk(chunk_path(group, index), key, expected_size=size)
                if piece is None:
                    run.write_chunk(chunk_path(group, index), compute(inputs), key)
            run.write_dataset(assembled)

    Methods that write or delete (`claim`, `remove_temporaries`, `write_chunk`, `read_chunk`,
    `write_dataset`, `write_text`, `write_bytes`) must be called inside `lock()`;
    `read_dataset` need not.
    """

    def __init__(self, out: str | os.PathLike):
        self.out = Path(out)
        self._lock = RunLock(self.out)
        if self.out.exists() and not self.out.is_dir():
            raise StoreError(
                f"--out {str(self.out)!r} is an existing file, not a directory; pass a "
                "directory path (new or holding an earlier run)."
            )
        for parent in self.out.parents:
            if parent.exists() and not parent.is_dir():
                raise StoreError(
                    f"--out {str(self.out)!r} lies under {str(parent)!r}, which is a file, "
                    "so the directory cannot be created; pass a path whose parents are "
                    "directories."
                )

    def __repr__(self) -> str:
        return f"RunDirectory({str(self.out)!r})"

    @property
    def locked(self) -> bool:
        """Whether this object holds the lock now."""
        return self._lock.held

    @property
    def shared(self) -> bool:
        """Whether the lock held is the shared lock of one process of a distributed run."""
        return self.locked and self._lock.shared

    # ------------------------------------------------------------------------------- locking

    @contextlib.contextmanager
    def lock(self, *, shared: bool = False) -> Iterator["RunDirectory"]:
        """Hold the exclusive lock on `out/.lock` (creating `out`) for the `with` block.

        Raises StoreError at once (no waiting) if another process holds it; the message names
        the holder's pid, host, start time and command. The lock is an `fcntl.flock`, released
        by the kernel when its process ends, however it ends.

        `shared=True` is for the processes of one distributed run (several writers): each
        holds a shared lock, so they exclude a plain run (and it them) but not each other, and
        chunks are then written only under a chunk claim (`claim_chunk`)."""
        if self.locked:
            raise RuntimeError(
                f"{self!r} already holds the lock on --out {str(self.out)!r}; take it once "
                "(`with run.lock():`) around all the work."
            )
        with self._lock.hold(shared=shared):
            yield self

    def _require_lock(self, method: str) -> None:
        if not self.locked:
            raise RuntimeError(
                f"RunDirectory.{method} on --out {str(self.out)!r} needs the lock: call it "
                "inside `with run.lock():`."
            )

    # ---------------------------------------------------------------------------- the claim

    def claim(self, config_text: str, config_fingerprint: str) -> None:
        """Make `out` the directory of the run with this config, or refuse.

        If `out/config.yaml` exists and records another fingerprint (or none), raise
        StoreError; otherwise (new directory, or a resumed run of the same numerics) write
        `config.yaml` = the header line `# fingerprint: <config_fingerprint>` + `config_text`,
        atomically. If config.yaml was deleted, the chunks' own fingerprints still keep other
        configs' chunks out."""
        self._require_lock("claim")
        _run_claim.claim_config(self.out, self._path(CONFIG_FILE), config_text, config_fingerprint)

    def _refuse_foreign(self) -> None:
        """Refuse a non-empty `out` holding files a run does not write (unless allowed)."""
        _run_claim.refuse_foreign(self.out)

    def config_fingerprint(self) -> str | None:
        """The fingerprint recorded in `out/config.yaml` (None if the file or line is absent)."""
        path = self._path(CONFIG_FILE)
        return _header_fingerprint(path) if path.exists() else None

    def remove_temporaries(self) -> list[Path]:
        """Delete the temporaries (`<name>.tmp-<pid>-<hex>`) that killed writers of a run left:
        only in `out` itself and in `out/chunks/<group>/`, only for names a run writes there
        (config.yaml, dataset.nc, figures, fit files; chunk_#####.nc), only regular files.

        Safe only under the exclusive lock, which keeps every live writer of this directory
        out; under a shared lock (a distributed run) it removes nothing, and each process
        removes the temporaries of a chunk when it claims that chunk (`claim_chunk`). Claim
        files left by killed processes of a distributed run are removed too."""
        self._require_lock("remove_temporaries")
        if self.shared:
            return []
        return _chunk_store.remove_temporaries(self.out)

    # ------------------------------------------------------------------------------- chunks

    def _path(self, relative_path: str | os.PathLike) -> Path:
        """`out/relative_path`, refused (StoreError) if it or a folder between it and `out`
        is a symbolic link, or if it exists and is not a regular file."""
        return resolve(self.out, relative_path)

    def write_chunk(
        self, relative_path: str | os.PathLike, dataset: xr.Dataset, fingerprint: str
    ) -> Path:
        """Write a finished chunk atomically with attrs `fingerprint`, `complete` = 1 and
        `num_combos` (its length along `combo`); returns its path."""
        self._require_lock("write_chunk")
        if COMBO_DIM not in dataset.dims:
            raise ValueError(
                f"chunk {str(relative_path)!r} has dims {tuple(dataset.dims)}; a chunk is "
                f"indexed by a {COMBO_DIM!r} dimension (one entry per combo)."
            )
        path = self._path(relative_path)
        _chunk_store.write_chunk(path, dataset, fingerprint)
        return path

    def read_chunk(
        self,
        relative_path: str | os.PathLike,
        fingerprint: str,
        expected_size: int | None = None,
        *,
        reject: bool = True,
    ) -> xr.Dataset | None:
        """The stored chunk, loaded into memory (file closed), or None if it must be computed.

        None if the file is missing. If it is damaged (does not open or read: a truncated or
        overwritten file), incomplete (no `complete` = 1), stale (another fingerprint: made
        by another config or from other inputs) or of the wrong length (`expected_size`
        combos, when given), warn with StoreWarning naming the file and the reason, delete the
        file and return None; with `reject=False` just return None (a process of a shared run
        that does not own the chunk leaves its file alone). The returned dataset has the
        store's attrs removed, so it equals what was passed to `write_chunk`."""
        self._require_lock("read_chunk")
        return _chunk_store.read_chunk(
            self._path(relative_path), fingerprint, expected_size, reject
        )

    # ---------------------------------------------------------------------- chunk claims

    def claim_chunk(self, relative_path: str | os.PathLike) -> "ChunkClaim | None":
        """Own the chunk at `relative_path` (to compute and write it), or None if a live process
        owns it. For the processes of a distributed run, which share `out` (`lock(shared=True)`).

        The claim is the file `<chunk>.claim`, created atomically (a `link` of a prepared file,
        which fails if the name exists: the O_EXCL of network file systems) while this process
        holds an `fcntl.flock` on it. The flock dies with its process, so a claim whose flock
        can be taken belongs to a killed process: it is stale and is taken over. The owner
        writes the chunk, then `release()`s the claim (unlinks the file, drops the flock).
        Temporaries of the chunk left by killed writers are removed on claiming. The caller
        must read the chunk again after claiming it: another process may have finished it
        in between."""
        self._require_lock("claim_chunk")
        chunk = self._path(relative_path)
        chunk.parent.mkdir(parents=True, exist_ok=True)
        claim = self._path(PurePosixPath(relative_path).with_name(chunk.name + CLAIM_SUFFIX))
        return _chunk_store.claim_chunk(chunk, claim)

    # ------------------------------------------------------------------- dataset and files

    def write_dataset(self, dataset: xr.Dataset, name: str = DATASET_FILE) -> Path:
        """Write the assembled dataset to `out/name` atomically; returns its path."""
        self._require_lock("write_dataset")
        path = self._path(name)
        atomic_to_netcdf(path, dataset)
        return path

    def read_dataset(self, name: str = DATASET_FILE) -> xr.Dataset:
        """The dataset in `out/name`, loaded into memory (file closed).

        StoreError if it is missing (the run has not finished) or damaged."""
        path = self._path(name)
        if not path.exists():
            raise StoreError(
                f"{str(path)!r} does not exist: the run in --out {str(self.out)!r} has not "
                "finished. Rerun it with the same --out to resume."
            )
        try:
            _probe_attrs(path)
            return _open_loaded(path)
        except _DAMAGED_FILE_ERRORS as err:
            raise StoreError(
                f"{str(path)!r} is corrupt ({_describe(err)}). Delete it and rerun with the "
                "same --out: it is rebuilt from the finished chunks."
            ) from err

    def write_text(self, relative_path: str | os.PathLike, text: str) -> Path:
        """Write `out/relative_path` (UTF-8 text) atomically; returns its path."""
        self._require_lock("write_text")
        path = self._path(relative_path)
        atomic_write_text(path, text)
        return path

    def write_bytes(self, relative_path: str | os.PathLike, data: bytes) -> Path:
        """Write `out/relative_path` (bytes) atomically; returns its path."""
        self._require_lock("write_bytes")
        path = self._path(relative_path)
        atomic_write_bytes(path, data)
        return path
