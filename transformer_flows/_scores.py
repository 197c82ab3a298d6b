"""Attention scores and their normalisation: the lowest layer of the attention code, shared by
`attend`'s methods (`_attention.py`) and the one-pass kernel's pure-JAX path and derivative
(`_attention_kernel.py`), so that neither imports the other for them."""

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float


def _normalise_scores(
    scores: Float[Array, "nq nk"], normalized: bool, log_shift: Float[Array, ""] | float
) -> Float[Array, "nq nk"]:
    if normalized:
        # softmax subtracts the row maximum: finite for any β in float32.
        return jax.nn.softmax(scores, axis=-1)
    return jnp.exp(scores - log_shift) / scores.shape[-1]


# Up to this query/key width, scores are summed outer products rather than a matmul: XLA then
# fuses scores, exponentials and row sums into one loop, about 2x faster for the phase-diagram
# systems (n = 32, d = 2) on CPU. Same arithmetic, so the same numbers up to rounding.
_UNROLLED_WIDTH = 3


def inner_products(queries: Float[Array, "nq k"], keys: Float[Array, "nk k"]) -> Array:
    """<q_i, k_j> for all pairs; also the Gram matrix of the observables."""
    if queries.shape[1] > _UNROLLED_WIDTH:
        return queries @ keys.T
    products = [queries[:, None, c] * keys[None, :, c] for c in range(queries.shape[1])]
    return sum(products[1:], start=products[0])
