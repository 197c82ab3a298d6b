"""Observables of one configuration: Gram matrix, clustering statistics, order parameters.

Every function takes one configuration and is jit/vmap-able, so it can be passed as
`observe=` to `solve` (bind parameters with `functools.partial`, e.g.
`observe=functools.partial(clustered_fraction, delta=1e-3)`). A configuration is either
points `x` of shape (n, d) on the unit sphere, or angles `θ` of shape (n,) on the circle
(the state of `Kuramoto`), read as the points (cos θ_i, sin θ_i).

`first_crossing_time` post-processes a saved time series (for example `Trajectory.observed`).
The interaction energy is `transformer_flows.energy`.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Float, Int, Real, UInt32

from ._attention import inner_products
from ._sphere import angles_to_points, normalize, points_to_angles
from ._validation import check_on_sphere

Configuration = Float[Array, "n d"] | Float[Array, " n"]


def _check_configuration(x, name: str = "x") -> None:
    shape = getattr(x, "shape", None)
    if shape is None or len(shape) not in (1, 2):
        raise ValueError(
            f"`{name}` must be points of shape (n, d) or circle angles of shape (n,), got "
            f"shape {shape}. For a batch of configurations, `jax.vmap` the observable."
        )
    if shape[0] == 0:
        raise ValueError(f"`{name}` must hold at least one token, got shape {shape}.")


def _as_points(x: Configuration) -> Float[Array, "n d"]:
    _check_configuration(x)
    x = jnp.asarray(x)
    return angles_to_points(x) if x.ndim == 1 else check_on_sphere(x, "x")


def _known(value) -> np.ndarray | None:
    """The value as numpy when it is known now (not a tracer), else None. Checked before any
    `jnp.asarray`, which under jit turns even Python constants into tracers."""
    if any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves(value)):
        return None
    return np.asarray(value)


def _checked_delta(delta, dtype) -> Float[Array, ""]:
    message = (
        "`delta` must lie in [0, 2] (pairs count as clustered when <x_i,x_j> >= 1 - delta), "
        "got {}; the paper uses delta=1e-3."
    )
    known = _known(delta)
    if known is not None and known.dtype.kind not in "biuf":
        raise ValueError(message.format(repr(delta)))
    shape = np.shape(known) if known is not None else jnp.shape(delta)
    if shape != ():
        raise ValueError(f"`delta` must be a scalar, got shape {shape}; `jax.vmap` over δ instead.")
    if known is not None:
        if not 0 <= float(known) <= 2:
            raise ValueError(message.format(float(known)))
        return jnp.asarray(delta, dtype=dtype)
    delta = jnp.asarray(delta, dtype=dtype)
    return eqx.error_if(delta, ~((delta >= 0) & (delta <= 2)), message.format("a value outside"))


def gram(x: Configuration) -> Float[Array, "n n"]:
    """The Gram matrix G_ij = <x_i, x_j>; for angles θ of shape (n,), G_ij = cos(θ_i - θ_j).

    Points must lie on the unit sphere (within sqrt(eps)): every statistic built on G reads
    G_ij as a cosine. Off-sphere points raise a ValueError with the largest deviation (an
    `eqx.error_if` under jit/vmap); project them with `transformer_flows.normalize(x)`.
    """
    _check_configuration(x)
    x = jnp.asarray(x)
    if x.ndim == 1:
        return jnp.cos(x[:, None] - x[None, :])
    x = check_on_sphere(x, "x")
    return inner_products(x, x)


def _adjacency(x: Configuration, delta) -> Bool[Array, "n n"]:
    """{<x_i,x_j> >= 1 - δ}, with the diagonal set (rounding can put |x_i|² a hair below 1)."""
    g = gram(x)
    threshold = 1 - _checked_delta(delta, g.dtype)
    return (g >= threshold) | jnp.eye(g.shape[0], dtype=bool)


def clustered_fraction(x: Configuration, delta: Float[ArrayLike, ""] = 1e-3) -> Float[Array, ""]:
    """Fraction of ordered pairs i ≠ j with <x_i, x_j> >= 1 - δ.

    The statistic of the paper's Figs. 3-5: averaged over random starts it estimates
    P(<x_1(t), x_2(t)> >= 1 - δ). Needs n >= 2.
    """
    _check_configuration(x)
    n = x.shape[0]
    if n < 2:
        raise ValueError(f"`clustered_fraction` needs n >= 2 tokens to form a pair, got n={n}.")
    g = gram(x)
    threshold = 1 - _checked_delta(delta, g.dtype)
    off_diagonal = ~jnp.eye(n, dtype=bool)
    clustered = jnp.sum((g >= threshold) & off_diagonal)
    return (clustered / (n * (n - 1))).astype(g.dtype)


# Connected components by one of two exact algorithms, chosen by n at trace time. Up to 32
# tokens (a row of the adjacency is one uint32 bit set): transitive closure by squaring, a
# fixed ceil(log2(n-1)) <= 5 passes of n² word operations and no while loop (under vmap a while
# loop runs every lane until the slowest converges: 12 sweeps of n² on the Fig. 3(a) chunk
# where most saves need 2). Above, min-label propagation: closures of several words per row
# measured slower than it (BENCHMARKS.md, "Sweep observables").
_CLOSURE_MAX_TOKENS = 32


def _bit_rows(adjacency: Bool[Array, "n n"]) -> UInt32[Array, " n"]:
    """Row i as a bit set (n <= 32): bit j is adjacency[i, j]."""
    n = adjacency.shape[0]
    weights = jnp.left_shift(jnp.uint32(1), jnp.arange(n, dtype=jnp.uint32))
    # Distinct powers of two: their sum is their bitwise or.
    return jnp.sum(jnp.where(adjacency, weights, jnp.uint32(0)), axis=1, dtype=jnp.uint32)


def _labels_by_closure(adjacency: Bool[Array, "n n"]) -> Int[Array, " n"]:
    """Each row of the reachability bit sets R (R ⊇ I) becomes the union of the rows it
    reaches: after k passes row i holds every token within 2^k edges of i, so
    ceil(log2(n-1)) passes reach every member of its component (a path has at most n-1
    edges); the label is the row's lowest bit. n <= 32."""
    n = adjacency.shape[0]
    rows = _bit_rows(adjacency)
    shifts = jnp.arange(n, dtype=jnp.uint32)
    for _ in range(max(n - 2, 0).bit_length()):  # ceil(log2(n-1)) passes, at most 5
        reached = (jnp.right_shift(rows[:, None], shifts[None, :]) & jnp.uint32(1)).astype(bool)
        rows = jax.lax.reduce(
            jnp.where(reached, rows[None, :], jnp.uint32(0)),
            jnp.uint32(0),
            jax.lax.bitwise_or,
            (1,),
        )
    # rows & -rows isolates the lowest bit (bit i is always set: never zero).
    lowest = rows & (jnp.uint32(0) - rows)
    return (31 - jax.lax.clz(lowest)).astype(jnp.arange(n).dtype)


def _labels_by_propagation(adjacency: Bool[Array, "n n"]) -> Int[Array, " n"]:
    """Min-label propagation with pointer jumping inside `lax.while_loop`, until no label
    changes."""
    n = adjacency.shape[0]
    index = jnp.arange(n)

    def sweep(labels):
        # Each token takes its neighbours' smallest label, then jumps to that label's label.
        # Labels stay member indices of the component and never exceed their own index.
        smallest = jnp.min(jnp.where(adjacency, labels[None, :], n), axis=1)
        return smallest[smallest]

    def changed(state):
        labels, previous = state
        return jnp.any(labels != previous)

    def step(state):
        labels, _ = state
        return sweep(labels), labels

    labels, _ = jax.lax.while_loop(changed, step, (sweep(index), index))
    return labels


def _component_labels(adjacency: Bool[Array, "n n"]) -> Int[Array, " n"]:
    """Smallest member index of each token's connected component (diagonal set)."""
    if adjacency.shape[0] <= _CLOSURE_MAX_TOKENS:
        return _labels_by_closure(adjacency)
    return _labels_by_propagation(adjacency)


def cluster_labels(x: Configuration, delta: Float[ArrayLike, ""] = 1e-3) -> Int[Array, " n"]:
    """Connected components of the graph with edges {<x_i, x_j> >= 1 - δ}.

    Token i gets the smallest token index in its component as label: tokens share a label
    exactly when they are in the same component, and permuting the tokens permutes the
    partition. Exact: for n <= 32 a transitive closure of bit-set rows by ceil(log2(n-1))
    squarings (O(n² log n) word operations, no while loop), above min-label propagation
    with pointer jumping inside `lax.while_loop` (O(n²) memory and work per sweep, a few
    sweeps).

    Note the authors' code counts clusters as the rank of 1{G > 0.9999}; connected components
    differ from that rank when the threshold graph is not a union of cliques (chains).
    """
    return _component_labels(_adjacency(x, delta))


def count_clusters(x: Configuration, delta: Float[ArrayLike, ""] = 1e-3) -> Int[Array, ""]:
    """Number of connected components of {<x_i, x_j> >= 1 - δ} (see `cluster_labels`)."""
    labels = cluster_labels(x, delta)
    return jnp.sum(labels == jnp.arange(labels.shape[0]))


def cluster_sizes(x: Configuration, delta: Float[ArrayLike, ""] = 1e-3) -> Int[Array, " n"]:
    """Component sizes indexed by label: entry k is the size of the cluster whose smallest
    token index is k, and 0 when k is not a label (so the entries sum to n, the non-zero
    entries are the cluster sizes in order of first token, and there are `count_clusters`
    of them). Sorted sizes: `jnp.sort(sizes)[::-1]`."""
    labels = cluster_labels(x, delta)
    return jnp.zeros(labels.shape[0], dtype=labels.dtype).at[labels].add(1)


def order_parameter(
    theta: Float[Array, " n"] | Float[Array, "n 2"], k: Int[ArrayLike, ""] = 1
) -> Float[Array, ""]:
    """|n⁻¹ Σ_j e^{ikθ_j}|: the Kuramoto order parameter (k = 1) and its harmonics.

    `theta` is angles of shape (n,), or points on S¹ of shape (n, 2) (converted with
    θ = atan2(x_2, x_1)). It is 1 at consensus and 0 for equally spaced angles (n ∤ k); a
    configuration of m equally spaced clusters has |r_k| = 1 exactly for k ∈ mℤ.
    """
    shape = getattr(theta, "shape", None)
    if shape is None or not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 2)):
        raise ValueError(
            f"`theta` must be angles of shape (n,) or points on the circle of shape (n, 2), "
            f"got shape {shape}."
        )
    if shape[0] == 0:
        raise ValueError(f"`theta` must hold at least one token, got shape {shape}.")
    known = _known(k)
    if known is not None and (
        known.ndim != 0 or not float(known) == round(float(known)) or float(known) < 1
    ):
        raise ValueError(f"`k` must be a positive integer (the harmonic), got {k!r}.")
    theta = jnp.asarray(theta)
    if theta.ndim == 2:
        theta = points_to_angles(check_on_sphere(theta, "theta"))
    phase = jnp.asarray(k, dtype=theta.dtype) * theta
    return jnp.hypot(jnp.mean(jnp.cos(phase)), jnp.mean(jnp.sin(phase)))


def min_projection(x: Configuration, w: Float[ArrayLike, " d"]) -> Float[Array, ""]:
    """r = min_i <x_i, w>. Non-decreasing along SA/USA (and any Q, K with V = I) when it
    starts positive (Lemma 6.4, cone collapse). `w` is used as given (normalise it for a
    cosine); for angles θ, x_i = (cos θ_i, sin θ_i) and `w` has shape (2,)."""
    points = _as_points(x)
    w = jnp.asarray(w, dtype=points.dtype)
    if w.shape != (points.shape[1],):
        raise ValueError(
            f"`w` must have shape ({points.shape[1]},) to match the points, got {w.shape}."
        )
    return jnp.min(points @ w)


def _bin_edges(bins, dtype) -> Float[Array, " edges"]:
    if isinstance(bins, int) and not isinstance(bins, bool):
        if bins < 1:
            raise ValueError(
                f"`bins` must be a positive number of bins or an array of edges, got {bins}."
            )
        return jnp.linspace(-1, 1, bins + 1, dtype=dtype)
    known = _known(bins)
    shape = np.shape(bins) if known is not None else bins.shape
    if len(shape) != 1 or shape[0] < 2:
        raise ValueError(
            f"`bins` must be an int or a 1-d array of at least 2 increasing edges, got shape "
            f"{shape}."
        )
    message = "`bins` edges must be strictly increasing, e.g. jnp.linspace(-1, 1, 41)."
    if known is not None:
        if not np.all(np.diff(known) > 0):
            raise ValueError(message)
        return jnp.asarray(bins, dtype=dtype)
    edges = jnp.asarray(bins, dtype=dtype)
    return eqx.error_if(edges, jnp.any(jnp.diff(edges) <= 0), message)


def inner_product_histogram(
    x: Configuration,
    bins: int | Float[ArrayLike, " edges"] = 40,
    *,
    mask: Bool[Array, " n"] | None = None,
) -> Int[Array, " bins"]:
    """Counts of the off-diagonal inner products <x_i, x_j>, i ≠ j (ordered pairs, so the
    counts sum to n(n-1) when the edges cover [-1, 1]).

    `bins` is a number of equal bins on [-1, 1] or an array of fixed edges; bins are
    [e_k, e_{k+1}) with the last one closed, as `numpy.histogram`, and values outside the
    edges are not counted. Inner products are clipped to [-1, 1] first, so rounding just
    past ±1 still lands in the end bins. Fixed edges keep the output shape static (jit).
    `mask` (n,): count only the pairs of tokens it marks True (e.g. the real tokens of a
    padded sequence).
    """
    g = gram(x)
    n = g.shape[0]
    edges = _bin_edges(bins, g.dtype)
    num_bins = edges.shape[0] - 1
    values = jnp.clip(g, -1, 1)
    index = jnp.searchsorted(edges, values, side="right") - 1
    index = jnp.where(values == edges[-1], num_bins - 1, index)
    counted = (values >= edges[0]) & (values <= edges[-1]) & ~jnp.eye(n, dtype=bool)
    if mask is not None:
        counted = counted & mask[:, None] & mask[None, :]
    index = jnp.where(counted, index, num_bins)
    counts = jnp.zeros(num_bins, dtype=jnp.arange(1).dtype)
    return counts.at[index.ravel()].add(1, mode="drop")


def first_crossing_time(
    ts: Float[ArrayLike, " times"],
    values: Real[ArrayLike, "times ..."],
    level: Real[ArrayLike, ""],
    *,
    direction: str = "up",
) -> Float[Array, "..."]:
    """First time a saved statistic reaches `level`, linearly interpolated between saves.

    **Arguments:**
    - `ts`: the save times (T,), e.g. `Trajectory.ts`.
    - `values`: the statistic at those times, time on the leading axis (T, ...), e.g.
      `Trajectory.observed`; trailing axes are independent series (e.g. from a vmap over
      seeds after moving time first).
    - `level`: the level to reach.
    - `direction`: "up" for the first time with value >= level (e.g. `clustered_fraction`
      reaching 0.5), "down" for value <= level (e.g. `count_clusters` reaching 1).

    **Returns:** the crossing time per series: `ts[0]` if the first value is already at the
    level, the linear interpolation between the last save before and the first save at or
    past the level otherwise, and **+inf** when the level is never reached (inf sorts after
    every finite time and makes "clustered by time t" tests `crossing <= t` correct).
    """
    if direction not in ("up", "down"):
        raise ValueError(f"`direction` must be 'up' or 'down', got {direction!r}.")
    ts = jnp.asarray(ts)
    if not jnp.issubdtype(ts.dtype, jnp.floating):
        ts = ts.astype(jnp.result_type(float))
    values = jnp.asarray(values, dtype=ts.dtype)
    if ts.ndim != 1 or values.ndim < 1 or values.shape[0] != ts.shape[0]:
        raise ValueError(
            f"`values` must have the save times on its leading axis: `ts` has shape "
            f"{ts.shape} and `values` has shape {values.shape}."
        )
    level = jnp.asarray(level, dtype=ts.dtype)
    reached = values >= level if direction == "up" else values <= level
    first = jnp.argmax(reached, axis=0)
    before = jnp.maximum(first - 1, 0)
    v_before = jnp.take_along_axis(values, before[None], axis=0)[0]
    v_first = jnp.take_along_axis(values, first[None], axis=0)[0]
    t_before, t_first = ts[before], ts[first]
    # At first > 0 the values bracket the level strictly on the `before` side, so the
    # denominator is non-zero; at first == 0 the crossing is the first save.
    step = jnp.where(first > 0, v_first - v_before, 1)
    fraction = jnp.where(first > 0, (level - v_before) / step, 0)
    crossing = t_before + fraction * (t_first - t_before)
    crossing = jnp.where(first > 0, crossing, ts[0])
    return jnp.where(jnp.any(reached, axis=0), crossing, jnp.inf)


def mean_cosine(x: Float[Array, "n d"]) -> Float[Array, ""]:
    """ρ = mean over pairs i ≠ j of <θ_i, θ_j>, θ_i = x_i/|x_i| (states in R^d are read through
    their directions; points on the sphere are their own). The equiangular cosine of Thm 6.8
    and of the placements' (ρ, r) reductions."""
    _check_configuration(x)
    theta = normalize(jnp.asarray(x))
    n = theta.shape[0]
    total = jnp.sum(jnp.square(jnp.sum(theta, axis=0)))
    return (total - jnp.sum(jnp.square(theta))) / jnp.maximum(n * (n - 1), 1)


def mean_radius(x: Float[Array, "n d"]) -> Float[Array, ""]:
    """mean_i |x_i|: 1 on the sphere; grows like t under Pre-LN and Peri-LN."""
    _check_configuration(x)
    return jnp.mean(jnp.linalg.norm(jnp.asarray(x), axis=-1))
