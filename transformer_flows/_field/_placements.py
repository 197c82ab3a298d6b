"""Normalisation placements: where the layer norm sits in the residual layer, and the ODE each
placement becomes as the step h → 0 (Karagodin, Ge, Polyanskiy, Rigollet, arXiv:2510.22026;
docs/models.md "Normalisation placements").

Every placement wraps a sphere field `field` (e.g. `SelfAttention` with heads, layers) and reads
its attention term before projection, A(θ) = `field.drift(t, θ, args)`, at the directions
θ_i = x_i/|x_i| of the states x_i = r_i θ_i. LN is modelled as x ↦ x/|x| (RMSNorm without its
gain; LayerNorm's centring and affine parameters are dropped). Post-LN is the wrapped field
itself (`SelfAttention`: x ← LN(x + h·Attn(x)), ẋ = P_x A(x)), so it has no wrapper.

| placement | discrete layer (`residual_layer`, step h) | h → 0 limit |
|---|---|---|
| `PreLN` | x ← x + h·A(LN x) | ẋ_i = A_i(θ) |
| `PeriLN` | x ← x + h·LN(A(LN x)) | ẋ_i = A_i(θ)/|A_i(θ)| |
| `NGPT` | x ← Norm(x + αh·(Norm(A(x)) − x)) | ẋ_i = α P_{x_i}(A_i/|A_i|), on the sphere |
| `MixLN` | Post-LN for t < k·τ, Pre-LN after | the matching limit on each side |
| `NoNorm` | x ← x + h·A(x) | ẋ_i = A_i(x) on R^d (GLPR (9.1)); `rescaled`: z = e^{−tV}x (9.3) |
"""

import equinox as eqx
import jax.numpy as jnp
import jax.scipy.linalg
import numpy as np
from jaxtyping import Array, Float, PyTree

from .._custom_types import Particles
from .._sphere import normalize, project_tangent
from .._validation import as_float_array, check_positive, is_concrete
from ._base import AbstractEuclideanField, AbstractSphereField
from ._layer_norm import LayerNorm, merged_jump_times


def _check_wrapped(field, placement: str) -> None:
    if not isinstance(field, AbstractSphereField):
        raise ValueError(
            f"`{placement}(field)` wraps a sphere field whose `drift` is the attention term "
            f"A(θ), e.g. {placement}(SelfAttention(beta=1.0)); got {type(field).__name__}. "
            "Placements do not nest: wrap the attention field itself."
        )


def _refuse_zero_rows(x, placement: str) -> None:
    """A concrete start with a zero token has no direction θ = x/|x|: refuse it now (traced
    states are checked by `directions` when the field is evaluated)."""
    if is_concrete(x):
        norms = np.linalg.norm(np.asarray(x), axis=-1)
        zero = np.flatnonzero(norms == 0)
        if zero.size:
            raise ValueError(
                f"`x0` has zero-norm tokens (rows {zero[:8].tolist()}); {placement} reads the "
                "attention at the directions x_i/|x_i|, undefined at 0. Start from nonzero "
                "tokens, e.g. `transformer_flows.sample_sphere(key, n, d)`."
            )


def directions(x: Particles, placement: str = "this placement") -> Particles:
    """θ_i = x_i/|x_i|; a zero row (θ undefined) raises under jit via `eqx.error_if`."""
    norms = jnp.linalg.norm(x, axis=-1)
    x = eqx.error_if(
        x,
        jnp.any(norms == 0),
        f"a token reached |x_i| = 0, where {placement} has no direction x_i/|x_i|; "
        "start from nonzero tokens (or stop the solve before the radius vanishes).",
    )
    return normalize(x)


def unit_or_zero(a: Particles) -> Particles:
    """a_i/|a_i| row by row, and 0 where a_i = 0 (gradients stay finite there)."""
    nonzero = jnp.any(a != 0, axis=-1, keepdims=True)
    safe = jnp.where(nonzero, a, 1)
    return jnp.where(nonzero, safe / jnp.linalg.norm(safe, axis=-1, keepdims=True), 0)


class PreLN(AbstractEuclideanField):
    """Pre-LN (GPT-2, LLaMA): x ← x + h·Attn(LN(x)), state in R^d. Limit ẋ_i = A_i(θ), so
    ṙ_i = <θ_i, A_i> and θ̇_i = r_i^{-1} P^⊥_{θ_i} A_i. Solve with `solve(PreLN(field), x0, ts)`
    (x0 of shape (n, d), no zero rows) or, layer by layer, `solver=ResidualLayers(), dt0=h`.

    `norm`: None (LN x = x/|x|, the directions θ) or a general `LayerNorm` (centring, γ, β,
    ε; per-layer with `layer_duration`): then x ← x + h·Attn(LN x) with the attention read at
    LN(x) = γ ⊙ N(x) + β itself, in the units of a real model (norm ≈ √d), and the limit is
    ẋ_i = A_i(LN x). A real Pre-LN layer (GPT-2) is exactly this with its own weights; its γ
    and β can also be folded into the attention weights and biases (docs/pretrained.md).
    """

    field: AbstractSphereField
    norm: LayerNorm | None = None

    def __check_init__(self):
        _check_wrapped(self.field, "PreLN")
        if self.norm is not None and not isinstance(self.norm, LayerNorm):
            raise ValueError(
                f"`norm` must be None (x/|x|) or a LayerNorm(gain, shift, eps, centre), got "
                f"{self.norm!r}."
            )

    def _read(self, t, x: Particles) -> Particles:
        if self.norm is None:
            return directions(x, "PreLN")
        return self.norm(t, x)

    def __call__(self, t, x: Particles, args: PyTree = None) -> Particles:
        return self.field.drift(t, self._read(t, x), args)

    def residual_layer(self, t, x: Particles, h, args: PyTree = None) -> Particles:
        return x + h * self.field.drift(t, self._read(t, x), args)

    def jump_times(self) -> Float[Array, " jumps"] | None:
        if self.norm is None:
            return self.field.jump_times()
        return merged_jump_times(self.field, self.norm)

    def check_state(self, x) -> None:
        self.field.check_state(x)
        if self.norm is not None:
            self.norm.check_state(x)
        if self.norm is None or self.norm.eps == 0:
            _refuse_zero_rows(x, "PreLN")


class PeriLN(AbstractEuclideanField):
    """Peri-LN (Gemma 2/3): x ← x + h·LN(Attn(LN(x))). Limit ẋ_i = A_i(θ)/|A_i(θ)| (0 where
    A_i = 0): every token moves at unit speed, ṙ_i = <θ_i, A_i>/|A_i|, θ̇_i = (r_i|A_i|)^{-1}
    P^⊥_{θ_i} A_i."""

    field: AbstractSphereField

    def __check_init__(self):
        _check_wrapped(self.field, "PeriLN")

    def __call__(self, t, x: Particles, args: PyTree = None) -> Particles:
        return unit_or_zero(self.field.drift(t, directions(x, "PeriLN"), args))

    def residual_layer(self, t, x: Particles, h, args: PyTree = None) -> Particles:
        return x + h * self(t, x, args)

    def jump_times(self) -> Float[Array, " jumps"] | None:
        return self.field.jump_times()

    def check_state(self, x) -> None:
        self.field.check_state(x)
        _refuse_zero_rows(x, "PeriLN")


def _as_alpha(value) -> Float[Array, ""]:
    alpha = as_float_array(value, "alpha")
    if alpha.ndim != 0:
        raise ValueError(
            f"`alpha` must be a scalar step weight (nGPT's eigen learning rate, shared by all "
            f"coordinates here), got shape {alpha.shape}."
        )
    return check_positive(alpha, "alpha")


class NGPT(AbstractSphereField):
    """nGPT (Loshchilov et al. 2024): x ← Norm(x + α(Norm(A(x)) − x)), states on the sphere.
    With the solver step folded in, one layer of step h interpolates with weight αh:
    x ← Norm(x + αh(Â − x)), Â = A/|A|. As h → 0 (P^⊥_x x = 0):

        ẋ_i = α P^⊥_{x_i}(A_i(x)/|A_i(x)|),

    a sphere field with drift α·Â (so `solve` renormalises as for SA), i.e. s_i = |A_i|/α in
    θ̇_i = s_i^{-1} P^⊥ A_i. `alpha` > 0 is a scalar (nGPT learns a vector of per-coordinate
    rates; with a vector the −x term would not vanish under P^⊥ and is not modelled here).
    """

    field: AbstractSphereField
    alpha: Float[Array, ""] = eqx.field(default=1.0, converter=_as_alpha)

    def __check_init__(self):
        _check_wrapped(self.field, "NGPT")

    def drift(self, t, x: Particles, args: PyTree = None) -> Particles:
        return self.alpha * unit_or_zero(self.field.drift(t, x, args))

    def residual_layer(self, t, x: Particles, h, args: PyTree = None) -> Particles:
        target = unit_or_zero(self.field.drift(t, x, args))
        return normalize(x + (self.alpha * h) * (target - x))

    def jump_times(self) -> Float[Array, " jumps"] | None:
        return self.field.jump_times()

    def check_state(self, x) -> None:
        self.field.check_state(x)


def _duration(field, layer_duration) -> float:
    if layer_duration is None:
        layer_duration = getattr(field, "layer_duration", None)
    if layer_duration is None:
        raise ValueError(
            "`MixLN` switches from Post-LN to Pre-LN after `post_ln_layers` layers of duration "
            "τ: give the field per-layer weights (`layer_duration=`) or pass "
            "`MixLN(field, post_ln_layers=k, layer_duration=τ)`."
        )
    if isinstance(layer_duration, bool) or not (
        isinstance(layer_duration, (int, float)) and np.isfinite(layer_duration)
    ):
        raise ValueError(f"`layer_duration` must be a positive number, got {layer_duration!r}.")
    if layer_duration <= 0:
        raise ValueError(f"`layer_duration` must be a positive number, got {layer_duration!r}.")
    return float(layer_duration)


class MixLN(AbstractEuclideanField):
    """Mix-LN (Li et al. 2024, arXiv:2412.13795): Post-LN layers x ← LN(x + h·Attn(x)) for
    t < k·τ (k = `post_ln_layers`, τ the layer duration), Pre-LN layers x ← x + h·Attn(LN x)
    afterwards; state in R^d. Limit: ẋ_i = r_i P^⊥_{θ_i} A_i(θ) (θ follows SA, r frozen) before
    the switch, ẋ_i = A_i(θ) after; t = k·τ is a jump time. Start on the unit sphere (as a
    Post-LN output is): the discrete Post-LN layer resets r to 1 at its first step, the
    continuous limit keeps r(0).

    `layer_duration`: default the field's own (per-layer weights); 0 <= k <= L for L layers.
    """

    field: AbstractSphereField
    post_ln_layers: int = eqx.field(static=True)
    layer_duration: float | None = eqx.field(default=None, static=True, kw_only=True)

    def __check_init__(self):
        _check_wrapped(self.field, "MixLN")
        k = self.post_ln_layers
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0:
            raise ValueError(f"`post_ln_layers` must be an integer >= 0, got {k!r}.")
        _duration(self.field, self.layer_duration)
        layers = getattr(self.field, "num_layers", None)
        if self.layer_duration is None and layers is not None and k > layers:
            raise ValueError(
                f"`post_ln_layers`={k} exceeds the field's {layers} layers; choose "
                f"0 <= post_ln_layers <= {layers} (0: all Pre-LN, {layers}: all Post-LN)."
            )

    @property
    def switch_time(self) -> float:
        return self.post_ln_layers * _duration(self.field, self.layer_duration)

    def _post(self, t):
        return jnp.asarray(t) < self.switch_time

    def __call__(self, t, x: Particles, args: PyTree = None) -> Particles:
        theta = directions(x, "MixLN")
        a = self.field.drift(t, theta, args)
        radius = jnp.linalg.norm(x, axis=-1, keepdims=True)
        return jnp.where(self._post(t), radius * project_tangent(theta, a), a)

    def residual_layer(self, t, x: Particles, h, args: PyTree = None) -> Particles:
        post = normalize(x + h * self.field.drift(t, x, args))
        pre = x + h * self.field.drift(t, directions(x, "MixLN"), args)
        return jnp.where(self._post(t), post, pre)

    def jump_times(self) -> Float[Array, " jumps"] | None:
        jumps = self.field.jump_times()
        switch = self.switch_time
        if switch == 0:
            return jumps
        if jumps is None:
            return jnp.asarray([switch], dtype=float)
        own = self.layer_duration is None and 0 < self.post_ln_layers < (
            getattr(self.field, "num_layers", None) or 0
        )
        if own:  # the switch is a layer boundary already
            return jumps
        return jnp.sort(jnp.concatenate([jumps, jnp.asarray([switch], dtype=jumps.dtype)]))

    def check_state(self, x) -> None:
        self.field.check_state(x)
        _refuse_zero_rows(x, "MixLN")


class NoNorm(AbstractEuclideanField):
    """No normalisation at all (GLPR arXiv:2312.10794 §9, eq. (9.1); Geshkovski, Letrouit,
    Polyanskiy, Rigollet 2024): ẋ_i = A_i(x) = Σ_j softmax_j(β<Qx_i, Kx_j>) V x_j on R^d,
    the attention read at the raw states; discrete layer x ← x + h·A(x).

    `rescaled=True` integrates z = e^{−tV} x instead (9.2)–(9.3):
    ż_i = e^{−tV}(A_i(e^{tV}z) − V e^{tV} z_i) = Σ_j A_ij V(z_j − z_i) (softmax rows sum to 1),
    with the same attention coefficients A_ij as the raw flow; its discrete layer is the raw
    layer seen through z. Needs one constant V: an attention field without heads or layers.
    """

    field: AbstractSphereField
    rescaled: bool = eqx.field(default=False, static=True, kw_only=True)

    def __check_init__(self):
        _check_wrapped(self.field, "NoNorm")
        if self.rescaled:
            from ._self_attention import AbstractAttentionField

            field = self.field
            if not isinstance(field, AbstractAttentionField):
                raise ValueError(
                    "`NoNorm(field, rescaled=True)` needs the value matrix V of an attention "
                    f"field (SelfAttention, UnnormalizedSelfAttention), got {type(field).__name__}."
                )
            if field.layer_duration is not None or (field.V is not None and field.V.ndim != 2):
                raise ValueError(
                    "`NoNorm(field, rescaled=True)` rescales by e^{-tV} with one constant V: "
                    "use a field without heads and without per-layer weights, or "
                    "rescaled=False."
                )

    def _value(self, x) -> Float[Array, "d d"]:
        V = self.field.V
        return jnp.eye(x.shape[-1], dtype=x.dtype) if V is None else V.astype(x.dtype)

    def _expm(self, t, x):
        return jax.scipy.linalg.expm(jnp.asarray(t, x.dtype) * self._value(x))

    def raw_states(self, t, z: Particles) -> Particles:
        """x = e^{tV} z (rescaled form only)."""
        return z @ self._expm(t, z).T

    def rescale(self, t, x: Particles) -> Particles:
        """z = e^{−tV} x (rescaled form only)."""
        return x @ self._expm(-jnp.asarray(t, x.dtype), x).T

    def __call__(self, t, x: Particles, args: PyTree = None) -> Particles:
        if not self.rescaled:
            return self.field.drift(t, x, args)
        raw = self.raw_states(t, x)
        velocity = self.field.drift(t, raw, args) - raw @ self._value(x).T
        return self.rescale(t, velocity)

    def residual_layer(self, t, x: Particles, h, args: PyTree = None) -> Particles:
        if not self.rescaled:
            return x + h * self.field.drift(t, x, args)
        raw = self.raw_states(t, x)
        return self.rescale(t + h, raw + h * self.field.drift(t, raw, args))

    def jump_times(self) -> Float[Array, " jumps"] | None:
        return self.field.jump_times()

    def check_state(self, x) -> None:
        self.field.check_state(x)
