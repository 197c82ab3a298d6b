"""The lock of an output directory: an `fcntl.flock` on `OUT/.lock` (layout: see `_store`).

A run holds an exclusive flock on it for its whole life and writes its pid, host, start time
and command line into it (JSON), so a second run on the same OUT is refused with a message
that names the holder. The lock belongs to the open file, so it dies with its process: a
killed run never leaves OUT locked. The file itself stays (deleting a lock file races with its
next holder); its content is emptied on release. The processes of one distributed run each
hold a *shared* flock, which excludes plain runs but not each other."""

import contextlib
import datetime
import errno
import fcntl
import json
import os
import socket
import stat
import sys
from collections.abc import Iterator
from pathlib import Path

from ._run_claim import refuse_foreign
from ._run_files import _NOFOLLOW, LOCK_FILE, StoreError


class RunLock:
    """The flock on `out/.lock` of one `RunDirectory` (held or not)."""

    def __init__(self, out: Path):
        self.out = out
        self.descriptor: int | None = None
        self.shared = False

    @property
    def held(self) -> bool:
        """Whether this object holds the lock now."""
        return self.descriptor is not None

    @contextlib.contextmanager
    def hold(self, *, shared: bool = False) -> Iterator[None]:
        """Hold the lock (creating `out`) for the `with` block; StoreError at once (no waiting)
        if another process holds it. See `RunDirectory.lock`."""
        if self.out.is_dir() and not os.path.lexists(self.out / LOCK_FILE):
            refuse_foreign(self.out)  # before creating anything in a folder that is not ours
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
        self.descriptor = descriptor
        self.shared = shared
        try:
            if not shared:  # the processes of a distributed run would overwrite each other
                _write_holder(descriptor)
            yield
        finally:
            self.descriptor = None
            self.shared = False
            if not shared:
                try:
                    os.ftruncate(descriptor, 0)
                except OSError:
                    pass
            os.close(descriptor)  # closing the only descriptor releases the flock


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
