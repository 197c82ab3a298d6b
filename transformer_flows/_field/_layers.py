"""Per-layer weights: the layer acting at time t and the layer boundaries, shared by every field
whose weights carry a leading layer axis L with `layer_duration` τ (layer l acts on
[l·τ, (l+1)·τ); the last layer for all later times, the first for t < 0)."""

import jax.numpy as jnp
from jaxtyping import Array, Float, Int


def check_layer_duration(layer_duration) -> None:
    """`layer_duration` is None or a positive number (a static Python float)."""
    if layer_duration is None:
        return
    if isinstance(layer_duration, bool) or not (
        isinstance(layer_duration, (int, float)) and layer_duration > 0
    ):
        raise ValueError(f"`layer_duration` must be a positive number, got {layer_duration!r}.")


def layer_index(t, layer_duration: float | None, num_layers: int | None) -> Int[Array, ""] | None:
    """The index of the layer acting at time t (None when the weights have no layer axis)."""
    if layer_duration is None:
        return None
    layer = jnp.floor(jnp.asarray(t) / layer_duration).astype(jnp.int32)
    return jnp.clip(layer, 0, num_layers - 1)


def layer_jump_times(
    layer_duration: float | None, num_layers: int | None
) -> Float[Array, " jumps"] | None:
    """The interior layer boundaries τ, 2τ, ..., (L-1)τ (None for one layer or none)."""
    if layer_duration is None or num_layers == 1:
        return None
    return layer_duration * jnp.arange(1, num_layers, dtype=float)
