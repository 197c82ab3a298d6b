"""Span reduction (d > n solved in an n-dimensional basis) equals the direct solve."""

import jax
import jax.numpy as jnp
import pytest

import transformer_flows as tf

TOL = dict(rtol=1e-10, atol=1e-10)


def test_identity_weights_match_direct_solve(getkey):
    n, d = 5, 40
    x0 = tf.sample_sphere(getkey(), n, d)
    ts = jnp.linspace(0.0, 2.0, 4)
    field = tf.UnnormalizedSelfAttention(2.0)
    direct = tf.solve(field, x0, ts, **TOL).xs
    reduced = tf.solve_in_span(field, x0, ts, **TOL).xs
    assert reduced.shape == (4, n, d)
    assert jnp.max(jnp.abs(reduced - direct)) < 1e-8
    # The flow moved: the comparison is not between two copies of x0.
    assert jnp.max(jnp.abs(direct[-1] - x0)) > 0.1


def test_invariant_weights_and_observe(getkey):
    # Q, K arbitrary; V = U A Uᵀ + c (I - U Uᵀ) maps span{x_i(0)} into itself.
    n, d = 4, 12
    x0 = tf.sample_sphere(getkey(), n, d)
    U = tf.span_basis(x0)
    A = jax.random.normal(getkey(), (n, n)) / 2
    V = U @ A @ U.T + 0.3 * (jnp.eye(d) - U @ U.T)
    Q = jax.random.normal(getkey(), (2, 6, d)) / jnp.sqrt(d)
    K = jax.random.normal(getkey(), (2, 6, d)) / jnp.sqrt(d)
    field = tf.SelfAttention(1.5, Q, K, jnp.stack([V, 0.5 * V]))
    ts = jnp.linspace(0.0, 1.0, 3)
    gram = lambda x: x @ x.T  # noqa: E731
    direct = tf.solve(field, x0, ts, observe=gram, **TOL).observed
    reduced = tf.solve_in_span(field, x0, ts, observe=gram, **TOL).observed
    assert jnp.max(jnp.abs(reduced - direct)) < 1e-8
    # The Gram matrix is the same in span coordinates (n × n points).
    in_span = tf.solve_in_span(field, x0, ts, observe=gram, observe_in_span=True, **TOL)
    assert jnp.max(jnp.abs(in_span.observed - direct)) < 1e-8


def test_non_invariant_value_is_rejected(getkey):
    x0 = tf.sample_sphere(getkey(), 3, 8)
    V = jax.random.normal(getkey(), (8, 8))
    with pytest.raises(ValueError, match="span"):
        tf.solve_in_span(tf.SelfAttention(1.0, V=V), x0, jnp.linspace(0, 1, 2))


def test_composes_with_vmap_over_beta(getkey):
    n, d = 4, 30
    x0 = tf.sample_sphere(getkey(), n, d)
    ts = jnp.linspace(0.0, 1.0, 2)
    betas = jnp.array([0.5, 3.0])

    def final(beta, reduce):
        run = tf.solve_in_span if reduce else tf.solve
        return run(tf.SelfAttention(beta), x0, ts, **TOL).xs[-1]

    reduced = jax.vmap(lambda b: final(b, True))(betas)
    direct = jax.vmap(lambda b: final(b, False))(betas)
    assert jnp.max(jnp.abs(reduced - direct)) < 1e-8


def test_orthonormal_start_follows_gamma_ode():
    # Theorem 6.8: from orthonormal tokens all pairwise cosines follow (6.9); at β = 0 the
    # closed form is γ(t) = (e^{2t} - 1)/(e^{2t} + n - 1).
    n, d = 6, 64
    x0 = tf.orthonormal_tokens(n, d)
    ts = jnp.linspace(0.0, 1.5, 4)
    xs = tf.solve_in_span(tf.SelfAttention(0.0), x0, ts, **TOL).xs
    gram = jnp.einsum("tid,tjd->tij", xs, xs)
    gamma = (jnp.exp(2 * ts) - 1) / (jnp.exp(2 * ts) + n - 1)
    off = gram[:, 0, 1:]
    assert jnp.max(jnp.abs(off - gamma[:, None])) < 1e-8


def test_dependent_tokens_are_rejected(getkey):
    x0 = tf.sample_sphere(getkey(), 4, 10)
    with pytest.raises(ValueError, match="linearly dependent"):
        tf.span_basis(x0.at[1].set(x0[0]))
    U = tf.span_basis(x0)
    assert jnp.max(jnp.abs(U.T @ U - jnp.eye(4))) < 1e-13
    assert jnp.max(jnp.abs(x0 @ U @ U.T - x0)) < 1e-13
