"""The files of an output directory: their names, atomic writes, and the path checks that keep a
run to its own regular files (the base of `_store`; the layout is described there).

Every file is written to a temporary `<name>.tmp-<pid>-<8 hex digits>` in its own folder,
flushed, fsynced and renamed over its final name (`atomic_write`), so a final name only ever
holds a whole file. Control files and the folders above them are resolved by `resolve` without
following symbolic links: a symlinked or non-regular one is refused with StoreError."""

import os
import re
import secrets
import stat
from collections.abc import Callable
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

# `<name>.tmp-<pid>-<8 hex>`; `<name>.tmp<pid>` is what earlier versions wrote.
_TEMPORARY = re.compile(r"^(?P<name>.+)\.tmp(-\d+-[0-9a-f]{8}|\d+)$")
# The names a run writes in OUT itself and in OUT/chunks/<group> (their temporaries, and only
# theirs, are removed; a non-empty OUT holding only these is a run of this library).
_RUN_NAMES = re.compile(
    r"^(config\.yaml|dataset\.nc|\.lock|chunks|params\.eqx|checkpoint\.eqx|metrics\.json"
    r"|[\w.+-]+\.png|[\w.+-]+\.pdf|[\w.+-]+\.svg|[\w.+-]+\.gif|[\w.+-]+\.mp4)$"
)
# Open control files without following a symbolic link, and without blocking on a FIFO.
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)

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


# ------------------------------------------------------------------------------- path checks


def resolve(out: Path, relative_path: str | os.PathLike) -> Path:
    """`out/relative_path`, refused (StoreError) if it or a folder between it and `out` is a
    symbolic link, or if it exists and is not a regular file."""
    relative = PurePosixPath(relative_path)
    if relative.is_absolute() or ".." in relative.parts or not relative.parts:
        raise ValueError(
            f"{relative_path!r} must be a path relative to --out {str(out)!r}, "
            "without '..' (e.g. chunk_path(group, index))."
        )
    path = out
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
                f"{str(path)!r} in --out {str(out)!r} is {kind}; a run reads and "
                "writes only its own regular files and folders there and never follows a "
                "link. Remove it (the run recreates what it needs), or use another --out."
            )
    return out.joinpath(*relative.parts)


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


def _as_int(value) -> int | None:
    try:
        return int(np.asarray(value).item())
    except (TypeError, ValueError):
        return None


def _describe(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}"
