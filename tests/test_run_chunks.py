"""The run skeleton that the sweep and the mean-field runner share (`_run_chunks.run_chunks`):
Ctrl-C reports the chunks truly on disk (also those computed in the interrupted call), a rerun
computes only the rest, and the assembled dataset puts every chunk at its own (β, κ).

The mean-field chunk is replaced by a stand-in whose r(t) is a known constant per (β, κ), so
nothing is compiled: the stationary r (the mean over the tail) must be that constant."""

import numpy as np
import pytest
import xarray as xr

from transformer_flows.experiment import (
    _mean_field_run as mean_field_run,
    config_from_dict,
    run_experiment,
)
from transformer_flows.experiment._interrupt import RunInterrupted

RAW = {
    "experiment": "mean_field",
    "name": "skeleton",
    "mean_field": {"model": "SA", "modes": 8, "concentration": 1.0},
    "sweep": {"beta": [1.0, 2.0, 3.0], "kappa": [4.0, 6.0]},
    "time": {"t1": 10.0, "num": 6},
    "solver": {"name": "tsit5", "max_steps": 2000},
    "observables": {"names": ["order_parameter"], "stationary_from": 0.5},
}


def _r(beta: float, kappa: float) -> float:
    return 0.1 * beta + 0.01 * kappa


def _stand_in(calls: list, stop_at: int | None = None):
    def chunk(config, beta, kappa) -> xr.Dataset:
        if len(calls) == stop_at:
            raise KeyboardInterrupt
        calls.append((beta, kappa))
        num = len(config.time.times)
        return xr.Dataset(
            {
                "succeeded": (("combo",), np.array([1], dtype=np.int8)),
                "num_steps": (("combo",), np.array([7], dtype=np.int64)),
                "resolution": (("combo", "time"), np.zeros((1, num))),
                "order_parameter": (("combo", "time"), np.full((1, num), _r(beta, kappa))),
            },
            attrs={"compute_seconds": 0.0},
        )

    return chunk


def test_ctrl_c_counts_the_chunks_on_disk_and_the_rerun_computes_the_rest(tmp_path, monkeypatch):
    config = config_from_dict(RAW)
    out = tmp_path / "run"
    first: list = []
    monkeypatch.setattr(mean_field_run, "_pair_chunk", _stand_in(first, stop_at=2))
    with pytest.raises(RunInterrupted) as stopped:
        run_experiment(config, out, progress=False)
    # Two chunks were computed in this call before Ctrl-C: both are on disk and counted.
    assert (stopped.value.saved, stopped.value.total, stopped.value.unit) == (2, 6, "chunks")
    assert len(sorted(out.glob("chunks/*/chunk_*.nc"))) == 2
    assert not (out / "dataset.nc").exists()

    rest: list = []
    monkeypatch.setattr(mean_field_run, "_pair_chunk", _stand_in(rest))
    dataset = run_experiment(config, out, progress=False)
    pairs = [(beta, kappa) for beta in RAW["sweep"]["beta"] for kappa in RAW["sweep"]["kappa"]]
    assert first == pairs[:2] and rest == pairs[2:]  # nothing computed twice
    assert (out / "dataset.nc").exists() and dataset.attrs["failed_solves"] == 0
    for beta in RAW["sweep"]["beta"]:
        for kappa in RAW["sweep"]["kappa"]:
            value = dataset["stationary_order_parameter"].sel(beta=beta, kappa=kappa)
            assert float(value) == pytest.approx(_r(beta, kappa), rel=1e-15)
