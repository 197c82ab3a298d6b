"""β < 0: the repulsive softmax.

Derived here (docs/models.md, "β < 0"):
- For any β ≠ 0, USA is ẋ = n∇E_β with E_β = (1/(2βn²)) Σ e^{β<x_i,x_j>}, so
  dE_β/dt = (1/n) Σ_i |ẋ_i|² >= 0 whatever the sign of β.
- On the circle, (7.1) is θ̇_i = (1/n) Σ_j f(θ_j - θ_i) with f(u) = e^{β cos u} sin u. At
  equally spaced angles θ_k = 2πk/n the Jacobian is circulant with eigenvalues
  λ_m = (1/n) Σ_{k=1}^{n-1} f'(2πk/n)(cos(2πmk/n) - 1), f'(u) = e^{β cos u}(cos u - β sin²u).
  n = 3: λ_0 = 0 (rotation) and λ_1 = λ_2 = -f'(2π/3) = e^{-β/2}(1/2 + 3β/4), negative iff
  β < -2/3: the equilateral triangle is a stable non-synchronised equilibrium exactly when
  β < -2/3 (the threshold of Polyanskiy–Rigollet–Yao, arXiv:2507.22857, below which global
  synchronisation fails). n = 4: λ_1 = λ_3 = (β + e^{-β})/2 > 0 for every β (e^{-β} > -β),
  λ_2 = β: the square is never stable.
- At the synchronised state the nonzero eigenvalues are -f'(0) = -e^{β} < 0.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import transformer_flows as tf

X = tf.sample_sphere(jax.random.key(0), 5, 3)


def test_usa_ascends_its_energy_for_negative_beta():
    beta = -1.5
    field = tf.UnnormalizedSelfAttention(beta)
    velocity = field(0.0, X)
    # ẋ = n P∇E (Remark 3.8) and dE/dt along ẋ equals (1/n) Σ|ẋ_i|² > 0.
    gradient = jax.grad(lambda x: tf.energy(x, beta))(X)
    np.testing.assert_allclose(velocity, 5 * tf.project_tangent(X, gradient), atol=1e-14)
    rate = jax.jvp(lambda x: tf.energy(x, beta), (X,), (velocity,))[1]
    np.testing.assert_allclose(rate, jnp.sum(velocity**2) / 5, rtol=1e-13)
    assert rate > 0
    # The time-rescaled field is e^{-|β|} times the field (exponents <= 0 for either sign).
    rescaled = tf.UnnormalizedSelfAttention(beta, time_rescaled=True)(0.0, X)
    np.testing.assert_allclose(rescaled, np.exp(-abs(beta)) * velocity, rtol=1e-13)
    np.testing.assert_allclose(
        tf.energy(X, beta, rescaled=True), np.exp(-abs(beta)) * tf.energy(X, beta), rtol=1e-13
    )


@pytest.mark.parametrize(
    "field",
    [
        tf.SelfAttention(-1e3),
        tf.UnnormalizedSelfAttention(-1e3, time_rescaled=True),
        tf.SinkhornAttention(-1e3),
    ],
)
def test_large_negative_beta_in_float32_stays_finite(field):
    x = X.astype(jnp.float32)
    velocity = field(0.0, x)
    assert velocity.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(velocity)))
    assert np.isfinite(tf.energy(x, -1e3, rescaled=True))


@jax.jit
def _velocity_and_jacobian(beta, theta):
    field = tf.Kuramoto(beta)
    return field(0.0, theta), jax.jacfwd(lambda th: field(0.0, th))(theta)


def _jacobian_eigenvalues(beta, n):
    theta = 2 * jnp.pi * jnp.arange(n, dtype=float) / n
    velocity, jacobian = _velocity_and_jacobian(jnp.asarray(beta), theta)
    np.testing.assert_allclose(velocity, 0.0, atol=1e-14)  # an equilibrium
    return np.sort(np.linalg.eigvals(np.asarray(jacobian)))


@pytest.mark.parametrize("beta", [-2.0, -1.0, -0.7, -0.6, -0.1, 0.5])
def test_equally_spaced_linear_stability(beta):
    triangle = _jacobian_eigenvalues(beta, 3)
    expected = np.exp(-beta / 2) * (0.5 + 0.75 * beta)
    np.testing.assert_allclose(
        np.sort(triangle.real), np.sort([0.0, expected, expected]), atol=1e-13
    )
    assert (expected < 0) == (beta < -2 / 3)
    square = _jacobian_eigenvalues(beta, 4).real
    lam1 = (beta + np.exp(-beta)) / 2
    np.testing.assert_allclose(square, np.sort([0.0, lam1, lam1, beta]), atol=1e-13)
    assert square.max() > 0  # unstable for every β


@jax.jit
def _order_after(betas, theta0):
    """|mean_j e^{iθ_j}| at t = 40 of (7.1), batched over (β, start): one program."""

    def one(beta, theta):
        end = tf.solve(
            tf.Kuramoto(beta), theta, jnp.array([0.0, 40.0]), rtol=1e-8, atol=1e-8, max_steps=4096
        ).xs[-1]
        return jnp.hypot(jnp.mean(jnp.cos(end)), jnp.mean(jnp.sin(end)))

    return jax.vmap(one)(betas, theta0)


def test_synchronisation_at_small_negative_beta_and_its_failure_below_two_thirds():
    """n = 3, 64 uniform starts. β = -0.1 (>= -0.16: synchronisation proved): every start
    synchronises (order parameter 1). β = -1 (< -2/3): the stable triangle attracts a set of
    starts of positive measure (measured 7 of 64 end there, order parameter < 1e-3)."""
    starts = jax.random.uniform(jax.random.key(0), (64, 3), maxval=2 * np.pi)
    betas = jnp.repeat(jnp.array([-0.1, -1.0]), 64)
    order = np.asarray(_order_after(betas, jnp.concatenate([starts, starts]))).reshape(2, 64)
    assert np.all(order[0] > 1 - 1e-6)
    triangle = order[1] < 1e-3
    assert 1 <= triangle.sum() <= 32, triangle.sum()
    assert np.all(order[1][~triangle] > 1 - 1e-6)  # the others synchronise
