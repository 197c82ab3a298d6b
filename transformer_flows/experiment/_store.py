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
"""

import contextlib
import contextvars
import datetime
import errno
import fcntl
import hashlib
import json
import math
import os
import re
import secrets
import socket
import stat
import sys
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path, PurePosixPath
from typing import IO

import numpy as np
import xarray as xr

ENGINE = "h5netcdf"
CONFIG_FILE = "config.yaml"
DATASET_FILE = "dataset.nc"
LOCK_FILE = ".lock"
CHUNKS_DIR = "chunks"
COMBO_DIM = "combo"
FINGERPRINT_HEADER = "# fingerprint: "
# Attributes this module adds to every chunk (and strips again on read).
FINGERPRINT_ATTR = "fingerprint"
COMPLETE_ATTR = "complete"
NUM_COMBOS_ATTR = "num_combos"
_STORE_ATTRS = (FINGERPRINT_ATTR, COMPLETE_ATTR, NUM_COMBOS_ATTR)

# `<name>.tmp-<pid>-<8 hex>`; `<name>.tmp<pid>` is what earlier versions wrote.
_TEMPORARY = re.compile(r"^(?P<name>.+)\.tmp(-\d+-[0-9a-f]{8}|\d+)$")
# The names a run writes in OUT itself and in OUT/chunks/<group> (their temporaries, and only
# theirs, are removed; a non-empty OUT holding only these is a run of this library).
_RUN_NAMES = re.compile(
    r"^(config\.yaml|dataset\.nc|\.lock|chunks|params\.eqx|checkpoint\.eqx|metrics\.json"
    r"|[\w.+-]+\.png|[\w.+-]+\.pdf|[\w.+-]+\.svg|[\w.+-]+\.gif|[\w.+-]+\.mp4)$"
)
# The files a run writes in OUT/chunks/<group>: chunks and the claims of a distributed run.
CLAIM_SUFFIX = ".claim"
_CLAIM_NAME = re.compile(r"^chunk_\d{5,}\.nc\.claim$")
_CHUNK_FILE = re.compile(r"^chunk_\d{5,}\.nc(\.claim)?$")
_ALLOW_NONEMPTY: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "transformer_flows_allow_nonempty_out", default=False
)
# Open control files without following a symbolic link, and without blocking on a FIFO.
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)


@contextlib.contextmanager
def allow_nonempty_out() -> Iterator[None]:
    """Within the block, a run may claim a non-empty --out that holds no run of this library
    (the command line's `--allow-nonempty-out`). Its files are left alone."""
    token = _ALLOW_NONEMPTY.set(True)
    try:
        yield
    finally:
        _ALLOW_NONEMPTY.reset(token)


# What opening a damaged HDF5/netCDF file raises: h5py reports a bad superblock or a truncated
# file as OSError, a failed metadata checksum as KeyError (h5py maps HDF5 errors onto builtin
# exceptions); h5netcdf and xarray raise ValueError/TypeError/IndexError on malformed netCDF
# structure (dimension scales, attributes), and RuntimeError escapes some HDF5 code paths. Any
# of these while reading one of our own files means the file is damaged, not that the code is.
_DAMAGED_FILE_ERRORS = (OSError, KeyError, ValueError, TypeError, IndexError, RuntimeError)


class StoreError(ValueError):
    """The output directory cannot be used as asked; the message names the path and the fix."""


class StoreWarning(UserWarning):
    """A stored file was not trusted (damaged, stale or incomplete) and will be recomputed."""


def fingerprint(payload: Mapping) -> str:
    """The sha256 (hex) of a canonical JSON text of `payload`.

    Callers pass the resolved numerics of the config (everything that changes the numbers:
    model, sweep, solver, precision, seeds — not names, descriptions or plot settings) plus the
    inputs of what is fingerprinted (for a chunk: its group, index, length and the values of
    the axes it covers). Keys are sorted, floats are written with `repr` (so exact: 0.1 and
    0.1 + 1e-17 differ only if they are different floats), tuples are lists and numpy scalars
    and arrays become Python numbers and lists. Note that 1 and 1.0 are different values.

    Values must be mappings with string keys, lists, tuples, strings, ints, floats, bools,
    None, numpy scalars or numpy arrays; anything else raises TypeError naming its key path.
    """
    if not isinstance(payload, Mapping):
        raise TypeError(
            f"fingerprint() takes a mapping of plain values, got {type(payload).__name__}; "
            "pass e.g. {'config': numerics, 'chunk': inputs}."
        )
    text = json.dumps(
        _canonical(payload, "payload"), sort_keys=True, separators=(",", ":"), allow_nan=True
    )
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _canonical(value, where: str):
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)  # 'nan', 'inf', '-inf'
    if isinstance(value, np.ndarray):
        return _canonical(value.tolist(), where)
    if isinstance(value, np.generic):
        return _canonical(value.item(), where)
    if isinstance(value, Mapping):
        for key in value:
            if not isinstance(key, str):
                raise TypeError(
                    f"fingerprint(): key {key!r} at {where} is a {type(key).__name__}; keys "
                    "must be strings (convert it with str(), as the config does)."
                )
        return {key: _canonical(item, f"{where}[{key!r}]") for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_canonical(item, f"{where}[{i}]") for i, item in enumerate(value)]
    raise TypeError(
        f"fingerprint(): {where} is a {type(value).__name__} ({value!r:.60}); pass plain "
        "values (str, int, float, bool, None, lists, mappings, numpy arrays)."
    )


def chunk_path(group: str, index: int) -> PurePosixPath:
    """Relative path of chunk `index` of `group` (a name such as a program's shape label)."""
    if not group or "/" in group or group in (".", ".."):
        raise ValueError(f"chunk group {group!r} must be a non-empty folder name without '/'.")
    return PurePosixPath(CHUNKS_DIR, group, f"chunk_{index:05d}.nc")


# ---------------------------------------------------------------------------------- atomic I/O


def _temporary_for(path: Path) -> Path:
    """A new, empty, unique temporary file beside `path` (created here, so no writer shares)."""
    while True:
        temporary = path.with_name(f"{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
        try:
            os.close(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
        except FileExistsError:
            continue
        return temporary


def _fsync_file(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _fsync_directory(path: Path) -> None:
    """Make a rename in `path` durable (best effort: some file systems refuse it)."""
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def _commit(path: Path, write_temporary: Callable[[Path], None]) -> None:
    """Write `path` through `write_temporary(temporary_path)`, fsync it and rename it into place.

    On any error the temporary is removed and `path` keeps its previous content."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = _temporary_for(path)
    try:
        write_temporary(temporary)
        _fsync_file(temporary)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)


def atomic_write(path: str | os.PathLike, writer: Callable[[IO[bytes]], object]) -> None:
    """Write `path` atomically: `writer(f)` writes into a binary file `f` opened on a temporary
    beside `path`, which is then flushed, fsynced and renamed over `path`. Readers see the old
    file or the whole new one, never a part; a crash leaves at most a temporary
    (`<name>.tmp-<pid>-<hex>`), removed by `RunDirectory.remove_temporaries`.

    For `eqx.tree_serialise_leaves(f, tree)`, `np.save(f, array)`, `f.write(data)`."""

    def write(temporary: Path) -> None:
        with open(temporary, "wb") as file:
            writer(file)

    _commit(Path(path), write)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` atomically (see `atomic_write`)."""
    atomic_write(path, lambda file: file.write(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` (UTF-8) to `path` atomically (see `atomic_write`)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_to_netcdf(path: str | os.PathLike, dataset: xr.Dataset) -> None:
    """Write `dataset` to `path` as netCDF-4 (h5netcdf) atomically (see `atomic_write`)."""
    _commit(Path(path), lambda temporary: dataset.to_netcdf(temporary, engine=ENGINE))


def _probe_attrs(path: Path) -> dict:
    """The root attributes of an HDF5 file, read with h5py alone.

    Opening a damaged file with h5netcdf directly can fail half-way through its constructor
    and leave an object whose `__del__` raises (an unraisable AttributeError); probing the
    superblock and root attributes with h5py first keeps such files away from h5netcdf."""
    import h5py

    with h5py.File(path, "r") as file:
        return {key: file.attrs[key] for key in file.attrs}


def _open_loaded(path: Path) -> xr.Dataset:
    """The dataset in `path`, fully loaded into memory, with the file closed again."""
    with xr.open_dataset(path, engine=ENGINE) as dataset:
        return dataset.load()


# ------------------------------------------------------------------------------ run directory


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
        self._lock_descriptor: int | None = None
        self._shared = False
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
        return self._lock_descriptor is not None

    @property
    def shared(self) -> bool:
        """Whether the lock held is the shared lock of one process of a distributed run."""
        return self.locked and self._shared

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
        if self.out.is_dir() and not os.path.lexists(self.out / LOCK_FILE):
            self._refuse_foreign()  # before creating anything in a folder that is not ours
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            descriptor = os.open(self.out / LOCK_FILE, os.O_RDWR | os.O_CREAT | _NOFOLLOW, 0o644)
        except OSError as err:
            if err.errno == errno.ELOOP or (self.out / LOCK_FILE).is_symlink():
                raise StoreError(
                    f"{str(self.out / LOCK_FILE)!r} is a symbolic link; the lock file is never "
                    "followed (its target would be overwritten). Remove the link, or use "
                    "another --out."
                ) from None
            raise StoreError(
                f"cannot create the lock file in --out {str(self.out)!r} ({err.strerror}); "
                "pass a directory you can write to."
            ) from err
        if not stat.S_ISREG(os.fstat(descriptor).st_mode):
            os.close(descriptor)
            raise StoreError(
                f"{str(self.out / LOCK_FILE)!r} is not a regular file; remove it (a run "
                "creates its own lock file), or use another --out."
            )
        try:
            fcntl.flock(descriptor, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except OSError as err:
            holder = _read_holder(descriptor)
            os.close(descriptor)
            if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise StoreError(
                    f"cannot lock {str(self.out / LOCK_FILE)!r} ({err.strerror}); the file "
                    "system may not support flock: use a local directory for --out."
                ) from err
            raise StoreError(
                f"--out {str(self.out)!r} is in use by another run ({holder}). Wait for it to "
                "finish or stop it, then rerun with the same --out to resume; or use another "
                "--out. (A run that was killed releases the directory by itself.)"
            ) from None
        self._lock_descriptor = descriptor
        self._shared = shared
        try:
            if not shared:  # the processes of a distributed run would overwrite each other
                _write_holder(descriptor)
            yield self
        finally:
            self._lock_descriptor = None
            self._shared = False
            if not shared:
                try:
                    os.ftruncate(descriptor, 0)
                except OSError:
                    pass
            os.close(descriptor)  # closing the only descriptor releases the flock

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
        path = self._path(CONFIG_FILE)
        if not path.exists():
            self._refuse_foreign()
        else:
            previous = _header_fingerprint(path)
            if previous != config_fingerprint:
                from ._config_diff import describe_differences

                recorded = f"fingerprint {previous[:12]}…" if previous else "no fingerprint line"
                raise StoreError(
                    f"--out {str(self.out)!r} holds a run of a different config ({path}: "
                    f"{recorded}; this config: {config_fingerprint[:12]}…); resuming would mix "
                    "results. Use a new --out, or delete that directory."
                    + describe_differences(path.read_text(errors="replace"), config_text)
                )
        atomic_write_text(path, f"{FINGERPRINT_HEADER}{config_fingerprint}\n{config_text}")

    def _refuse_foreign(self) -> None:
        """Refuse a non-empty `out` holding files a run does not write (unless allowed)."""
        if _ALLOW_NONEMPTY.get() or os.path.lexists(self.out / CONFIG_FILE):
            return
        foreign = sorted(
            name
            for name in os.listdir(self.out)
            if not _RUN_NAMES.match(name)
            and not (_TEMPORARY.match(name) and _RUN_NAMES.match(_TEMPORARY.match(name)["name"]))
        )
        if foreign:
            shown = ", ".join(repr(name) for name in foreign[:3])
            more = f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
            raise StoreError(
                f"--out {str(self.out)!r} is not empty and holds no run of transformer-flows "
                f"(no {CONFIG_FILE}; found {shown}{more}). A run writes only its own files, "
                "but it will not take over a folder it did not create: use a new or empty "
                "--out, or pass --allow-nonempty-out (Python: `with allow_nonempty_out():`) "
                "to claim it anyway (nothing there is deleted)."
            )

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
        folders = [(self.out, _RUN_NAMES)]
        chunks = self.out / CHUNKS_DIR
        if _is_real_directory(chunks):
            folders += [
                (chunks / group, _CHUNK_FILE)
                for group in sorted(os.listdir(chunks))
                if _is_real_directory(chunks / group)
            ]
        removed = []
        for folder, finals in folders:
            for name in sorted(os.listdir(folder)):
                match = _TEMPORARY.match(name)
                path = folder / name
                stale_claim = finals is _CHUNK_FILE and _CLAIM_NAME.match(name)
                if (stale_claim or (match and finals.match(match["name"]))) and _is_regular(path):
                    path.unlink(missing_ok=True)
                    removed.append(path)
        return removed

    # ------------------------------------------------------------------------------- chunks

    def _path(self, relative_path: str | os.PathLike) -> Path:
        """`out/relative_path`, refused (StoreError) if it or a folder between it and `out`
        is a symbolic link, or if it exists and is not a regular file."""
        relative = PurePosixPath(relative_path)
        if relative.is_absolute() or ".." in relative.parts or not relative.parts:
            raise ValueError(
                f"{relative_path!r} must be a path relative to --out {str(self.out)!r}, "
                "without '..' (e.g. chunk_path(group, index))."
            )
        path = self.out
        for depth, part in enumerate(relative.parts, start=1):
            path = path / part
            try:
                mode = os.lstat(path).st_mode
            except (FileNotFoundError, NotADirectoryError):
                break
            last = depth == len(relative.parts)
            expected = stat.S_ISREG(mode) if last else stat.S_ISDIR(mode)
            if stat.S_ISLNK(mode) or not expected:
                kind = "a symbolic link" if stat.S_ISLNK(mode) else "of an unexpected kind"
                raise StoreError(
                    f"{str(path)!r} in --out {str(self.out)!r} is {kind}; a run reads and "
                    "writes only its own regular files and folders there and never follows a "
                    "link. Remove it (the run recreates what it needs), or use another --out."
                )
        return self.out.joinpath(*relative.parts)

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
        marked = dataset.copy()
        marked.attrs.update(
            {
                FINGERPRINT_ATTR: fingerprint,
                COMPLETE_ATTR: 1,
                NUM_COMBOS_ATTR: int(dataset.sizes[COMBO_DIM]),
            }
        )
        atomic_to_netcdf(path, marked)
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
        path = self._path(relative_path)
        if not path.exists():
            return None
        try:
            attrs = _probe_attrs(path)
        except _DAMAGED_FILE_ERRORS as err:
            return self._reject(path, f"corrupt (cannot open it: {_describe(err)})", reject)
        problem = _chunk_problem(attrs, fingerprint, expected_size)
        if problem:
            return self._reject(path, problem, reject)
        try:
            dataset = _open_loaded(path)
        except _DAMAGED_FILE_ERRORS as err:
            return self._reject(path, f"corrupt (cannot read it: {_describe(err)})", reject)
        size = dataset.sizes.get(COMBO_DIM)
        if size != _as_int(attrs[NUM_COMBOS_ATTR]):
            return self._reject(
                path,
                f"corrupt ({size} combos stored, {attrs[NUM_COMBOS_ATTR]} recorded)",
                reject,
            )
        for name in _STORE_ATTRS:
            dataset.attrs.pop(name, None)
        return dataset

    def _reject(self, path: Path, reason: str, reject: bool = True) -> None:
        if not reject:
            return None
        warnings.warn(
            f"chunk {str(path)!r} is {reason}; it is deleted and will be recomputed.",
            StoreWarning,
            stacklevel=3,
        )
        path.unlink(missing_ok=True)
        return None

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
        path = self._path(PurePosixPath(relative_path).with_name(chunk.name + CLAIM_SUFFIX))
        while True:
            prepared = _temporary_for(path)
            descriptor = os.open(prepared, os.O_RDWR | _NOFOLLOW)
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
                _write_holder(descriptor)
                os.link(prepared, path)
            except FileExistsError:
                os.close(descriptor)
                descriptor = None
            except BaseException:
                os.close(descriptor)
                raise
            finally:
                prepared.unlink(missing_ok=True)
            if descriptor is None:
                descriptor = self._take_stale_claim(path)
                if descriptor is False:
                    continue  # the claim went away meanwhile: create it again
                if descriptor is None:
                    return None
            for name in sorted(os.listdir(chunk.parent)):
                match = _TEMPORARY.match(name)
                if match and match["name"] == chunk.name and _is_regular(chunk.parent / name):
                    (chunk.parent / name).unlink(missing_ok=True)
            return ChunkClaim(path, descriptor)

    def _take_stale_claim(self, path: Path) -> "int | None | bool":
        """The flocked descriptor of the claim at `path` if its owner died (stale), None if a
        live process holds it, False if it vanished or was replaced (try again)."""
        try:
            descriptor = os.open(path, os.O_RDWR | _NOFOLLOW)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(descriptor)
            if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                return None
            raise StoreError(
                f"cannot lock the chunk claim {str(path)!r} ({err.strerror}); a distributed "
                "run needs a shared file system with flock (NFSv4, Lustre mounted with "
                "-o flock, GPFS)."
            ) from err
        opened = os.fstat(descriptor)
        try:
            current = os.lstat(path)
        except FileNotFoundError:
            current = None
        if current is None or (current.st_dev, current.st_ino) != (opened.st_dev, opened.st_ino):
            os.close(descriptor)  # released by its owner (and perhaps claimed again) meanwhile
            return False
        _write_holder(descriptor)
        return descriptor

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


class ChunkClaim:
    """This process's ownership of one chunk of a shared run (`RunDirectory.claim_chunk`)."""

    def __init__(self, path: Path, descriptor: int):
        self.path = path
        self._descriptor: int | None = descriptor

    def __repr__(self) -> str:
        return f"ChunkClaim({str(self.path)!r})"

    def release(self) -> None:
        """Give the chunk up: remove the claim file, then drop its flock (idempotent)."""
        if self._descriptor is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        finally:
            os.close(self._descriptor)
            self._descriptor = None


# ---------------------------------------------------------------------------------- helpers


def _write_holder(descriptor: int) -> None:
    holder = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(sys.argv),
    }
    data = json.dumps(holder).encode("utf-8")
    os.ftruncate(descriptor, 0)
    os.pwrite(descriptor, data, 0)


def _read_holder(descriptor: int) -> str:
    """'pid P on HOST, started T, running CMD' from the lock file (best effort)."""
    try:
        holder = json.loads(os.pread(descriptor, 65536, 0).decode("utf-8"))
        return (
            f"pid {holder['pid']} on {holder['host']}, started {holder['started']}, "
            f"running {holder['command']!r}"
        )
    except (OSError, ValueError, KeyError, TypeError):
        # The holder may have taken the lock but not yet written its details.
        return (
            "pid unknown: the holder has not written its details yet, or it is a distributed "
            "run (--distributed), whose processes share the directory and write none"
        )


def _is_real_directory(path: Path) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def _is_regular(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def _header_fingerprint(path: Path) -> str | None:
    descriptor = os.open(path, os.O_RDONLY | _NOFOLLOW)
    with os.fdopen(descriptor, encoding="utf-8", errors="replace") as file:
        first = file.readline(4096).rstrip("\n")
    if first.startswith(FINGERPRINT_HEADER):
        return first[len(FINGERPRINT_HEADER) :].strip() or None
    return None


def _chunk_problem(attrs: Mapping, fingerprint: str, expected_size: int | None) -> str | None:
    """Why a chunk with these root attrs cannot be trusted (None if it can)."""
    if _as_int(attrs.get(COMPLETE_ATTR)) != 1:
        return "incomplete (no completeness marker: written by an older version or by hand)"
    stored = attrs.get(FINGERPRINT_ATTR)
    if isinstance(stored, bytes):
        stored = stored.decode("utf-8", errors="replace")
    if stored != fingerprint:
        return (
            f"stale: written by a different config or from other inputs (fingerprint "
            f"{str(stored)[:12]}…, expected {fingerprint[:12]}…)"
        )
    recorded = _as_int(attrs.get(NUM_COMBOS_ATTR))
    if recorded is None:
        return "incomplete (no combo count recorded)"
    if expected_size is not None and recorded != expected_size:
        return f"of the wrong length ({recorded} combos, expected {expected_size})"
    return None


def _as_int(value) -> int | None:
    try:
        return int(np.asarray(value).item())
    except (TypeError, ValueError):
        return None


def _describe(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}"
