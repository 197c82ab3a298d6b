"""Sweep programs through `solve_batch`'s work queue (issue 22 item 2) against the vmapped
`solve` (diffrax's loop) they replace: the same steps, saves and failure masks."""

import jax
import numpy as np
import pytest

from transformer_flows.experiment import config_from_dict, plan_sweep
from transformer_flows.experiment._program import (
    _build_program,
    chunk_inputs,
    work_queue_applies,
)
from transformer_flows.experiment._run import _chunk_dataset


def _config(*overrides, precision="float64"):
    raw = {
        "name": "queue",
        "model": {"field": "SA", "n": 4, "d": 3, "weights": ["ginibre:wishart"]},
        "sweep": {"beta": [0.0, 2.0, 9.0], "starts": 3, "seed": 3, "tolerance": [1e-4, 1e-8]},
        "time": {"t1": 4.0, "num": 5},
        "solver": {"max_steps": 80, "allow_failures": True},
        "observables": {"names": ["positions", "cluster_count"]},
        "precision": precision,
    }
    return config_from_dict(raw, list(overrides))


def _both(config):
    """The chunk datasets (masked as `run_sweep` stores them) of the queued programs and the
    vmapped one, for the config's one chunk."""
    plan = plan_sweep(config)
    (shape,) = plan.shapes
    assert plan.num_chunks(shape) == 1 and work_queue_applies(config, shape)
    inputs = chunk_inputs(config, plan, shape, 0)
    datasets = []
    # Queued, observables after the loop (the chunk's states fit) and inside it; vmapped.
    for options in ({}, {"observe_after": False}, {"work_queue": False}):
        outputs = jax.device_get(_build_program(config, shape, plan, **options)(*inputs))
        datasets.append(_chunk_dataset(plan, shape, 0, *outputs, 0.0))
    return datasets


def test_queued_sweep_equals_vmapped_sweep_float64():
    # Random (Q, K, V) per start, β from 0 to 9, a tolerance axis (per-system tolerances in
    # the queue), and a step budget that the stiff combos exceed: 18 systems of very
    # different step counts in one chunk.
    after, inside, vmapped = _both(_config())
    # Observed after the loop or inside its save passes: the same numbers.
    assert after.identical(inside)
    queued = after
    steps = queued["num_steps"].values
    assert len(set(steps.tolist())) > 5  # heterogeneous: lanes refill
    # Same steps and the same failures (max_steps reached), masked the same way.
    np.testing.assert_array_equal(steps, vmapped["num_steps"].values)
    np.testing.assert_array_equal(queued["succeeded"].values, vmapped["succeeded"].values)
    failed = ~queued["succeeded"].values.astype(bool)
    assert 0 < failed.sum() < failed.size
    assert (steps[failed] == 80).all()
    np.testing.assert_array_equal(queued["cluster_count"].values, vmapped["cluster_count"].values)
    assert (queued["cluster_count"].values[failed] == -1).all()
    a, b = queued["positions"].values, vmapped["positions"].values
    np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
    assert np.isnan(a[failed]).all() and np.isfinite(a[~failed]).all()
    # Same method, controller and dense output; the arithmetic differs in its order only
    # (1e-10 measured at rtol = 1e-4: rounding carried along the flow).
    np.testing.assert_allclose(a[~failed], b[~failed], rtol=0, atol=1e-9)


@pytest.mark.parametrize(
    ("overrides", "applies"),
    [
        ((), True),
        (("solver.name=bosh3",), True),
        (("solver.name=dopri5",), False),  # not a method of the queue
        (("solver.name=normalized_euler", "solver.dt=0.1"), False),  # fixed step
        (
            (
                "model.noise={kind: independent, kappa: 0.1}",
                "solver.name=euler_maruyama",
                "solver.dt=0.1",
            ),
            False,
        ),
        (("model.weights=identity", "model.d=8"), False),  # d > n: solved in the span
        (("model.weights=identity",), True),
        (("model.field=USA", "model.weights=identity"), True),
    ],
)
def test_which_sweeps_take_the_queue(overrides, applies):
    config = _config("sweep.tolerance=null", *overrides)
    (shape,) = plan_sweep(config).shapes
    assert work_queue_applies(config, shape) is applies
