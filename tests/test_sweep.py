"""Sweep runner: labelled dataset, vmapped sweep = loop of `solve`, resume after a crash.
(Failure masking, verified chunks and open fields: tests/test_reliability.py.)"""

import json

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import xarray as xr
import yaml

import transformer_flows as tf
from transformer_flows.experiment import (
    StoreError,
    config_from_dict,
    crossing_interval,
    level_crossing,
    load_dataset,
    plan_sweep,
    run_sweep,
)

DATASET_FILE = "dataset.nc"

BETAS = [0.0, 1.0, 3.0]


def small_config(*overrides, d=(3,), starts=3, chunk_size=4, names=("positions", "energy")):
    raw = {
        "name": "small",
        "model": {"field": "SA", "n": 5, "d": list(d)},
        "sweep": {"beta": BETAS, "starts": starts, "seed": 7, "chunk_size": chunk_size},
        "time": {"t1": 2.0, "num": 5},
        "solver": {"rtol": 1e-8, "atol": 1e-8},
        "observables": {"names": list(names)},
    }
    return config_from_dict(raw, list(overrides))


def numbers(dataset):
    return dataset.drop_attrs()


def test_dataset_dims_coords_attrs(tmp_path):
    config = small_config("model.weights=['ginibre:wishart', 'goe:qk']", names=("energy",))
    dataset = run_sweep(config, tmp_path, progress=False)
    assert dict(dataset.sizes) == {"n": 1, "d": 1, "weights": 2, "beta": 3, "start": 3, "time": 5}
    assert dataset["energy"].dims == ("n", "d", "weights", "beta", "start", "time")
    np.testing.assert_array_equal(dataset["n"], [5])
    np.testing.assert_array_equal(dataset["d"], [3])
    np.testing.assert_array_equal(dataset["beta"], BETAS)
    np.testing.assert_array_equal(dataset["start"], [0, 1, 2])
    np.testing.assert_allclose(dataset["time"], np.linspace(0, 2, 5))
    assert list(dataset["weights"].values) == ["ginibre:wishart", "goe:qk"]
    assert bool(dataset["succeeded"].all()) and int(dataset["num_steps"].min()) > 0
    attrs = dataset.attrs
    assert config_from_dict(yaml.safe_load(attrs["config"])).resolved() == config.resolved()
    assert attrs["solver"] == "Renormalized(tsit5) adaptive PID, rtol=1e-08, atol=1e-08, float64"
    assert json.loads(attrs["versions"])["jax"] == jax.__version__
    assert attrs["git_commit"] and attrs["chunk_size"] == 4
    energy = dataset["energy"].isel(n=0, d=0)
    # Both ensembles ran in one program, from the same starts, with different dynamics.
    np.testing.assert_allclose(energy.isel(weights=0, time=0), energy.isel(weights=1, time=0))
    assert not np.allclose(energy.isel(weights=0, time=-1), energy.isel(weights=1, time=-1))
    # What is on disk is what was returned, and the config travels with it.
    saved, saved_config = load_dataset(tmp_path)
    xr.testing.assert_identical(saved, dataset)
    assert saved_config.resolved() == config.resolved()
    # One program (both ensembles), ceil(2 x 9 combos / 4) chunks, one file each.
    assert len(list(tmp_path.glob("chunks/*/chunk_*.nc"))) == 5


@pytest.mark.parametrize("scheme", ["tsit5", "bosh3", "normalized_euler"])
def test_vmapped_sweep_equals_loop_of_solve(tmp_path, scheme):
    fixed = scheme == "normalized_euler"
    overrides = [f"solver.name={scheme}", "sweep.starts=2", *(["solver.dt=0.05"] if fixed else [])]
    config = small_config(*overrides)
    dataset = run_sweep(config, tmp_path, progress=False).isel(n=0, d=0, weights=0)
    if scheme == "bosh3":
        assert dataset.attrs["solver"].startswith("Renormalized(bosh3) adaptive")
    positions = dataset["positions"]
    # Start s has the same initial tokens for every β (common random numbers), and different
    # starts differ.
    x0 = positions.isel(time=0)
    np.testing.assert_array_equal(x0.isel(beta=0).values, x0.isel(beta=2).values)
    assert not np.allclose(x0.isel(start=0, beta=0), x0.isel(start=1, beta=0))
    solver = {"tsit5": None, "bosh3": diffrax.Bosh3(), "normalized_euler": tf.NormalizedEuler()}
    solver = solver[scheme]
    dt0 = 0.05 if fixed else None
    ts = jnp.asarray(dataset["time"].values)
    for beta in BETAS:
        for start in range(2):
            initial = jnp.asarray(x0.sel(beta=beta, start=start).values)
            trajectory = tf.solve(
                tf.SelfAttention(beta), initial, ts, solver=solver, dt0=dt0, rtol=1e-8, atol=1e-8
            )
            np.testing.assert_allclose(
                positions.sel(beta=beta, start=start), trajectory.xs, atol=1e-10
            )
            energies = [tf.energy(x, beta, rescaled=True) for x in trajectory.xs]
            np.testing.assert_allclose(
                dataset["energy"].sel(beta=beta, start=start), energies, rtol=1e-10
            )
    if not fixed:  # SA's energy is non-decreasing (docs/mathematics.md §7.4)
        assert float(dataset["energy"].diff("time").min()) > -1e-10


def test_float32_and_float64_runs_integrate_the_same_systems(tmp_path):
    """Starts and weights are drawn once (in float32) whatever the precision, so the two
    precisions differ by rounding only: same starts, and energies within float32 accuracy."""
    weights = "model.weights=['identity', 'goe:wishart']"
    runs = [
        run_sweep(
            small_config(weights, f"precision={precision}", "solver.rtol=1e-6", "solver.atol=1e-6"),
            tmp_path / precision,
            progress=False,
        )
        for precision in ("float64", "float32")
    ]
    wide, narrow = (run.isel(n=0, d=0) for run in runs)
    assert not np.array_equal(wide["positions"], narrow["positions"])  # it did run in float32
    np.testing.assert_allclose(
        wide["positions"].isel(time=0), narrow["positions"].isel(time=0), atol=1e-6
    )
    np.testing.assert_allclose(wide["energy"], narrow["energy"], rtol=1e-4)


@pytest.mark.parametrize(
    "ensemble, query_key, value",
    [("ginibre:wishart", "ginibre", "wishart"), ("goe:qk", "goe", "qk")],
)
def test_random_weight_sweep_equals_solve_with_the_drawn_matrices(
    tmp_path, ensemble, query_key, value
):
    """Start s draws its (Q, K, V) from the key of that start (independent of β), and the sweep
    integrates the (SA) field with them, whatever form it evaluates the logits in."""
    config = small_config(f"model.weights=['{ensemble}']", "sweep.starts=2", names=("positions",))
    positions = run_sweep(config, tmp_path, progress=False)["positions"].isel(n=0, d=0, weights=0)
    ts = jnp.asarray(positions["time"].values)
    for start in range(2):
        weight_key = jax.random.split(jax.random.fold_in(jax.random.key(7), start))[1]
        Q, K, V = (
            w.astype(jnp.float64)
            for w in tf.random_weights(
                weight_key, 3, query_key=query_key, value=value, dtype=jnp.float32
            )
        )
        for beta in BETAS:
            x0 = jnp.asarray(positions.sel(beta=beta, start=start).values[0])
            direct = tf.solve(tf.SelfAttention(beta, Q, K, V), x0, ts, rtol=1e-8, atol=1e-8).xs
            np.testing.assert_allclose(positions.sel(beta=beta, start=start), direct, atol=1e-6)


def test_identity_weights_with_d_above_n_solve_in_the_span(tmp_path):
    """d = 8 > n = 5: the sweep solves in span{x_i(0)}; states mapped back and inner-product
    observables computed in the span both equal a direct solve in R^8."""
    names = ("positions", "energy", "clustered_fraction")
    dataset = run_sweep(
        small_config(d=(8,), starts=2, names=names), tmp_path / "a", progress=False
    ).isel(n=0, d=0, weights=0)
    in_span = run_sweep(
        small_config(d=(8,), starts=2, names=names[1:]), tmp_path / "b", progress=False
    ).isel(n=0, d=0, weights=0)
    ts = jnp.asarray(dataset["time"].values)
    for beta in BETAS:
        for start in range(2):
            x0 = jnp.asarray(dataset["positions"].sel(beta=beta, start=start).values[0])
            direct = tf.solve(tf.SelfAttention(beta), x0, ts, rtol=1e-8, atol=1e-8).xs
            np.testing.assert_allclose(
                dataset["positions"].sel(beta=beta, start=start), direct, atol=1e-6
            )
            energies = np.array([tf.energy(x, beta, rescaled=True) for x in direct])
            for result in (dataset, in_span):
                np.testing.assert_allclose(
                    result["energy"].sel(beta=beta, start=start), energies, rtol=1e-6
                )


def test_tolerance_axis_is_one_program(tmp_path):
    config = small_config(
        "sweep.tolerance=[1e-3, 1e-9]", "sweep.beta=[3.0]", "sweep.starts=2", names=("energy",)
    )
    dataset = run_sweep(config, tmp_path, progress=False).isel(n=0, d=0, weights=0)
    np.testing.assert_array_equal(dataset["rtol"], [1e-3, 1e-9])
    steps = dataset["num_steps"].sel(beta=3.0)
    assert bool((steps.sel(rtol=1e-9) > steps.sel(rtol=1e-3)).all())
    # The loose solve is close to the tight one, not equal to it.
    gap = abs(dataset["energy"].sel(rtol=1e-3) - dataset["energy"].sel(rtol=1e-9))
    assert 0 < float(gap.max()) < 1e-2


class Crash(RuntimeError):
    pass


def test_resume_after_interruption_is_identical_and_skips_done_chunks(tmp_path):
    config = small_config(names=("positions", "energy"))
    plan = plan_sweep(config)
    assert plan.num_chunks(plan.shapes[0]) == 3  # 9 combos, chunks of 4: the last one is padded

    def crash_after_two(count):
        if count == 2:
            raise Crash

    interrupted = tmp_path / "interrupted"
    with pytest.raises(Crash):
        run_sweep(config, interrupted, progress=False, on_chunk=crash_after_two)
    done = sorted(interrupted.glob("chunks/*/chunk_*.nc"))
    assert len(done) == 2 and not (interrupted / DATASET_FILE).exists()
    stamps = {path: path.stat().st_mtime_ns for path in done}
    # A run killed while writing leaves a temporary file; it must not count as a chunk.
    (done[0].parent / "chunk_00002.nc.tmp-123-0123abcd").write_bytes(b"partial")

    computed = []
    resumed = run_sweep(config, interrupted, progress=False, on_chunk=computed.append)
    assert computed == [1]  # only the missing chunk was computed
    assert {path: path.stat().st_mtime_ns for path in done} == stamps
    assert not list(interrupted.glob("chunks/*/*.tmp*"))

    straight = run_sweep(config, tmp_path / "straight", progress=False)
    xr.testing.assert_identical(numbers(resumed), numbers(straight))

    # Re-running a finished directory computes nothing.
    computed.clear()
    again = run_sweep(config, interrupted, progress=False, on_chunk=computed.append)
    assert computed == []
    xr.testing.assert_identical(numbers(again), numbers(resumed))


def test_refuses_to_mix_configs_in_one_directory(tmp_path):
    run_sweep(
        small_config("sweep.starts=1", "sweep.beta=[1.0]", names=("energy",)),
        tmp_path,
        progress=False,
    )
    with pytest.raises(StoreError, match="holds a run of a different config"):
        run_sweep(
            small_config("sweep.starts=2", "sweep.beta=[1.0]", names=("energy",)),
            tmp_path,
            progress=False,
        )


def test_programs_group_random_ensembles_per_shape():
    config = small_config(
        "model.weights=[identity, 'ginibre:wishart', 'goe:qk']",
        "model.n=[4, 6]",
        "model.d=3",
        names=("energy",),
    )
    labels = [shape.label for shape in plan_sweep(config).shapes]
    assert labels == [
        "n4_d3_identity",
        "n4_d3_ginibre-wishart+goe-qk",
        "n6_d3_identity",
        "n6_d3_ginibre-wishart+goe-qk",
    ]


def test_auto_chunk_size_fits_budget():
    config = small_config("sweep.chunk_size=auto", "sweep.starts=1000")
    plan = plan_sweep(config)
    assert plan.chunk_length(plan.shapes[0]) == 2048  # fits 256 MB; capped for progress/resume
    tight = small_config(
        "sweep.chunk_size=auto",
        "sweep.starts=1000",
        "sweep.memory_budget_mb=1",
        "model.d=[3, 300]",
        names=("energy",),
    )
    plan = plan_sweep(tight)
    small, large = (plan.chunk_length(shape) for shape in plan.shapes)
    assert 1 <= large < small <= 2048  # the memory need grows with d


def test_missing_dataset_says_how_to_resume(tmp_path):
    with pytest.raises(StoreError, match="resume"):
        load_dataset(tmp_path)


def test_level_crossing_interpolates_the_first_fall_below_the_level():
    betas = np.array([0.0, 1.0, 2.0, 3.0])
    # Linear P(β) = 1 - β/3 crosses 1/2 at β = 1.5 exactly.
    assert level_crossing(1 - betas / 3, betas) == pytest.approx(1.5)
    # The first fall counts (a later recovery is noise).
    assert level_crossing(np.array([1.0, 0.2, 0.8, 0.1]), betas) == pytest.approx(0.625)
    assert level_crossing(np.ones(4), betas) == np.inf
    assert level_crossing(np.zeros(4), betas) == -np.inf
    # Missing values (failed solves only) never become a crossing.
    assert np.isnan(level_crossing(np.array([1.0, np.nan, 0.8, 0.9]), betas))
    assert np.isnan(level_crossing(np.array([1.0, np.nan, 0.2, 0.1]), betas))
    assert level_crossing(np.array([1.0, 0.2, np.nan, 0.1]), betas) == pytest.approx(1 / 1.6)


def test_crossing_interval_is_a_bootstrap_interval_with_its_coverage():
    betas = np.linspace(0.0, 4.0, 9)
    # No spread over starts: every resample is the data, the interval is the point.
    same = np.repeat((1 - betas / 4)[:, None], 16, axis=1)
    assert crossing_interval(same, betas) == pytest.approx((2.0, 2.0))
    # Bernoulli clustering with P(β) = 1 - β/4 (true crossing β = 2), 48 starts: the 95%
    # interval covers 2 in about 95% of experiments (here >= 85 of 100, a binomial margin).
    rng = np.random.default_rng(1)
    covered = 0
    for seed in range(100):
        data = (rng.random((9, 48)) < (1 - betas / 4)[:, None]).astype(float)
        low, high = crossing_interval(data, betas, resamples=300, seed=seed)
        covered += low <= 2.0 <= high
    assert covered >= 85
    # A plateau at the level (two equal clusters give P ≈ 0.48-0.57) leaves β poorly
    # determined: the interval spans several grid steps; a sharp fall pins it to one step.
    plateau = np.where(betas[:, None] < 1, 1.0, rng.choice([0.45, 0.55], (9, 32)))
    low, high = crossing_interval(plateau, betas, resamples=300)
    assert high - low > 1.5
    sharp = np.where(betas[:, None] < 2, 1.0, rng.choice([0.0, 0.1], (9, 32)))
    low, high = crossing_interval(sharp, betas, resamples=300)
    assert 1.5 <= low <= high <= 2.0
