"""The storage module: lock, claim, fingerprinted chunks, atomic writes (no JAX needed)."""

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import xarray as xr

from transformer_flows.experiment import _store as store
from transformer_flows.experiment._store import (
    RunDirectory,
    StoreError,
    StoreWarning,
    chunk_path,
    fingerprint,
)

CHUNK = chunk_path("n8_d3_identity_chunk4", 0)

# A child process that imports the store modules from their folder argv[1] without running the
# package's __init__ files (no JAX import: starts fast), then acts on the directory argv[2]:
# "lock" holds the lock until killed; "die-writing" dies in the middle of an atomic write of
# argv[3].
_CHILD = """
import importlib, os, sys, types
for name, folder in (("transformer_flows", os.path.dirname(sys.argv[1])),
                     ("transformer_flows.experiment", sys.argv[1])):
    package = types.ModuleType(name)
    package.__path__ = [folder]
    sys.modules[name] = package
store = importlib.import_module("transformer_flows.experiment._store")
if sys.argv[3] == "lock":
    with store.RunDirectory(sys.argv[2]).lock():
        print("locked", flush=True)
        sys.stdin.read()
else:
    def die(file):
        file.write(b"half of a chunk")
        file.flush()
        os._exit(9)
    store.atomic_write(os.path.join(sys.argv[2], sys.argv[3]), die)
"""


def _child(out: Path, *args: str, **kwargs) -> subprocess.Popen:
    command = [sys.executable, "-c", _CHILD, os.path.dirname(store.__file__), str(out), *args]
    return subprocess.Popen(command, text=True, **kwargs)


def _chunk(size: int = 4, seed: int = 0) -> xr.Dataset:
    rng = np.random.default_rng(seed)
    return xr.Dataset(
        {
            "energy": (("combo", "time"), rng.normal(size=(size, 3))),
            "cluster_count": (("combo", "time"), rng.integers(1, 8, (size, 3)).astype(np.int16)),
            "succeeded": (("combo",), np.ones(size, np.int8)),
        },
        coords={"combo": np.arange(size)},
        attrs={"compute_seconds": 1.25},
    )


def _temporaries(folder: Path) -> list[Path]:
    return [path for path in folder.rglob("*") if ".tmp" in path.name]


@pytest.fixture
def run(tmp_path):
    directory = RunDirectory(tmp_path / "out")
    with directory.lock():
        yield directory


# ------------------------------------------------------------------------------ fingerprint


def test_fingerprint_is_canonical_and_exact():
    payload = {"beta": [0.5, 1.0], "seed": 0, "solver": {"rtol": 1e-6, "scheme": "tsit5"}}
    reordered = {"solver": {"scheme": "tsit5", "rtol": 1e-6}, "seed": 0, "beta": (0.5, 1.0)}
    assert re.fullmatch(r"[0-9a-f]{64}", fingerprint(payload))
    assert fingerprint(payload) == fingerprint(reordered)
    assert fingerprint(payload) == fingerprint({**payload, "beta": np.array([0.5, 1.0])})
    assert fingerprint({"x": np.float32(0.5)}) == fingerprint({"x": 0.5})
    # Positive controls: any change of a value changes the fingerprint.
    assert fingerprint(payload) != fingerprint({**payload, "seed": 1})
    assert fingerprint({"x": 0.1}) != fingerprint({"x": np.nextafter(0.1, 1.0)})
    assert fingerprint({"x": 1}) != fingerprint({"x": 1.0})


def test_fingerprint_refuses_other_values_naming_the_key():
    with pytest.raises(TypeError, match=r"payload\['solver'\]\['f'\] is a object"):
        fingerprint({"solver": {"f": object()}})
    with pytest.raises(TypeError, match="keys must be strings"):
        fingerprint({"n": {8: 1}})


# --------------------------------------------------------------------------- the directory


def test_out_that_is_a_file_is_refused(tmp_path):
    path = tmp_path / "results.nc"
    path.write_text("not a directory")
    with pytest.raises(StoreError, match=r"results\.nc.*is an existing file"):
        RunDirectory(path)


def test_out_under_a_file_is_refused(tmp_path):
    path = tmp_path / "results.nc"
    path.write_text("not a directory")
    with pytest.raises(StoreError, match=r"lies under .*results\.nc', which is a file"):
        RunDirectory(path / "run" / "deeper")


def test_construction_creates_nothing(tmp_path):
    RunDirectory(tmp_path / "new" / "out")
    assert not (tmp_path / "new").exists()


def test_lock_refuses_a_second_holder_and_dies_with_it(tmp_path):
    out = tmp_path / "out"
    holder = _child(out, "lock", stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(StoreError, match="in use by another run") as refused:
            with RunDirectory(out).lock():
                pass
        assert f"pid {holder.pid}" in str(refused.value)
        assert "started" in str(refused.value)
    finally:
        holder.send_signal(signal.SIGKILL)  # killed, not asked: the lock must go with it
        holder.wait(timeout=30)
        holder.stdin.close()
        holder.stdout.close()
    # Positive control: once the holder is dead, the lock is free.
    directory = RunDirectory(out)
    with directory.lock():
        assert directory.locked
        assert f'"pid": {os.getpid()}' in (out / ".lock").read_text()
    assert not directory.locked
    assert (out / ".lock").read_text() == ""  # released: no stale holder details


def test_lock_is_not_taken_twice_and_writes_need_it(tmp_path):
    directory = RunDirectory(tmp_path / "out")
    with pytest.raises(RuntimeError, match=r"write_chunk .* needs the lock"):
        directory.write_chunk(CHUNK, _chunk(), "f")
    with directory.lock():
        with pytest.raises(RuntimeError, match="already holds the lock"):
            with directory.lock():
                pass
        directory.write_chunk(CHUNK, _chunk(), "f")  # positive control


# -------------------------------------------------------------------------------- the claim


def test_claim_accepts_the_same_config_and_refuses_another(run):
    run.claim("name: a\nseed: 0\n", "1" * 64)
    text = (run.out / "config.yaml").read_text()
    assert text == f"# fingerprint: {'1' * 64}\nname: a\nseed: 0\n"
    assert run.config_fingerprint() == "1" * 64
    # The same numerics under another name resume (and the new text is kept).
    run.claim("name: b\nseed: 0\n", "1" * 64)
    assert (run.out / "config.yaml").read_text().endswith("name: b\nseed: 0\n")
    with pytest.raises(StoreError, match="holds a run of a different config") as refused:
        run.claim("name: b\nseed: 1\n", "2" * 64)
    assert str(run.out) in str(refused.value)
    assert "use a new --out" in str(refused.value).lower()
    assert run.config_fingerprint() == "1" * 64  # the refused claim wrote nothing


def test_claim_refuses_a_config_without_fingerprint(run):
    run.out.mkdir(exist_ok=True)
    (run.out / "config.yaml").write_text("name: old\n")
    with pytest.raises(StoreError, match="no fingerprint line"):
        run.claim("name: old\n", "1" * 64)


# ----------------------------------------------------------------------------------- chunks


def test_chunk_round_trip(run):
    written = _chunk()
    path = run.write_chunk(CHUNK, written, "f" * 64)
    assert path == run.out / "chunks" / "n8_d3_identity_chunk4" / "chunk_00000.nc"
    with h5py.File(path, "r") as file:
        assert file.attrs["fingerprint"] == "f" * 64
        assert int(np.asarray(file.attrs["complete"]).item()) == 1
        assert int(np.asarray(file.attrs["num_combos"]).item()) == 4
    read = run.read_chunk(CHUNK, "f" * 64, expected_size=4)
    xr.testing.assert_identical(read, written)
    assert read["cluster_count"].dtype == np.int16
    # Fully loaded and closed: HDF5 refuses to open a file for writing that is still open.
    with h5py.File(path, "r+"):
        pass


def test_missing_chunk_is_none_without_warning(run):
    assert run.read_chunk(CHUNK, "f" * 64) is None


def test_truncated_chunk_is_reported_and_removed(run):
    path = run.write_chunk(CHUNK, _chunk(), "f" * 64)
    os.truncate(path, path.stat().st_size // 2)
    with pytest.warns(StoreWarning, match=r"chunk_00000\.nc.* is corrupt"):
        assert run.read_chunk(CHUNK, "f" * 64, expected_size=4) is None
    assert not path.exists()


def test_overwritten_header_is_reported_and_removed(run):
    path = run.write_chunk(CHUNK, _chunk(), "f" * 64)
    with open(path, "r+b") as file:
        file.write(b"\0" * 64)
    with pytest.warns(StoreWarning, match=r"chunk_00000\.nc.* is corrupt"):
        assert run.read_chunk(CHUNK, "f" * 64) is None
    assert not path.exists()


def test_stale_chunk_is_reported_and_removed(run):
    path = run.write_chunk(CHUNK, _chunk(), "e" * 64)
    with pytest.warns(StoreWarning, match=r"chunk_00000\.nc.* is stale: written by a different"):
        assert run.read_chunk(CHUNK, "f" * 64, expected_size=4) is None
    assert not path.exists()


def test_chunk_of_wrong_length_is_reported_and_removed(run):
    path = run.write_chunk(CHUNK, _chunk(size=3), "f" * 64)
    with pytest.warns(StoreWarning, match=r"wrong length \(3 combos, expected 4\)"):
        assert run.read_chunk(CHUNK, "f" * 64, expected_size=4) is None
    assert not path.exists()


def test_chunk_without_marker_is_reported_and_removed(run):
    path = run.out / CHUNK
    path.parent.mkdir(parents=True)
    _chunk().to_netcdf(path, engine="h5netcdf")  # as earlier versions wrote chunks
    with pytest.warns(StoreWarning, match="incomplete"):
        assert run.read_chunk(CHUNK, "f" * 64) is None
    assert not path.exists()


def test_chunk_paths_stay_inside_out(run):
    with pytest.raises(ValueError, match="relative to --out"):
        run.write_chunk("../elsewhere.nc", _chunk(), "f" * 64)
    with pytest.raises(ValueError, match="folder name"):
        chunk_path("a/b", 0)


# ------------------------------------------------------------------------ atomic writes


def test_temporaries_of_a_dead_writer_are_removed_but_not_finished_chunks(run):
    finished = run.write_chunk(CHUNK, _chunk(), "f" * 64)
    target = Path("chunks") / "n8_d3_identity_chunk4" / "chunk_00001.nc"
    writer = _child(run.out, str(target))
    assert writer.wait(timeout=60) == 9
    (leftover,) = _temporaries(run.out)
    assert re.fullmatch(r"chunk_00001\.nc\.tmp-\d+-[0-9a-f]{8}", leftover.name)
    assert leftover.read_bytes() == b"half of a chunk"
    assert not (run.out / target).exists()  # the final name never held the half file

    assert run.remove_temporaries() == [leftover]
    assert _temporaries(run.out) == []
    assert finished.exists()
    xr.testing.assert_identical(run.read_chunk(CHUNK, "f" * 64, expected_size=4), _chunk())


def test_writes_leave_no_temporary(run):
    run.write_chunk(CHUNK, _chunk(), "f" * 64)
    run.write_dataset(_chunk())
    run.write_text("metrics.json", "{}")
    run.write_bytes("params.eqx", b"\x00\x01")
    store.atomic_write(run.out / "checkpoint.eqx", lambda file: file.write(b"weights"))
    assert _temporaries(run.out) == []
    assert (run.out / "checkpoint.eqx").read_bytes() == b"weights"


def test_failed_write_keeps_the_old_file_and_no_temporary(run):
    run.write_text("metrics.json", "old")

    def fail(file):
        file.write(b"new, half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        store.atomic_write(run.out / "metrics.json", fail)
    assert (run.out / "metrics.json").read_text() == "old"
    assert _temporaries(run.out) == []


# ---------------------------------------------------------------------------------- dataset


def test_dataset_round_trip_missing_and_corrupt(run):
    with pytest.raises(StoreError, match="has not finished.*same --out"):
        run.read_dataset()
    path = run.write_dataset(_chunk())
    assert path == run.out / "dataset.nc"
    xr.testing.assert_identical(RunDirectory(run.out).read_dataset(), _chunk())
    os.truncate(path, path.stat().st_size // 3)
    with pytest.raises(StoreError, match=r"dataset\.nc' is corrupt"):
        run.read_dataset()


def test_deleted_config_does_not_let_another_config_reuse_chunks(run):
    """The reported defect: delete config.yaml, rerun with another seed, old chunks reused."""
    seed0 = fingerprint({"config": {"seed": 0}, "chunk": {"group": "g", "index": 0}})
    seed1 = fingerprint({"config": {"seed": 1}, "chunk": {"group": "g", "index": 0}})
    run.claim("seed: 0\n", fingerprint({"seed": 0}))
    run.write_chunk(CHUNK, _chunk(), seed0)
    (run.out / "config.yaml").unlink()
    run.claim("seed: 1\n", fingerprint({"seed": 1}))  # nothing left to compare the claim with
    with pytest.warns(StoreWarning, match="stale"):
        assert run.read_chunk(CHUNK, seed1, expected_size=4) is None
