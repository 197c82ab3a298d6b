"""Statistics of hidden states: any array of token states (n, D), or a batch (..., n, D) such
as the (layers + 1, n, D) hidden states of a transformer, one value per configuration.

States are read through their directions θ_i = x_i/|x_i| (hidden states of real models are not
on the unit sphere), except where a docstring says otherwise. Everything is jit/vmap-able;
batches are mapped with `jnp.vectorize` over the leading axes.

The statistics that exist for one configuration on the sphere are reused, not restated:
`mean_cosine`, `count_clusters`, `inner_product_histogram` (`_observables`) and `energy`
(`_energy`). The definitions are in docs/models.md, "Hidden-state statistics".

Every statistic takes an optional `mask` (..., n) of booleans, True on the tokens to use (the
real tokens of a padded batch, `PretrainedTransformer.tokenize_batch`): the statistic is then
that of the marked tokens alone, as if the others were not there (at least two per
configuration). `mask=None` marks every token.
"""

import functools

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Float, Int

from ._energy import _interaction
from ._observables import (
    _bin_edges,
    _checked_delta,
    count_clusters,
    inner_product_histogram,
    mean_cosine,
)
from ._sphere import normalize
from ._validation import is_concrete

States = Float[Array, "*batch n d"]
Mask = Bool[ArrayLike, "*mask_batch n"] | None


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


def _check_mask(x, mask) -> Bool[Array, "*mask_batch n"]:
    """`mask` as booleans that broadcast against x.shape[:-1] (all True for None), each
    configuration with at least two marked tokens (a ValueError now, an `eqx.error_if` under
    jit)."""
    if mask is None:
        return jnp.ones(x.shape[:-1], dtype=bool)
    mask = jnp.asarray(mask)
    try:
        broadcast = jnp.broadcast_shapes(mask.shape, x.shape[:-1]) == x.shape[:-1]
    except ValueError:
        broadcast = False
    if mask.dtype != jnp.bool_ or not broadcast or mask.shape[-1:] != x.shape[-2:-1]:
        raise ValueError(
            f"`mask` must be booleans of shape {x.shape[:-1]} (the states' shape without d; "
            f"True on the tokens to use) or one that broadcasts to it, e.g. (B, 1, n) for the "
            f"hidden states (B, layers + 1, n, D) of a padded batch; got {mask.dtype} of shape "
            f"{mask.shape}."
        )
    message = "`mask` must mark at least two tokens of each configuration (a pair)."
    marked = jnp.sum(mask, axis=-1)
    if is_concrete(marked):
        if np.any(np.asarray(marked) < 2):
            raise ValueError(f"{message} One marks {int(np.asarray(marked).min())}.")
        return mask
    return eqx.error_if(mask, jnp.any(marked < 2), message)


def _per_configuration(function, x, mask=None, output: str = "()"):
    """`function(states (n, d), mask (n,))` of one configuration, mapped over the leading axes
    of `x` (and of `mask`)."""
    _check_states(x)
    x = jnp.asarray(x)
    mask = _check_mask(x, mask)
    return jnp.vectorize(function, signature=f"(n,d),(n)->{output}")(x, mask)


def _pairs(mask: Bool[Array, " n"], dtype) -> Float[Array, ""]:
    """k(k − 1) for the k marked tokens: the ordered pairs among them."""
    k = jnp.sum(mask)
    return (k * (k - 1)).astype(dtype)


def _masked_mean_cosine(x: Float[Array, "n d"], mask: Bool[Array, " n"]) -> Float[Array, ""]:
    # `mean_cosine` of the marked directions with the others set to 0 (which add nothing to
    # its sums), rescaled from its n(n − 1) pairs to the k(k − 1) marked ones.
    n = x.shape[0]
    theta = jnp.where(mask[:, None], normalize(x), 0)
    return mean_cosine(theta) * (n * (n - 1) / _pairs(mask, x.dtype))


def pairwise_cosine(x: States, *, mask: Mask = None) -> Float[Array, "*batch"]:
    """Mean over ordered pairs i ≠ j of cos(x_i, x_j) = <θ_i, θ_j> (`mean_cosine`, batched).

    Raised by any shared direction (anisotropy) as much as by clustering; compare
    `centred_cosine`."""
    return _per_configuration(_masked_mean_cosine, x, mask)


def _centred_cosine(x: Float[Array, "n d"], mask: Bool[Array, " n"]) -> Float[Array, ""]:
    weights = mask.astype(x.dtype)[:, None]
    mean = jnp.sum(weights * x, axis=0, keepdims=True) / jnp.sum(weights)
    return _masked_mean_cosine(x - mean, mask)


def centred_cosine(x: States, *, mask: Mask = None) -> Float[Array, "*batch"]:
    """Mean over i ≠ j of cos(x_i − x̄, x_j − x̄), x̄ = (1/n) Σ_k x_k: the pairwise cosine after
    the token mean is removed (of the states as they are, not of their directions).

    A direction shared by all tokens (anisotropy) raises `pairwise_cosine` but not this one:
    it is invariant to x_i ↦ x_i + b. Tokens at x̄ count as cosine 0. With equal centred norms
    it is exactly −1/(n−1) (Σ_i (x_i − x̄) = 0), so it is near 0, not 0, for spread tokens;
    it is near 1 only when tokens form one tight group apart from a few others. With `mask`,
    x̄ and n are those of the marked tokens."""
    return _per_configuration(_centred_cosine, x, mask)


def _effective_rank(
    x: Float[Array, "n d"], mask: Bool[Array, " n"], directions: bool
) -> Float[Array, ""]:
    # Rows of zeros (the unmarked tokens) leave the singular values unchanged.
    matrix = jnp.where(mask[:, None], normalize(x) if directions else x, 0)
    singular = jnp.linalg.svd(matrix, compute_uv=False)
    total = jnp.sum(singular)
    p = singular / jnp.where(total > 0, total, 1)
    positive = p > 0
    # -Σ p log p with 0 log 0 = 0; the `where`s keep gradients finite at p = 0.
    entropy = -jnp.sum(jnp.where(positive, p * jnp.log(jnp.where(positive, p, 1)), 0))
    return jnp.where(total > 0, jnp.exp(entropy), 0).astype(singular.dtype)


def effective_rank(
    x: States, *, directions: bool = True, mask: Mask = None
) -> Float[Array, "*batch"]:
    """Effective rank of Roy & Vetterli (2007): exp(H(p)), H(p) = −Σ_k p_k log p_k, with
    p_k = σ_k / Σ_l σ_l the normalised singular values of the n × d matrix of token
    directions θ_i (`directions=True`) or of the states as they are (`directions=False`).

    It lies in [1, min(n, d)]: 1 for tokens on one line, k for k orthogonal directions of
    equal weight (e.g. k orthonormal tokens), and it is invariant to rotations of R^d and to
    permutations of the tokens. 0 for a matrix of zeros. Gradients exist where the singular
    values are simple."""
    return _per_configuration(functools.partial(_effective_rank, directions=directions), x, mask)


def _stand_in(x: Float[Array, "n d"], mask: Bool[Array, " n"]) -> Float[Array, "n d"]:
    """The unmarked tokens replaced by a copy of the first marked one: a copy is adjacent to
    exactly the neighbours of its original, so it joins that cluster and merges none."""
    first = x[jnp.argmax(mask)]
    return jnp.where(mask[:, None], x, first[None])


def cluster_count(
    x: States, delta: Float[ArrayLike, ""] = 1e-3, *, mask: Mask = None
) -> Int[Array, "*batch"]:
    """`count_clusters` of the directions θ_i (components of {<θ_i, θ_j> >= 1 − δ}), batched."""
    return _per_configuration(
        lambda y, m: count_clusters(normalize(_stand_in(y, m)), delta), x, mask
    )


def _clustered_fraction(x, mask, delta) -> Float[Array, ""]:
    theta = normalize(x)
    g = theta @ theta.T
    pairs = mask[:, None] & mask[None, :] & ~jnp.eye(x.shape[0], dtype=bool)
    close = g >= 1 - _checked_delta(delta, g.dtype)
    return jnp.sum(close & pairs).astype(x.dtype) / _pairs(mask, x.dtype)


def _clustered_fraction_of(
    x: States, delta: Float[ArrayLike, ""] = 1e-3, *, mask: Mask = None
) -> Float[Array, "*batch"]:
    """`clustered_fraction` of the directions θ_i, batched: the fraction of ordered pairs
    i ≠ j (of marked tokens) with <θ_i, θ_j> >= 1 − δ."""
    return _per_configuration(lambda y, m: _clustered_fraction(y, m, delta), x, mask)


def _direction_energy(x, mask, beta, rescaled: bool) -> Float[Array, ""]:
    theta = normalize(x)
    weights = (mask[:, None] & mask[None, :]).astype(x.dtype)
    k = jnp.sum(mask).astype(x.dtype)
    scores = theta @ theta.T
    value = _interaction(scores, beta, shifted=False, rescaled=rescaled, weights=weights)
    return value / k**2


def direction_energy(
    x: States, beta: Float[ArrayLike, ""] = 1.0, *, rescaled: bool = True, mask: Mask = None
) -> Float[Array, "*batch"]:
    """`energy` of the directions θ_i, batched: e^{−β} E_β(θ) = (1/(2βn²)) Σ_ij
    e^{β(<θ_i,θ_j> − 1)} by default (`rescaled=True`, finite for large β; 1/(2β) at
    consensus), E_β(θ) itself with `rescaled=False` (n and the sum over the marked tokens)."""
    return _per_configuration(lambda y, m: _direction_energy(y, m, beta, rescaled), x, mask)


def _mean_radius(x, mask) -> Float[Array, ""]:
    radii = jnp.where(mask, jnp.linalg.norm(x, axis=-1), 0)
    return jnp.sum(radii) / jnp.sum(mask).astype(x.dtype)


def _density(
    x: Float[Array, "n d"], mask: Bool[Array, " n"], edges: Float[Array, " edges"]
) -> Float[Array, " bins"]:
    counts = inner_product_histogram(normalize(x), edges, mask=mask).astype(x.dtype)
    total = jnp.sum(counts)
    density = counts / (jnp.where(total > 0, total, 1) * jnp.diff(edges))
    return jnp.where(total > 0, density, 0)


def cosine_histogram(
    x: States, bins: int | Float[ArrayLike, " edges"] = 40, *, mask: Mask = None
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
    return _per_configuration(lambda y, m: _density(y, m, edges), x, mask, "(k)")


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
    mask: Mask = None,
) -> dict[str, Array]:
    """Every hidden-state statistic of `x` (n, d) or (..., n, d), each of the batch shape:
    `mean_cosine`, `centred_cosine`, `effective_rank` (of directions), `cluster_count` and
    `clustered_fraction` (threshold `delta`), `energy` (e^{−β} E_β of the directions),
    `mean_radius` (mean |x_i|) and `cosine_histogram` (`bins` more on the last axis). E.g.
    on a model's hidden states (layers + 1, n, D), one value per layer. `mask` (..., n): the
    statistics of the marked tokens only (a padded batch's real tokens)."""
    return {
        "mean_cosine": pairwise_cosine(x, mask=mask),
        "centred_cosine": centred_cosine(x, mask=mask),
        "effective_rank": effective_rank(x, mask=mask),
        "cluster_count": cluster_count(x, delta, mask=mask),
        "clustered_fraction": _clustered_fraction_of(x, delta, mask=mask),
        "energy": direction_energy(x, beta, mask=mask),
        "mean_radius": _per_configuration(_mean_radius, x, mask),
        "cosine_histogram": cosine_histogram(x, bins, mask=mask),
    }
