"""Provenance of a run's output: the config, its fingerprint, package versions, the git
commit of the code and the compute time, as dataset attributes. Shared by every kind of run
(sweeps and theory datasets in `_run`, pretrained-model datasets in `_pretrained_run`)."""

import datetime
import importlib.metadata
import json
import subprocess
from pathlib import Path

from ._store import fingerprint


def _versions() -> dict[str, str]:
    versions = {}
    for name in (
        "transformer-flows",
        "jax",
        "jaxlib",
        "diffrax",
        "equinox",
        "numpy",
        "xarray",
        "h5netcdf",
        "h5py",
        "pydantic",
    ):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def git_commit() -> str:
    """The commit of the package's checkout, with '+dirty' for uncommitted changes."""
    root = Path(__file__).resolve().parent.parent.parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


def provenance(config, compute_seconds: float, commit: str) -> dict:
    attrs = {
        "name": config.name,
        "config": config.to_yaml(),
        "fingerprint": fingerprint(config.numerics()),
        "versions": json.dumps(_versions()),
        "git_commit": commit,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "compute_seconds": compute_seconds,
        "smoke": int(config.smoke_run),
    }
    if getattr(config, "solver", None) is not None:
        attrs["solver"] = f"{config.solver.describe()}, {config.precision}"
    return attrs
