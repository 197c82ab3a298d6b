"""Pre-RMSNorm (LLaMA): the Pre-LN residual layer with RMSNorm, gain and ε included.

RMSNorm(x) = g ⊙ x/√(mean_c x_c² + ε). With ε = 0 it is g ⊙ √d·x/|x|: the direction θ = x/|x|
that `PreLN` reads, times √d, times the gain. The gain folds exactly into the weights that act
on the normalised state (every map after a Pre-norm is linear in it: W(g ⊙ y) = (W diag g) y),
so `PreRMSNorm(field, gain=g)` equals `PreRMSNorm(field')` with each of field's input weights
multiplied by diag(g); and for ε = 0 `PreRMSNorm(field)` equals `PreLN(field'')` with the input
weights times √d. Unlike LayerNorm's, nothing is dropped: no centring and no shift.
"""

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PyTree

from .._custom_types import Particles
from .._validation import optional_float_array
from ._base import AbstractEuclideanField, AbstractSphereField
from ._layers import check_layer_duration, layer_index, layer_jump_times
from ._placements import _check_wrapped, _refuse_zero_rows


class PreRMSNorm(AbstractEuclideanField):
    """x ← x + h·A(RMSNorm x), RMSNorm(x) = g ⊙ x/√(mean(x²) + ε); limit ẋ_i = A_i(RMSNorm x),
    state in R^d. `A` is the wrapped sphere field's `drift` (attention before projection, or a
    feed-forward term), read at the normalised state.

    **Arguments:**
    - `field`: a sphere field (`RotarySelfAttention`, `GatedFeedForward`, `SelfAttention`, ...).
    - `gain`: g of shape (d,), or (L, d) with `layer_duration` (one per layer); None for 1.
    - `eps`: ε >= 0 (static). With ε = 0 a zero token has no normalisation and is refused.
    """

    field: AbstractSphereField
    gain: Array | None = eqx.field(default=None, converter=optional_float_array("gain"))
    eps: float = eqx.field(default=0.0, static=True, kw_only=True)
    layer_duration: float | None = eqx.field(default=None, static=True, kw_only=True)

    def __check_init__(self):
        _check_wrapped(self.field, "PreRMSNorm")
        check_layer_duration(self.layer_duration)
        if isinstance(self.eps, bool) or not (
            isinstance(self.eps, (int, float)) and np.isfinite(self.eps) and self.eps >= 0
        ):
            raise ValueError(f"`eps` must be a finite number >= 0, got {self.eps!r}.")
        if self.gain is not None:
            expected = 1 if self.layer_duration is None else 2
            if self.gain.ndim != expected or 0 in self.gain.shape:
                layout = "(d,)" if expected == 1 else "(L, d) (with `layer_duration`)"
                raise ValueError(f"`gain` must have shape {layout}, got {self.gain.shape}.")
            dim = getattr(self.field, "dim", None)
            if dim is not None and self.gain.shape[-1] != dim:
                raise ValueError(
                    f"`gain` has {self.gain.shape[-1]} entries but the field acts on d={dim}."
                )

    def normalize(self, t, x: Particles) -> Particles:
        """RMSNorm(x) with the gain acting at time t."""
        mean_square = jnp.mean(x * x, axis=-1, keepdims=True)
        if self.eps == 0:
            mean_square = eqx.error_if(
                mean_square,
                jnp.any(mean_square == 0),
                "a token reached x_i = 0, where RMSNorm with eps=0 is undefined; start from "
                "nonzero tokens or give eps > 0.",
            )
        y = x / jnp.sqrt(mean_square + jnp.asarray(self.eps, dtype=x.dtype))
        if self.gain is None:
            return y
        index = layer_index(t, self.layer_duration, self.gain.shape[0])
        gain = self.gain if index is None else self.gain[index]
        return y * gain.astype(x.dtype)[None]

    def __call__(self, t, x: Particles, args: PyTree = None) -> Particles:
        return self.field.drift(t, self.normalize(t, x), args)

    def residual_layer(self, t, x: Particles, h, args: PyTree = None) -> Particles:
        return x + h * self(t, x, args)

    def jump_times(self) -> Float[Array, " jumps"] | None:
        jumps = self.field.jump_times()
        if jumps is None and self.gain is not None and self.layer_duration is not None:
            return layer_jump_times(self.layer_duration, self.gain.shape[0])
        return jumps

    def check_state(self, x) -> None:
        self.field.check_state(x)
        if self.eps == 0:
            _refuse_zero_rows(x, "PreRMSNorm")
