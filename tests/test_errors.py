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
        (lambda: tf.SelfAttention(float("inf")), "beta"),
        (lambda: tf.SelfAttention(float("nan")), "beta"),
        (lambda: tf.SelfAttention(jnp.ones(3)), "beta"),
        (lambda: tf.SelfAttention(1.0, Q=jnp.ones(3)), "`Q`"),
        (lambda: tf.SelfAttention(1.0, V=jnp.ones((3, 4))), "`V`"),
        (lambda: tf.SelfAttention(1.0, V=jnp.ones((0, 3, 3))), "`V` has an empty axis"),
        (lambda: tf.UnnormalizedSelfAttention(1.0, Q=jnp.ones((0, 3))), "`Q` has an empty axis"),
        (lambda: tf.SelfAttention(1.0, Q=jnp.ones((2, 3)), K=jnp.ones((3, 3))), "`Q` and `K`"),
        (lambda: tf.SelfAttention(1.0, Q=jnp.ones((2, 3))), "`K`"),
        (lambda: tf.SelfAttention(1.0, Q=jnp.ones((2, 3, 3)), V=jnp.ones((4, 3, 3))), "head"),
        (lambda: tf.SelfAttention(1.0, Q=jnp.ones((2, 3, 3)), V=jnp.ones((3, 3))), "head"),
        (lambda: tf.SelfAttention(1.0, Q=jnp.ones((3, 3)), V=jnp.ones((4, 4))), "dimension"),
        (lambda: tf.SelfAttention(1.0, V=jnp.full((3, 3), jnp.nan)), "`V`"),
        (lambda: tf.SelfAttention(1.0, V=jnp.ones((3, 3)), layer_duration=0.0), "layer_duration"),
        (lambda: tf.SelfAttention(1.0, layer_duration=1.0), "layer_duration"),
        (
            lambda: tf.SelfAttention(
                1.0, V=jnp.ones((2, 3, 3)), Q=jnp.ones((3, 3, 3)), layer_duration=1.0
            ),
            "layer",
        ),
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
def test_construction_errors(build, match, without_type_checker):
    with pytest.raises(ValueError, match=match):
        build()


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: tf.solve(tf.SelfAttention(1.0), X[:, :2].ravel(), TS), "shape \\(n, d\\)"),
        (lambda: tf.solve(tf.SelfAttention(1.0, V=jnp.eye(4)), X, TS), "d=4"),
        (lambda: tf.solve(tf.Kuramoto(1.0), X, TS), "angles of shape \\(n,\\)"),
        (
            lambda: tf.solve(tf.Kuramoto(1.0, frequencies=jnp.ones(5)), jnp.zeros(4), TS),
            "frequencies",
        ),
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
        (
            lambda: tf.solve(
                tf.SelfAttention(1.0),
                X,
                TS,
                solver=tf.NormalizedEuler(),
                dt0=0.1,
                adjoint=diffrax.BacksolveAdjoint(),
            ),
            "RecursiveCheckpointAdjoint",
        ),
        (
            lambda: tf.solve(
                tf.Kuramoto(1.0), jnp.zeros(4), TS, solver=tf.NormalizedEuler(), dt0=0.1
            ),
            "Kuramoto does not keep its state on a sphere",
        ),
        (lambda: tf.solve(lambda t, y, a: y, X, TS), "field"),
        (
            lambda: tf.solve(tf.SelfAttention(1.0), [["a", "b"]], TS),
            "`x0` must be an array of numbers",
        ),
        (lambda: tf.solve(tf.SelfAttention(1.0), object(), TS), "`x0` must be an array of numbers"),
        (lambda: tf.solve(tf.SelfAttention(1.0), jnp.zeros((0, 3)), TS), "`x0` has no tokens"),
        (lambda: tf.solve(tf.Kuramoto(1.0), jnp.zeros(0), TS), "`x0` has no oscillators"),
        (
            lambda: tf.solve(tf.SelfAttention(1.0), X.astype(jnp.complex128), TS),
            "`x0` must be real, got dtype complex128",
        ),
        (
            lambda: tf.SelfAttention(1.0, V=jnp.eye(3, dtype=jnp.complex64)),
            "`V` must be real, got dtype complex64",
        ),
        (
            lambda: tf.solve(tf.SelfAttention(1.0, V=jnp.eye(3)), X.astype(jnp.float32), TS),
            r"`field\.V` has dtype float64 but `x0` has dtype float32.*x0\.astype\(jnp\.float64\)"
            r".*V\.astype\(jnp\.float32\)",
        ),
        (
            lambda: tf.solve(tf.SelfAttention(jnp.float64(1.0)), X.astype(jnp.float32), TS),
            r"`field\.beta` has dtype float64 but `x0` has dtype float32",
        ),
        (
            lambda: tf.solve(
                tf.Kuramoto(1.0, frequencies=jnp.ones(4)), jnp.zeros(4, jnp.float32), TS
            ),
            r"`field\.frequencies` has dtype float64",
        ),
        (lambda: tf.solve(tf.SelfAttention(1.0), X, TS, atol=float("nan")), "`atol`"),
        (
            lambda: tf.solve(tf.SelfAttention(1.0), X, TS, solver=tf.NormalizedEuler(), dt0=-0.1),
            "`dt0` must be finite and > 0",
        ),
    ],
)
def test_solve_errors_name_the_argument(call, match, without_type_checker):
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


@pytest.mark.parametrize("bad", [jnp.nan, jnp.inf, -jnp.inf])
@pytest.mark.parametrize("position", [0, 1])
def test_non_finite_times_are_refused(bad, position):
    """A NaN or infinite save time is refused, concretely and under jit, naming `ts` (not a
    NaN trajectory, nor a failure deep inside diffrax)."""
    ts = TS.at[position].set(bad)
    with pytest.raises(ValueError, match="`ts` has non-finite entries"):
        tf.solve(tf.SelfAttention(1.0), X, ts)
    with pytest.raises(Exception, match="`ts` has non-finite entries") as info:
        jax.block_until_ready(_final_state(X, ts))
    assert "EquinoxRuntimeError" in f"{type(info.value).__name__} {info.value}"


@jax.jit
def _final_state(x0, ts):
    return tf.solve(tf.SelfAttention(1.0), x0, ts).xs[-1]


def test_array_like_x0_is_accepted():
    """Lists and numpy arrays are converted (not refused as "shape None"), and integers
    become floats; the numbers equal those of the jnp array."""
    expected = tf.solve(tf.SelfAttention(1.0), X, TS).xs
    np.testing.assert_array_equal(tf.solve(tf.SelfAttention(1.0), X.tolist(), TS).xs, expected)
    np.testing.assert_array_equal(tf.solve(tf.SelfAttention(1.0), np.asarray(X), TS).xs, expected)
    corners = tf.solve(tf.Kuramoto(1.0), [0, 1, 2], TS.tolist()).xs
    assert corners.dtype == jnp.result_type(float) and corners.shape == (3, 3)
    assert not np.allclose(corners[-1], [0, 1, 2])
