"""The one place where attention is computed.

Every field (SA, USA, multi-head, per-layer, the circle forms) evaluates its interaction term
through `attend`, so a faster evaluation (e.g. blockwise for large n) only has to be added here.
"""

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from ._custom_types import Particles

# Per-head weights: None (identity) or a stack over heads.
HeadWeights = Float[Array, "heads k d"] | None


def _scores(
    x: Particles, beta: Float[Array, ""], q: Float[Array, "k d"] | None, k: Float[Array, "k d"] | None
) -> Float[Array, "n n"]:
    qx = x if q is None else x @ q.T
    kx = x if k is None else x @ k.T
    return beta * (qx @ kx.T)


def _normalise_scores(
    scores: Float[Array, "n n"], normalized: bool, log_shift: Float[Array, ""] | float
) -> Float[Array, "n n"]:
    if normalized:
        # softmax subtracts the row maximum: finite for any β in float32.
        return jax.nn.softmax(scores, axis=-1)
    return jnp.exp(scores - log_shift) / scores.shape[-1]


def _num_heads(*weights: HeadWeights) -> int | None:
    sizes = {w.shape[0] for w in weights if w is not None}
    return sizes.pop() if sizes else None


def attention_weights(
    x: Particles,
    beta: Float[Array, ""],
    Q: HeadWeights,
    K: HeadWeights,
    *,
    normalized: bool,
    log_shift: Float[Array, ""] | float = 0.0,
) -> Float[Array, "heads n n"]:
    """Attention matrices A^h_ij, one per head.

    `normalized=True`: A^h_ij = softmax_j(β<Q_h x_i, K_h x_j>) (row-stochastic, SA).
    `normalized=False`: A^h_ij = exp(β<Q_h x_i, K_h x_j> - log_shift) / n (USA).
    """

    def head(q, k):
        return _normalise_scores(_scores(x, beta, q, k), normalized, log_shift)

    if _num_heads(Q, K) is None:
        return head(None, None)[None]
    return jax.vmap(head)(Q, K)


def attend(
    x: Particles,
    beta: Float[Array, ""],
    Q: HeadWeights,
    K: HeadWeights,
    V: Float[Array, "heads d d"] | None,
    *,
    normalized: bool,
    log_shift: Float[Array, ""] | float = 0.0,
) -> Particles:
    """Σ_h Σ_j A^h_ij V_h x_j (heads summed, eq. 2.7), before tangent projection."""

    def head(q, k, v):
        weights = _normalise_scores(_scores(x, beta, q, k), normalized, log_shift)
        mixed = weights @ x
        return mixed if v is None else mixed @ v.T

    if _num_heads(Q, K, V) is None:
        return head(None, None, None)
    return jnp.sum(jax.vmap(head)(Q, K, V), axis=0)
