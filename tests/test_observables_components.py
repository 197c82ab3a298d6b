"""Connected components of the cluster graph: the bit-set closure (n <= 32) and min-label
propagation (the algorithm every n used before, kept for n > 32) give the same labels, equal to
scipy's connected components, on random and adversarial graphs and configurations, under vmap.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.sparse.csgraph import connected_components

import transformer_flows as tf
from transformer_flows import _observables


def _smallest_member(adjacency):
    """scipy's components relabelled by their smallest member index, and their count."""
    count, labels = connected_components(np.asarray(adjacency), directed=False)
    smallest = {}
    for i, label in enumerate(labels):
        smallest.setdefault(label, i)
    return np.array([smallest[label] for label in labels]), count


def _graphs(rng, n):
    """Symmetric adjacencies with the diagonal set: Erdős–Rényi over densities from empty to
    complete, and the adversarial ones: a path through the tokens in random order (n - 1
    edges between its ends, so the closure needs all its ceil(log2(n-1)) passes), two
    interleaved paths, a star, disjoint cliques, all tokens apart, all joined."""
    graphs = [np.zeros((n, n), bool), np.ones((n, n), bool)]
    for p in np.linspace(0.02, 0.5, 12):
        upper = np.triu(rng.random((n, n)) < p, 1)
        graphs.append(upper | upper.T)
    for _ in range(4):
        order = rng.permutation(n)
        path = np.zeros((n, n), bool)
        path[order[:-1], order[1:]] = True
        graphs.append(path | path.T)
        halves = np.zeros((n, n), bool)
        halves[order[:-2], order[2:]] = True  # tokens at even and odd places: two paths
        graphs.append(halves | halves.T)
    star = np.zeros((n, n), bool)
    star[rng.integers(n), :] = True
    graphs.append(star | star.T)
    blocks = rng.integers(0, 3, n)
    graphs.append(blocks[:, None] == blocks[None, :])
    return np.stack([g | np.eye(n, dtype=bool) for g in graphs])


@pytest.mark.parametrize("n", [1, 2, 5, 32])
def test_closure_and_propagation_equal_scipy_on_graphs(n):
    adjacency = _graphs(np.random.default_rng(n), n)
    closure = np.asarray(jax.jit(jax.vmap(_observables._labels_by_closure))(adjacency))
    propagation = np.asarray(jax.jit(jax.vmap(_observables._labels_by_propagation))(adjacency))
    for graph, labels in zip(adjacency, closure, strict=True):
        np.testing.assert_array_equal(labels, _smallest_member(graph)[0])
    np.testing.assert_array_equal(closure, propagation)
    assert closure.dtype == propagation.dtype


def _configurations(n, dtype):
    """Points on the circle (n, 2), batched: a chain whose neighbours alone are within the
    threshold of delta = 1e-3 (angle step 0.04 < arccos(0.999) = 0.0447 < 0.08), in shuffled
    token order; two chains; all at one point; equally spaced (every token apart); random
    angles at three spreads (mixed clusters and chains)."""
    rng = np.random.default_rng(n)
    step = 0.04
    chain = step * rng.permutation(n)
    two = np.where(np.arange(n) % 2 == 0, 0.0, np.pi) + step * (np.arange(n) // 2)
    angles = [chain, two[rng.permutation(n)], np.full(n, 1.3), 2 * np.pi * np.arange(n) / n]
    for spread in (0.3, 1.0, 2 * np.pi):
        angles.append(spread * rng.random(n))
    theta = np.stack(angles)
    return jnp.asarray(np.stack([np.cos(theta), np.sin(theta)], axis=-1), dtype=dtype)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_cluster_labels_of_points_equal_scipy_and_propagation_under_vmap(dtype):
    # A (systems, saves) batch as the sweep observes it, with the sweep's float32 and float64.
    @jax.jit
    @jax.vmap
    @jax.vmap
    def observe(x):
        adjacency = _observables._adjacency(x, 1e-3)
        before = _observables._labels_by_propagation(adjacency)
        return tf.cluster_labels(x), tf.count_clusters(x), adjacency, before

    for n in (1, 3, 32):
        batch = _configurations(n, dtype)
        labels, counts, adjacency, before = observe(jnp.stack([batch, batch[::-1]]))
        np.testing.assert_array_equal(labels, before)
        for graph, label, count in zip(
            np.asarray(adjacency).reshape(-1, n, n),
            np.asarray(labels).reshape(-1, n),
            np.asarray(counts).ravel(),
            strict=True,
        ):
            expected, expected_count = _smallest_member(graph)
            np.testing.assert_array_equal(label, expected)
            assert count == expected_count
        if n == 32:  # the shuffled chain is one cluster, linked only transitively
            assert counts[0, 0] == 1 and int(np.sum(adjacency[0, 0])) == 3 * n - 2
            assert counts[0, 3] == n and counts[0, 2] == 1
