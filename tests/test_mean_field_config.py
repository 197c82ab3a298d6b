"""`experiment: mean_field` configs: the mean-field solver of docs/models.md driven by a config,
through the run store (chunks, resume, provenance, masking of failed solves).

- The config-driven solve is bitwise a direct `solve_mean_field` call built from the maths (the
  von Mises start, the save grid, the solver and its tolerances), and its stationary r matches
  `theory.stationary_order_parameter`.
- A stiff explicit run is refused before it starts when it cannot fit max_steps, and a solve
  that runs out of steps is masked (NaN, `succeeded` False, counted), never a number.
- The contract of the kind: every key validated with a message naming it; summarize; resume.

One program is compiled in all (Tsit5, SA, M = 8, max_steps 2000): the tests share its run.
"""

import json
import math
import shutil

import diffrax
import jax.numpy as jnp
import numpy as np
import pytest

import transformer_flows as tf
from transformer_flows import cli
from transformer_flows._mean_field import _IMEX
from transformer_flows.experiment import (
    ConfigError,
    MeanFieldConfig,
    SolveFailures,
    config_from_dict,
    load_dataset,
    run_experiment,
)
from transformer_flows.experiment._mean_field_run import SOLVER_CLASSES, mean_field_summary
from transformer_flows.experiment._schema_mean_field import MEAN_FIELD_SOLVERS

MODES = 8
# The SA stationary states at β = 1, 2 and κ = 4 are smooth bumps that M = 8 modes resolve
# (the top quarter of the modes holds < 1e-6 of the L² norm) and that r(t) reaches to 1e-7
# well before t1 = 60 (κ_c = 2.24 and 2.87: rates ~0.3 and faster). κ = 0.5 is
# stiff for Tsit5 (stiffness (M−1)²/κ = 98): it needs 2133 steps to t1 = 60, beyond
# max_steps = 2000, which the up-front bound t1·49/(3.2κ) = 1837 lets start: masked. At
# κ = 6 the stationary bump is too narrow for 8 modes (resolution 1.7e-4 at β = 1, 2.7e-5
# at β = 2): under-resolved, no stationary r.
RAW = {
    "experiment": "mean_field",
    "name": "tiny_mean_field",
    "mean_field": {"model": "SA", "modes": MODES, "concentration": 1.0},
    "sweep": {"beta": [1.0, 2.0], "kappa": [4.0, 0.5, 6.0]},
    "time": {"t1": 60.0, "num": 31},
    "solver": {"name": "tsit5", "max_steps": 2000, "allow_failures": True},
    "observables": {
        "names": ["order_parameter", "density"],
        "stationary_from": 0.9,
    },
}
GOOD = {"kappa": [4.0]}


@pytest.fixture(scope="module")
def tsit5_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("mean_field")
    config = config_from_dict(RAW)
    return run_experiment(config, out, progress=False), config, out


def _direct(beta, kappa):
    """`solve_mean_field` called as docs/models.md writes it, independently of the config
    code: ρ0 ∝ e^{cos θ - 1} (mass 1 on the grid), saves linspace(0, 60, 31)."""
    theta = 2 * np.pi * np.arange(2 * MODES) / (2 * MODES)
    density0 = np.exp(np.cos(theta) - 1)
    density0 /= 2 * np.pi * density0.mean()
    equation = tf.MeanFieldCircle(
        jnp.asarray(beta), model="SA", kappa=jnp.asarray(kappa), modes=MODES
    )
    return tf.solve_mean_field(
        equation,
        jnp.asarray(density0),
        jnp.asarray(np.linspace(0.0, 60.0, 31)),
        solver=diffrax.Tsit5(),
        rtol=1e-7,
        atol=1e-9,
        max_steps=2000,
        throw=False,
    )


def test_config_solve_is_the_direct_solve_bitwise(tsit5_run):
    dataset, _, _ = tsit5_run
    assert dataset.attrs["total_solves"] == 6
    for beta in (1.0, 2.0):
        for kappa in (4.0, 0.5, 6.0):
            direct = _direct(beta, kappa)
            part = dataset.sel(beta=beta, kappa=kappa)
            assert bool(part["succeeded"]) == bool(direct.succeeded) == (kappa != 0.5)
            assert int(part["num_steps"]) == int(direct.stats["num_steps"])
            if kappa == 0.5:
                continue
            np.testing.assert_array_equal(part["order_parameter"], direct.order_parameter)
            np.testing.assert_array_equal(part["density"], direct.density)
            np.testing.assert_array_equal(part["resolution"], direct.resolution)
    # The density is a probability density on the saved grid, at every save.
    mass = 2 * np.pi * dataset["density"].sel(GOOD).mean("theta")
    np.testing.assert_allclose(mass, 1.0, atol=1e-12)


def test_stationary_order_parameter_matches_the_theory(tsit5_run):
    dataset, config, _ = tsit5_run
    stationary = dataset["stationary_order_parameter"].sel(GOOD)
    exact = dataset["theory_order_parameter"].sel(branch="clustered").sel(GOOD)
    # An independent evaluation of the theory (float64 Newton continuation).
    for beta in (1.0, 2.0):
        np.testing.assert_allclose(
            exact.sel(beta=beta),
            tf.theory.stationary_order_parameter(beta=beta, kappa=[4.0], model="SA"),
            rtol=1e-12,
        )
    # Measured: differences 1.6e-7 and -5e-8 (M = 8, rtol 1e-7); 1e-6 leaves room across
    # platforms, and is 1e-5 of r: far below the gap between the branches r > 0 and r = 0.
    np.testing.assert_allclose(stationary, exact, atol=1e-6)
    assert np.all((exact > 0.7) & (exact < 0.8))  # the clustered branch, far from r = 0 and 1
    # The tail is stationary: r(t1) is the tail mean.
    final = dataset["order_parameter"].sel(GOOD).isel(time=-1)
    np.testing.assert_allclose(final, stationary, atol=1e-7)
    # Resolved: the top quarter of the modes holds a negligible part of the L² norm.
    assert float(dataset["resolution"].sel(GOOD).isel(time=-1).max()) < 1e-6
    rows = mean_field_summary(dataset, config)["stationary_order_parameter"]
    good = [row for row in rows if row["kappa"] == 4.0]
    assert len(good) == 2 and all(row["succeeded"] and row["resolved"] for row in good)
    assert max(abs(row["difference"]) for row in good) < 1e-6


# --- stiffness: refused up front, or masked and counted --------------------------------------


def test_a_stiff_explicit_run_is_refused_before_it_starts():
    # The case: USA, β = 1, κ = 1.8, M = 32, t = 600 (an explicit solve hit max_steps).
    raw = {
        "experiment": "mean_field",
        "mean_field": {"model": "USA", "modes": 32},
        "sweep": {"beta": 1.0, "kappa": 1.8},
        "time": {"t1": 600.0, "num": 7},
        "solver": {"name": "tsit5"},
    }
    with pytest.raises(ConfigError, match=r"solver\.name.*kencarp4"):
        config_from_dict(raw)
    assert config_from_dict(raw, ["solver.name=kencarp4"]).solver.implicit


def test_a_solve_out_of_steps_is_masked_and_counted(tsit5_run):
    dataset, config, _ = tsit5_run
    assert dataset.attrs["failed_solves"] == 2
    failed = dataset.sel(kappa=0.5)
    assert not failed["succeeded"].any()
    np.testing.assert_array_equal(failed["num_steps"], 2000)
    for name in ("order_parameter", "resolution", "density", "stationary_order_parameter"):
        assert np.all(np.isnan(failed[name])), name
    # The summary shows null for them, never a number.
    rows = cli._strict_json(mean_field_summary(dataset, config))["stationary_order_parameter"]
    stiff = [row for row in rows if row["kappa"] == 0.5]
    assert len(stiff) == 2 and all(row["r_stationary"] is None for row in stiff)


def test_an_under_resolved_solve_has_no_stationary_value(tsit5_run):
    dataset, config, _ = tsit5_run
    narrow = dataset.sel(kappa=6.0)
    assert narrow["succeeded"].all() and not narrow["resolved"].any()
    assert dataset.attrs["unresolved_solves"] == 2
    # Its tail holds more than resolution_limit = 1e-6 of the L² norm in the top modes, and
    # the stationary r that would be read from it is absent.
    tail = narrow["resolution"].isel(time=slice(-4, None))
    assert float(tail.max()) > config.observables.resolution_limit
    assert np.all(np.isnan(narrow["stationary_order_parameter"]))
    assert np.all(np.isfinite(narrow["order_parameter"]))  # r(t) is kept, with its resolution
    rows = cli._strict_json(mean_field_summary(dataset, config))["stationary_order_parameter"]
    for row in rows:
        if row["kappa"] == 6.0:
            assert row["succeeded"] and not row["resolved"] and row["r_stationary"] is None


def test_store_resumes_refuses_and_reports_failures(tsit5_run, tmp_path, capsys):
    dataset, config, out = tsit5_run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    chunks = sorted((copy / "chunks").rglob("*.nc"))
    assert len(chunks) == 6
    chunks[1].unlink()  # one lost chunk is recomputed, the others are read back
    # Without allow_failures (not part of the fingerprint): resumed, then the failures reported.
    strict = config_from_dict(RAW, ["solver.allow_failures=false"])
    with pytest.raises(SolveFailures, match=r"2 of 6 mean-field solves failed.*kencarp4") as err:
        run_experiment(strict, copy, progress=False)
    again = err.value.dataset
    np.testing.assert_array_equal(again["order_parameter"], dataset["order_parameter"])
    assert again.attrs["fingerprint"] == dataset.attrs["fingerprint"]
    stored, stored_config = load_dataset(copy)
    assert isinstance(stored_config, MeanFieldConfig) and stored.attrs["git_commit"]
    other = config_from_dict(RAW, ["solver.rtol=1e-8"])
    with pytest.raises(Exception, match="config"):
        run_experiment(other, copy, progress=False)
    # The commands read the run.
    assert cli.main(["summarize", str(out)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["total_solves"] == 6 and result["failed_solves"] == 2
    assert cli.main(["summarize", str(out), "--format", "table"]) == 0
    assert "theory_clustered" in capsys.readouterr().out
    assert cli.main(["plot", str(out), "--figures-dir", str(tmp_path)]) == 0  # no figures set


# --- the contract of the config kind ------------------------------------------------------


@pytest.mark.parametrize(
    "override, key",
    [
        ("sweep.beta=[1.0, 9.0]", "sweep.beta"),
        ("solver.max_steps=1800", "solver.name"),  # κ = 0.5 cannot fit: refused
        ("sweep.beta=-1.0", "sweep.beta"),
        ("sweep.kappa=[0.0]", "sweep.kappa"),
        ("mean_field.modes=3", "mean_field.modes"),
        ("mean_field.mode=8", "mean_field.mode"),
        ("mean_field.model=XY", "mean_field.model"),
        ("mean_field.concentration=-1", "mean_field.concentration"),
        ("solver.name=euler", "solver.name"),
        ("solver.rtol=0", "solver.rtol"),
        ("observables.names=[density]", "observables.names"),
        ("observables.stationary_from=2", "observables.stationary_from"),
        ("time.num=1", "time.num"),
        ("figures=[phase_diagram]", "figure 'phase_diagram'"),
        ("sweep.starts=4", "sweep.starts"),
    ],
)
def test_bad_keys_are_refused_naming_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        config_from_dict(RAW, [override])


def test_noiseless_sweep_and_fingerprint():
    config = config_from_dict({**RAW, "sweep": {"beta": 1.0}})
    assert config.sweep.kappas == [math.inf]
    # Presentation keys do not change the numbers; numeric ones do.
    base = config_from_dict(RAW)
    assert base.numerics() == config_from_dict(RAW, ["figures=[mean_field_stationary]"]).numerics()
    assert base.numerics() != config_from_dict(RAW, ["solver.rtol=1e-8"]).numerics()
    assert base.numerics() == config_from_dict(RAW, ["solver.allow_failures=true"]).numerics()


@pytest.mark.parametrize("name", list(MEAN_FIELD_SOLVERS))
def test_every_solver_name_is_a_solver_of_its_kind(name):
    # The up-front stiffness refusal reads `implicit`: it must be what solve_mean_field does
    # with the solver (an IMEX split exactly for the IMEX classes).
    solver = SOLVER_CLASSES[name]()
    assert isinstance(solver, diffrax.AbstractSolver)
    config = config_from_dict(RAW, [f"solver.name={name}"])
    assert config.solver.implicit == isinstance(solver, _IMEX)
