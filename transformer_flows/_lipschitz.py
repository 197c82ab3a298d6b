"""The local Lipschitz constant of a map at a point: ‖Df(x)‖₂ by power iteration on Df(x)ᵀDf(x)
(one `jax.jvp` and one `jax.vjp` per step, never the dense Jacobian). Used for attention's
Lipschitz constant (docs/atlas.md, R10; Castin, Ablin, Peyré, arXiv:2312.14820)."""

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray


def local_lipschitz(
    f: Callable[[Array], Array],
    x: Float[Array, "..."],
    *,
    key: PRNGKeyArray,
    iterations: int = 200,
) -> Float[Array, ""]:
    """‖Df(x)‖₂ (Euclidean norms of the flattened input and output): the largest singular value
    of the Jacobian, from `iterations` power steps v ← Df(x)ᵀDf(x)v/‖·‖ started at a normal
    draw from `key`. A lower bound that converges geometrically in (σ₂/σ₁)²; jit-able."""
    if not isinstance(iterations, int) or isinstance(iterations, bool) or iterations < 1:
        raise ValueError(f"`iterations` must be a positive integer (e.g. 200), got {iterations!r}.")
    x = jnp.asarray(x)
    _, pullback = jax.vjp(f, x)

    def step(_, v):
        (w,) = pullback(jax.jvp(f, (x,), (v,))[1])
        return w / jnp.linalg.norm(w)

    v0 = jax.random.normal(key, x.shape, x.dtype)
    v = jax.lax.fori_loop(0, iterations, step, v0 / jnp.linalg.norm(v0))
    return jnp.linalg.norm(jax.jvp(f, (x,), (v,))[1])
