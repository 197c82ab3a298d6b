"""Long context (Chen–Lin–Polyanskiy–Rigollet): the one-layer cosine at β = γ log n against
explicit equiangular particles, its three n → ∞ limits and the derived rates."""

import warnings

import jax.numpy as jnp
import numpy as np
import pytest

import transformer_flows as tf
from transformer_flows import theory


def _equiangular(n: int, rho: float) -> np.ndarray:
    """n unit vectors in R^n with <x_i, x_j> = rho (i ≠ j): rows of the Cholesky factor of the
    Gram matrix (1 - rho) I + rho 11^T (positive definite for rho > -1/(n-1))."""
    gram = (1 - rho) * np.eye(n) + rho * np.ones((n, n))
    return np.linalg.cholesky(gram)


def _particle_cosines(n, gamma, rho, *, q=1.0, alpha=0.0) -> np.ndarray:
    """The paper's layer x'_i = ATT(y_i) + alpha x_i with |x_i|² = q, computed by the library's
    SA field (drift = the attention output before the tangent projection), float64; returns
    the off-diagonal cosines of the output directions."""
    y = _equiangular(n, rho)
    field = tf.SelfAttention(gamma * np.log(n))
    attention = np.asarray(field.drift(0.0, jnp.asarray(y)))
    np.testing.assert_allclose(np.linalg.norm(y, axis=1), 1.0, atol=1e-14)
    out = attention + alpha * np.sqrt(q) * y
    theta = out / np.linalg.norm(out, axis=1, keepdims=True)
    cosines = theta @ theta.T
    return cosines[~np.eye(n, dtype=bool)]


@pytest.mark.parametrize(
    ("n", "gamma", "rho", "q", "alpha"),
    [
        (2, 1.0, 0.3, 1.0, 0.0),
        (5, 0.7, 0.9, 1.0, 0.0),
        (64, 2.0, 0.5, 1.0, 0.0),  # critical: γ(1-ρ) = 1
        (200, 3.0, 0.2, 1.0, 0.0),
        (200, 0.5, 0.2, 4.0, 0.35),  # the paper's residual α x_i, |x_i|² = q
        (50, 1.3, 0.0, 1.0, 0.0),  # orthonormal tokens
        (7, 0.5, -1 / 6 + 1e-3, 1.0, 0.0),  # near the centred simplex
        (30, 0.0, 0.4, 1.0, 0.0),  # β = 0: every output is the mean, cosine 1
    ],
)
def test_exact_cosine_equals_particle_layer(n, gamma, rho, q, alpha):
    cosines = _particle_cosines(n, gamma, rho, q=q, alpha=alpha)
    # The outputs stay equiangular, at the cosine of the closed form.
    expected = theory.long_context_cosine(n, gamma, rho, residual=alpha * np.sqrt(q))
    np.testing.assert_allclose(cosines, expected, rtol=0, atol=1e-13)
    if gamma == 0:
        assert expected == 1.0


@pytest.mark.parametrize("rho", [0.1, 0.5, 0.8])
def test_limits_are_the_three_regimes(rho):
    critical = theory.critical_gamma(rho)
    assert critical == pytest.approx(1 / (1 - rho), rel=1e-15)
    limits = theory.long_context_limit(np.array([0.5, 1.0, 1.5]) * critical, rho)
    np.testing.assert_allclose(limits, [1.0, 4 * rho / (1 + 3 * rho), rho], rtol=1e-15)
    # γ = 0 (uniform attention) collapses; any γ above γ_c leaves the tokens as they were.
    assert theory.long_context_limit(0.0, rho) == 1.0
    assert theory.long_context_limit(100 * critical, rho) == rho


@pytest.mark.parametrize("rho", [0.1, 0.5, 0.8])
@pytest.mark.parametrize("ratio", [0.5, 1.0, 1.5])
def test_cosine_converges_to_the_limit_at_the_derived_rate(rho, ratio):
    """(cos_n - lim)/correction -> 1 with relative error O(n^{-|κ-1|} + 1/n), κ = γ(1-ρ)."""
    gamma = ratio * theory.critical_gamma(rho)
    kappa = gamma * (1 - rho)
    limit = theory.long_context_limit(gamma, rho)
    ns = np.array([1e3, 1e5, 1e7])
    error = theory.long_context_cosine(ns, gamma, rho) - limit
    correction = theory.long_context_correction(ns, gamma, rho)
    relative = np.abs(error / correction - 1)
    np.testing.assert_array_less(relative, 3 * (ns ** -abs(kappa - 1) + 1 / ns))
    assert np.all(np.diff(np.abs(error)) < 0)  # monotone approach
    # The rates themselves: n^{-2(1-κ)} below, 1/n at, n^{-(κ-1)} above γ_c (local slopes
    # on log-log axes; below γ_c the factor (1 - n^{-κ})² shifts them by O(n^{-κ})).
    slope = np.diff(np.log(np.abs(error))) / np.diff(np.log(ns))
    expected_slope = {0.5: -2 * (1 - kappa), 1.0: -1.0, 1.5: -(kappa - 1)}[ratio]
    np.testing.assert_allclose(slope, expected_slope, atol=0.05)


@pytest.mark.parametrize("residual", [0.2, 1.0])
def test_residual_limits(residual):
    """With u_i = A_i + r y_i the limit is ρ(1+π)²/(π²+2ρπ+ρ), π = c(1+r) + r; checked at
    n = 1e12 against the exact formula (error O(n^{-1/2}) here: |κ - 1| = 1/2)."""
    rho = 0.5
    for ratio, c in ((0.5, 0.0), (1.0, 1.0)):
        pi = c * (1 + residual) + residual
        expected = rho * (1 + pi) ** 2 / (pi**2 + 2 * rho * pi + rho)
        gamma = ratio * theory.critical_gamma(rho)
        assert theory.long_context_limit(gamma, rho, residual=residual) == pytest.approx(
            expected, rel=1e-14
        )
        exact = theory.long_context_cosine(1e12, gamma, rho, residual=residual)
        assert exact == pytest.approx(expected, abs=1e-5)
        assert expected < 1  # the residual keeps tokens apart even below γ_c
    assert theory.long_context_limit(3.0, rho, residual=residual) == rho


def test_edge_cases():
    # ρ = 0: σ = 1 does not grow with n and the transition moves to γ = 1/2 (cos -> 1, 1/2, 0).
    exact = theory.long_context_cosine(1e16, [0.25, 0.5, 0.75], 0.0)
    np.testing.assert_allclose(exact, [1.0, 0.5, 0.0], atol=1e-3)
    # Continuous in ρ at fixed n (the limit is not: γ_c(0+) = 1).
    np.testing.assert_allclose(
        theory.long_context_cosine(100, 0.8, 1e-9),
        theory.long_context_cosine(100, 0.8, 0.0),
        atol=1e-8,
    )
    # ρ -> 1: the tokens coincide, cosine 1 (also with a residual).
    assert theory.long_context_cosine(100, 2.0, 1.0) == 1.0
    assert theory.long_context_cosine(100, 2.0, 1.0, residual=0.5) == 1.0
    np.testing.assert_allclose(theory.long_context_cosine(100, 2.0, 1 - 1e-9), 1.0, atol=1e-8)
    # Centred simplex: Σ y_j = 0, so u_i ∝ y_i and the cosine is ρ itself.
    n = 9
    assert theory.long_context_cosine(n, 1.0, -1 / (n - 1)) == pytest.approx(-1 / (n - 1))
    # More attention to oneself (larger γ) never brings the outputs closer.
    gammas = np.linspace(0, 6, 61)
    assert np.all(np.diff(theory.long_context_cosine(1000, gammas, 0.3)) < 0)
    # Huge n and γ: no overflow, no warning, the supercritical value ρ.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        value = theory.long_context_cosine(1e18, 1e3, 0.5)
        assert theory.long_context_correction(1e18, 1e3, 0.5) == pytest.approx(0.0, abs=1e-300)
    assert value == 0.5
    # Broadcasting: shape of the broadcast arguments.
    shape = np.shape(theory.long_context_cosine(np.array([[4], [8]]), [0.5, 1.0, 2.0], 0.3))
    assert shape == (2, 3)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: theory.long_context_cosine(1, 1.0, 0.5), "`n` must be integers >= 2"),
        (lambda: theory.long_context_cosine(10.5, 1.0, 0.5), "`n` must be integers >= 2"),
        (lambda: theory.long_context_cosine(10, -1.0, 0.5), "`gamma` must be finite and >= 0"),
        (lambda: theory.long_context_cosine(10, np.nan, 0.5), "`gamma` must be finite"),
        (lambda: theory.long_context_cosine(10, 1.0, 1.5), r"`rho` must lie in \[-1/\(n-1\), 1\]"),
        (lambda: theory.long_context_cosine(10, 1.0, -0.2), r"`rho` must lie in \[-1/\(n-1\), 1\]"),
        (lambda: theory.long_context_cosine(10, 1.0, 0.5, residual=-1), "`residual` must be"),
        (lambda: theory.long_context_cosine(10, 0.0, -1 / 9), "zero vector"),
        (lambda: theory.long_context_limit(1.0, 0.0), r"`rho` must lie in \(0, 1\)"),
        (lambda: theory.long_context_limit(1.0, 1.0), r"`rho` must lie in \(0, 1\)"),
        (lambda: theory.critical_gamma(-0.1), r"`rho` must lie in \(0, 1\)"),
        (lambda: theory.long_context_correction(10, 1.0, 1.2), r"`rho` must lie in \(0, 1\)"),
    ],
)
def test_bad_input_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_equiangular_flow_clustering_time_at_beta_gamma_log_n():
    """The depth question for orthonormal starts: Thm 6.8's ODE (6.9) at β = γ log n. Derived
    (docs/models.md): with L = ln n and level 1 - δ,
    - γ < 1: t* - t*_{β=0} -> 0, t*_{β=0} = (1/2) ln((n - (n-1)δ)/δ) (the β = 0 law, ½ ln n);
    - γ = 1: t* = L - (1/2) ln L + (1/2) ln((1-δ)/δ) - γ_E/2 + o(1) (twice as fast growth);
    - γ > 1: t* ~ (1/2) n^{γ-1} (L - ln(γL) - γ_E) (polynomial growth)."""
    delta = 0.1
    gammas = np.array([0.5, 1.0, 1.5])
    errors = []
    for n in (2**12, 2**20):
        log_n = np.log(n)
        # One β per call: the compiled program is the one the config test's dataset uses.
        times = np.array(
            [float(theory.clustering_time(n, [g * log_n], delta, "SA")[0]) for g in gammas]
        )
        free = 0.5 * np.log((n - (n - 1) * delta) / delta)
        critical = log_n - 0.5 * np.log(log_n) + 0.5 * np.log((1 - delta) / delta)
        critical -= np.euler_gamma / 2
        above = 0.5 * n**0.5 * (log_n - np.log(1.5 * log_n) - np.euler_gamma)
        errors.append([times[0] - free, times[1] - critical, times[2] / above - 1])
    errors = np.abs(np.array(errors))
    assert np.all(errors[1] < errors[0])  # each error shrinks with n
    np.testing.assert_array_less(errors[1], [0.01, 0.05, 0.01])


# ----------------------------------------------------------------------------------------
# The figure's config (configs/long_context.yaml; its smoke run is in tests/test_cli.py)


def test_config_dataset_is_the_theory(tmp_path):
    from transformer_flows.experiment import ConfigError, config_from_dict, load_config
    from transformer_flows.experiment._theory import theory_dataset

    config = load_config(
        "configs/long_context.yaml",
        ["theory.long_context.rho=[0.3]", "theory.long_context.log10_n=[0.30103, 3.0, 3.0001]"],
    )
    spec = config.theory.long_context
    np.testing.assert_array_equal(spec.token_counts, [2, 1000])  # rounded, each once
    dataset = theory_dataset(config)
    gammas = np.asarray(spec.gamma_ratio) / (1 - 0.3)
    cosine = dataset["long_context_cosine"].sel(rho=0.3)
    np.testing.assert_array_equal(
        cosine.sel(n_tokens=1000).values, theory.long_context_cosine(1000, gammas, 0.3)
    )
    np.testing.assert_array_equal(
        dataset["long_context_limit"].sel(rho=0.3).values, theory.long_context_limit(gammas, 0.3)
    )
    raw = {"experiment": "theory", "figures": ["long_context"]}
    with pytest.raises(ConfigError, match="needs a theory.long_context section"):
        config_from_dict(raw)
    for key, value in (("rho", [1.0]), ("gamma_ratio", [-1.0]), ("log10_n", [0.0])):
        bad = {**raw, "theory": {"long_context": {key: value}}}
        with pytest.raises(ConfigError, match=key):
            config_from_dict(bad)
