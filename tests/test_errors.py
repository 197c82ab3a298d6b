"""Bad input raises a ValueError that names the argument (and, where useful, the fix)."""

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import transformer_flows as tf

X = tf.sample_sphere(jax.random.key(0), 4, 3)
TS = jnp.linspace(0, 1, 3)


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: tf.SelfAttention(-1.0), "beta"),
        (lambda: tf.SelfAttention(float("nan")), "beta"),
        (lambda: tf.SelfAttention(jnp.ones(3)), "beta"),
        (lambda: tf.SelfAttention(1.0, Q=jnp.ones(3)), "`Q`"),
        (lambda: tf.SelfAttention(1.0, V=jnp.ones((3, 4))), "`V`"),
        (lambda: tf.SelfAttention(1.0, Q=jnp.ones((2, 3)), K=jnp.ones((3, 3))), "`Q` and `K`"),
        (lambda: tf.SelfAttention(1.0, Q=jnp.ones((2, 3))), "`K`"),
        (lambda: tf.SelfAttention(1.0, Q=jnp.ones((2, 3, 3)), V=jnp.ones((4, 3, 3))), "head"),
        (lambda: tf.SelfAttention(1.0, Q=jnp.ones((2, 3, 3)), V=jnp.ones((3, 3))), "head"),
        (lambda: tf.SelfAttention(1.0, Q=jnp.ones((3, 3)), V=jnp.ones((4, 4))), "dimension"),
        (lambda: tf.SelfAttention(1.0, V=jnp.full((3, 3), jnp.nan)), "`V`"),
        (lambda: tf.SelfAttention(1.0, V=jnp.ones((3, 3)), layer_duration=0.0), "layer_duration"),
        (lambda: tf.SelfAttention(1.0, layer_duration=1.0), "layer_duration"),
        (lambda: tf.SelfAttention(1.0, V=jnp.ones((2, 3, 3)), Q=jnp.ones((3, 3, 3)),
                                  layer_duration=1.0), "layer"),
        (lambda: tf.Kuramoto(1.0, frequencies=jnp.ones((2, 2))), "frequencies"),
        (lambda: tf.Kuramoto(1.0, coupling=jnp.ones(2)), "coupling"),
        (lambda: tf.SelfAttention("strong"), "beta"),
        (lambda: tf.orthonormal_tokens(5, 3), "d >= n"),
        (lambda: tf.sample_sphere(jax.random.key(0), 0, 3), "`n`"),
        (lambda: tf.random_weights(jax.random.key(0), 3, query_key="wigner"), "query_key"),
        (lambda: tf.random_weights(jax.random.key(0), 3, value="psd"), "value"),
        (lambda: tf.Renormalized("tsit5"), "solver"),
    ],
)
def test_construction_errors(build, match):
    with pytest.raises(ValueError, match=match):
        build()


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: tf.solve(tf.SelfAttention(1.0), X[:, :2].ravel(), TS), "shape \\(n, d\\)"),
        (lambda: tf.solve(tf.SelfAttention(1.0, V=jnp.eye(4)), X, TS), "d=4"),
        (lambda: tf.solve(tf.Kuramoto(1.0), X, TS), "angles of shape \\(n,\\)"),
        (lambda: tf.solve(tf.Kuramoto(1.0, frequencies=jnp.ones(5)), jnp.zeros(4), TS),
         "frequencies"),
        (lambda: tf.solve(tf.SelfAttention(1.0), 2 * X, TS), "normalise"),
        (lambda: tf.solve(tf.SelfAttention(1.0), X.at[0, 0].set(jnp.nan), TS), "x0"),
        (lambda: tf.solve(tf.SelfAttention(1.0), X, TS[::-1]), "increasing"),
        (lambda: tf.solve(tf.SelfAttention(1.0), X, jnp.ones((2, 2))), "`ts`"),
        (lambda: tf.solve(tf.SelfAttention(1.0), X, TS, solver=tf.NormalizedEuler()), "dt0"),
        (lambda: tf.solve(tf.SelfAttention(1.0), X, TS, solver="euler"), "solver"),
        (lambda: tf.solve(tf.SelfAttention(1.0), X, TS, rtol=-1.0), "rtol"),
        (lambda: tf.solve(tf.SelfAttention(1.0), X, TS, max_steps=0), "max_steps"),
        (lambda: tf.solve(tf.SelfAttention(1.0), X, TS, adjoint="backsolve"), "adjoint"),
        (lambda: tf.solve(tf.SelfAttention(1.0), X, TS, observe=3), "observe"),
        (lambda: tf.solve(tf.SelfAttention(1.0), X, TS, solver=tf.NormalizedEuler(), dt0=0.1,
                          adjoint=diffrax.BacksolveAdjoint()), "RecursiveCheckpointAdjoint"),
        (lambda: tf.solve(tf.Kuramoto(1.0), jnp.zeros(4), TS, solver=tf.NormalizedEuler(),
                          dt0=0.1), "angle fields"),
        (lambda: tf.solve(lambda t, y, a: y, X, TS), "field"),
    ],
)
def test_solve_errors_name_the_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_value_errors_under_jit_name_the_argument():
    @jax.jit
    def run(x0):
        return tf.solve(tf.SelfAttention(1.0), x0, TS).xs

    with pytest.raises(Exception, match="x0"):
        run(2 * X).block_until_ready()
    run(X).block_until_ready()


def test_max_steps_failure_is_reported_not_silent():
    traj = tf.solve(tf.SelfAttention(1.0), X, jnp.array([0.0, 50.0]), max_steps=2, throw=False)
    assert not bool(traj.succeeded)
    with pytest.raises(Exception, match="max_steps"):
        tf.solve(tf.SelfAttention(1.0), X, jnp.array([0.0, 50.0]), max_steps=2)
    assert np.all(np.isfinite(traj.ts))
