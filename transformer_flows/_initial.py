"""Initial configurations (keyed, deterministic given the key)."""

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from ._custom_types import Angles, Particles
from ._sphere import normalize


def _check_sizes(n, d, *, min_d: int = 2) -> None:
    for name, value, low in (("n", n, 1), ("d", d, min_d)):
        if not isinstance(value, int) or value < low:
            raise ValueError(f"`{name}` must be an integer >= {low}, got {value!r}.")


def _dtype(dtype):
    return jnp.result_type(float) if dtype is None else dtype


def sample_sphere(key: PRNGKeyArray, n: int, d: int, *, dtype=None) -> Particles:
    """n i.i.d. points uniform on S^{d-1} (normalised Gaussians, as in the authors' code)."""
    _check_sizes(n, d)
    return normalize(jax.random.normal(key, (n, d), dtype=_dtype(dtype)))


def orthonormal_tokens(n: int, d: int, *, key: PRNGKeyArray | None = None, dtype=None) -> Particles:
    """n exactly orthonormal tokens in R^d (d >= n): e_1, ..., e_n, or a uniformly random
    orthonormal frame when `key` is given. The start of Theorem 6.8."""
    _check_sizes(n, d)
    if d < n:
        raise ValueError(
            f"`orthonormal_tokens` needs d >= n to fit n orthonormal tokens, got n={n}, d={d}."
        )
    if key is None:
        return jnp.eye(n, d, dtype=_dtype(dtype))
    gaussian = jax.random.normal(key, (d, n), dtype=_dtype(dtype))
    q, r = jnp.linalg.qr(gaussian)
    # Fix the QR sign ambiguity so the frame is Haar-distributed.
    return (q * jnp.sign(jnp.diagonal(r))[None, :]).T


def sample_hemisphere(
    key: PRNGKeyArray, n: int, d: int, *, direction: Float[Array, " d"] | None = None, dtype=None
) -> Particles:
    """n i.i.d. points uniform on the open hemisphere {x : <x, w> > 0} (Lemma 6.4)."""
    _check_sizes(n, d)
    x = sample_sphere(key, n, d, dtype=dtype)
    w = jnp.eye(1, d, dtype=x.dtype)[0] if direction is None else normalize(direction)
    if w.shape != (d,):
        raise ValueError(f"`direction` must have shape ({d},), got {w.shape}.")
    side = jnp.sign(x @ w)
    return x * jnp.where(side == 0, 1, side)[:, None]


def uniform_angles(key: PRNGKeyArray, n: int, *, dtype=None) -> Angles:
    """n i.i.d. angles uniform on [-π, π)."""
    _check_sizes(n, 2)
    return jax.random.uniform(key, (n,), dtype=_dtype(dtype), minval=-jnp.pi, maxval=jnp.pi)
