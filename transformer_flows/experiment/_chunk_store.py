"""The chunks of an output directory: `OUT/chunks/<group>/chunk_#####.nc`, their validation,
the chunk claims of a distributed run, and the removal of killed writers' leftovers (layout:
see `_store`).

A chunk carries the attributes `fingerprint` (of the config's numerics and the chunk's
inputs), `complete` (= 1) and `num_combos` (its length along the `combo` dimension); it is
trusted only if it opens, carries `complete = 1`, the expected fingerprint and the expected
number of combos; otherwise it is reported (`StoreWarning`), deleted and recomputed by the
caller. A process of a distributed run writes a chunk only while it owns
`chunk_#####.nc.claim` (`claim_chunk`): a file linked into place atomically (fails if it
exists) while its owner holds an flock on it."""

import errno
import fcntl
import os
import re
import warnings
from collections.abc import Mapping
from pathlib import Path, PurePosixPath

import xarray as xr

from ._run_files import (
    _DAMAGED_FILE_ERRORS,
    _NOFOLLOW,
    _RUN_NAMES,
    _TEMPORARY,
    CHUNKS_DIR,
    COMBO_DIM,
    StoreError,
    StoreWarning,
    _as_int,
    _describe,
    _is_real_directory,
    _is_regular,
    _open_loaded,
    _probe_attrs,
    _temporary_for,
    atomic_to_netcdf,
)
from ._run_lock import _write_holder

# Attributes this module adds to every chunk (and strips again on read).
FINGERPRINT_ATTR = "fingerprint"
COMPLETE_ATTR = "complete"
NUM_COMBOS_ATTR = "num_combos"
_STORE_ATTRS = (FINGERPRINT_ATTR, COMPLETE_ATTR, NUM_COMBOS_ATTR)
# The files a run writes in OUT/chunks/<group>: chunks and the claims of a distributed run.
CLAIM_SUFFIX = ".claim"
_CLAIM_NAME = re.compile(r"^chunk_\d{5,}\.nc\.claim$")
_CHUNK_FILE = re.compile(r"^chunk_\d{5,}\.nc(\.claim)?$")


def chunk_path(group: str, index: int) -> PurePosixPath:
    """Relative path of chunk `index` of `group` (a name such as a program's shape label)."""
    if not group or "/" in group or group in (".", ".."):
        raise ValueError(f"chunk group {group!r} must be a non-empty folder name without '/'.")
    return PurePosixPath(CHUNKS_DIR, group, f"chunk_{index:05d}.nc")


def write_chunk(path: Path, dataset: xr.Dataset, fingerprint: str) -> None:
    """Write a finished chunk to `path` atomically, marked (see `RunDirectory.write_chunk`)."""
    marked = dataset.copy()
    marked.attrs.update(
        {
            FINGERPRINT_ATTR: fingerprint,
            COMPLETE_ATTR: 1,
            NUM_COMBOS_ATTR: int(dataset.sizes[COMBO_DIM]),
        }
    )
    atomic_to_netcdf(path, marked)


def read_chunk(
    path: Path, fingerprint: str, expected_size: int | None, reject: bool
) -> xr.Dataset | None:
    """The trusted chunk at `path`, or None (see `RunDirectory.read_chunk`)."""
    if not path.exists():
        return None
    try:
        attrs = _probe_attrs(path)
    except _DAMAGED_FILE_ERRORS as err:
        return _reject(path, f"corrupt (cannot open it: {_describe(err)})", reject)
    problem = _chunk_problem(attrs, fingerprint, expected_size)
    if problem:
        return _reject(path, problem, reject)
    try:
        dataset = _open_loaded(path)
    except _DAMAGED_FILE_ERRORS as err:
        return _reject(path, f"corrupt (cannot read it: {_describe(err)})", reject)
    size = dataset.sizes.get(COMBO_DIM)
    if size != _as_int(attrs[NUM_COMBOS_ATTR]):
        return _reject(
            path,
            f"corrupt ({size} combos stored, {attrs[NUM_COMBOS_ATTR]} recorded)",
            reject,
        )
    for name in _STORE_ATTRS:
        dataset.attrs.pop(name, None)
    return dataset


def _reject(path: Path, reason: str, reject: bool = True) -> None:
    if not reject:
        return None
    warnings.warn(
        f"chunk {str(path)!r} is {reason}; it is deleted and will be recomputed.",
        StoreWarning,
        stacklevel=4,  # the caller of RunDirectory.read_chunk
    )
    path.unlink(missing_ok=True)
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


# ------------------------------------------------------------------------------ chunk claims


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


def claim_chunk(chunk: Path, path: Path) -> ChunkClaim | None:
    """Own `chunk` through the claim file `path`, or None if a live process owns it (see
    `RunDirectory.claim_chunk`); the folder of `chunk` exists."""
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
            descriptor = _take_stale_claim(path)
            if descriptor is False:
                continue  # the claim went away meanwhile: create it again
            if descriptor is None:
                return None
        for name in sorted(os.listdir(chunk.parent)):
            match = _TEMPORARY.match(name)
            if match and match["name"] == chunk.name and _is_regular(chunk.parent / name):
                (chunk.parent / name).unlink(missing_ok=True)
        return ChunkClaim(path, descriptor)


def _take_stale_claim(path: Path) -> "int | None | bool":
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


# ---------------------------------------------------------------------------- leftovers


def remove_temporaries(out: Path) -> list[Path]:
    """Delete killed writers' temporaries of the names a run writes in `out` and in
    `out/chunks/<group>/`, and stale claim files (see `RunDirectory.remove_temporaries`)."""
    folders = [(out, _RUN_NAMES)]
    chunks = out / CHUNKS_DIR
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
