"""Results are trustworthy or absent: failed solves are masked and counted, output
directories are locked and their chunks verified, and the open parts of the schema (fields by
import path, swept parameters, angles, heads, layers) integrate what `solve` integrates."""

import functools
import json
import textwrap
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import xarray as xr

import transformer_flows as tf
from transformer_flows.cli import main
from transformer_flows.experiment import (
    FAILED_INTEGER,
    RunDirectory,
    SolveFailures,
    StoreError,
    StoreWarning,
    config_from_dict,
    load_dataset,
    run_sweep,
    summary,
)


def tiny(*overrides, names=("clustered_fraction", "cluster_count")):
    raw = {
        "name": "tiny",
        "model": {"n": 4, "d": 2},
        "sweep": {"beta": [0.5, 4.0], "starts": 3, "seed": 3, "chunk_size": 4},
        "time": {"t1": 3.0, "num": 4},
        "solver": {"rtol": 1e-7, "atol": 1e-7},
        "observables": {"names": list(names)},
    }
    return config_from_dict(raw, list(overrides))


# --- failed solves ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def failing(tmp_path_factory):
    """A sweep whose step budget (14) is too small for some systems: β = 0.5 takes 16 steps
    to reach t1, β = 4 takes 13-15 (measured; 17-18 and 15-16 before `solve` gave explicit
    solvers the field's radial extension)."""
    out = tmp_path_factory.mktemp("failing")
    config = tiny("solver.max_steps=14", "figures=[phase_diagram, cluster_staircase]")
    with pytest.raises(SolveFailures) as failure:
        run_sweep(config, out, progress=False)
    return config, out, failure.value


def test_failed_solves_are_masked_counted_and_refused(failing):
    config, out, failure = failing
    dataset = failure.dataset
    ok = dataset["succeeded"]
    failed = int((~ok).sum())
    assert 0 < failed < ok.size, "the fixture should mix failed and successful solves"
    assert dataset.attrs["failed_solves"] == failed and dataset.attrs["total_solves"] == ok.size
    assert f"{failed} of {ok.size} solves failed" in str(failure)
    assert "solver.allow_failures=true" in str(failure)
    fraction, counts = dataset["clustered_fraction"], dataset["cluster_count"]
    # Every failed entry is NaN / -1, every successful one a real value.
    assert bool(fraction.where(~ok).isnull().all()) and bool(fraction.where(ok).notnull().sum())
    assert bool((counts.where(~ok) == FAILED_INTEGER).sum() == failed * dataset.sizes["time"])
    assert float(fraction.where(ok).min()) >= 0 and int(counts.where(ok, 1).min()) >= 1
    # What is on disk is the masked dataset, never an unmasked number.
    saved, _ = load_dataset(out)
    xr.testing.assert_identical(saved.drop_attrs(), dataset.drop_attrs())


def test_summaries_and_figures_exclude_failures(failing, tmp_path, capsys):
    config, out, failure = failing
    dataset = failure.dataset
    result = summary(dataset, config, times=[3.0], betas=[4.0])
    assert result["failed_solves"] == dataset.attrs["failed_solves"]
    for row in result["cluster_counts"]:
        assert row["failed"] + sum(row.get("histogram", {}).values()) == row["starts"]
        assert all(count >= 1 for count in row.get("histogram", {}))
    assert main(["summarize", str(out), "--times", "3.0", "--betas", "4.0"]) == 0
    printed = capsys.readouterr().out
    json.loads(printed)
    assert "NaN" not in printed and "Infinity" not in printed and "-1" not in printed
    assert main(["plot", str(out), "--figures-dir", str(tmp_path)]) == 0
    assert sorted(p.suffix for p in tmp_path.iterdir()) == [".png", ".png"]


def test_failed_solves_exit_3_unless_allowed(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text(tiny("solver.max_steps=12").to_yaml())
    argv = ["run", str(path), "--no-progress", "--no-figures"]
    assert main([*argv, "--out", str(tmp_path / "a")]) == 3
    assert "solves failed" in capsys.readouterr().err
    assert main([*argv, "--out", str(tmp_path / "b"), "solver.allow_failures=true"]) == 0
    assert "failed solves masked" in capsys.readouterr().out


# --- the output directory --------------------------------------------------------------------


def test_a_second_concurrent_run_is_refused(tmp_path):
    config = tiny("sweep.starts=1")
    with RunDirectory(tmp_path).lock():
        with pytest.raises(StoreError, match="in use by another run"):
            run_sweep(config, tmp_path, progress=False)
    run_sweep(config, tmp_path, progress=False)  # the lock is gone with its holder


def test_corrupt_and_stale_chunks_are_recomputed_with_a_warning(tmp_path):
    config = tiny()
    first = run_sweep(config, tmp_path, progress=False)
    chunks = sorted(tmp_path.glob("chunks/*/chunk_*.nc"))
    assert len(chunks) == 2  # 2 β x 3 starts in chunks of 4
    # A truncated chunk (a full disk, a copy cut short) is named and recomputed.
    chunks[0].write_bytes(chunks[0].read_bytes()[:200])
    computed = []
    with pytest.warns(StoreWarning, match=f"{chunks[0].name}.*corrupt"):
        again = run_sweep(config, tmp_path, progress=False, on_chunk=computed.append)
    assert computed == [1]
    xr.testing.assert_identical(again.drop_attrs(), first.drop_attrs())
    # Delete config.yaml and rerun with another seed: the old chunks are stale, not reused.
    (tmp_path / "config.yaml").unlink()
    reseeded = tiny("sweep.seed=4")
    computed.clear()
    with pytest.warns(StoreWarning, match="stale"):
        other = run_sweep(reseeded, tmp_path, progress=False, on_chunk=computed.append)
    assert computed == [1, 2]
    fresh = run_sweep(reseeded, tmp_path / "fresh", progress=False)
    xr.testing.assert_identical(other.drop_attrs(), fresh.drop_attrs())


def test_presentation_changes_resume_and_numeric_changes_are_refused(tmp_path):
    run_sweep(tiny("sweep.starts=1"), tmp_path, progress=False)
    computed = []
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing is recomputed, nothing warned
        run_sweep(
            tiny("sweep.starts=1", "description=again", "figures=[phase_diagram]"),
            tmp_path,
            progress=False,
            on_chunk=computed.append,
        )
    assert computed == []
    with pytest.raises(StoreError, match="different config"):
        run_sweep(tiny("sweep.starts=1", "solver.rtol=1e-5"), tmp_path, progress=False)


# --- energy ----------------------------------------------------------------------------------


def test_energy_observable_is_finite_at_large_beta_in_float32(tmp_path):
    config = tiny(
        "precision=float32",
        "sweep.beta=[0.0, 100.0, 1000.0]",
        "sweep.starts=2",
        "solver.rtol=1e-4",
        "solver.atol=1e-4",
        names=("energy",),
    )
    energy = run_sweep(config, tmp_path, progress=False)["energy"].isel(n=0, d=0, weights=0)
    assert bool(np.isfinite(energy).all())
    # The rescaled energy e^{-β}E_β lies in (0, 1/(2β)] for β > 0, the consensus value at the top.
    for beta in (100.0, 1000.0):
        values = energy.sel(beta=beta).values
        assert values.min() > 0 and values.max() <= (1 + 1e-5) / (2 * beta)


# --- open fields, parameters, angles, heads, layers ------------------------------------------

SCALED_FIELD = textwrap.dedent(
    """
    import equinox as eqx
    import jax.numpy as jnp
    import transformer_flows as tf


    class ScaledAttention(tf.AbstractSphereField):
        beta: jnp.ndarray = eqx.field(converter=jnp.asarray)
        gain: jnp.ndarray = eqx.field(default=1.0, converter=jnp.asarray)

        def drift(self, t, x, args=None):
            return self.gain * tf.attend(x, self.beta, None, None, None, normalized=True)

        def jump_times(self):
            return None

        def check_state(self, x):
            pass
    """
)


def test_a_users_field_by_import_path_with_a_swept_parameter(tmp_path, monkeypatch):
    """The issue's config, unchanged: its dataset has a `gain` dimension, and since gain
    rescales time, gain = 2 at time t equals gain = 1/2 at time 4t."""
    (tmp_path / "scaled_field.py").write_text(SCALED_FIELD)
    monkeypatch.syspath_prepend(str(tmp_path))
    raw = {
        "name": "open",
        "model": {
            "field": "scaled_field:ScaledAttention",
            "params": {"gain": 1.0},
            "n": 16,
            "d": 3,
            "initial": "sphere",
        },
        "sweep": {"beta": [1.0], "starts": 4, "seed": 0, "params": {"gain": [0.5, 2.0]}},
        "time": {"t1": 20.0, "num": 21},
        "precision": "float64",
        "observables": {"names": ["clustered_fraction"], "delta": 1.0e-3},
        "figures": [],
    }
    dataset = run_sweep(config_from_dict(raw), tmp_path / "out", progress=False)
    assert dataset["clustered_fraction"].dims[-2:] == ("gain", "time")
    np.testing.assert_array_equal(dataset["gain"], [0.5, 2.0])
    fraction = dataset["clustered_fraction"].isel(n=0, d=0, weights=0, beta=0)
    fast = fraction.sel(gain=2.0, time=[1.0, 2.0, 3.0, 4.0, 5.0])
    slow = fraction.sel(gain=0.5, time=[4.0, 8.0, 12.0, 16.0, 20.0])
    np.testing.assert_array_equal(fast.values, slow.values)
    assert fast.values.min() < fast.values.max()  # the comparison spans the clustering


def test_kuramoto_sweep_equals_solve_on_angles(tmp_path):
    config = tiny("model.field=Kuramoto", "model.params.coupling=2.0", names=("order_parameter",))
    dataset = run_sweep(config, tmp_path, progress=False).isel(n=0, d=0, weights=0)
    ts = jnp.asarray(dataset["time"].values)
    for start in range(3):
        init_key, _ = jax.random.split(jax.random.fold_in(jax.random.key(3), start))
        x0 = tf.normalize(tf.sample_sphere(init_key, 4, 2, dtype=jnp.float32).astype(jnp.float64))
        theta0 = tf.points_to_angles(x0)
        for beta in (0.5, 4.0):
            field = tf.Kuramoto(beta, coupling=2.0)
            xs = tf.solve(field, theta0, ts, rtol=1e-7, atol=1e-7).xs
            expected = [tf.order_parameter(tf.angles_to_points(theta)) for theta in xs]
            np.testing.assert_allclose(
                dataset["order_parameter"].sel(beta=beta, start=start), expected, atol=1e-6
            )


@pytest.mark.parametrize("stack", [{"heads": 2}, {"layers": 3}, {"heads": 2, "layers": 2}])
def test_heads_and_layers_sweep_equal_solve_with_the_drawn_matrices(tmp_path, stack):
    overrides = [f"model.{key}={value}" for key, value in stack.items()]
    config = tiny(
        "model.d=3",
        "model.weights=[goe:wishart]",
        "sweep.starts=2",
        *overrides,
        names=("positions",),
    )
    positions = run_sweep(config, tmp_path, progress=False)["positions"].isel(n=0, d=0, weights=0)
    ts = jnp.asarray(positions["time"].values)
    shape = tuple(stack[key] for key in ("layers", "heads") if key in stack)
    for start in range(2):
        weight_key = jax.random.split(jax.random.fold_in(jax.random.key(3), start))[1]
        keys = jax.random.split(weight_key, int(np.prod(shape))).reshape(shape)
        draw = functools.partial(
            tf.random_weights, d=3, query_key="goe", value="wishart", dtype=jnp.float32
        )
        for _ in shape:
            draw = jax.vmap(draw)
        Q, K, V = (w.astype(jnp.float64) for w in draw(keys))
        duration = 3.0 / stack["layers"] if "layers" in stack else None
        field = tf.SelfAttention(4.0, Q, K, V, layer_duration=duration)
        x0 = jnp.asarray(positions.sel(beta=4.0, start=start).values[0])
        direct = tf.solve(field, x0, ts, rtol=1e-7, atol=1e-7).xs
        np.testing.assert_allclose(positions.sel(beta=4.0, start=start), direct, atol=1e-5)
