"""Masked attention (causal, sliding window, ALiBi, log-length β): the mathematics of the
causal flow (Karagodin–Polyanskiy–Rigollet, arXiv:2411.04990), exact zero dependence on
masked tokens, and every attention method against the dense one."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import transformer_flows as tf
from transformer_flows.experiment._plot import renyi_centres

# Token count 13 with blocks of 3: they split the windows of 4 and 5 mid-way and leave a
# ragged last block (13 = 4·3 + 1).
MASKS = {
    "causal": dict(causal=True),
    "causal_window": dict(causal=True, window=5),
    "window": dict(window=4),
    "alibi": dict(alibi=2.0),
    "window_alibi_log": dict(window=4, alibi=2.0, length_scaling="log"),
    "causal_alibi_window_log": dict(causal=True, alibi=3.0, window=5, length_scaling="log"),
    "causal_log": dict(causal=True, length_scaling="log"),
}
N, D = 13, 3


def _field(normalized, beta, Q=None, K=None, V=None, **options):
    cls = tf.SelfAttention if normalized else tf.UnnormalizedSelfAttention
    return cls(beta, Q, K, V, **options)


def _weights(key, heads, d):
    q, k, v = jax.random.normal(key, (3, heads, d, d)) / jnp.sqrt(d)
    return q, k, v


def _allowed(mask_options, n):
    i, j = np.arange(n)[:, None], np.arange(n)[None, :]
    ok = np.ones((n, n), bool)
    if mask_options.get("causal"):
        ok &= j <= i
    if mask_options.get("window") is not None:
        ok &= np.abs(i - j) < mask_options["window"]
    return ok


# One compiled program per case (compilation dominates): each mask feature appears, in both
# the causal and the symmetric reading, for SA and USA.
AGREE = [
    ("causal", True),
    ("window", False),
    ("causal_alibi_window_log", True),
    ("causal_alibi_window_log", False),
    ("window_alibi_log", True),
]


@pytest.mark.parametrize("name, normalized", AGREE)
def test_methods_agree_values_and_gradients(getkey, name, normalized):
    options = MASKS[name]
    x = tf.sample_sphere(getkey(), N, D)
    Q, K, V = _weights(getkey(), 2, D)
    cotangent = jax.random.normal(getkey(), (N, D))
    methods = [tf.BlockwiseAttention(3), tf.BlockwiseAttention(3, skip_masked=False)]
    if normalized:
        methods.append(tf.FusedAttention("xla"))
    alibi = options.get("alibi")
    rest = {k: v for k, v in options.items() if k != "alibi"}

    @jax.jit
    def errors(x, beta, alibi, Q, K, V):
        def loss(method, x, beta, alibi, Q, K, V):
            field = _field(normalized, beta, Q, K, V, attention=method, alibi=alibi, **rest)
            return jnp.sum(field.drift(0.0, x) * cotangent)

        grad = jax.value_and_grad(loss, argnums=(1, 2, 3, 4, 5, 6))
        value, grads = grad(tf.DenseAttention(), x, beta, alibi, Q, K, V)
        out = []
        for method in methods:
            v, g = grad(method, x, beta, alibi, Q, K, V)
            diffs = [
                jnp.max(jnp.abs(a - b))
                for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(grads), strict=True)
            ]
            out.append(jnp.maximum(jnp.abs(v - value), jnp.max(jnp.stack(diffs))))
        return jnp.stack(out), jax.tree.leaves(grads)

    # jax.nn.dot_product_attention keeps its softmax in float32 inside: not strict-promotion
    # clean for float64 inputs (as in test_blockwise).
    with jax.numpy_dtype_promotion("standard"):
        errs, grads = errors(
            x, jnp.asarray(2.5), None if alibi is None else jnp.asarray(alibi), Q, K, V
        )
    # Blockwise: the same sums in another order (float64); fused XLA's softmax is ~1e-7 off
    # the dense one even without a mask (measured 8e-8), so it gets its own tolerance.
    blockwise = errs[:2]
    assert jnp.max(blockwise) < 1e-11, blockwise
    if normalized:
        assert errs[2] < 1e-6
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in grads)


@pytest.mark.parametrize("name", list(MASKS))
def test_attention_matrices(getkey, name):
    """SA rows are stochastic on the allowed set and 0 off it; at β = 0 USA equals SA (1/n_i
    on the allowed keys); the log option is softmax with β·log n_i computed by hand."""
    options = MASKS[name]
    x = tf.sample_sphere(getkey(), N, D)
    allowed = _allowed(options, N)
    counts = allowed.sum(axis=1)
    beta = 1.7
    sa = np.asarray(_field(True, beta, **options).attention_matrix(0.0, x)[0])
    assert np.all(sa[~allowed] == 0)
    assert np.max(np.abs(sa.sum(axis=1) - 1)) < 1e-14
    if "alibi" not in options:
        usa0 = np.asarray(_field(False, 0.0, **options).attention_matrix(0.0, x)[0])
        np.testing.assert_allclose(usa0, allowed / counts[:, None], rtol=0, atol=1e-15)
    # By hand: s_ij = β_i<x_i, x_j> - λ|i-j|/n on the allowed set.
    xs = np.asarray(x)
    beta_i = beta * (np.log(counts) if options.get("length_scaling") == "log" else np.ones(N))
    distance = np.abs(np.arange(N)[:, None] - np.arange(N)[None, :])
    scores = beta_i[:, None] * (xs @ xs.T) - options.get("alibi", 0.0) * distance / N
    expected = np.where(allowed, np.exp(scores - scores.max(axis=1, keepdims=True)), 0)
    expected /= expected.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(sa, expected, rtol=0, atol=1e-14)
    usa = np.asarray(_field(False, beta, **options).attention_matrix(0.0, x)[0])
    np.testing.assert_allclose(
        usa, np.where(allowed, np.exp(scores), 0) / counts[:, None], rtol=1e-13, atol=0
    )


@jax.jit
def _jacobians(x, Q, K, V, alibi):
    def jac(**options):
        field = tf.SelfAttention(2.0, Q, K, V, attention=tf.DenseAttention(), **options)
        return jax.jacfwd(lambda y: field.drift(0.0, y))(x)

    return (
        jac(causal=True),
        jac(causal=True, alibi=alibi),
        jac(causal=True, window=3, alibi=alibi, length_scaling="log"),
        jac(window=3),
    )


def test_no_dependence_on_masked_tokens(getkey):
    n = 7
    x = tf.sample_sphere(getkey(), n, D)
    Q, K, V = _weights(getkey(), 2, D)
    jacobians = _jacobians(x, Q, K, V, jnp.asarray(1.5))
    options = [dict(causal=True), dict(causal=True), dict(causal=True, window=3), dict(window=3)]
    for jacobian, option in zip(jacobians, options, strict=True):
        size = np.max(np.abs(np.asarray(jacobian)), axis=(1, 3))  # (k, j): |∂v_k/∂x_j|
        allowed = _allowed(option, n)
        assert np.all(size[~allowed] == 0), "exactly zero, not small"
        assert np.min(size[allowed]) > 1e-3, "every attended token moves the velocity"


@eqx.filter_jit
def _euler_solve(field, x0):
    return tf.solve(field, x0, jnp.linspace(0.0, 2.0, 5), solver=tf.NormalizedEuler(), dt0=0.05).xs


def test_prefix_property(getkey):
    # Causal: tokens 1..m never see later ones, so they move as the m-token system alone.
    # (ALiBi's λ|i-j|/n depends on n, so it is left out here.)
    n, m = 9, 5
    x0 = tf.sample_sphere(getkey(), n, D)
    Q, K, V = _weights(getkey(), 2, D)
    field = tf.SelfAttention(3.0, Q, K, V, causal=True, window=4, length_scaling="log")
    full = _euler_solve(field, x0)
    prefix = _euler_solve(field, x0[:m])
    assert jnp.max(jnp.abs(full[:, :m] - prefix)) < 1e-13
    assert jnp.max(jnp.abs(full[-1, m:] - x0[m:])) > 1e-2  # the later tokens did move


def test_causal_clustering_kpr_theorem_4_1(getkey):
    """Karagodin–Polyanskiy–Rigollet Thm 4.1: V = I and any Q, K: every token converges to
    x_1(0), and token 1 (which sees only itself) never moves."""
    n, d = 6, 3
    x0 = tf.sample_sphere(getkey(), n, d)
    Q = jax.random.normal(getkey(), (d, d))
    K = jax.random.normal(getkey(), (d, d))
    field = tf.SelfAttention(1.0, Q, K, causal=True)
    xs = tf.solve(field, x0, jnp.asarray([0.0, 10.0, 80.0]), rtol=1e-8, atol=1e-8).xs
    assert jnp.max(jnp.abs(xs[:, 0] - x0[None, 0])) < 1e-15
    distance = jnp.linalg.norm(xs - x0[None, None, 0], axis=-1)  # (time, token)
    assert jnp.max(distance[-1]) < 1e-4, distance[-1]
    assert jnp.max(distance[-1]) < 1e-2 * jnp.max(distance[1])  # still contracting


def test_large_beta_float32_finite(getkey):
    x = tf.sample_sphere(getkey(), 40, D).astype(jnp.float32)

    @jax.jit
    def run(x):
        out = []
        for method in (tf.DenseAttention(), tf.BlockwiseAttention(8)):
            for normalized in (True, False):
                field = _field(normalized, 1e3, attention=method, causal=True, window=6)
                if not normalized:
                    field = tf.UnnormalizedSelfAttention(
                        1e3, attention=method, causal=True, window=6, time_rescaled=True
                    )
                value, grad = jax.value_and_grad(lambda y: jnp.sum(field.drift(0.0, y)))(x)
                out.append((value, grad))
        return out

    for value, grad in run(x):
        assert jnp.isfinite(value) and bool(jnp.all(jnp.isfinite(grad)))


def test_alibi_is_a_sweepable_leaf(getkey):
    x = tf.sample_sphere(getkey(), 8, D)
    slopes = jnp.asarray([0.0, 1.0, 4.0])

    def drift(slope):
        return tf.SelfAttention(2.0, causal=True, alibi=slope).drift(0.0, x)

    batched = jax.vmap(drift)(slopes)
    for row, slope in zip(batched, slopes, strict=True):
        assert jnp.max(jnp.abs(row - drift(float(slope)))) < 1e-14
    # d/dλ of the drift is nonzero: the slope is a differentiable parameter.
    assert jnp.max(jnp.abs(jax.jacfwd(drift)(1.0))) > 1e-3


@pytest.mark.parametrize(
    "options, match",
    [
        (dict(window=0), "`window` must be None"),
        (dict(window=-2), "`window` must be None"),
        (dict(causal=True, alibi=float("nan")), "`alibi` has non-finite"),
        (dict(alibi=[1.0, 2.0]), "`alibi` must be a scalar"),
        (dict(length_scaling="sqrt"), "`length_scaling` must be None or 'log'"),
    ],
)
def test_bad_options_are_refused(options, match):
    with pytest.raises(ValueError, match=match):
        tf.SelfAttention(1.0, **options)


def test_wrong_types_are_refused(without_type_checker):
    with pytest.raises(ValueError, match="`window` must be None"):
        tf.SelfAttention(1.0, window=2.5)
    with pytest.raises(ValueError, match="`causal` must be True or False"):
        tf.SelfAttention(1.0, causal="yes")


def test_bad_combinations_are_refused(getkey):
    with pytest.raises(ValueError, match="time_rescaled=False with length_scaling"):
        tf.UnnormalizedSelfAttention(1.0, time_rescaled=True, length_scaling="log")
    x = tf.sample_sphere(getkey(), 6, D)
    mask = tf.AttentionMask(causal=True)
    with pytest.raises(ValueError, match="masked attention needs keys=None"):
        tf.attend(x[:3], jnp.asarray(1.0), None, None, None, normalized=True, keys=x, mask=mask)
    with pytest.raises(eqx.EquinoxRuntimeError, match="`alibi` has non-finite"):
        eqx.filter_jit(lambda s: tf.SelfAttention(1.0, causal=True, alibi=s).drift(0.0, x))(
            jnp.asarray(jnp.inf)
        )


def test_renyi_centres():
    # Angles 0, 0.1, 1, 1.05, 3 on the circle with δ = 0.5: tokens 0, 2, 4 are centres.
    angles = np.asarray([0.0, 0.1, 1.0, 1.05, 3.0])
    x = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    assert renyi_centres(x, 0.5) == [0, 2, 4]
