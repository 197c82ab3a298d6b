"""Sweeps over several devices and several processes equal the one-device sweep bitwise.

- 4 simulated CPU devices (XLA_FLAGS must be set before JAX starts, so a fresh interpreter
  runs this file as a script: `python tests/test_scale_out.py devices OUT`).
- 2 processes of one `jax.distributed` run with a coordinator on 127.0.0.1, sharing one --out:
  one process is killed after it saved a chunk, the other is killed too, and the rerun
  resumes without losing or recomputing a saved chunk.
- The chunk claims of the store, in-process (no JAX).
"""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from transformer_flows.experiment import RunDirectory, StoreError

DEVICES = 4
ROOT = Path(__file__).resolve().parent.parent
# 3 β × 4 starts = 12 combos in chunks of 2: six chunks.
CONFIG = {
    "name": "scale",
    "model": {"field": "SA", "n": 4, "d": 3},
    "sweep": {"beta": [0.5, 2.0, 8.0], "starts": 4, "seed": 3, "chunk_size": 2},
    "time": {"t1": 2.0, "num": 3},
    "precision": "float64",
    "solver": {"rtol": 1e-8, "atol": 1e-8},
    "observables": {"names": ["energy"]},
    "figures": [],
}
NUM_CHUNKS = 6


def _environment(cache: Path, devices: int | None = None) -> dict:
    env = {key: value for key, value in os.environ.items() if key != "XLA_FLAGS"}
    if devices:
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    # The workers share a compilation cache of their own (as `transformer-flows run` does),
    # so a rerun loads its program instead of compiling it again.
    env.pop("TRANSFORMER_FLOWS_NO_CACHE", None)
    env["SCALE_OUT_TEST_CACHE"] = str(cache)
    return env


def _worker(cache: Path, *arguments, devices=None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, __file__, *map(str, arguments)],
        env=_environment(cache, devices),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _finish(process: subprocess.Popen, timeout: float = 300) -> str:
    output, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, output
    return output


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _dataset(out: Path):
    import xarray as xr

    with xr.open_dataset(out / "dataset.nc", engine="h5netcdf") as dataset:
        return dataset.load()


def _assert_bitwise_equal(dataset, reference) -> None:
    assert list(dataset.data_vars) == list(reference.data_vars)
    for name, variable in reference.data_vars.items():
        values = dataset[name].values
        assert values.dtype == variable.values.dtype, name
        assert np.array_equal(values, variable.values, equal_nan=True), name
        assert values.tobytes() == variable.values.tobytes(), name
    for name in reference.coords:
        np.testing.assert_array_equal(dataset[name].values, reference[name].values)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One interpreter with 4 simulated devices runs the sweep on device 0 alone, then on all 4."""
    folder = tmp_path_factory.mktemp("scale_out")
    output = _finish(_worker(folder / "cache", "devices", folder, devices=DEVICES))
    assert "devices used: 0,1,2,3" in output, output
    return folder


def test_four_devices_equal_one_device_bitwise(runs):
    one, four = _dataset(runs / "one"), _dataset(runs / "four")
    assert (one.attrs["devices"], one.attrs["processes"]) == (1, 1)
    assert (four.attrs["devices"], four.attrs["processes"]) == (DEVICES, 1)
    assert bool(one["succeeded"].all())
    # Energy rises along the flow (a gradient flow of E_β), so the numbers are not trivial.
    energy = one["energy"].values
    assert np.all(np.diff(energy, axis=-1) > 0)
    _assert_bitwise_equal(four, one)
    assert len(list((runs / "four").glob("chunks/*/chunk_*.nc"))) == NUM_CHUNKS


def test_killed_two_process_run_resumes_bitwise(runs, tmp_path):
    out = tmp_path / "out"
    # Process 1 kills itself (SIGKILL) once it has saved its first chunk; process 0 waits after
    # its first and is killed once process 1 is gone (JAX's health check would stop it anyway).
    port = _free_port()
    first = [_worker(runs / "cache", "process", out, port, index, "kill") for index in range(2)]
    first[1].communicate(timeout=300)
    assert first[1].returncode == -signal.SIGKILL
    first[0].send_signal(signal.SIGKILL)
    first[0].communicate(timeout=60)
    saved = {path: path.stat().st_mtime_ns for path in out.glob("chunks/*/chunk_*.nc")}
    assert sorted(path.name for path in saved) == ["chunk_00000.nc", "chunk_00003.nc"]
    assert not (out / "dataset.nc").exists()
    # A process killed while computing leaves a claim that nobody holds (stale) and perhaps a
    # temporary: plant both for a chunk not yet saved; the rerun must take the claim over.
    group = next(out.glob("chunks/*"))
    missing = next(
        group / f"chunk_{index:05d}.nc"
        for index in range(NUM_CHUNKS)
        if not (group / f"chunk_{index:05d}.nc").exists()
    )
    Path(f"{missing}.claim").write_text('{"pid": 1}')
    Path(f"{missing}.tmp-1-0123abcd").write_bytes(b"partial")

    port = _free_port()
    second = [_worker(runs / "cache", "process", out, port, index, "run") for index in range(2)]
    outputs = [_finish(process) for process in second]
    assert all("finished" in output for output in outputs), outputs
    dataset = _dataset(out)
    assert (dataset.attrs["devices"], dataset.attrs["processes"]) == (2, 2)
    _assert_bitwise_equal(dataset, _dataset(runs / "one"))
    # No chunk lost, none recomputed, nothing left over.
    chunks = sorted(out.glob("chunks/*/chunk_*.nc"))
    assert len(chunks) == NUM_CHUNKS
    assert {path: path.stat().st_mtime_ns for path in saved} == saved
    assert not list(out.glob("chunks/*/*.claim")) and not list(out.glob("chunks/*/*.tmp*"))


# ------------------------------------------------------------------ claims, without JAX


def test_chunk_claims_are_exclusive_and_stale_ones_are_taken_over(tmp_path):
    chunk = "chunks/group/chunk_00000.nc"
    first, second = RunDirectory(tmp_path), RunDirectory(tmp_path)
    with first.lock(shared=True), second.lock(shared=True):
        assert first.shared and second.shared
        # Several processes of a distributed run share the directory; a plain run cannot.
        with pytest.raises(StoreError, match="in use by another run.*distributed"):
            with RunDirectory(tmp_path).lock():
                pass
        claim = first.claim_chunk(chunk)
        assert claim is not None and claim.path.exists()
        assert second.claim_chunk(chunk) is None  # a live owner (its flock is held)
        claim.release()
        assert not claim.path.exists()
        again = second.claim_chunk(chunk)
        assert again is not None
        again.release()
        # A claim file whose flock nobody holds belongs to a killed process: it is stale.
        stale = tmp_path / f"{chunk}.claim"
        stale.write_text("{}")
        temporary = tmp_path / f"{chunk}.tmp-7-0123abcd"
        temporary.write_bytes(b"partial")
        taken = first.claim_chunk(chunk)
        assert taken is not None and taken.path == stale and not temporary.exists()
        assert second.claim_chunk(chunk) is None
        assert first.remove_temporaries() == []  # a shared run never removes others' files
        taken.release()
    # The next plain run removes claims that killed processes left.
    stale.write_text("{}")
    with RunDirectory(tmp_path).lock() as run:
        assert run.remove_temporaries() == [stale]


def test_distributed_arguments_are_checked():
    from transformer_flows.experiment import initialize_distributed

    with pytest.raises(ValueError, match="all of coordinator, num_processes and process_id"):
        initialize_distributed("127.0.0.1:1234")
    with pytest.raises(ValueError, match="HOST:PORT"):
        initialize_distributed("127.0.0.1", 2, 0)
    with pytest.raises(ValueError, match=r"process_id must be an integer in \[0, 2\)"):
        initialize_distributed("127.0.0.1:1234", 2, 2)


# ------------------------------------------------------------------------------ workers


def _config():
    from transformer_flows._compilation_cache import enable_compilation_cache
    from transformer_flows.experiment import config_from_dict

    enable_compilation_cache(os.environ["SCALE_OUT_TEST_CACHE"], nan_checks=True)
    return config_from_dict(CONFIG)


def _devices_worker(folder: Path) -> None:
    import jax

    jax.config.update("jax_enable_x64", True)
    from transformer_flows.experiment import run_sweep

    assert jax.local_device_count() == DEVICES, jax.devices()
    used = set()
    put = jax.device_put

    def recording_put(value, device=None, **options):
        if hasattr(device, "id"):
            used.add(device.id)
        return put(value, device, **options)

    jax.device_put = recording_put
    config = _config()
    run_sweep(config, folder / "one", progress=False, devices=jax.local_devices()[:1])
    assert used == {0}
    used.clear()
    run_sweep(config, folder / "four", progress=False)
    print("devices used:", ",".join(map(str, sorted(used))))


def _process_worker(out: Path, port: int, index: int, mode: str) -> None:
    from transformer_flows.experiment import initialize_distributed

    assert initialize_distributed(f"127.0.0.1:{port}", 2, index) == (index, 2)
    import jax

    jax.config.update("jax_enable_x64", True)
    from transformer_flows.experiment import run_sweep

    def on_chunk(count: int) -> None:
        if mode == "kill" and index == 1:
            # Process 0 starts at chunk 0, this one at chunk 3: die once both are saved.
            for _ in range(1200):
                if next(out.glob("chunks/*/chunk_00000.nc"), None):
                    break
                time.sleep(0.25)
            os.kill(os.getpid(), signal.SIGKILL)
        if mode == "kill" and index == 0:
            time.sleep(600)  # holds no claim here; the test kills it once process 1 is gone

    run_sweep(_config(), out, progress=False, on_chunk=on_chunk)
    print("finished", flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "devices":
        _devices_worker(Path(sys.argv[2]))
    else:
        _process_worker(Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5])


def test_command_line_refuses_half_distributed_options(tmp_path, capsys):
    from transformer_flows.cli import EXIT_BAD_INPUT, main

    config = ROOT / "configs" / "figure2.yaml"  # a theory config: nothing is computed
    status = main(["run", str(config), "--out", str(tmp_path), "--process-id", "1"])
    assert status == EXIT_BAD_INPUT
    assert "add --distributed" in capsys.readouterr().err


def test_devices_must_be_local(tmp_path):
    from transformer_flows.experiment import config_from_dict, run_sweep

    with pytest.raises(ValueError, match="`devices` must be a non-empty list of this process"):
        run_sweep(config_from_dict(CONFIG), tmp_path, progress=False, devices=[])
    assert not any(tmp_path.iterdir())  # refused before touching --out
