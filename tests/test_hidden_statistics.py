"""Hidden-state statistics (`tf.pairwise_cosine`, `centred_cosine`, `effective_rank`,
`cluster_count`, `direction_energy`, `cosine_histogram`, `hidden_state_statistics`): against
direct NumPy computations, exact values, invariances, and under jit/vmap/grad."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import transformer_flows as tf

from helpers import hidden_statistics_reference, random_orthogonal

SCALARS = ("mean_cosine", "centred_cosine", "effective_rank", "cluster_count", "energy")
# Jitted once per shape and shared by the tests (compilation dominates their time).
statistics = jax.jit(tf.hidden_state_statistics, static_argnames="bins")
rank_of = jax.jit(tf.effective_rank, static_argnames="directions")
histogram = jax.jit(tf.cosine_histogram, static_argnames="bins")
cosines = jax.jit(lambda x: (tf.pairwise_cosine(x), tf.centred_cosine(x)))


def _tokens(seed, shape, offset=0.0, tight=True):
    """Gaussian tokens with a shared offset along e_1, varied norms, and (tight) two near-copies
    so the cluster count is not n."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape) * rng.uniform(0.5, 3.0, shape[:-1] + (1,))
    x[..., 0] += offset
    if tight:
        x[..., 1, :] = 1.7 * x[..., 0, :] + 1e-3 * x[..., 1, :]
    return x


def test_statistics_equal_direct_numpy_computations():
    x = _tokens(0, (3, 7, 5), offset=1.5)
    edges = np.linspace(-1, 1, 17)
    got = statistics(jnp.asarray(x), delta=1e-3, beta=2.0, bins=16)
    for b in range(x.shape[0]):
        expected = hidden_statistics_reference(x[b], delta=1e-3, beta=2.0, edges=edges)
        for name, value in expected.items():
            np.testing.assert_allclose(got[name][b], value, rtol=1e-10, atol=1e-12, err_msg=name)
    assert got["cluster_count"].dtype.kind == "i"
    np.testing.assert_array_equal(got["cluster_count"], 6)  # 7 tokens, one tight pair
    # Fixed edges that do not cover [-1, 1]: density of the pairs inside them, as numpy.
    inside = np.array([-0.5, 0.0, 0.25, 0.5])
    theta = x[0] / np.linalg.norm(x[0], axis=1, keepdims=True)
    upper = (theta @ theta.T)[np.triu_indices(7, 1)]
    np.testing.assert_allclose(
        tf.cosine_histogram(jnp.asarray(x[0]), jnp.asarray(inside)),
        np.histogram(upper, inside, density=True)[0],
        rtol=1e-12,
    )


def test_shared_offset_raises_the_raw_cosine_and_not_the_centred_one():
    """x_i = s(e_i + c) with e_1..e_n orthonormal and c ⟂ all e_i: <x_i, x_j> = s²|c|² and
    |x_i|² = s²(1 + |c|²), so the raw cosine is |c|²/(1 + |c|²) exactly; x_i − x̄ = s(e_i − ē)
    has <e_i − ē, e_j − ē> = −1/n and |e_i − ē|² = 1 − 1/n, so the centred cosine is exactly
    −1/(n − 1) for every |c|: 0 as n → ∞."""
    for n, c2 in ((4, 0.0), (4, 0.5), (64, 3.0), (64, 20.0)):
        frame = random_orthogonal(np.random.default_rng(n), n + 1)
        e, direction = frame[:n], frame[n]
        raw, centred = cosines(jnp.asarray(2.5 * (e + np.sqrt(c2) * direction)))
        np.testing.assert_allclose(raw, c2 / (1 + c2), atol=1e-12)
        np.testing.assert_allclose(centred, -1 / (n - 1), atol=1e-12)
    # Isotropic Gaussian tokens g_i ~ N(0, I/D) plus c, |c|² = 1: the raw cosine concentrates
    # at 1/2 (fluctuations O(1/sqrt(nD)) ≈ 0.008 here), the centred one at -1/(n-1) (from 0
    # without c), both within a few O(1/sqrt(nD)).
    rng = np.random.default_rng(1)
    n, D = 16, 1024
    g = rng.standard_normal((n, D)) / np.sqrt(D)
    c = np.zeros(D)
    c[0] = 1.0
    raw, _ = cosines(jnp.asarray(g))
    raw_shifted, centred = cosines(jnp.asarray(g + c))
    assert abs(float(raw)) < 0.03
    assert abs(float(raw_shifted) - 0.5) < 0.05
    assert abs(float(centred) + 1 / (n - 1)) < 0.03


@pytest.mark.parametrize("directions", [True, False])
def test_effective_rank_counts_orthogonal_directions(directions):
    rng = np.random.default_rng(2)
    frame = random_orthogonal(rng, 6)

    def rank(x):
        return float(rank_of(jnp.asarray(x), directions=directions))

    # Six tokens on k orthonormal directions, 6/k tokens each at norm 2.5: the singular values
    # are k equal ones, so exp(H) = k.
    for k in (1, 2, 3, 6):
        np.testing.assert_allclose(rank(2.5 * np.repeat(frame[:k], 6 // k, axis=0)), k, rtol=1e-12)
    # Unequal weights: between 1 and k, and only the raw matrix sees the norms.
    x = np.repeat(frame[:3], 2, axis=0) * np.array([[1.0], [1.0], [2.0], [2.0], [4.0], [4.0]])
    p = np.array([1.0, 2.0, 4.0]) / 7
    expected = np.exp(-np.sum(p * np.log(p))) if not directions else 3.0
    np.testing.assert_allclose(rank(x), expected, rtol=1e-12)
    random = rank(rng.standard_normal((6, 6)))
    assert 1 < random <= 6
    if not directions:
        assert rank(np.zeros((6, 6))) == 0.0


def test_invariances():
    """Rotation of R^d and token permutation leave every statistic unchanged; positive scaling of
    each token leaves those of directions unchanged; a shared translation leaves the centred
    cosine unchanged (and moves the raw one)."""
    rng = np.random.default_rng(3)
    x = _tokens(3, (3, 7, 5), offset=0.7)
    rotation = random_orthogonal(rng, 5)
    permutation = rng.permutation(7)
    scales = rng.uniform(0.2, 5.0, (3, 7, 1))
    base = statistics(jnp.asarray(x), bins=16)
    for name, moved in (
        ("rotation", x @ rotation.T),
        ("permutation", x[:, permutation]),
        ("scaling", x * scales),
    ):
        got = statistics(jnp.asarray(moved), bins=16)
        for key in (*SCALARS, "cosine_histogram", "mean_radius"):
            if name == "scaling" and key in ("centred_cosine", "mean_radius"):
                continue
            np.testing.assert_allclose(got[key], base[key], rtol=1e-10, atol=1e-12, err_msg=name)
    shifted = statistics(jnp.asarray(x + 3.0 * rng.standard_normal(5)), bins=16)
    np.testing.assert_allclose(shifted["centred_cosine"], base["centred_cosine"], rtol=1e-10)
    assert np.all(np.abs(shifted["mean_cosine"] - base["mean_cosine"]) > 0.05)


def test_histogram_is_a_density_of_the_pairs():
    x = jnp.asarray(_tokens(4, (2, 9, 3), tight=False))
    density = np.asarray(histogram(x, 10))
    widths = np.diff(np.asarray(tf.histogram_edges(10)))
    np.testing.assert_allclose(np.sum(density * widths[None], axis=-1), 1.0, rtol=1e-12)
    # Consensus: every pair at <θ_i, θ_j> = 1, in the last (closed) bin of width 0.2.
    consensus = jnp.tile(jnp.asarray([[0.0, 3.0, 4.0]]), (2, 9, 1))
    np.testing.assert_allclose(histogram(consensus, 10)[1], [0] * 9 + [5.0], atol=1e-12)


def test_batched_jit_vmap_and_grad():
    x = jnp.asarray(_tokens(5, (3, 7, 5), offset=1.0))
    batched = statistics(x, bins=16)
    for i in (0, 2):
        single = statistics(x[i], bins=16)
        for key, value in single.items():
            assert batched[key].shape == (3,) + value.shape
            np.testing.assert_allclose(batched[key][i], value, rtol=1e-12, err_msg=key)
    vmapped = jax.jit(jax.vmap(cosines))(x[None])[1][0]
    np.testing.assert_allclose(vmapped, batched["centred_cosine"], rtol=1e-12)
    # Gradients against central differences along a random direction.
    direction = jnp.asarray(np.random.default_rng(6).standard_normal(x.shape[1:]))

    def both(y):
        return tf.centred_cosine(y) + 0.1 * tf.effective_rank(y)

    y, h = x[0], 1e-6
    slope = jnp.sum(jax.jit(jax.grad(both))(y) * direction)
    value = jax.jit(jax.vmap(both))(jnp.stack([y + h * direction, y - h * direction]))
    np.testing.assert_allclose(slope, (value[0] - value[1]) / (2 * h), rtol=1e-6, atol=1e-9)


def test_masked_statistics_are_those_of_the_marked_tokens_alone():
    """With a mask, every statistic equals the float64 reference on the marked tokens alone,
    whatever the unmarked ones hold (here large garbage, and copies of marked tokens that would
    merge clusters): the statistics of a padded batch's real tokens. Under one jit, batched,
    with a (B, 1, n) mask broadcast over a layer axis as for hidden states (B, L + 1, n, D)."""
    rng = np.random.default_rng(8)
    x = _tokens(9, (2, 3, 9, 5), offset=1.0)
    counts = (9, 5)  # real tokens per sequence; the rest is padding
    mask = np.arange(9)[None, :] < np.asarray(counts)[:, None]
    x[1, :, 5:] = 50 * rng.standard_normal((3, 4, 5))
    x[1, :, 5] = x[1, :, 2]  # a pad on top of a real token
    edges = np.linspace(-1, 1, 17)
    got = jax.jit(tf.hidden_state_statistics, static_argnames="bins")(
        jnp.asarray(x), delta=1e-3, beta=2.0, bins=16, mask=jnp.asarray(mask[:, None, :])
    )
    for b, n in enumerate(counts):
        for layer in range(3):
            expected = hidden_statistics_reference(
                x[b, layer, :n], delta=1e-3, beta=2.0, edges=edges
            )
            for name, value in expected.items():
                np.testing.assert_allclose(
                    got[name][b, layer], value, rtol=1e-10, atol=1e-12, err_msg=name
                )
    # Gradients flow to the marked tokens only, and match central differences.
    y, m = jnp.asarray(x[1, 0]), jnp.asarray(mask[1])
    grad = jax.jit(jax.grad(lambda z: tf.centred_cosine(z, mask=m)))(y)
    np.testing.assert_array_equal(grad[5:], 0)
    direction = jnp.asarray(rng.standard_normal(y.shape))
    h = 1e-6
    both = jnp.stack([y + h * direction, y - h * direction])
    values = jax.jit(jax.vmap(lambda z: tf.centred_cosine(z, mask=m)))(both)
    np.testing.assert_allclose(
        jnp.sum(grad * direction), (values[0] - values[1]) / (2 * h), rtol=1e-6, atol=1e-9
    )


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: tf.centred_cosine(jnp.ones(4)), "`x` must be token states of shape"),
        (lambda: tf.effective_rank(jnp.ones((2, 1, 3))), "needs n >= 2 tokens"),
        (lambda: tf.cosine_histogram(jnp.ones((3, 2)), 0), "`bins`"),
        (lambda: tf.cluster_count(jnp.eye(3), 5.0), "`delta` must lie in"),
        (lambda: tf.pairwise_cosine(jnp.eye(3), mask=jnp.arange(3) < 1), "at least two .* 1"),
        (lambda: tf.pairwise_cosine(jnp.eye(3), mask=jnp.ones(2, bool)), "shape \\(3,\\)"),
        (lambda: tf.pairwise_cosine(jnp.eye(3), mask=jnp.ones(3)), "`mask` must be booleans"),
    ],
)
def test_bad_input_is_named(call, match, without_type_checker):
    with pytest.raises(ValueError, match=match):
        call()
