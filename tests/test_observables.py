"""Observables on hand-built configurations, against numpy/scipy references, and inside solve."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.sparse.csgraph import connected_components

import transformer_flows as tf


def _canonical(labels):
    """Relabel a partition by the smallest member index (the convention of cluster_labels)."""
    labels = np.asarray(labels)
    first = {}
    return np.array([first.setdefault(label, i) for i, label in enumerate(labels)])


def _blocks(key, sizes, d, spread):
    """Clusters of the given sizes around random centres, each token within `spread`."""
    centres = tf.sample_sphere(key, len(sizes), d)
    rows = [jnp.tile(c, (s, 1)) for c, s in zip(centres, sizes, strict=True)]
    x = jnp.concatenate(rows)
    noise = spread * jax.random.normal(jax.random.fold_in(key, 1), x.shape)
    return tf.normalize(x + noise), np.repeat(np.arange(len(sizes)), sizes)


def test_gram_of_angles_matches_points(getkey):
    theta = tf.uniform_angles(getkey(), 7)
    points = tf.angles_to_points(theta)
    np.testing.assert_allclose(tf.gram(theta), points @ points.T, atol=1e-14)
    np.testing.assert_array_equal(jnp.diag(tf.gram(theta)), jnp.ones(7))


def test_clustered_fraction_counts_ordered_pairs():
    e1, e2 = jnp.eye(3)[0], jnp.eye(3)[1]
    # 3 at e1, 2 at e2, 1 at -e1 (antipodal to the first cluster: never clustered).
    x = jnp.stack([e1, e1, e1, e2, e2, -e1])
    assert tf.clustered_fraction(x) == pytest.approx((3 * 2 + 2 * 1) / (6 * 5), abs=0)
    assert tf.clustered_fraction(jnp.stack([e1, -e1])) == 0
    assert tf.clustered_fraction(jnp.stack([e1] * 4)) == 1


def test_threshold_is_inclusive_at_the_boundary():
    # <x, y> = 1 - 2^-10 exactly, so δ = 2^-10 includes the pair and a hair less does not.
    delta = 2.0**-10
    c = 1 - delta
    x = jnp.array([[1.0, 0.0], [c, np.sqrt(1 - c * c)]])
    assert tf.gram(x)[0, 1] == c
    assert tf.clustered_fraction(x, delta) == 1
    assert tf.count_clusters(x, delta) == 1
    below = delta * (1 - 2.0**-20)
    assert tf.clustered_fraction(x, below) == 0
    assert tf.count_clusters(x, below) == 2


def test_clusters_of_hand_built_blocks_under_permutation(getkey):
    sizes = [5, 1, 3, 4]
    x, truth = _blocks(getkey(), sizes, 4, 1e-4)
    perm = np.asarray(jax.random.permutation(getkey(), x.shape[0]))
    x, truth = x[perm], truth[perm]
    labels = tf.cluster_labels(x, 1e-3)
    np.testing.assert_array_equal(labels, _canonical(truth))
    assert tf.count_clusters(x, 1e-3) == len(sizes)
    sizes_by_label = np.asarray(tf.cluster_sizes(x, 1e-3))
    assert sizes_by_label.sum() == x.shape[0]
    np.testing.assert_array_equal(np.flatnonzero(sizes_by_label), np.unique(labels))
    np.testing.assert_array_equal(
        sizes_by_label[np.unique(labels)], np.bincount(truth)[truth[np.unique(labels)]]
    )
    # Relabelling the tokens permutes the partition.
    inverse = np.argsort(perm)
    np.testing.assert_array_equal(
        _canonical(tf.cluster_labels(x[inverse], 1e-3)), _canonical(truth[inverse])
    )


def test_a_chain_is_one_component_not_a_clique():
    # Consecutive angles 0.04 apart, threshold admits 0.05 but not 0.08: a path graph.
    theta = jnp.array([0.0, 0.04, 0.08, 0.12, 2.0, 2.0, 4.0])
    delta = 1 - np.cos(0.05)
    np.testing.assert_array_equal(tf.cluster_labels(theta, delta), [0, 0, 0, 0, 4, 4, 6])
    np.testing.assert_array_equal(tf.cluster_sizes(theta, delta), [4, 0, 0, 0, 2, 0, 1])
    assert tf.count_clusters(theta, delta) == 3


@pytest.mark.parametrize("delta", [1e-3, 3e-2, 0.3, 1.0])
def test_components_match_scipy_on_random_angles(getkey, delta):
    theta = jax.random.uniform(getkey(), (60,), maxval=1.5)  # dense enough for long chains
    adjacency = np.asarray(tf.gram(theta)) >= 1 - delta
    count, reference = connected_components(adjacency, directed=False)
    np.testing.assert_array_equal(tf.cluster_labels(theta, delta), _canonical(reference))
    assert tf.count_clusters(theta, delta) == count


def test_cluster_observables_jit_and_vmap(getkey):
    batch = jnp.stack([_blocks(getkey(), s, 3, 1e-4)[0] for s in ([2, 2, 2], [6], [1] * 6)])
    counts = jax.jit(jax.vmap(tf.count_clusters))(batch)
    np.testing.assert_array_equal(counts, [3, 1, 6])
    for fn in (tf.cluster_labels, tf.clustered_fraction):
        np.testing.assert_array_equal(jax.vmap(fn)(batch), np.stack([fn(x) for x in batch]))
    # δ as a traced sweep axis.
    deltas = jnp.array([1e-6, 1e-3, 2.0])
    fractions = jax.vmap(tf.clustered_fraction, in_axes=(None, 0))(batch[0], deltas)
    np.testing.assert_allclose(fractions, [tf.clustered_fraction(batch[0], d) for d in deltas])
    np.testing.assert_array_equal(
        jax.vmap(tf.count_clusters, in_axes=(None, 0))(batch[0], deltas), [3, 3, 1]
    )


def test_order_parameter_on_symmetric_configurations(getkey):
    n = 12
    lattice = 2 * jnp.pi * jnp.arange(n, dtype=float) / n + 0.3
    for k in (1, 2, 5, 11):
        assert tf.order_parameter(lattice, k) < 1e-14
    assert tf.order_parameter(lattice, n) == pytest.approx(1, abs=1e-14)
    # Three equally spaced clusters: r_3 = 1, r_1 = r_2 = 0.
    three = jnp.repeat(jnp.array([0.1, 0.1 + 2 * jnp.pi / 3, 0.1 + 4 * jnp.pi / 3]), 4)
    assert tf.order_parameter(three, 3) == pytest.approx(1, abs=1e-14)
    assert tf.order_parameter(three, 1) < 1e-14
    theta = tf.uniform_angles(getkey(), 9)
    for k in (1, 3):
        expected = abs(np.mean(np.exp(1j * k * np.asarray(theta))))
        assert tf.order_parameter(theta, k) == pytest.approx(expected, rel=1e-13)
        points = tf.angles_to_points(theta)
        assert tf.order_parameter(points, k) == pytest.approx(expected, rel=1e-13)
    ks = jnp.arange(1, 4)
    np.testing.assert_allclose(
        jax.vmap(lambda k: tf.order_parameter(theta, k))(ks),
        [tf.order_parameter(theta, int(k)) for k in ks],
        rtol=1e-14,
    )


def test_min_projection(getkey):
    x = jnp.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [-0.6, 0.8, 0.0]])
    assert tf.min_projection(x, jnp.array([0.0, 1.0, 0.0])) == 0
    assert tf.min_projection(x, jnp.array([1.0, 0.0, 0.0])) == pytest.approx(-0.6)
    theta = jnp.array([0.0, jnp.pi / 2])
    assert tf.min_projection(theta, jnp.array([0.0, 1.0])) == pytest.approx(0, abs=1e-15)


def test_min_projection_is_non_decreasing_along_sa(getkey):
    """Lemma 6.4, step 1: r(t) = min_i <x_i(t), w> never decreases from a hemisphere start."""
    w = tf.normalize(jnp.array([1.0, 2.0, -1.0]))
    x0 = tf.sample_hemisphere(getkey(), 10, 3, direction=w)
    solution = tf.solve(
        tf.SelfAttention(3.0),
        x0,
        jnp.linspace(0, 4, 41),
        observe=functools.partial(tf.min_projection, w=w),
        rtol=1e-9,
        atol=1e-9,
    )
    r = np.asarray(solution.observed)
    assert r[0] > 0
    assert np.all(np.diff(r) >= -1e-9)
    assert r[-1] > r[0] + 0.1


@pytest.mark.parametrize(
    "bins", [8, np.array([-1.0, -0.2, 0.0, 0.5, 0.9, 0.999, 1.0]), np.array([0.0, 0.5, 0.75])]
)
def test_histogram_matches_numpy(getkey, bins):
    x, _ = _blocks(getkey(), [3, 4, 2], 3, 0.05)
    g = np.asarray(x @ x.T)
    off = g[~np.eye(9, dtype=bool)]
    edges = np.linspace(-1, 1, bins + 1) if isinstance(bins, int) else bins
    expected, _ = np.histogram(np.clip(off, -1, 1), bins=edges)
    counts = tf.inner_product_histogram(x, bins)
    np.testing.assert_array_equal(counts, expected)
    np.testing.assert_array_equal(
        jax.jit(tf.inner_product_histogram)(x, jnp.asarray(edges)), expected
    )
    if isinstance(bins, int):
        assert counts.sum() == 9 * 8


def test_histogram_keeps_rounding_past_one_in_the_last_bin():
    # A duplicated token whose norm rounds a hair above 1: <x, x> > 1 must not be dropped.
    v = jnp.array([1.0, 1e-8])
    x = jnp.stack([v / 0.9999999999999999, v]) / jnp.linalg.norm(v)
    assert tf.gram(x)[0, 1] > 1
    np.testing.assert_array_equal(tf.inner_product_histogram(x, 4), [0, 0, 0, 2])


def test_first_crossing_time_interpolates_linearly():
    ts = jnp.linspace(0, 5, 11)
    values = 0.3 * ts + 0.1  # a straight line: interpolation is exact
    assert tf.first_crossing_time(ts, values, 1.0) == pytest.approx(3.0, rel=1e-14)
    assert tf.first_crossing_time(ts, values, 0.1) == 0  # already there at ts[0]
    assert tf.first_crossing_time(ts, values, 0.05) == 0
    assert tf.first_crossing_time(ts, values, 10.0) == jnp.inf
    # A statistic that passes the level, falls back and crosses again: the first crossing.
    bumpy = jnp.array([0.0, 0.6, 0.2, 0.9])
    assert tf.first_crossing_time(jnp.arange(4.0), bumpy, 0.5) == pytest.approx(5 / 6)
    # Decreasing integer statistic (a cluster count reaching 1) and trailing batch axes.
    counts = jnp.array([[5, 6], [3, 6], [1, 4], [1, 2]])
    np.testing.assert_allclose(
        tf.first_crossing_time(jnp.arange(4.0), counts, 1, direction="down"), [2.0, jnp.inf]
    )
    batched = jax.jit(jax.vmap(tf.first_crossing_time, in_axes=(None, 1, None)))(
        ts, jnp.stack([values, 2 * values], axis=1), 1.0
    )
    np.testing.assert_allclose(batched, [3.0, 4 / 3], rtol=1e-14)


def test_observables_inside_solve_equal_observables_of_saved_states(getkey):
    x0 = tf.sample_sphere(getkey(), 12, 2)
    ts = jnp.linspace(0, 8, 5)
    field = tf.SelfAttention(2.0)
    observe = {
        "fraction": functools.partial(tf.clustered_fraction, delta=1e-2),
        "count": functools.partial(tf.count_clusters, delta=1e-2),
        "sizes": functools.partial(tf.cluster_sizes, delta=1e-2),
        "r2": functools.partial(tf.order_parameter, k=2),
        "histogram": functools.partial(tf.inner_product_histogram, bins=10),
        "energy": functools.partial(tf.energy, beta=2.0),
    }
    inside = tf.solve(field, x0, ts, observe=lambda x: {k: f(x) for k, f in observe.items()})
    states = tf.solve(field, x0, ts).xs
    for name, fn in observe.items():
        np.testing.assert_allclose(
            inside.observed[name], jax.vmap(fn)(states), atol=1e-12, err_msg=name
        )
    assert inside.observed["count"][0] == tf.count_clusters(x0, 1e-2)
    assert inside.observed["count"].dtype == jnp.arange(1).dtype
    assert np.all(np.diff(np.asarray(inside.observed["count"])) <= 0)


def test_observables_on_kuramoto_angles(getkey):
    theta0 = tf.uniform_angles(getkey(), 10)
    solution = tf.solve(
        tf.Kuramoto(0.5),
        theta0,
        jnp.linspace(0, 30, 4),
        observe=lambda th: (tf.count_clusters(th), tf.order_parameter(th)),
    )
    counts, r = solution.observed
    assert counts[0] == tf.count_clusters(theta0) and counts[-1] == 1  # β <= 1: one cluster
    assert r[-1] == pytest.approx(1, abs=1e-6)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: tf.clustered_fraction(jnp.ones((1, 3))), "n >= 2"),
        (lambda: tf.clustered_fraction(jnp.eye(3), delta=-0.1), "`delta` must lie in"),
        (lambda: tf.count_clusters(jnp.eye(3), delta=2.5), "`delta` must lie in"),
        (lambda: tf.order_parameter(jnp.zeros(3), k=0), "`k` must be a positive integer"),
        (lambda: tf.inner_product_histogram(jnp.eye(3), 0), "`bins`"),
        (lambda: tf.inner_product_histogram(jnp.eye(3), np.array([0.5, 0.1])), "increasing"),
        (
            lambda: tf.first_crossing_time(jnp.arange(3.0), jnp.zeros(3), 1.0, direction="below"),
            "`direction`",
        ),
        (lambda: tf.count_clusters(jnp.eye(3), delta=jnp.ones(2)), "`delta` must be a scalar"),
        (lambda: tf.gram(jnp.ones((2, 3, 4))), "`x` must be points of shape"),
        (lambda: tf.order_parameter(jnp.zeros((3, 3))), "points on the circle"),
        (lambda: tf.min_projection(jnp.eye(3), jnp.ones(2)), "`w` must have shape"),
        (lambda: tf.first_crossing_time(jnp.arange(3.0), jnp.zeros(4), 1.0), "leading axis"),
    ],
)
def test_errors_name_the_argument(call, match, without_type_checker):
    with pytest.raises(ValueError, match=match):
        call()


def test_traced_bad_delta_raises_at_run_time():
    with pytest.raises(Exception, match="delta"):
        jax.jit(tf.clustered_fraction)(jnp.eye(3), -1.0).block_until_ready()
