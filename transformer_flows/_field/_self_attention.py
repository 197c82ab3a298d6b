"""Self-attention dynamics on the sphere: (SA)/(2.3)/(2.7) and the surrogate (USA)."""

import abc

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, PyTree

from .._attention import (
    AbstractAttentionMethod,
    AttentionMask,
    AutoAttention,
    as_alibi,
    as_key_mask,
    as_masses,
    attend,
    attention_weights,
)
from .._custom_types import Particles
from .._validation import as_float_array, check_finite, optional_float_array
from ._base import AbstractSphereField, check_points
from ._layers import layer_index


def as_beta(value) -> Float[Array, ""]:
    """Converter for β: a finite real scalar (a ValueError now when concrete; an
    `eqx.error_if` carried by the returned β when traced, so it fires under jit/vmap).
    β < 0 is allowed: the repulsive softmax (docs/models.md, "β < 0")."""
    beta = as_float_array(value, "beta")
    if beta.ndim != 0:
        raise ValueError(
            f"`beta` must be a scalar, got shape {beta.shape}. For a sweep over β, "
            "`jax.vmap` over a function that builds the field from a scalar β."
        )
    return check_finite(beta, "beta", BETA_FIX)


# The fix named by every error about a non-finite β (converter here, `solve`'s leaf check).
BETA_FIX = (
    "The inverse temperature β must be a finite real number (any sign: β < 0 is the "
    "repulsive softmax); pass e.g. beta=1.0."
)


class AbstractAttentionField(AbstractSphereField):
    """Shared by `SelfAttention` and `UnnormalizedSelfAttention`: weight layout, validation,
    the per-layer lookup, and attention matrices.

    Weight shapes (None means the identity):
    - `Q`, `K`: (k, d), heads (H, k, d); `V`: (d, d), heads (H, d, d).
    - With `layer_duration` set, a leading layer axis L: layer l acts on
      [l·layer_duration, (l+1)·layer_duration), the last layer for all later times.

    Biases (None: zero; with `layer_duration`, a leading layer axis L too):
    - `q_bias`, `k_bias`: (k,), heads (H, k): the scores become β<Q_h x_i + q_h, K_h x_j + k_h>
      (the query and key biases of a real model's attention); each needs its Q or K.
    - `out_bias`: (d,): a constant c added to the attention term, Σ_h Σ_j A^h_ij V_h x_j + c.
      For softmax attention (rows summing to 1) this is a real model's value and output
      biases, c = Σ_h W_O^h b_V^h + b_O.

    Masks (token i is row i of x; see `AttentionMask`): `causal` (query i sees keys j <= i),
    `window=w` (|i - j| < w), `key_mask` (n,) booleans (only the keys j with key_mask[j]:
    the real tokens of a padded sequence, an array leaf that vmaps over a batch), `alibi=λ`
    (score bias -λ|i - j|/n, an array leaf: sweepable and differentiable),
    `length_scaling="log"` (query i uses β·log n_i, n_i the number of keys it sees). Under a
    mask USA divides by n_i instead of n.
    """

    beta: eqx.AbstractVar[Float[Array, ""]]
    Q: eqx.AbstractVar[Array | None]
    K: eqx.AbstractVar[Array | None]
    V: eqx.AbstractVar[Array | None]
    layer_duration: eqx.AbstractVar[float | None]
    attention: eqx.AbstractVar[AbstractAttentionMethod]
    causal: eqx.AbstractVar[bool]
    window: eqx.AbstractVar[int | None]
    alibi: eqx.AbstractVar[Float[Array, ""] | None]
    length_scaling: eqx.AbstractVar[str | None]
    # Optional in subclasses (SinkhornAttention has none): `q_bias`, `k_bias`, `out_bias`,
    # `key_mask`, `masses`, read through `_optional`.

    def __check_init__(self):
        _check_weights(self.Q, self.K, self.V, self.layer_duration)
        _check_biases(self)
        self.mask  # noqa: B018  (builds the mask, whose checks name the bad option)
        if not isinstance(self.attention, AbstractAttentionMethod):
            raise ValueError(
                f"`attention` must be an attention method such as AutoAttention(), "
                f"BlockwiseAttention(block_size=512) or DenseAttention(), got {self.attention!r}."
            )

    @property
    def mask(self) -> AttentionMask:
        """The token-position options as one `AttentionMask`."""
        return AttentionMask(
            self.causal,
            self.window,
            self.alibi,
            self.length_scaling,
            self._optional("key_mask"),
            masses=self._optional("masses"),
        )

    def _optional(self, name: str):
        return getattr(self, name, None)

    @property
    def has_biases(self) -> bool:
        return any(self._optional(b) is not None for b in ("q_bias", "k_bias", "out_bias"))

    @property
    def num_layers(self) -> int | None:
        if self.layer_duration is None:
            return None
        return next(w.shape[0] for w in (self.Q, self.K, self.V) if w is not None)

    @property
    def dim(self) -> int | None:
        """The token dimension d fixed by the weights (None if all are the identity)."""
        return next((w.shape[-1] for w in (self.Q, self.K, self.V) if w is not None), None)

    def jump_times(self) -> Float[Array, " jumps"] | None:
        if self.layer_duration is None or self.num_layers == 1:
            return None
        return self.layer_duration * jnp.arange(1, self.num_layers, dtype=float)

    def weights_at(self, t) -> tuple[Array | None, Array | None, Array | None]:
        """(Q, K, V) acting at time t, each None or with a head axis (H, ., d)."""
        index = layer_index(t, self.layer_duration, self.num_layers)

        def select(w):
            if w is None:
                return None
            if index is not None:
                w = w[index]
            return w if w.ndim == 3 else w[None]

        return select(self.Q), select(self.K), select(self.V)

    def biases_at(self, t) -> tuple[Array | None, Array | None, Array | None]:
        """(q_bias, k_bias, out_bias) acting at time t, the first two with a head axis."""
        index = layer_index(t, self.layer_duration, self.num_layers)

        def select(b, heads: bool):
            if b is None:
                return None
            if index is not None:
                b = b[index]
            return b[None] if heads and b.ndim == 1 else b

        return (
            select(self._optional("q_bias"), True),
            select(self._optional("k_bias"), True),
            select(self._optional("out_bias"), False),
        )

    def check_state(self, x) -> None:
        check_points(x, type(self).__name__)
        if self.dim is not None and x.shape[1] != self.dim:
            raise ValueError(
                f"`x0` has dimension d={x.shape[1]} but the weights Q, K, V act on "
                f"d={self.dim}; pass tokens of shape (n, {self.dim})."
            )
        key_mask = self._optional("key_mask")
        if key_mask is not None and key_mask.shape[0] != x.shape[0]:
            raise ValueError(
                f"`key_mask` has {key_mask.shape[0]} entries but `x0` has "
                f"{x.shape[0]} tokens; give one entry per token (True on the real ones)."
            )
        masses = self._optional("masses")
        if masses is not None and masses.shape[0] != x.shape[0]:
            raise ValueError(
                f"`masses` has {masses.shape[0]} entries but `x0` has {x.shape[0]} tokens; "
                "give one positive mass per token (e.g. jnp.ones(n))."
            )

    def attention_matrix(self, t, x: Particles) -> Float[Array, "heads n n"]:
        """The attention matrices A^h(t) (one per head) at configuration `x`."""
        Q, K, _ = self.weights_at(t)
        q_bias, k_bias, _ = self.biases_at(t)
        normalized, log_shift = self._normalization()
        return attention_weights(
            x,
            self.beta,
            Q,
            K,
            normalized=normalized,
            log_shift=log_shift,
            mask=self.mask,
            q_bias=q_bias,
            k_bias=k_bias,
        )

    def drift(self, t, x: Particles, args: PyTree = None) -> Particles:
        normalized, log_shift = self._normalization()
        q_bias, k_bias, out_bias = self.biases_at(t)
        mixed = attend(
            x,
            self.beta,
            *self.weights_at(t),
            normalized=normalized,
            log_shift=log_shift,
            method=self.attention,
            mask=self.mask,
            q_bias=q_bias,
            k_bias=k_bias,
        )
        return mixed if out_bias is None else mixed + out_bias[None, :]

    @abc.abstractmethod
    def _normalization(self) -> tuple[bool, Float[Array, ""] | float]:
        """(softmax-normalised?, log-shift subtracted from the scores)."""


class SelfAttention(AbstractAttentionField):
    """(SA)/(2.3): ẋ_i = P^⊥_{x_i}( Σ_h Σ_j softmax_j(β<Q_h x_i, K_h x_j>) V_h x_j ).

    **Arguments:**
    - `beta`: inverse temperature β, a finite real scalar (traced values allowed); β < 0 is
      the repulsive softmax.
    - `Q`, `K`, `V`: weights (see `AbstractAttentionField`); None means the identity.
    - `layer_duration`: if set, the weights carry a leading layer axis and are used
      piecewise-constantly in time (Q(t), K(t), V(t) of (2.3)).
    - `attention`: how the sum over tokens is evaluated (`AutoAttention()`: dense for small
      n, blockwise above 2048 tokens; or `DenseAttention()`, `BlockwiseAttention(block)`).
    - `causal`, `window`, `key_mask`, `alibi`, `length_scaling`: masks (see
      `AbstractAttentionField`); causal is ẋ_i = P^⊥_{x_i}(Σ_{j<=i} softmax_j(β<Qx_i, Kx_j>)
      V x_j), Karagodin et al.
    - `q_bias`, `k_bias`, `out_bias`: a real model's biases (see `AbstractAttentionField`).
    - `masses`: (n,) positive token masses (None: all 1); token j counts m_j times.
    """

    beta: Float[Array, ""] = eqx.field(converter=as_beta)
    Q: Array | None = eqx.field(default=None, converter=optional_float_array("Q"))
    K: Array | None = eqx.field(default=None, converter=optional_float_array("K"))
    V: Array | None = eqx.field(default=None, converter=optional_float_array("V"))
    layer_duration: float | None = eqx.field(default=None, static=True, kw_only=True)
    attention: AbstractAttentionMethod = eqx.field(default=AutoAttention(), kw_only=True)
    causal: bool = eqx.field(default=False, static=True, kw_only=True)
    window: int | None = eqx.field(default=None, static=True, kw_only=True)
    alibi: Float[Array, ""] | None = eqx.field(default=None, converter=as_alibi, kw_only=True)
    length_scaling: str | None = eqx.field(default=None, static=True, kw_only=True)
    q_bias: Array | None = eqx.field(
        default=None, converter=optional_float_array("q_bias"), kw_only=True
    )
    k_bias: Array | None = eqx.field(
        default=None, converter=optional_float_array("k_bias"), kw_only=True
    )
    out_bias: Array | None = eqx.field(
        default=None, converter=optional_float_array("out_bias"), kw_only=True
    )
    key_mask: Bool[Array, " n"] | None = eqx.field(
        default=None, converter=as_key_mask, kw_only=True
    )
    masses: Float[Array, " n"] | None = eqx.field(default=None, converter=as_masses, kw_only=True)

    def _normalization(self):
        return True, 0.0


class UnnormalizedSelfAttention(AbstractAttentionField):
    """(USA): ẋ_i = P^⊥_{x_i}( (1/n) Σ_h Σ_j e^{β<Q_h x_i, K_h x_j>} V_h x_j ).

    With Q = K = V = I this is the gradient ascent Ẋ = n ∇E_β(X) of the interaction energy.
    `time_rescaled=True` multiplies the field by e^{-|β|} (time τ = e^{|β|} t): the
    exponentials become e^{β<.,.> - |β|} <= 1 for unit tokens (either sign of β), so large
    |β| stays representable in float32.

    Under a mask (`causal`, `window`) the 1/n becomes 1/n_i, the number of keys query i
    attends to: softmax with its normaliser Z_i replaced by its β = 0 value n_i. With
    `masses` m (n,) the sum is (1/M) Σ_j m_j e^{β<Q_h x_i, K_h x_j>} V_h x_j, M = Σ_j m_j.
    """

    beta: Float[Array, ""] = eqx.field(converter=as_beta)
    Q: Array | None = eqx.field(default=None, converter=optional_float_array("Q"))
    K: Array | None = eqx.field(default=None, converter=optional_float_array("K"))
    V: Array | None = eqx.field(default=None, converter=optional_float_array("V"))
    layer_duration: float | None = eqx.field(default=None, static=True, kw_only=True)
    attention: AbstractAttentionMethod = eqx.field(default=AutoAttention(), kw_only=True)
    causal: bool = eqx.field(default=False, static=True, kw_only=True)
    window: int | None = eqx.field(default=None, static=True, kw_only=True)
    alibi: Float[Array, ""] | None = eqx.field(default=None, converter=as_alibi, kw_only=True)
    length_scaling: str | None = eqx.field(default=None, static=True, kw_only=True)
    q_bias: Array | None = eqx.field(
        default=None, converter=optional_float_array("q_bias"), kw_only=True
    )
    k_bias: Array | None = eqx.field(
        default=None, converter=optional_float_array("k_bias"), kw_only=True
    )
    out_bias: Array | None = eqx.field(
        default=None, converter=optional_float_array("out_bias"), kw_only=True
    )
    key_mask: Bool[Array, " n"] | None = eqx.field(
        default=None, converter=as_key_mask, kw_only=True
    )
    masses: Float[Array, " n"] | None = eqx.field(default=None, converter=as_masses, kw_only=True)
    time_rescaled: bool = eqx.field(default=False, static=True, kw_only=True)

    def __check_init__(self):
        if self.time_rescaled and self.length_scaling is not None:
            raise ValueError(
                "`time_rescaled=True` divides the field by e^{β}, one time change for all "
                "tokens; with `length_scaling` each query has its own β·log n_i, so no single "
                "time change exists. Use time_rescaled=False with length_scaling."
            )

    def _normalization(self):
        return False, (jnp.abs(self.beta) if self.time_rescaled else 0.0)


def _check_biases(field) -> None:
    """Bias shapes against the weights: q_bias/k_bias the shape of Q/K without its last
    axis, out_bias (d,) (with the layer axis when `layer_duration` is set)."""
    layered = field.layer_duration is not None
    for name, weight_name in (("q_bias", "Q"), ("k_bias", "K")):
        bias, weight = getattr(field, name, None), getattr(field, weight_name)
        if bias is None:
            continue
        if weight is None:
            raise ValueError(
                f"`{name}` was given but `{weight_name}` is None (the identity); pass "
                f"`{weight_name}` too (e.g. the identity matrix with a head axis)."
            )
        if bias.shape != weight.shape[:-1]:
            raise ValueError(
                f"`{name}` must have shape {weight.shape[:-1]} (the shape of `{weight_name}` "
                f"{weight.shape} without its last axis), got {bias.shape}."
            )
    out_bias = getattr(field, "out_bias", None)
    if out_bias is not None:
        dim = field.dim
        lead = (field.num_layers,) if layered else ()
        expected = "(L, d)" if layered else "(d,)"
        if out_bias.ndim != len(lead) + 1 or (dim is not None and out_bias.shape != (*lead, dim)):
            raise ValueError(
                f"`out_bias` must have shape {expected}"
                + ("" if dim is None else f" = {(*lead, dim)}")
                + f", got {out_bias.shape}."
            )


def _check_weights(Q, K, V, layer_duration) -> None:
    layered = layer_duration is not None
    if layered and not (isinstance(layer_duration, (int, float)) and layer_duration > 0):
        raise ValueError(f"`layer_duration` must be a positive number, got {layer_duration!r}.")
    given = {name: w for name, w in (("Q", Q), ("K", K), ("V", V)) if w is not None}
    if layered and not given:
        raise ValueError(
            "`layer_duration` was given but Q, K and V are all None (the identity); pass "
            "per-layer weights with a leading layer axis, e.g. Q of shape (L, d, d)."
        )
    base = 3 if layered else 2
    layout = "(L, d, d) or (L, H, d, d)" if layered else "(d, d) or (H, d, d) for H heads"
    for name, w in given.items():
        if w.ndim not in (base, base + 1):
            raise ValueError(
                f"`{name}` must have shape {layout}, got shape {w.shape}."
                + ("" if layered else " For per-layer weights pass `layer_duration=`.")
            )
        if 0 in w.shape:
            raise ValueError(
                f"`{name}` has an empty axis (shape {w.shape}): zero heads, layers or rows make "
                "a zero field. Pass at least one of each, or None for the identity."
            )
    if "V" in given and V.shape[-1] != V.shape[-2]:
        raise ValueError(f"`V` must be square in its last two axes, got shape {V.shape}.")
    if "Q" in given and "K" in given and Q.shape[-2:] != K.shape[-2:]:
        raise ValueError(
            f"`Q` and `K` must have the same (k, d) matrix shape, got {Q.shape} and {K.shape}."
        )
    for name in ("Q", "K"):
        partner = "K" if name == "Q" else "Q"
        if (
            name in given
            and partner not in given
            and given[name].shape[-1] != given[name].shape[-2]
        ):
            raise ValueError(
                f"`{name}` of shape {given[name].shape} is not square, so `{partner}` cannot "
                f"default to the identity; pass `{partner}` of the same shape."
            )
    dims = {name: w.shape[-1] for name, w in given.items()}
    if len(set(dims.values())) > 1:
        raise ValueError(f"Q, K, V must act on the same dimension d, got {dims}.")
    heads = {
        name: (w.shape[1] if layered else w.shape[0]) if w.ndim == base + 1 else None
        for name, w in given.items()
    }
    if len(set(heads.values())) > 1:
        raise ValueError(
            f"Mismatched head counts {heads} (None = no head axis): give every non-identity "
            "weight the same number of heads H, with shape (H, ., d)."
        )
    if layered:
        layers = {name: w.shape[0] for name, w in given.items()}
        if len(set(layers.values())) > 1:
            raise ValueError(f"Mismatched layer counts {layers}: give every weight L layers.")
