"""transformer_flows.theory against closed forms, scipy float64 references and simulations."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate, special

import transformer_flows as tf
from transformer_flows import theory


def _gamma_rate(t, gamma, n, beta, model):
    """(6.9) and (6.10) exactly as printed, for the scipy reference."""
    g = gamma[0]
    if model == "SA":
        rate = (
            2
            * np.exp(beta * g)
            * (1 - g)
            * ((n - 1) * g + 1)
            / (np.exp(beta) + (n - 1) * np.exp(beta * g))
        )
    else:
        rate = (2 / n) * np.exp(beta * g) * (1 - g) * ((n - 1) * g + 1)
    return [rate]


def _scipy_gamma(ts, n, beta, model, **events):
    return integrate.solve_ivp(
        _gamma_rate,
        (0, ts[-1]),
        [0.0],
        method="DOP853",
        t_eval=ts,
        args=(n, beta, model),
        rtol=1e-13,
        atol=1e-15,
        **events,
    )


# ----------------------------------------------------------------------------------------
# Theorem 6.8: the equiangular cosine


@pytest.mark.parametrize("model", ["SA", "USA"])
@pytest.mark.parametrize("n", [2, 32])
def test_equiangular_cosine_at_beta_zero_is_the_closed_form(model, n):
    ts = np.linspace(0, 12, 25)
    expected = np.expm1(2 * ts) / (np.exp(2 * ts) + n - 1)
    np.testing.assert_allclose(
        theory.equiangular_cosine(ts, n, 0.0, model), expected, rtol=0, atol=1e-10
    )
    if n == 2:
        np.testing.assert_allclose(
            theory.equiangular_cosine(ts, 2, 0.0, model), np.tanh(ts), atol=1e-10
        )


@pytest.mark.parametrize("model, betas", [("SA", [0.5, 4.0, 9.0]), ("USA", [0.5, 2.0, 4.0])])
def test_equiangular_cosine_matches_scipy(model, betas):
    n, ts = 32, np.linspace(0, 30, 61)
    values = theory.equiangular_cosine(ts, n, jnp.asarray(betas), model)
    assert values.shape == (3, 61)
    for beta, row in zip(betas, values, strict=True):
        reference = _scipy_gamma(ts, n, beta, model).y[0]
        np.testing.assert_allclose(row, reference, rtol=0, atol=1e-9)
    # Monotone in t; SA slows down with β, USA speeds up (Thm 6.8 discussion).
    assert np.all(np.diff(values, axis=1) >= 0)
    order = np.diff(values, axis=0)
    assert np.all(order <= 1e-15) if model == "SA" else np.all(order >= -1e-15)


@pytest.mark.parametrize(
    "model, field", [("SA", tf.SelfAttention), ("USA", tf.UnnormalizedSelfAttention)]
)
def test_equiangular_cosine_is_what_the_particles_do(getkey, model, field):
    """Thm 6.8 on the actual dynamics: from an orthonormal frame every off-diagonal Gram
    entry stays equal to γ_β(t)."""
    n, d, beta = 5, 7, 1.5
    x0 = tf.orthonormal_tokens(n, d, key=getkey())
    ts = jnp.linspace(0, 4, 9)
    off_diagonal = ~np.eye(n, dtype=bool)
    solution = tf.solve(
        field(beta), x0, ts, observe=lambda x: tf.gram(x)[off_diagonal], rtol=1e-12, atol=1e-12
    )
    expected = theory.equiangular_cosine(ts, n, beta, model)
    np.testing.assert_allclose(
        solution.observed, np.repeat(expected[:, None], n * (n - 1), 1), rtol=0, atol=1e-10
    )
    assert expected[-1] > 0.9


@pytest.mark.parametrize("model", ["SA", "USA"])
def test_appendix_d_bounds_hold(model):
    n = 8
    for beta in (0.0, 1.0, 3.0):
        if model == "SA":
            half = n * np.exp(beta) / 2
            assert theory.equiangular_cosine([half], n, beta, model)[0] >= 0.5
        else:
            ts = np.linspace(n / 2, n / 2 + 4, 9)
            cosine = jax.jit(theory.equiangular_cosine, static_argnums=(1, 3))
            gamma = np.asarray(cosine(ts, n, beta, model))
            assert gamma[0] >= 0.5
            assert np.all(1 - gamma <= 0.5 * np.exp(-np.exp(beta / 2) * (ts - n / 2)) + 1e-15)


# ----------------------------------------------------------------------------------------
# Clustering times and the phase boundary Γ_{∞,δ}


def test_clustering_time_at_beta_zero():
    n, delta = 32, 1e-3
    assert float(theory.clustering_time(n, 0.0, delta, "SA")) == pytest.approx(
        0.5 * np.log((n - (n - 1) * delta) / delta), rel=1e-12
    )
    assert float(theory.clustering_time(32, 0.0, 1e-3, "USA")) == pytest.approx(5.186, abs=5e-4)
    deltas = np.array([1e-1, 1e-6, 1.0])
    np.testing.assert_allclose(
        theory.clustering_time(7, 0.0, deltas, "SA"),
        0.5 * np.log((7 - 6 * deltas) / deltas),
        rtol=1e-12,
        atol=1e-15,
    )


@pytest.mark.parametrize("model", ["SA", "USA"])
def test_clustering_time_is_the_scipy_event_time(model):
    n, delta = 32, 1e-3
    betas = np.array([0.3, 2.0, 5.0])
    times = np.asarray(theory.clustering_time(n, betas, delta, model))
    for beta, time in zip(betas, times, strict=True):

        def level(t, gamma, *args):
            return gamma[0] - (1 - delta)

        reference = _scipy_gamma(np.array([0.0, 200.0]), n, beta, model, events=level)
        assert time == pytest.approx(reference.t_events[0][0], rel=1e-9)
        assert theory.equiangular_cosine([time], n, beta, model)[0] == pytest.approx(
            1 - delta, abs=1e-11
        )
    assert np.all(np.diff(times) > 0) if model == "SA" else np.all(np.diff(times) < 0)


def test_clustering_time_broadcasts_and_jits():
    betas, deltas = jnp.array([[0.0], [1.0]]), jnp.array([1e-2, 1e-3, 1e-4])
    times = theory.clustering_time(4, betas, deltas, "SA")
    assert times.shape == (2, 3)
    jitted = jax.jit(lambda b: theory.clustering_time(4, b, 1e-3, "SA"))(1.0)
    assert jitted == pytest.approx(float(times[1, 1]), rel=1e-12)


def test_phase_boundary_solves_the_level_set():
    n, delta = 32, 1e-3
    ts = np.append(np.linspace(0, 30, 31), 200.0)  # by t = 200 every β <= 9 has clustered
    betas = np.linspace(0, 9, 10)
    curve = np.asarray(theory.phase_boundary(ts, n, delta, betas))
    assert curve[-1] == 9.0  # saturated at the top of the searched range
    ts, curve = ts[:-1], curve[:-1]
    onset = float(theory.clustering_time(n, 0.0, delta, "SA"))  # 5.186
    assert np.all(np.isnan(curve[ts < onset])) and not np.any(np.isnan(curve[ts > onset]))
    inside = curve[ts > onset]
    np.testing.assert_allclose(
        theory.clustering_time(n, inside, delta, "SA"), ts[ts > onset], rtol=1e-10
    )
    assert np.all(np.diff(inside) > 0)
    # Read as curve.ipynb does: γ_β(t) >= 1 - δ just below the curve, not just above.
    j = np.flatnonzero(ts == 15)[0]
    gamma = theory.equiangular_cosine(ts[j : j + 1], n, curve[j] + np.array([-1e-6, 1e-6]), "SA")
    assert gamma[0, 0] >= 1 - delta > gamma[1, 0]


def test_phase_boundary_for_usa_is_the_smallest_clustered_beta():
    n, delta = 8, 1e-3
    ts = np.array([0.5, 1.0, 2.0, 10.0])
    curve = np.asarray(theory.phase_boundary(ts, n, delta, np.linspace(0, 6, 4), model="USA"))
    finite = ~np.isnan(curve) & (curve > 0)
    np.testing.assert_allclose(
        theory.clustering_time(n, curve[finite], delta, "USA"), ts[finite], rtol=1e-10
    )
    assert curve[-1] == 0.0  # at t = 10 even β = 0 has clustered


# ----------------------------------------------------------------------------------------
# Wendel, Appendix B


def test_wendel_probability_exact_values():
    for n in range(1, 41):
        for d in range(1, n + 3):
            exact = 1.0 if d >= n else sum(math.comb(n - 1, k) for k in range(d)) / 2 ** (n - 1)
            assert theory.wendel_probability(n, d) == pytest.approx(exact, rel=1e-12)
    np.testing.assert_allclose(
        theory.wendel_probability(32, [2, 3, 8, 16, 32, 40]),
        [32 / 2**31, 2.31e-7, 1.66e-3, 0.5, 1.0, 1.0],
        rtol=3e-3,
    )


def test_wendel_probability_by_monte_carlo_on_the_circle(getkey):
    """On S¹ the points fit in an open half-circle iff some angular gap exceeds π."""
    samples = 40_000
    for n in (3, 5):
        theta = np.sort(
            np.asarray(jax.random.uniform(getkey(), (samples, n), maxval=2 * np.pi)), axis=1
        )
        gaps = np.diff(np.concatenate([theta, theta[:, :1] + 2 * np.pi], axis=1), axis=1)
        estimate = np.mean(gaps.max(axis=1) > np.pi)
        exact = float(theory.wendel_probability(n, 2))  # n / 2^(n-1)
        assert exact == pytest.approx(n / 2 ** (n - 1))
        assert abs(estimate - exact) < 4 * np.sqrt(exact * (1 - exact) / samples)


@pytest.mark.parametrize("d", [2, 3, 10])
def test_critical_angle_solves_its_equation(d):
    betas = np.array([1e-8, 0.3, 2.0, 6.0, 1e3, 1e8])
    tau = theory.critical_angle(betas, d)
    # cos τ near π/2 is only known to ~1e-16 absolutely, hence the atol.
    np.testing.assert_allclose(
        betas * np.sin(tau) ** 2, (d - 1) * np.cos(tau), rtol=1e-12, atol=1e-15
    )
    assert float(theory.critical_angle(0.0, d)) == pytest.approx(np.pi / 2)
    assert tau[-1] / np.sqrt((d - 1) / betas[-1]) == pytest.approx(1, rel=1e-6)


def test_large_beta_threshold_table():
    table = {3: 1.41, 4: 3.46, 8: 19.69, 16: 91.02, 32: 389.3, 64: 1608.4}
    for n, value in table.items():
        threshold = theory.large_beta_threshold(n)
        assert threshold == pytest.approx(value, abs=0.006 if value < 100 else 0.06)
        assert (n - 1) * float(theory.critical_angle(threshold)) == pytest.approx(np.pi / 2)
    assert theory.large_beta_threshold(2) == pytest.approx(0, abs=1e-15)


def test_landscape_g_is_the_torus_energy_hessian(getkey):
    """App. B: ∂_{θ_i}∂_{θ_j} E_β = g(θ_i - θ_j)/n² for i ≠ j."""
    n, beta = 6, 2.5
    theta = tf.uniform_angles(getkey(), n)
    hessian = np.asarray(jax.jit(jax.hessian(tf.torus_energy))(theta, beta))
    differences = np.asarray(theta[:, None] - theta[None, :])
    off = ~np.eye(n, dtype=bool)
    np.testing.assert_allclose(
        n**2 * hessian[off], theory.landscape_g(differences, beta)[off], rtol=1e-12, atol=1e-12
    )
    for b in (2.0, 6.0):
        star = float(theory.critical_angle(b))
        assert float(theory.landscape_g(star, b)) == pytest.approx(0, abs=1e-12)
        beyond = np.linspace(star + 1e-6, np.pi, 50)
        assert np.all(theory.landscape_g(beyond, b) < 0)
        assert np.all(theory.landscape_g(np.linspace(0, star - 1e-6, 50), b) > 0)


# ----------------------------------------------------------------------------------------
# The uniform measure: energy and linear growth rates


def _sphere_mean(fn, d):
    """∫ fn(<x,e>) dσ_d(x): <x,e> has density ∝ (1 - s²)^{(d-3)/2} on [-1, 1] (d >= 3), so
    Gauss–Jacobi quadrature with 80 nodes is exact to rounding for smooth fn."""
    nodes, weights = special.roots_jacobi(80, (d - 3) / 2, (d - 3) / 2)
    return np.sum(weights * fn(nodes)) / special.beta(0.5, (d - 1) / 2)


def test_uniform_energy_closed_forms_and_quadrature():
    betas = np.array([1e-3, 0.5, 3.0, 20.0])
    np.testing.assert_allclose(
        theory.uniform_energy(betas, 2), special.i0(betas) / (2 * betas), rtol=1e-13
    )
    np.testing.assert_allclose(
        theory.uniform_energy(betas, 3), np.sinh(betas) / (2 * betas**2), rtol=1e-13
    )
    for d in (4, 5, 7):
        for beta in (0.7, 5.0):
            expected = _sphere_mean(lambda s: np.exp(beta * s), d) / (2 * beta)
            assert float(theory.uniform_energy(beta, d)) == pytest.approx(expected, rel=1e-11)
    # Large d through the hypergeometric form ₀F₁(; d/2; β²/4) / (2β).
    assert float(theory.uniform_energy(9.0, 1024)) == pytest.approx(
        special.hyp0f1(512, 81 / 4) / 18, rel=1e-13
    )
    assert float(theory.uniform_energy(0.0, 3)) == 0


def test_uniform_energy_is_the_lattice_energy_on_the_circle():
    """(1/n²) Σ_ij e^{β cos(φ_i-φ_j)} on n equally spaced angles = I_0(β) + 2 Σ_k I_{kn}(β)."""
    theta = 2 * jnp.pi * jnp.arange(64, dtype=float) / 64
    for beta in (0.0, 1e-3, 1.0, 9.0):
        for shifted in (False, True):
            if beta == 0 and not shifted:
                continue
            lattice = (
                tf.torus_energy(theta, beta)
                if not shifted
                else tf.energy(tf.angles_to_points(theta), beta, shifted=True)
            )
            uniform = theory.uniform_energy(beta, 2, shifted=shifted)
            assert float(uniform) == pytest.approx(float(lattice), rel=1e-12, abs=1e-15)


def test_uniform_energy_for_large_beta_is_finite_when_rescaled():
    beta = 1e3
    with np.errstate(over="raise"):
        rescaled = float(theory.uniform_energy(beta, 2, rescaled=True))
    asymptotic = (1 + 1 / (8 * beta) + 9 / (128 * beta**2)) / np.sqrt(2 * np.pi * beta)
    assert rescaled == pytest.approx(asymptotic / (2 * beta), rel=1e-9)
    assert rescaled == pytest.approx(special.i0e(beta) / (2 * beta), rel=1e-13)
    assert float(theory.uniform_energy(beta, 2)) == np.inf
    small = float(theory.uniform_energy(1e-4, 6, shifted=True))
    assert small == pytest.approx(1e-4 / (4 * 6), rel=1e-7)  # (M - 1)/(2β) ≈ β/(4d)


def test_growth_rates_match_bessel_formulas():
    ells = np.arange(1, 8)[:, None]
    betas = np.array([0.5, 2.0, 9.0, 30.0])[None, :]
    usa2 = ells**2 * special.iv(ells, betas) / betas
    np.testing.assert_allclose(theory.growth_rate(ells, betas, 2, "USA"), usa2, rtol=1e-12)
    np.testing.assert_allclose(
        theory.growth_rate(ells, betas, 2, "SA"), usa2 / special.iv(0, betas), rtol=1e-12
    )
    usa3 = (
        ells
        * (ells + 1)
        * special.gamma(1.5)
        * np.sqrt(2 / betas)
        * special.iv(ells + 0.5, betas)
        / betas
    )
    np.testing.assert_allclose(theory.growth_rate(ells, betas, 3, "USA"), usa3, rtol=1e-12)
    # Large β: the SA rate stays finite (ℓ² I_ℓ/(β I_0) from scaled Bessel functions).
    scaled_ratio = special.ive([1, 3], 5e3) / special.ive(0, 5e3)
    np.testing.assert_allclose(
        theory.growth_rate([1, 3], 5e3, 2, "SA"), np.array([1, 9]) * scaled_ratio / 5e3, rtol=1e-12
    )


@pytest.mark.parametrize("d", [4, 5])
def test_growth_rates_are_funk_hecke_coefficients(d):
    """λ_ℓ(USA) = ℓ(ℓ+d-2)/β × ∫ e^{βt} P_ℓ(t) dσ_d, P_ℓ the normalised Gegenbauer polynomial."""
    order = (d - 2) / 2
    for ell in (1, 2, 4):
        for beta in (0.8, 6.0):
            coefficient = _sphere_mean(
                lambda s: (
                    np.exp(beta * s)
                    * special.eval_gegenbauer(ell, order, s)
                    / special.eval_gegenbauer(ell, order, 1.0)
                ),
                d,
            )
            expected = ell * (ell + d - 2) * coefficient / beta
            assert float(theory.growth_rate(ell, beta, d, "USA")) == pytest.approx(
                expected, rel=1e-10
            )
            assert float(theory.growth_rate(ell, beta, d, "SA")) == pytest.approx(
                expected / (2 * float(theory.uniform_energy(beta, d)) * beta), rel=1e-10
            )


def test_growth_rates_at_beta_zero():
    for d in (2, 3, 8):
        rates = theory.growth_rate([1, 2, 3], 0.0, d, "SA")
        np.testing.assert_allclose(rates, [(d - 1) / d, 0, 0], atol=0)
        np.testing.assert_allclose(
            theory.growth_rate([1, 2], 1e-9, d, "USA"), [(d - 1) / d, 0], atol=1e-8
        )


def test_selected_mode_table():
    betas = np.array([1, 2, 3, 4, 5, 6, 7, 8, 9, 12.0])
    np.testing.assert_array_equal(theory.selected_mode(betas, 2), [1, 2, 2, 3, 3, 3, 4, 4, 4, 5])
    np.testing.assert_array_equal(
        theory.selected_mode(betas, 2, "USA"), theory.selected_mode(betas, 2, "SA")
    )
    ells = np.arange(1, 40)
    for d in (3, 16):
        for beta in (2.0, 50.0):
            rates = theory.growth_rate(ells, beta, d, "SA")
            assert theory.selected_mode(beta, d) == ells[np.argmax(rates)]
    with pytest.raises(ValueError, match="max_mode"):
        theory.selected_mode(50.0, 2, max_mode=3)


# ----------------------------------------------------------------------------------------
# Errors


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: theory.equiangular_cosine([1.0], 4, 1.0, "sa"), "`model` must be 'SA'"),
        (lambda: theory.growth_rate(1, 1.0, 2, "softmax"), "`model`"),
        (lambda: theory.equiangular_cosine([1.0], 1, 1.0, "SA"), "`n` must be an integer >= 2"),
        (lambda: theory.equiangular_cosine([1.0], 4, -1.0, "SA"), "`beta` must be finite"),
        (lambda: theory.equiangular_cosine([2.0, 1.0], 4, 1.0, "SA"), "non-decreasing"),
        (lambda: theory.equiangular_cosine([-1.0], 4, 1.0, "SA"), "`ts`"),
        (lambda: theory.clustering_time(4, 1.0, 0.0, "SA"), "`delta` must lie in"),
        (lambda: theory.clustering_time(4, 1.0, 1.5, "USA"), "`delta` must lie in"),
        (lambda: theory.clustering_time(4, -0.5, 1e-3, "USA"), "`beta`"),
        (lambda: theory.phase_boundary([1.0], 4, 1e-3, [1.0]), "`betas` must be a 1-d grid"),
        (lambda: theory.phase_boundary([1.0], 4, 1e-3, [2.0, 1.0]), "increasing"),
        (lambda: theory.wendel_probability(0, 2), "`n` must be integers >= 1"),
        (lambda: theory.wendel_probability(3, 1.5), "`d`"),
        (lambda: theory.critical_angle(-1.0), "`beta`"),
        (lambda: theory.large_beta_threshold(1), "`n` must be an integer >= 2"),
        (lambda: theory.uniform_energy(1.0, 1), "`d` must be an integer >= 2"),
        (lambda: theory.uniform_energy(-2.0, 3), "`beta`"),
        (lambda: theory.growth_rate(0, 1.0, 2, "SA"), "`ell` must be integers >= 1"),
        (lambda: theory.growth_rate(1, -1.0, 2, "SA"), "`beta`"),
        (lambda: theory.selected_mode(1.0, 2, "USB"), "`model`"),
    ],
)
def test_errors_name_the_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_landscape_g_rescaled_is_finite_beyond_the_float64_range():
    """e^{-β} g is g scaled: equal for moderate β; for β = β_B(64) ≈ 1608 (where g itself
    exceeds 1.8e308 near τ = 0) it stays finite, keeps its sign change at τ*_β, and equals the
    closed form (d-1) cos τ - β sin²τ at τ = 0 (e^{-β(1-cos τ)} = 1 there)."""
    tau = np.linspace(0, np.pi, 101)
    for beta in (0.5, 6.0):
        np.testing.assert_allclose(
            np.exp(beta) * theory.landscape_g(tau, beta, rescaled=True),
            theory.landscape_g(tau, beta),
            rtol=1e-13,
            atol=1e-13,
        )
    beta = theory.large_beta_threshold(64)
    with np.errstate(over="ignore"):
        assert not np.isfinite(theory.landscape_g(0.0, beta))  # genuinely beyond float64
    near = np.linspace(0, 0.3, 301)  # τ*_β ≈ 0.025 (d = 2) and 0.05 (d = 5) here
    for d in (2, 5):
        values = theory.landscape_g(near, beta, d, rescaled=True)
        assert np.all(np.isfinite(values))
        assert float(values[0]) == pytest.approx(d - 1, rel=1e-15)
        star = float(theory.critical_angle(beta, d))
        # Far from τ = 0, e^{-β(1-cos τ)} < 1e-308 underflows to 0 (the true value's size).
        shown = values != 0
        assert np.sum(shown & (near > star)) > 10
        assert np.all(np.sign(values[shown]) == np.where(near < star, 1, -1)[shown])


def test_equiangular_gap_keeps_relative_accuracy_where_the_cosine_rounds_to_one():
    """At β = 0, 1 - γ = n/(e^{2t} + n - 1): at t = 30 that is ~1e-24, far below float64's
    resolution of γ near 1, yet the gap is exact to the solver's tolerance."""
    n, ts = 8, np.array([0.0, 1.0, 10.0, 30.0])
    exact = n / (np.exp(2 * ts) + n - 1)
    for model in ("SA", "USA"):
        np.testing.assert_allclose(theory.equiangular_gap(ts, n, 0.0, model), exact, rtol=1e-9)
        assert float(theory.equiangular_cosine(ts, n, 0.0, model)[-1]) == 1.0
    gap = theory.equiangular_gap(ts, n, 3.0, "SA")
    np.testing.assert_allclose(
        1 - theory.equiangular_cosine(ts[:2], n, 3.0, "SA"), gap[:2], rtol=1e-10
    )
    assert 0 < float(gap[-1]) < 1e-16
