"""Seed 000's training identity: the gradient of a value-weighted attention read-out with
respect to the attention scores.

For scores s (n, m), attention α_i = softmax(s_i·) and any loss that reads the attention output
linearly, L = Σ_i u_iᵀ Σ_j α_ij v_j, write b_ij = u_iᵀ v_j (how much key j's value helps query
i's loss). Then, exactly,

    ∂L/∂s_ij = α_ij (b_ij − Σ_k α_ik b_ik),

because ∂α_ik/∂s_ij = α_ik(δ_jk − α_ij). A gradient step on the scores therefore raises the
score of every key whose value is better than the attention-weighted average for that query and
lowers the others: the scores climb the centred payoff b − E_α[b], weighted by α. With u_i the
gradient of a downstream loss with respect to the attention output, this is the backward pass
through softmax attention.
"""

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float


def score_gradient(
    scores: Float[Array, "*batch n m"], payoff: Float[Array, "..."]
) -> Float[Array, "*batch n m"]:
    """α ⊙ (b − E_α[b]) row by row, with α = softmax(scores) over the last axis and b = payoff:
    the gradient of Σ_ij α_ij b_ij with respect to the scores (docs/limits_training.md)."""
    if scores.shape != payoff.shape:
        raise ValueError(
            f"`scores` has shape {scores.shape} but `payoff` has {payoff.shape}; give one "
            "payoff b_ij = u_iᵀv_j per score."
        )
    alpha = jax.nn.softmax(scores, axis=-1)
    return alpha * (payoff - jnp.sum(alpha * payoff, axis=-1, keepdims=True))
