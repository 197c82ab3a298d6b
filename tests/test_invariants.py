"""Invariants and symmetries of the flow (docs/mathematics.md §7.1–§7.3 and §7.10)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import transformer_flows as tf

from helpers import random_orthogonal

TIGHT = dict(rtol=1e-10, atol=1e-10)


def fields(d, rng):
    Q, K, V = (rng.standard_normal((d, d)) / np.sqrt(d) for _ in range(3))
    heads = rng.standard_normal((3, 2, d, d)) / np.sqrt(d)
    return {
        "SA": tf.SelfAttention(2.0),
        "USA": tf.UnnormalizedSelfAttention(2.0),
        "SA-QKV": tf.SelfAttention(1.5, Q, K, V),
        "SA-heads": tf.SelfAttention(1.0, *heads),
        "USA-QKV": tf.UnnormalizedSelfAttention(1.5, Q, K, V),
    }


@pytest.mark.parametrize("name", ["SA", "USA", "SA-QKV", "SA-heads", "USA-QKV"])
def test_sphere_and_tangency(getkey, name):
    field = fields(4, np.random.default_rng(0))[name]
    x = tf.sample_sphere(getkey(), 12, 4)
    assert np.abs(jnp.sum(field(0.0, x) * x, axis=1)).max() <= 1e-14
    traj = tf.solve(field, x, np.linspace(0, 5, 21), **TIGHT)
    assert tf.sphere_drift(traj.xs) <= 1e-13


def test_attention_rows_are_stochastic_and_normaliser_bounded(getkey):
    n, beta = 10, 3.0
    x = tf.sample_sphere(getkey(), n, 5)
    rng = np.random.default_rng(1)
    heads = rng.standard_normal((3, 4, 5, 5))
    A = tf.SelfAttention(beta, heads[0], heads[1], heads[2]).attention_matrix(0.0, x)
    assert A.shape == (4, n, n) and np.all(A > 0)
    np.testing.assert_allclose(A.sum(-1), 1.0, atol=1e-14)
    # USA weights are e^{β<x_i,x_j>}/n, so the row sums are Z_i/n ∈ [e^{-β}, e^{β}].
    rows = tf.UnnormalizedSelfAttention(beta).attention_matrix(0.0, x)[0].sum(-1)
    assert np.all(rows >= np.exp(-beta)) and np.all(rows <= np.exp(beta))


def test_permutation_equivariance(getkey):
    rng = np.random.default_rng(2)
    field = fields(3, rng)["SA-QKV"]
    x0 = tf.sample_sphere(getkey(), 9, 3)
    perm = rng.permutation(9)
    ts = np.linspace(0, 3, 7)
    direct = tf.solve(field, x0, ts, **TIGHT).xs
    permuted = tf.solve(field, x0[perm], ts, **TIGHT).xs
    np.testing.assert_allclose(permuted, direct[:, perm], atol=1e-9)


@pytest.mark.parametrize("model", ["SA", "USA"])
def test_rotation_equivariance_identity_weights(getkey, model):
    field = fields(4, np.random.default_rng(0))[model]
    U = random_orthogonal(np.random.default_rng(3), 4)
    x0 = tf.sample_sphere(getkey(), 8, 4)
    ts = np.linspace(0, 3, 7)
    rotated_first = tf.solve(field, x0 @ U.T, ts, **TIGHT).xs
    rotated_after = tf.solve(field, x0, ts, **TIGHT).xs @ U.T
    np.testing.assert_allclose(rotated_first, rotated_after, atol=1e-9)


@pytest.mark.parametrize("name", ["SA", "USA", "SA-QK"])
def test_hemisphere_minimum_is_non_decreasing(getkey, name):
    """Lemma 6.4: r(t) = min_i <x_i(t), w> never decreases (any Q, K with V = I)."""
    d = 3
    rng = np.random.default_rng(4)
    if name == "SA-QK":
        field = tf.SelfAttention(4.0, rng.standard_normal((d, d)), rng.standard_normal((d, d)))
    else:
        field = fields(d, rng)[name]
    w = tf.normalize(jnp.asarray(rng.standard_normal(d)))
    x0 = tf.sample_hemisphere(getkey(), 16, d, direction=w)
    assert np.all(x0 @ w > 0)
    traj = tf.solve(field, x0, np.linspace(0, 6, 121), **TIGHT, observe=lambda x: jnp.min(x @ w))
    r = np.asarray(traj.observed)
    assert np.all(np.diff(r) >= -1e-10)
    assert r[-1] > r[0] + 1e-3


def test_beta_1000_float32_stays_finite(getkey):
    x0 = tf.sample_sphere(getkey(), 16, 3, dtype=jnp.float32)
    beta = jnp.float32(1000.0)
    assert jnp.all(jnp.isfinite(tf.SelfAttention(beta)(0.0, x0)))
    traj = tf.solve(tf.SelfAttention(beta), x0, jnp.linspace(0, 2, 5, dtype=jnp.float32))
    assert traj.xs.dtype == jnp.float32 and jnp.all(jnp.isfinite(traj.xs))
    assert tf.sphere_drift(traj.xs) <= 1e-6
    rescaled = tf.UnnormalizedSelfAttention(beta, time_rescaled=True)
    assert jnp.all(jnp.isfinite(rescaled(0.0, x0)))
    assert jnp.all(jnp.isfinite(jax.grad(lambda b: jnp.sum(tf.SelfAttention(b)(0.0, x0)))(beta)))
