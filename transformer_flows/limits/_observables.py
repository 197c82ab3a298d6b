"""Observables of random transformers at initialisation (docs/limits.md): across-head
statistics of the logits and attention weights, and the token kernel per layer."""

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from .._custom_types import Particles


def across_head_variance(values: Float[Array, "heads ..."]) -> Float[Array, "..."]:
    """The unbiased variance over the head axis (axis 0) of per-head values, e.g. the
    logits A_h,ij or the attention weights a_h,ij (heads, n, n) → (n, n). Needs H >= 2."""
    if values.shape[0] < 2:
        raise ValueError(
            f"`values` has {values.shape[0]} head(s) on axis 0; the across-head variance needs "
            "at least 2 heads (draw the transformer with heads >= 2)."
        )
    return jnp.var(values, axis=0, ddof=1)


def head_density(
    values: Float[Array, " samples"], edges: Float[Array, " edges"]
) -> Float[Array, " bins"]:
    """The histogram density of per-head values (e.g. A_h,ij for one pair over heads and
    draws) on `edges`: integrates to the fraction of samples inside [edges[0], edges[-1]]."""
    values = np.asarray(values).ravel()
    counts, _ = np.histogram(values, bins=np.asarray(edges))
    widths = np.diff(np.asarray(edges))
    return jnp.asarray(counts / (values.size * widths))


def token_kernel(states: Float[Array, "*layers n D"]) -> Float[Array, "*layers n n"]:
    """The residual-stream kernel K_ij = ⟨x_i, x_j⟩ (per layer for `layer_states`' output).
    Tokens start on the unit sphere, so K is the RMS-1 stream's (1/D)⟨u_i, u_j⟩; for
    Post-LN it is the cosine matrix."""
    return jnp.einsum("...id,...jd->...ij", states, states)


def mean_offdiagonal_cosine(x: Particles) -> Float[Array, ""]:
    """The mean cosine over pairs i ≠ j, ⟨x_i, x_j⟩/(|x_i||x_j|) (the token alignment)."""
    unit = x / jnp.linalg.norm(x, axis=-1, keepdims=True)
    gram = unit @ unit.T
    n = x.shape[0]
    return (jnp.sum(gram) - jnp.trace(gram)) / (n * (n - 1))
