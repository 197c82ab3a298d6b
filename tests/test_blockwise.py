"""Blockwise (online-softmax) attention equals the dense evaluation: values and gradients."""

import jax
import jax.numpy as jnp
import pytest

import transformer_flows as tf

# n not a multiple of the block (one partial block), and n smaller than the block.
SHAPES = [(37, 5, 8), (6, 4, 16)]


def _weights(getkey, heads, k, d):
    lead = () if heads is None else (heads,)
    Q = jax.random.normal(getkey(), (*lead, k, d)) / jnp.sqrt(d)
    K = jax.random.normal(getkey(), (*lead, k, d)) / jnp.sqrt(d)
    V = jax.random.normal(getkey(), (*lead, d, d)) / jnp.sqrt(d)
    return Q, K, V


def _attend(x, beta, weights, normalized, method, log_shift=0.0, keys=None):
    return tf.attend(
        x,
        jnp.asarray(beta),
        *weights,
        normalized=normalized,
        log_shift=log_shift,
        method=method,
        keys=keys,
    )


@pytest.mark.parametrize("n,d,block", SHAPES)
@pytest.mark.parametrize("normalized", [True, False])
def test_values_match_dense(getkey, n, d, block, normalized):
    x = tf.sample_sphere(getkey(), n, d)
    # Non-square Q, K (k = d + 2) exercise the query/key width apart from the value width.
    Q, K, V = _weights(getkey, 3, d + 2, d)

    @jax.jit
    def error(weights):
        dense = _attend(x, 2.5, weights, normalized, tf.DenseAttention(), log_shift=0.7)
        blockwise = _attend(
            x, 2.5, weights, normalized, tf.BlockwiseAttention(block), log_shift=0.7
        )
        return jnp.max(jnp.abs(blockwise - dense)) / (1 + jnp.max(jnp.abs(dense)))

    for weights in ((None, None, None), (Q, K, V), (Q[:1], K[:1], None)):
        assert error(weights) < 1e-12


def test_large_beta_stays_finite_and_exact(getkey):
    # β = 400: exp(β s) overflows without the running maximum; softmax stays exact.
    x = tf.sample_sphere(getkey(), 50, 3)
    dense = _attend(x, 400.0, (None, None, None), True, tf.DenseAttention())
    blockwise = _attend(x, 400.0, (None, None, None), True, tf.BlockwiseAttention(8))
    assert jnp.all(jnp.isfinite(blockwise))
    assert jnp.max(jnp.abs(blockwise - dense)) < 1e-12


def test_queries_against_other_keys(getkey):
    # Σ_j over a separate key set (the token-sharded evaluation) = rows of the full result.
    x = tf.sample_sphere(getkey(), 23, 4)
    Q, K, V = _weights(getkey, 2, 4, 4)
    full = _attend(x, 1.3, (Q, K, V), True, tf.DenseAttention())
    part = _attend(x[5:12], 1.3, (Q, K, V), True, tf.BlockwiseAttention(4), keys=x)
    assert jnp.max(jnp.abs(part - full[5:12])) < 1e-12


@pytest.mark.parametrize("normalized", [True, False])
def test_gradients_match_dense(getkey, normalized):
    n, d = 13, 3
    x = tf.sample_sphere(getkey(), n, d)
    weights = _weights(getkey, 2, d + 1, d)
    cotangent = jax.random.normal(getkey(), (n, d))

    def loss(method):
        def f(x, beta, weights, shift):
            out = _attend(x, beta, weights, normalized, method, log_shift=shift)
            return jnp.sum(out * cotangent)

        grad = jax.jit(jax.grad(f, argnums=(0, 1, 2, 3)))
        return grad(x, jnp.asarray(1.7), weights, jnp.asarray(0.4))

    dense, blockwise = loss(tf.DenseAttention()), loss(tf.BlockwiseAttention(4))
    assert jnp.max(jnp.abs(dense[0])) > 0.1  # not a trivially vanishing gradient
    for a, b in zip(jax.tree.leaves(dense), jax.tree.leaves(blockwise), strict=True):
        assert jnp.max(jnp.abs(a - b)) < 1e-11 * (1 + jnp.max(jnp.abs(a)))


def test_gradient_matches_finite_differences(getkey):
    x = tf.sample_sphere(getkey(), 11, 3)
    direction = jax.random.normal(getkey(), (11, 3))

    def f(x):
        return jnp.sum(_attend(x, 3.0, (None, None, None), True, tf.BlockwiseAttention(4)) ** 2)

    eps = 1e-6
    fd = (f(x + eps * direction) - f(x - eps * direction)) / (2 * eps)
    assert jnp.abs(jnp.vdot(jax.grad(f)(x), direction) - fd) < 1e-7 * (1 + jnp.abs(fd))


def test_fields_and_solve_match_dense(getkey):
    n, d = 20, 3
    x0 = tf.sample_sphere(getkey(), n, d)
    Q, K, V = _weights(getkey, 2, d, d)
    usa_dense = tf.UnnormalizedSelfAttention(1.5, Q, K, V, attention=tf.DenseAttention())
    usa_block = tf.UnnormalizedSelfAttention(1.5, Q, K, V, attention=tf.BlockwiseAttention(8))
    assert jnp.max(jnp.abs(usa_dense(0.0, x0) - usa_block(0.0, x0))) < 1e-12
    dense = tf.SelfAttention(1.5, Q, K, V, attention=tf.DenseAttention())
    blockwise = tf.SelfAttention(1.5, Q, K, V, attention=tf.BlockwiseAttention(8))
    ts = jnp.linspace(0, 1, 3)
    xs_dense = tf.solve(dense, x0, ts, rtol=1e-8, atol=1e-8).xs
    xs_block = tf.solve(blockwise, x0, ts, rtol=1e-8, atol=1e-8).xs
    assert jnp.max(jnp.abs(xs_dense - xs_block)) < 1e-10


def test_auto_chooses_by_size():
    auto = tf.AutoAttention(threshold=16, block_size=4)
    assert isinstance(auto.choose(16, 16, jnp.float64, True), tf.DenseAttention)
    assert isinstance(auto.choose(17, 16, jnp.float64, True), tf.BlockwiseAttention)


def test_fused_matches_dense_on_cpu(getkey):
    # On CPU the XLA implementation runs; cuDNN is only reachable on a GPU.
    x = tf.sample_sphere(getkey(), 12, 4)
    Q, K, V = _weights(getkey, 2, 6, 4)
    dense = _attend(x, 2.0, (Q, K, V), True, tf.DenseAttention())
    # jax.nn.dot_product_attention mixes float32 (its softmax) with float64 inputs inside: it
    # does not run under strict dtype promotion.
    with jax.numpy_dtype_promotion("standard"):
        fused = _attend(x, 2.0, (Q, K, V), True, tf.FusedAttention(implementation="xla"))
    # XLA's kernel keeps its softmax in float32 even for float64 inputs.
    assert jnp.max(jnp.abs(fused - dense)) < 1e-6
    with pytest.raises(ValueError, match="softmax attention only"):
        _attend(x, 2.0, (Q, K, V), False, tf.FusedAttention())


def test_bad_options_are_named():
    with pytest.raises(ValueError, match="block_size"):
        tf.BlockwiseAttention(0)
    with pytest.raises(ValueError, match="threshold"):
        tf.AutoAttention(threshold=0)
