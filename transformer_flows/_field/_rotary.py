"""Rotary position embeddings (RoPE, Su et al. 2021; LLaMA) and the position-aware attention
field they give (docs/pretrained.md, "Families").

Each token i carries a position p_i. With head width k (even), the coordinates are paired
(c, c + k/2), c = 0..k/2 − 1 (the "rotate half" layout of LLaMA in transformers), and the pair c
of a query or key at position p is turned by the angle p·ω_c, ω_c = base^{−2c/k}:

    R(p) z = (z₁ cos(pω) − z₂ sin(pω), z₂ cos(pω) + z₁ sin(pω)),   z = (z₁, z₂).

R(p) is orthogonal and R(p)ᵀR(p') = R(p' − p), so the score <R(p_i) q_i, R(p_j) k_j> =
<q_i, R(p_j − p_i) k_j> depends on the positions only through p_j − p_i: shifting every
position by one constant leaves the attention unchanged.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PyTree

from .._custom_types import Particles
from .._validation import as_float_array, check_finite
from ._base import AbstractSphereField, check_points
from ._feed_forward import _required_array
from ._layers import check_layer_duration, layer_index, layer_jump_times
from ._self_attention import as_beta


def rotary_frequencies(head_dim: int, base: float) -> np.ndarray:
    """ω_c = base^{−2c/k}, c = 0..k/2 − 1 (float64; transformers' `inv_freq`)."""
    return base ** (-np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)


def apply_rotary(
    z: Float[Array, "*heads n k"], positions: Float[Array, " n"], base: float
) -> Float[Array, "*heads n k"]:
    """R(p_i) z_i for every token i (the last two axes of `z` are tokens and coordinates)."""
    k = z.shape[-1]
    omega = jnp.asarray(rotary_frequencies(k, base), dtype=z.dtype)
    angles = positions.astype(z.dtype)[:, None] * omega[None, :]  # (n, k/2)
    angles = angles.reshape((1,) * (z.ndim - 2) + angles.shape)
    cos, sin = jnp.cos(angles), jnp.sin(angles)
    z1, z2 = z[..., : k // 2], z[..., k // 2 :]
    return jnp.concatenate([z1 * cos - z2 * sin, z2 * cos + z1 * sin], axis=-1)


def _optional_positions(value):
    if value is None:
        return None
    positions = check_finite(as_float_array(value, "positions"), "positions")
    if positions.ndim != 1:
        raise ValueError(
            f"`positions` must be a 1-D array with one position per token, got shape "
            f"{positions.shape}; or None for the token indices 0..n-1."
        )
    return positions


class RotarySelfAttention(AbstractSphereField):
    """Softmax self-attention with rotary positions (LLaMA), a field on (S^{d-1})^n:

        ẋ_i = P^⊥_{x_i}( Σ_h Σ_j softmax_j(β<R(p_i) Q_h x_i, R(p_j) K_h x_j>) V_h x_j ),

    R(p) the rotation of the module docstring. The state is x of shape (n, d) as for every
    field; the positions are the field's own `positions` (token i at p_i), so the field is
    position-aware but otherwise used as `SelfAttention` is (`tf.solve`, `ResidualLayers`,
    `PreLN(...)`, `PreRMSNorm(...)`, `TransformerBlock`).

    **Arguments:**
    - `beta`: inverse temperature β (LLaMA: 1/√k), a finite real scalar.
    - `Q`, `K`: (H, k, d) query and key rows of H heads of even width k, or (k, d) for one
      head; `V`: (H, d, d) or (d, d) (for a trained model, the output projection folded in:
      V_h = W_O^h W_V^h). Grouped-query attention: repeat the shared key rows for each query
      head of a group. With `layer_duration`, a leading layer axis L (layer l acts on
      [l·τ, (l+1)·τ), as `SelfAttention`).
    - `positions`: (n,) positions p_i (any reals), or None for the token indices 0..n-1.
    - `base`: the rotary base (LLaMA's `rope_theta`, default 10000); static.
    - `causal`: query i attends to keys j <= i only (LLaMA).
    """

    beta: Float[Array, ""] = eqx.field(converter=as_beta)
    Q: Array = eqx.field(converter=_required_array("Q"), kw_only=True)
    K: Array = eqx.field(converter=_required_array("K"), kw_only=True)
    V: Array = eqx.field(converter=_required_array("V"), kw_only=True)
    positions: Array | None = eqx.field(default=None, converter=_optional_positions, kw_only=True)
    base: float = eqx.field(default=10000.0, static=True, kw_only=True)
    layer_duration: float | None = eqx.field(default=None, static=True, kw_only=True)
    causal: bool = eqx.field(default=False, static=True, kw_only=True)

    def __check_init__(self):
        check_layer_duration(self.layer_duration)
        layered = self.layer_duration is not None
        lead = 1 if layered else 0
        names = {"Q": self.Q, "K": self.K, "V": self.V}
        for name, w in names.items():
            if w.ndim not in (lead + 2, lead + 3) or 0 in w.shape:
                layout = "(L, H, ., d)" if layered else "(H, ., d) or (., d)"
                raise ValueError(
                    f"`{name}` must have shape {layout} with no empty axis, got {w.shape}"
                    + ("." if layered else "; for per-layer weights pass `layer_duration=`.")
                )
        if self.Q.shape != self.K.shape:
            raise ValueError(
                f"`Q` and `K` must have the same shape, got {self.Q.shape} and {self.K.shape}; "
                "for grouped-query attention repeat each shared key head for its query heads."
            )
        if self.Q.shape[-2] % 2:
            raise ValueError(
                f"The head width k = {self.Q.shape[-2]} (rows of `Q`) must be even: rotary "
                "positions turn the coordinates in pairs (c, c + k/2)."
            )
        if self.V.shape[-1] != self.V.shape[-2] or self.V.shape[-1] != self.Q.shape[-1]:
            raise ValueError(
                f"`V` must be (., d, d) with d = {self.Q.shape[-1]} (the columns of `Q`), got "
                f"shape {self.V.shape}."
            )
        if self.V.ndim != self.Q.ndim or self.V.shape[:-2] != self.Q.shape[:-2]:
            raise ValueError(
                f"`V` {self.V.shape} and `Q` {self.Q.shape} must have the same layers and heads."
            )
        if not (isinstance(self.base, (int, float)) and np.isfinite(self.base) and self.base > 1):
            raise ValueError(f"`base` must be a finite number > 1, got {self.base!r}.")

    @property
    def num_layers(self) -> int | None:
        return None if self.layer_duration is None else self.Q.shape[0]

    @property
    def dim(self) -> int:
        return self.Q.shape[-1]

    def jump_times(self) -> Float[Array, " jumps"] | None:
        return layer_jump_times(self.layer_duration, self.num_layers)

    def check_state(self, x) -> None:
        check_points(x, "RotarySelfAttention")
        if x.shape[1] != self.dim:
            raise ValueError(
                f"`x0` has dimension d={x.shape[1]} but Q, K, V act on d={self.dim}; pass "
                f"tokens of shape (n, {self.dim})."
            )
        if self.positions is not None and self.positions.shape[0] != x.shape[0]:
            raise ValueError(
                f"`positions` has {self.positions.shape[0]} entries but `x0` has {x.shape[0]} "
                "tokens; give one position per token (or positions=None for 0..n-1)."
            )

    def weights_at(self, t) -> tuple[Array, Array, Array]:
        """(Q, K, V) acting at time t, each with a head axis."""
        index = layer_index(t, self.layer_duration, self.num_layers)

        def select(w):
            w = w if index is None else w[index]
            return w if w.ndim == 3 else w[None]

        return select(self.Q), select(self.K), select(self.V)

    def token_positions(self, x: Particles) -> Float[Array, " n"]:
        if self.positions is None:
            return jnp.arange(x.shape[0], dtype=x.dtype)
        return self.positions.astype(x.dtype)

    def attention_matrix(self, t, x: Particles) -> Float[Array, "heads n n"]:
        """The attention matrices A^h_ij (rows sum to 1) at configuration `x`."""
        Q, K, _ = self.weights_at(t)
        positions = self.token_positions(x)
        q = apply_rotary(jnp.einsum("hkd,nd->hnk", Q.astype(x.dtype), x), positions, self.base)
        k = apply_rotary(jnp.einsum("hkd,nd->hnk", K.astype(x.dtype), x), positions, self.base)
        scores = self.beta.astype(x.dtype) * jnp.einsum("hik,hjk->hij", q, k)
        if self.causal:
            n = x.shape[0]
            allowed = np.tril(np.ones((n, n), dtype=bool))
            scores = jnp.where(allowed[None], scores, -jnp.inf)
        return jax.nn.softmax(scores, axis=-1)  # subtracts the row maximum (stable)

    def drift(self, t, x: Particles, args: PyTree = None) -> Particles:
        _, _, V = self.weights_at(t)
        weights = self.attention_matrix(t, x)
        values = jnp.einsum("hed,nd->hne", V.astype(x.dtype), x)
        return jnp.einsum("hij,hje->ie", weights, values)
