"""Sinkhorn attention (Sinkformers): k = 1 is softmax, k → ∞ the doubly stochastic scaling.

Rate (Knight 2008, "The Sinkhorn–Knopp algorithm: convergence and applications"): near the
limit P∞, one column-then-row pair contracts the deviation by σ₂(P∞)², σ₂ the second
singular value of the doubly stochastic limit; measured here to 1e-6 relative.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import transformer_flows as tf

X = tf.sample_sphere(jax.random.key(0), 6, 3)
WEIGHTS = jax.random.normal(jax.random.key(1), (3, 2, 3, 3)) / np.sqrt(3)


@pytest.mark.parametrize(
    "weights",
    [
        {},
        {"Q": WEIGHTS[0], "K": WEIGHTS[1], "V": WEIGHTS[2]},  # two heads
        {"V": WEIGHTS[2]},  # two heads of values, identity queries and keys
        {"Q": WEIGHTS[0], "V": WEIGHTS[2], "layer_duration": 0.5},  # two layers
    ],
)
def test_one_iteration_is_softmax_attention(weights):
    for t in (0.0, 0.7):
        sinkhorn = tf.SinkhornAttention(2.0, iterations=1, **weights)
        softmax = tf.SelfAttention(2.0, **weights)
        # Bit for bit in the pure-JAX path; on CPU SelfAttention takes the one-pass kernel
        # (docs/scaling.md), whose exponential is within an ulp: rounding apart.
        np.testing.assert_allclose(sinkhorn(t, X), softmax(t, X), rtol=0, atol=1e-14)  # a few ulp
        # The matrices: SelfAttention's `attention_weights` forms the scores with a matmul,
        # the drift (both fields) with summed outer products: one ulp apart.
        np.testing.assert_allclose(
            sinkhorn.attention_matrix(t, X), softmax.attention_matrix(t, X), rtol=1e-15
        )


def test_iterations_converge_to_the_doubly_stochastic_symmetric_limit():
    scores = 2.0 * X @ X.T  # Q = K = I: a symmetric kernel
    limit = np.asarray(tf.sinkhorn(scores, 2001))
    np.testing.assert_allclose(limit.sum(0), 1, atol=1e-14)
    np.testing.assert_allclose(limit.sum(1), 1, atol=1e-14)
    np.testing.assert_allclose(limit, limit.T, atol=1e-14)  # symmetric scaling D K D
    rate = np.linalg.svd(limit, compute_uv=False)[1] ** 2  # measured 0.7361
    deviations = []
    for k in (1, 31, 33, 35):  # odd k: rows exactly 1, columns converge
        A = np.asarray(tf.sinkhorn(scores, k))
        np.testing.assert_allclose(A.sum(1), 1, atol=1e-14)
        deviations.append(np.abs(A.sum(0) - 1).max())
    assert deviations[0] > 1e-2 and deviations[-1] < 1e-5  # measured 3.3e-2 and 3.5e-6
    ratios = np.array(deviations[2:]) / np.array(deviations[1:-1])  # one pair each
    np.testing.assert_allclose(ratios, rate, rtol=1e-5)
    # Even k ends on columns: columns exactly 1.
    np.testing.assert_allclose(np.asarray(tf.sinkhorn(scores, 4)).sum(0), 1, atol=1e-14)
    # A non-symmetric kernel (Q ≠ K) still converges to a doubly stochastic matrix.
    field = tf.SinkhornAttention(2.0, WEIGHTS[0, 0], WEIGHTS[1, 0], iterations=401)
    A = np.asarray(field.attention_matrix(0.0, X)[0])
    np.testing.assert_allclose(A.sum(0), 1, atol=1e-12)
    np.testing.assert_allclose(A.sum(1), 1, atol=1e-14)
    assert np.abs(A - A.T).max() > 1e-2


def test_gradients_match_finite_differences():
    """d/dβ and d/dQ of a readout of the field, through the unrolled iterations (solves
    differentiate it like any field: tests/test_contracts.py, d/dβ of every solver)."""
    R = jnp.linspace(-1.0, 1.0, X.size).reshape(X.shape)

    def readout(beta, Q):
        field = tf.SinkhornAttention(beta, Q, WEIGHTS[1, 0], WEIGHTS[2, 0], iterations=4)
        return jnp.sum(R * field(0.0, X))

    beta, Q = jnp.asarray(1.5), WEIGHTS[0, 0]
    dQ = jax.random.normal(jax.random.key(2), Q.shape)
    g_beta, g_Q = jax.jit(jax.grad(readout, argnums=(0, 1)))(beta, Q)
    step = 1e-6
    fd = (readout(beta + step, Q + step * dQ) - readout(beta - step, Q - step * dQ)) / (2 * step)
    np.testing.assert_allclose(g_beta + jnp.sum(g_Q * dQ), fd, rtol=1e-7)


@jax.jit
def _float32_run(beta):
    """(A, |velocity|², its β-derivative) for float32 tokens: one program for every β."""
    x = X.astype(jnp.float32)

    def speed(b):
        return jnp.sum(tf.SinkhornAttention(b, iterations=7)(0.0, x) ** 2)

    return (tf.sinkhorn(beta * (x @ x.T), 7), *jax.value_and_grad(speed)(beta))


@pytest.mark.parametrize("beta", [1e3, -1e3])
def test_large_beta_in_float32_stays_finite(beta):
    A, value, gradient = _float32_run(jnp.float32(beta))
    assert A.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(A)))
    np.testing.assert_allclose(A.sum(1), 1, atol=1e-5)
    assert np.isfinite(value) and np.isfinite(gradient)


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: tf.SinkhornAttention(1.0, iterations=0), "`iterations` must be a positive"),
        (lambda: tf.SinkhornAttention(1.0, iterations=-3), "`iterations` must be a positive"),
        (
            lambda: tf.SinkhornAttention(1.0, attention=tf.BlockwiseAttention()),
            "densely only",
        ),
        (lambda: tf.SinkhornAttention(float("nan")), "`beta` has non-finite entries"),
    ],
)
def test_bad_input_is_refused_with_the_argument_named(build, match):
    with pytest.raises(ValueError, match=match):
        build()
