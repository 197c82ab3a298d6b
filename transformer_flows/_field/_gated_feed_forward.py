"""The gated feed-forward field of LLaMA (SwiGLU, Shazeer 2020): w (σ(a x) ⊙ u x), token by
token."""

from collections.abc import Callable

import equinox as eqx
from jaxtyping import Array, PyTree

from .._custom_types import Particles
from ._feed_forward import (
    AbstractFeedForward,
    _check_feed_forward_weights,
    _required_array,
    check_activation,
)
from ._layers import layer_index


class GatedFeedForward(AbstractFeedForward):
    """The gated (GLU) feed-forward term as a field on (S^{d-1})^n, token by token:
    ẋ_i = P^⊥_{x_i}( w(t) (σ(a(t) x_i) ⊙ u(t) x_i) ). With σ = SiLU this is LLaMA's SwiGLU
    MLP down(silu(gate x) ⊙ up x): w = W_down, a = W_gate, u = W_up.

    **Arguments:**
    - `w`: (d, m) output (down) weights; `a`: (m, d) gate weights; `u`: (m, d) up weights.
      With `layer_duration`, each has a leading layer axis L (layer l acts on
      [l·layer_duration, (l+1)·layer_duration), as `FeedForward`).
    - `activation`: σ of the gate, a name among `FeedForward`'s ("silu", the default, "gelu",
      "relu", ...) or a callable (static).
    """

    w: Array = eqx.field(converter=_required_array("w"))
    a: Array = eqx.field(converter=_required_array("a"))
    u: Array = eqx.field(converter=_required_array("u"))
    activation: str | Callable = eqx.field(default="silu", static=True, kw_only=True)
    layer_duration: float | None = eqx.field(default=None, static=True, kw_only=True)

    def __check_init__(self):
        check_activation(self.activation)
        _check_feed_forward_weights(self.w, self.a, None, self.layer_duration)
        if self.u.shape != self.a.shape:
            raise ValueError(
                f"`u` (up weights) must have the shape of `a` (gate weights) {self.a.shape}, "
                f"got {self.u.shape}."
            )

    def weights_at(self, t) -> tuple[Array, Array, Array]:
        """(w, a, u) acting at time t."""
        index = layer_index(t, self.layer_duration, self.num_layers)
        if index is None:
            return self.w, self.a, self.u
        return self.w[index], self.a[index], self.u[index]

    def drift(self, t, x: Particles, args: PyTree = None) -> Particles:
        w, a, u = self.weights_at(t)
        gate = self.sigma(x @ a.T.astype(x.dtype))
        return (gate * (x @ u.T.astype(x.dtype))) @ w.T.astype(x.dtype)
