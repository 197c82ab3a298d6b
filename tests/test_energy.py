"""Gradient-flow structure (§3): USA = n∇E, energy rates for SA/USA, V = -I, modified metric."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import transformer_flows as tf

from helpers import random_orthogonal

TIGHT = dict(rtol=1e-11, atol=1e-11)


def rate(energy_fn, field, x):
    """dE/dt = <∇E(x), ẋ> by forward-mode autodiff."""
    return jax.jvp(energy_fn, (x,), (field(0.0, x),))[1]


@pytest.mark.parametrize("beta", [0.0, 0.7, 5.0])
def test_usa_is_n_times_gradient_of_energy(getkey, beta):
    x = tf.sample_sphere(getkey(), 9, 4)
    gradient = jax.grad(tf.energy)(x, beta)
    expected = 9 * tf.project_tangent(x, gradient)
    np.testing.assert_allclose(
        tf.UnnormalizedSelfAttention(beta)(0.0, x), expected, rtol=1e-12, atol=1e-12
    )


def test_time_rescaled_usa_is_gradient_of_rescaled_energy(getkey):
    x, beta = tf.sample_sphere(getkey(), 7, 3), 30.0
    field = tf.UnnormalizedSelfAttention(beta, time_rescaled=True)
    gradient = jax.grad(lambda y: tf.energy(y, beta, rescaled=True))(x)
    np.testing.assert_allclose(field(0.0, x), 7 * tf.project_tangent(x, gradient), atol=1e-12)
    plain = tf.UnnormalizedSelfAttention(beta)(0.0, x)
    np.testing.assert_allclose(
        field(0.0, x),
        np.exp(-beta) * plain,
        rtol=1e-10,
        atol=1e-12 * np.abs(plain).max() * np.exp(-beta),
    )


@pytest.mark.parametrize("model", ["SA", "USA"])
def test_energy_rate_identity_and_monotonicity_along_solution(getkey, model):
    n, beta = 10, 2.0
    field = tf.SelfAttention(beta) if model == "SA" else tf.UnnormalizedSelfAttention(beta)
    ts = np.linspace(0, 4, 161)
    xs = tf.solve(field, tf.sample_sphere(getkey(), n, 3), ts, **TIGHT).xs
    energies = jax.vmap(tf.energy, in_axes=(0, None))(xs, beta)
    assert np.all(np.diff(energies) >= -1e-13)

    def predicted(x):
        v = field(0.0, x)
        if model == "USA":
            return jnp.sum(v**2) / n
        z = jnp.sum(jnp.exp(beta * x @ x.T), axis=1)
        return jnp.sum(z * jnp.sum(v**2, axis=1)) / n**2

    autodiff = jax.vmap(lambda x: rate(lambda y: tf.energy(y, beta), field, x))(xs)
    formula = jax.vmap(predicted)(xs)
    np.testing.assert_allclose(autodiff, formula, rtol=1e-10, atol=1e-12 * formula.max())
    # E(T) - E(0) = ∫ dE/dt: the closed-form rate integrates to the actual energy change.
    integral = np.sum((formula[1:] + formula[:-1]) / 2 * np.diff(ts))
    np.testing.assert_allclose(energies[-1] - energies[0], integral, rtol=1e-3)
    assert energies[-1] - energies[0] > 1e-3


def test_repulsive_value_matrix_decreases_energy(getkey):
    beta, d = 1.5, 3
    field = tf.SelfAttention(beta, V=-jnp.eye(d))
    xs = tf.solve(field, tf.sample_sphere(getkey(), 8, d), np.linspace(0, 3, 61), **TIGHT).xs
    energies = jax.vmap(tf.energy, in_axes=(0, None))(xs, beta)
    assert np.all(np.diff(energies) <= 1e-13)
    assert energies[-1] < energies[0] - 1e-4


def test_sa_is_modified_metric_gradient(getkey):
    """§3.4.1: QᵀK symmetric and V = QᵀK ⇒ Z_i ẋ_i = P^⊥_{x_i} ∂_{x_i} E."""
    d, n, beta = 4, 7, 1.3
    rng = np.random.default_rng(0)
    Q = rng.standard_normal((d, d)) + 2 * np.eye(d)
    S = rng.standard_normal((d, d))
    S = (S + S.T) / 4
    K = np.linalg.solve(Q.T, S)  # QᵀK = S
    field = tf.SelfAttention(beta, Q, K, S)
    x = tf.sample_sphere(getkey(), n, d)
    z = jnp.sum(jnp.exp(beta * (x @ S.T) @ x.T), axis=1)
    gradient = jax.grad(tf.modified_metric_energy)(x, beta, S)
    np.testing.assert_allclose(
        z[:, None] * field(0.0, x), tf.project_tangent(x, gradient), rtol=1e-10, atol=1e-10
    )
    # and hence d/dt E = Σ_i Z_i |ẋ_i|² >= 0
    derivative = rate(lambda y: tf.modified_metric_energy(y, beta, S), field, x)
    np.testing.assert_allclose(derivative, jnp.sum(z * jnp.sum(field(0.0, x) ** 2, 1)), rtol=1e-10)


def test_energy_values_and_limits(getkey):
    n, beta = 5, 2.0
    consensus = jnp.tile(jnp.eye(1, 3), (n, 1))
    np.testing.assert_allclose(tf.energy(consensus, beta), np.exp(beta) / (2 * beta))
    orthonormal = tf.orthonormal_tokens(n, n)
    np.testing.assert_allclose(
        tf.energy(orthonormal, beta), (np.exp(beta) + n - 1) / (2 * beta * n)
    )
    x = tf.sample_sphere(getkey(), n, 3)
    # shifted energy is continuous at β = 0 and equals the β = 0 value there
    small = tf.energy(x, 1e-7, shifted=True)
    np.testing.assert_allclose(small, tf.energy(x, 0.0), rtol=1e-6)
    # rescaled energy stays finite in float32 at β = 1000
    x32 = x.astype(jnp.float32)
    assert jnp.isfinite(tf.energy(x32, jnp.float32(1000.0), rescaled=True))
    # rotation invariance
    U = random_orthogonal(np.random.default_rng(1), 3)
    np.testing.assert_allclose(tf.energy(x @ U.T, beta), tf.energy(x, beta), rtol=1e-13)


def test_rescaled_energy_is_finite_and_accurate_at_large_beta_in_float32(getkey):
    """At β = 1000, e^β overflows float32 (so the plain energy is inf) while the rescaled
    energy e^{-β}E_β = (1/(2βn²)) Σ_ij e^{β(<x_i,x_j> - 1)} stays finite and accurate: checked
    against a float64 numpy reference on a tight cluster (where the off-diagonal terms
    matter), eagerly and with β traced under jit, with a finite gradient."""
    n, beta = 4, 1000.0
    centre = jnp.array([[1.0, 0.0, 0.0]])
    x64 = tf.normalize(centre + 0.01 * jax.random.normal(getkey(), (n, 3)))
    g = np.asarray(x64) @ np.asarray(x64).T
    reference = np.sum(np.exp(beta * (g - 1))) / (2 * beta * n**2)
    assert reference > 1.5 / (2 * beta * n)  # off-diagonal pairs contribute, not just i = j
    x32 = x64.astype(jnp.float32)
    eager = tf.energy(x32, jnp.float32(beta), rescaled=True)
    traced = jax.jit(lambda x, b: tf.energy(x, b, rescaled=True))(x32, jnp.float32(beta))
    for value in (eager, traced):
        assert value.dtype == jnp.float32
        np.testing.assert_allclose(value, reference, rtol=1e-3)
    shifted = tf.energy(x32, jnp.float32(beta), rescaled=True, shifted=True)
    np.testing.assert_allclose(shifted, reference - 1 / (2 * beta) * np.exp(-beta), rtol=1e-3)
    gradient = jax.grad(lambda y: tf.energy(y, jnp.float32(beta), rescaled=True))(x32)
    assert np.all(np.isfinite(gradient))
    assert not np.isfinite(tf.energy(x32, jnp.float32(beta)))  # why `rescaled` exists
