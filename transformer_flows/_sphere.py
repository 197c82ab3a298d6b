"""Geometry of the unit sphere S^{d-1}: tangent projection, retraction, exponential map."""

import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

from ._custom_types import Particles


def normalize(x: Float[Array, "*batch d"]) -> Float[Array, "*batch d"]:
    """Radially project each row of `x` onto the unit sphere (NaN-safe at 0)."""
    norm = jnp.linalg.norm(x, axis=-1, keepdims=True)
    safe = jnp.where(norm > 0, norm, 1)
    return jnp.where(norm > 0, x / safe, x)


def project_tangent(x: Particles, v: Particles) -> Particles:
    """P^⊥_x v = v - <x, v> x, row by row."""
    return v - jnp.sum(x * v, axis=-1, keepdims=True) * x


def exp_map(x: Particles, v: Particles) -> Particles:
    """Geodesic step: exp_x(v) = cos|v| x + sin|v| v/|v| for tangent `v`."""
    norm = jnp.linalg.norm(v, axis=-1, keepdims=True)
    safe = jnp.where(norm > 0, norm, 1)
    # sin(|v|)/|v| -> 1 as |v| -> 0; the where keeps gradients finite there.
    sinc = jnp.where(norm > 0, jnp.sin(safe) / safe, 1 - norm**2 / 6)
    return normalize(jnp.cos(norm) * x + sinc * v)


def sphere_drift(x: Float[Array, "*batch n d"]) -> Float[Array, ""]:
    """max_i | |x_i| - 1 |: how far a configuration is from the sphere."""
    return jnp.max(jnp.abs(jnp.linalg.norm(x, axis=-1) - 1))


def angles_to_points(theta: Float[ArrayLike, "*batch n"]) -> Float[Array, "*batch n 2"]:
    """θ ↦ (cos θ, sin θ) on S^1."""
    return jnp.stack([jnp.cos(theta), jnp.sin(theta)], axis=-1)


def points_to_angles(x: Float[ArrayLike, "*batch 2"]) -> Float[Array, "*batch"]:
    """(cos θ, sin θ) ↦ θ ∈ (-π, π]."""
    x = jnp.asarray(x)
    return jnp.arctan2(x[..., 1], x[..., 0])
