"""The mean-field equation on the circle (`MeanFieldCircle`, `solve_mean_field`) against its
invariants, the linear growth rates of `theory.growth_rate` shifted by the noise, and the
stationary order parameter of `theory.stationary_order_parameter`.

One compiled program per model serves every test (vmapped over κ; κ = inf is no noise)."""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import transformer_flows as tf

MODES = 16


def _solve(beta, kappa, amplitudes, horizon, model):
    """From (1 + Σ_ℓ a_ℓ cos ℓθ)/(2π), ℓ = 1..3, on 6 save times in [0, horizon]."""
    equation = tf.MeanFieldCircle(beta, model=model, kappa=kappa, modes=MODES)
    theta = equation.theta
    ell = jnp.arange(1, 4, dtype=theta.dtype)
    density = (1 + amplitudes @ jnp.cos(ell[:, None] * theta[None, :])) / (2 * jnp.pi)
    ts = jnp.linspace(0.0, 1.0, 6) * horizon
    return tf.solve_mean_field(equation, density, ts, rtol=1e-10, atol=1e-13)


_run = eqx.filter_jit(jax.vmap(_solve, in_axes=(None, 0, None, None, None)))


def _moduli(solution):
    c = solution.coefficients
    return np.asarray(jnp.hypot(c[..., 0, :], c[..., 1, :]))


@pytest.mark.parametrize("model", ["SA", "USA"])
def test_growth_rates_and_mass(model):
    """Small cosine perturbations of the uniform state grow like e^{(λ_ℓ - ℓ²/κ) t}, λ_ℓ from
    `theory.growth_rate` (ℓ² I_ℓ(β)/β, divided by I_0(β) for SA); mass is conserved."""
    beta = 3.0
    kappas = jnp.asarray([jnp.inf, 20.0])
    solution = _run(jnp.asarray(beta), kappas, jnp.full(3, 1e-5), jnp.asarray(0.5), model)
    assert np.all(np.asarray(solution.result._value) == diffrax.RESULTS.successful._value)
    ts = np.asarray(solution.ts[0])
    moduli = _moduli(solution)
    for row, kappa in enumerate(np.asarray(kappas)):
        for ell in (1, 2, 3):
            rate = np.polyfit(ts, np.log(moduli[row, :, ell]), 1)[0]
            expected = tf.theory.growth_rate(ell, beta, 2, model) - ell**2 / kappa
            np.testing.assert_allclose(rate, expected, rtol=2e-4)
    c0 = np.asarray(solution.coefficients[..., 0])
    np.testing.assert_allclose(2 * np.pi * c0[..., 0], 1.0, atol=1e-13)
    np.testing.assert_array_equal(c0[..., 1], 0.0)


def test_stationary_state_matches_theory():
    """Long-time SA order parameter with noise equals `stationary_order_parameter`; the
    density stays positive and has stopped changing."""
    beta = 1.0
    kappas = jnp.asarray([5.0, 8.0])
    amplitudes = jnp.asarray([0.2, 0.0, 0.0])
    solution = _run(jnp.asarray(beta), kappas, amplitudes, jnp.asarray(40.0), "SA")
    expected = tf.theory.stationary_order_parameter(beta=beta, kappa=np.asarray(kappas), model="SA")
    assert np.all(expected > 0.3)
    np.testing.assert_allclose(np.asarray(solution.order_parameter[:, -1]), expected, rtol=1e-5)
    assert np.all(np.asarray(solution.density) > 0)
    change = np.abs(np.asarray(solution.density[:, -1] - solution.density[:, -2])).max()
    assert change < 1e-6


def test_gradient_of_order_parameter_in_beta():
    """d r(T)/dβ by autodiff through the solve equals a central finite difference (USA)."""
    amplitudes = jnp.asarray([1e-2, 0.0, 0.0])

    def order(beta):
        solution = _solve(beta, jnp.asarray(20.0), amplitudes, jnp.asarray(0.4), "USA")
        return solution.order_parameter[-1]

    value_and_grad = eqx.filter_jit(jax.value_and_grad(order))
    _, grad = value_and_grad(jnp.asarray(3.0))
    h = 1e-4
    fd = (value_and_grad(jnp.asarray(3.0 + h))[0] - value_and_grad(jnp.asarray(3.0 - h))[0]) / (
        2 * h
    )
    np.testing.assert_allclose(float(grad), float(fd), rtol=1e-5)


def test_bad_input():
    with pytest.raises(ValueError, match="model"):
        tf.MeanFieldCircle(1.0, model="softmax")
    with pytest.raises(ValueError, match="modes"):
        tf.MeanFieldCircle(1.0, modes=2)
    with pytest.raises(ValueError, match="kappa"):
        tf.MeanFieldCircle(1.0, kappa=-1.0)
    with pytest.raises(ValueError, match="beta"):
        tf.MeanFieldCircle(100.0, modes=16)
    equation = tf.MeanFieldCircle(1.0, modes=16)
    with pytest.raises(ValueError, match="density0"):
        tf.solve_mean_field(equation, jnp.ones(10), jnp.asarray([0.0, 1.0]))


# ------------------------------------------------------------------ stiff diffusion (IMEX)
# USA, β = 1, M = 32: at κ = 1.8 (just above κ_c = 1/I_1(1) = 1.770) the diffusion's stiffness
# κ^{-1}M² = 569 and the approach to the stationary state is slow (rate ~ 2(I_1(1) - 1/κ)
# = 0.019), so t = 600 is needed; at κ = 20 (stiffness 51) both paths work.
STIFF_MODES, STIFF_KAPPAS, STIFF_HORIZONS = 32, (1.8, 20.0), (600.0, 5.0)


def _stiff_solve(kappa, horizon, solver, max_steps):
    equation = tf.MeanFieldCircle(1.0, model="USA", kappa=kappa, modes=STIFF_MODES)
    density = (1 + 0.2 * jnp.cos(equation.theta)) / (2 * jnp.pi)
    ts = jnp.asarray([0.0, 0.5, 1.0]) * horizon
    return tf.solve_mean_field(
        equation,
        density,
        ts,
        solver=solver,
        rtol=1e-8,
        atol=1e-10,
        max_steps=max_steps,
        throw=False,
    )


@pytest.fixture(scope="module")
def stiff_solutions():
    """(IMEX, explicit) solutions vmapped over (κ, horizon); the explicit one with a step
    budget that the stiff system exhausts (its failure is the point)."""
    run = eqx.filter_jit(jax.vmap(_stiff_solve, in_axes=(0, 0, None, None)))
    kappas, horizons = jnp.asarray(STIFF_KAPPAS), jnp.asarray(STIFF_HORIZONS)
    imex = run(kappas, horizons, diffrax.KenCarp4(), 100_000)
    explicit = run(kappas, horizons, diffrax.Tsit5(), 2_000)
    return imex, explicit


def test_imex_solves_the_stiff_case_and_reaches_the_stationary_state(stiff_solutions):
    imex, _ = stiff_solutions
    assert np.all(np.asarray(imex.result._value) == diffrax.RESULTS.successful._value)
    # about a thousand steps for t = 600 (an explicit step is bounded by ~3κ/M² = 0.01)
    assert int(imex.stats["num_steps"][0]) < 5_000
    expected = tf.theory.stationary_order_parameter(beta=1.0, kappa=1.8, model="USA")
    assert 0.2 < expected < 0.25
    # the spectral error of this smooth density is negligible; what is left is the decaying
    # transient, ~(r(300) - r(600)) e^{-0.019 · 300}
    order = np.asarray(imex.order_parameter[0])
    assert abs(order[-1] - expected) <= 2e-5, (order, expected)
    assert abs(order[-1] - order[-2]) <= 5e-3
    np.testing.assert_allclose(
        2 * np.pi * np.asarray(imex.coefficients[:, :, 0, 0]), 1.0, atol=1e-12
    )


def test_imex_agrees_with_explicit_where_both_work(stiff_solutions):
    imex, explicit = stiff_solutions
    assert bool(explicit.succeeded[1]) and bool(imex.succeeded[1])
    difference = np.abs(np.asarray(imex.coefficients[1] - explicit.coefficients[1])).max()
    assert difference <= 1e-7, difference
    assert float(imex.order_parameter[1, -1]) > 0.5  # the state moved far from its start


def test_failed_explicit_solve_is_masked_not_inf(stiff_solutions):
    _, explicit = stiff_solutions
    assert not bool(explicit.succeeded[0])
    assert int(explicit.result._value[0]) == diffrax.RESULTS.max_steps_reached._value
    order = np.asarray(explicit.order_parameter[0])
    assert order[0] == pytest.approx(0.1) and np.isnan(order[1:]).all()
    assert np.isnan(np.asarray(explicit.density[0, 1:])).all()
    assert not np.isinf(np.asarray(explicit.coefficients)).any()


def test_failed_solve_raises_with_the_fix():
    equation = tf.MeanFieldCircle(1.0, model="USA", kappa=0.5, modes=4)
    density = (1 + 0.5 * jnp.cos(equation.theta)) / (2 * jnp.pi)
    with pytest.raises(Exception, match="KenCarp4"):
        tf.solve_mean_field(equation, density, jnp.asarray([0.0, 50.0]), max_steps=8)
