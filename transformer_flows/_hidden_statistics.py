"""Statistics of hidden states: any array of token states (n, D), or a batch (..., n, D) such
as the (layers + 1, n, D) hidden states of a transformer, one value per configuration.

States are read through their directions θ_i = x_i/|x_i| (hidden states of real models are not
on the unit sphere), except where a docstring says otherwise. Everything is jit/vmap-able;
batches are mapped with `jnp.vectorize` over the leading axes.

The statistics that exist for one configuration on the sphere are reused, not restated:
`mean_cosine`, `count_clusters`, `inner_product_histogram` (`_observables`) and `energy`
(`_energy`). The definitions are in docs/models.md, "Hidden-state statistics".
"""

import functools

import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, Int

from ._energy import energy
from ._observables import (
    _bin_edges,
    clustered_fraction,
    count_clusters,
    inner_product_histogram,
    mean_cosine,
    mean_radius,
)
from ._sphere import normalize

States = Float[Array, "*batch n d"]


def _check_states(x, name: str = "x") -> None:
    shape = getattr(x, "shape", None)
    if shape is None or len(shape) < 2:
        raise ValueError(
            f"`{name}` must be token states of shape (n, d) or a batch (..., n, d), got shape "
            f"{shape}."
        )
    if shape[-2] < 2:
        raise ValueError(
            f"`{name}` needs n >= 2 tokens (axis -2) to form a pair, got shape {shape}."
        )


def _per_configuration(function, x, output: str = "()"):
    """`function` of one configuration (n, d), mapped over the leading axes of `x`."""
    _check_states(x)
    return jnp.vectorize(function, signature=f"(n,d)->{output}")(jnp.asarray(x))


def pairwise_cosine(x: States) -> Float[Array, "*batch"]:
    """Mean over ordered pairs i ≠ j of cos(x_i, x_j) = <θ_i, θ_j> (`mean_cosine`, batched).

    Raised by any shared direction (anisotropy) as much as by clustering; compare
    `centred_cosine`."""
    return _per_configuration(mean_cosine, x)


def _centred_cosine(x: Float[Array, "n d"]) -> Float[Array, ""]:
    return mean_cosine(x - jnp.mean(x, axis=0, keepdims=True))


def centred_cosine(x: States) -> Float[Array, "*batch"]:
    """Mean over i ≠ j of cos(x_i − x̄, x_j − x̄), x̄ = (1/n) Σ_k x_k: the pairwise cosine after
    the token mean is removed (of the states as they are, not of their directions).

    A direction shared by all tokens (anisotropy) raises `pairwise_cosine` but not this one:
    it is invariant to x_i ↦ x_i + b. Tokens at x̄ count as cosine 0. With equal centred norms
    it is exactly −1/(n−1) (Σ_i (x_i − x̄) = 0), so it is near 0, not 0, for spread tokens;
    it is near 1 only when tokens form one tight group apart from a few others."""
    return _per_configuration(_centred_cosine, x)


def _effective_rank(x: Float[Array, "n d"], directions: bool) -> Float[Array, ""]:
    matrix = normalize(x) if directions else x
    singular = jnp.linalg.svd(matrix, compute_uv=False)
    total = jnp.sum(singular)
    p = singular / jnp.where(total > 0, total, 1)
    positive = p > 0
    # -Σ p log p with 0 log 0 = 0; the `where`s keep gradients finite at p = 0.
    entropy = -jnp.sum(jnp.where(positive, p * jnp.log(jnp.where(positive, p, 1)), 0))
    return jnp.where(total > 0, jnp.exp(entropy), 0).astype(singular.dtype)


def effective_rank(x: States, *, directions: bool = True) -> Float[Array, "*batch"]:
    """Effective rank of Roy & Vetterli (2007): exp(H(p)), H(p) = −Σ_k p_k log p_k, with
    p_k = σ_k / Σ_l σ_l the normalised singular values of the n × d matrix of token
    directions θ_i (`directions=True`) or of the states as they are (`directions=False`).

    It lies in [1, min(n, d)]: 1 for tokens on one line, k for k orthogonal directions of
    equal weight (e.g. k orthonormal tokens), and it is invariant to rotations of R^d and to
    permutations of the tokens. 0 for a matrix of zeros. Gradients exist where the singular
    values are simple."""
    return _per_configuration(functools.partial(_effective_rank, directions=directions), x)


def cluster_count(x: States, delta: Float[ArrayLike, ""] = 1e-3) -> Int[Array, "*batch"]:
    """`count_clusters` of the directions θ_i (components of {<θ_i, θ_j> >= 1 − δ}), batched."""
    return _per_configuration(lambda y: count_clusters(normalize(y), delta), x)


def direction_energy(
    x: States, beta: Float[ArrayLike, ""] = 1.0, *, rescaled: bool = True
) -> Float[Array, "*batch"]:
    """`energy` of the directions θ_i, batched: e^{−β} E_β(θ) = (1/(2βn²)) Σ_ij
    e^{β(<θ_i,θ_j> − 1)} by default (`rescaled=True`, finite for large β; 1/(2β) at
    consensus), E_β(θ) itself with `rescaled=False`."""
    return _per_configuration(lambda y: energy(normalize(y), beta, rescaled=rescaled), x)


def _density(x: Float[Array, "n d"], edges: Float[Array, " edges"]) -> Float[Array, " bins"]:
    counts = inner_product_histogram(normalize(x), edges).astype(x.dtype)
    total = jnp.sum(counts)
    density = counts / (jnp.where(total > 0, total, 1) * jnp.diff(edges))
    return jnp.where(total > 0, density, 0)


def cosine_histogram(
    x: States, bins: int | Float[ArrayLike, " edges"] = 40
) -> Float[Array, "*batch bins"]:
    """Density histogram of <θ_i, θ_j> over the pairs i < j (GLPR, arXiv:2312.10794, Fig. 1).

    `bins`: a number of equal bins on [−1, 1], or an array of fixed edges (`bins` and edges as
    `inner_product_histogram`, which counts; ordered pairs count each pair twice, which the
    normalisation removes). Density as `numpy.histogram(..., density=True)`: the counted pairs
    divided by their number and by the bin widths, so Σ_k density_k · width_k = 1 when the
    edges cover [−1, 1] (all zeros when no pair falls inside the edges)."""
    _check_states(x)
    x = jnp.asarray(x)
    edges = _bin_edges(bins, x.dtype)
    return _per_configuration(lambda y: _density(y, edges), x, "(k)")


def histogram_edges(
    bins: int | Float[ArrayLike, " edges"] = 40, dtype=None
) -> Float[Array, " edges"]:
    """The bin edges `cosine_histogram` uses for `bins` (equal bins on [−1, 1] for an int)."""
    return _bin_edges(bins, dtype or jnp.zeros(()).dtype)


def hidden_state_statistics(
    x: States,
    *,
    delta: Float[ArrayLike, ""] = 1e-3,
    beta: Float[ArrayLike, ""] = 1.0,
    bins: int | Float[ArrayLike, " edges"] = 40,
) -> dict[str, Array]:
    """Every hidden-state statistic of `x` (n, d) or (..., n, d), each of the batch shape:
    `mean_cosine`, `centred_cosine`, `effective_rank` (of directions), `cluster_count` and
    `clustered_fraction` (threshold `delta`), `energy` (e^{−β} E_β of the directions),
    `mean_radius` (mean |x_i|) and `cosine_histogram` (`bins` more on the last axis). E.g.
    on a model's hidden states (layers + 1, n, D), one value per layer."""
    return {
        "mean_cosine": pairwise_cosine(x),
        "centred_cosine": centred_cosine(x),
        "effective_rank": effective_rank(x),
        "cluster_count": cluster_count(x, delta),
        "clustered_fraction": _per_configuration(
            lambda y: clustered_fraction(normalize(y), delta), x
        ),
        "energy": direction_energy(x, beta),
        "mean_radius": _per_configuration(mean_radius, x),
        "cosine_histogram": cosine_histogram(x, bins),
    }
