"""A general LayerNorm (centring, gain γ, shift β, ε) and the Post-LN layer of a real model built
on it (docs/models.md, "LayerNorm and the Post-LN layer of a real model").

`LayerNorm` is the normalisation of practical Transformers, LN(x) = γ ⊙ N(x) + β with
N(x) = (x − mean x)/√(var x + ε) (or RMSNorm's x/√(mean x² + ε), `centre=False`), over the D
coordinates of each token. `PreLN(field, norm=LayerNorm(...))` reads the attention at LN(x);
`PostLN(field, norm)` is the Post-LN layer x ← LN(x + Attn x) written as a sphere field.

Why the Post-LN layer needs its own state: LN is not idempotent when γ ≠ 1 or β ≠ 0
(LN(LN(z)) ≠ LN(z)), so x ← LN(x + h·A(x)) does not tend to the identity as h → 0 and has no
continuous limit in the units of the hidden states. Splitting LN = G ∘ N into its normalisation
N and its affine part G(u) = γ ⊙ u + β, the real sublayer is N ∘ (I + A) ∘ G on the normalised
state u = N(z), and in u it is a residual step of the same kind as GLPR's:

    u' = N(u + h·a(u)),   a(u) = (G(u) − u) + A(G(u)),

exact at h = 1 and the identity at h = 0. The skip path's gain and shift, G(u) − u =
(γ − 1) ⊙ u + β, become a linear and a constant term of the drift.
"""

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PyTree

from .._custom_types import Particles
from .._validation import optional_float_array
from ._base import AbstractSphereField
from ._layers import check_layer_duration, layer_index, layer_jump_times


def _check_eps(eps) -> None:
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not np.isfinite(eps):
        raise ValueError(f"`eps` must be a finite number >= 0, got {eps!r}.")
    if eps < 0:
        raise ValueError(f"`eps` must be >= 0, got {eps!r}.")


class LayerNorm(eqx.Module):
    """LN(x) = γ ⊙ (x − mean x)/√(var x + ε) + β over the last axis (the biased variance, as
    PyTorch's LayerNorm), or with `centre=False` RMSNorm's γ ⊙ x/√(mean x² + ε) + β.

    **Arguments:**
    - `gain` γ, `shift` β: (D,), or (L, D) with `layer_duration` (layer l on
      [l·τ, (l+1)·τ), the last for all later times); None for 1 and 0.
    - `eps`: ε >= 0 (a static float).
    - `centre`: subtract the mean over the D coordinates (LayerNorm) or not (RMSNorm).

    `normalize(x)` is N(x) (no γ, β), `affine(t, u)` is γ(t) ⊙ u + β(t), and `norm(t, x)` is
    LN(x) = affine(t, normalize(x)). With γ = 1, β = 0, ε = 0 and a centred x,
    LN(x) = √D·x/|x|: the normalisation GLPR model.
    """

    gain: Array | None = eqx.field(default=None, converter=optional_float_array("gain"))
    shift: Array | None = eqx.field(default=None, converter=optional_float_array("shift"))
    eps: float = eqx.field(default=0.0, static=True)
    centre: bool = eqx.field(default=True, static=True)
    layer_duration: float | None = eqx.field(default=None, static=True, kw_only=True)

    def __check_init__(self):
        _check_eps(self.eps)
        if not isinstance(self.centre, bool):
            raise ValueError(f"`centre` must be True or False, got {self.centre!r}.")
        check_layer_duration(self.layer_duration)
        layered = self.layer_duration is not None
        given = {n: w for n, w in (("gain", self.gain), ("shift", self.shift)) if w is not None}
        for name, w in given.items():
            if w.ndim != (2 if layered else 1) or 0 in w.shape:
                raise ValueError(
                    f"`{name}` must have shape {'(L, D)' if layered else '(D,)'}, got shape "
                    f"{w.shape}."
                    + (" For per-layer gains pass `layer_duration=`." if w.ndim == 2 else "")
                )
        if layered and not given:
            raise ValueError(
                "`layer_duration` was given but `gain` and `shift` are None; pass per-layer "
                "gains or shifts of shape (L, D), or no `layer_duration`."
            )
        if len({w.shape for w in given.values()}) > 1:
            shapes = {name: w.shape for name, w in given.items()}
            raise ValueError(f"`gain` and `shift` must have the same shape, got {shapes}.")

    @property
    def num_layers(self) -> int | None:
        if self.layer_duration is None:
            return None
        return next(w.shape[0] for w in (self.gain, self.shift) if w is not None)

    @property
    def dim(self) -> int | None:
        return next((w.shape[-1] for w in (self.gain, self.shift) if w is not None), None)

    def jump_times(self) -> Float[Array, " jumps"] | None:
        return layer_jump_times(self.layer_duration, self.num_layers)

    def normalize(self, x: Float[Array, "*batch D"]) -> Float[Array, "*batch D"]:
        """N(x) = (x − mean x)/√(var x + ε) (RMSNorm: x/√(mean x² + ε)); 0 at x = 0 when
        ε = 0 (NaN-safe)."""
        if self.centre:
            x = x - jnp.mean(x, axis=-1, keepdims=True)
        square = jnp.mean(x * x, axis=-1, keepdims=True) + self.eps
        positive = square > 0
        return jnp.where(positive, x / jnp.sqrt(jnp.where(positive, square, 1)), 0)

    def affine(self, t, u: Float[Array, "n D"]) -> Float[Array, "n D"]:
        """γ(t) ⊙ u + β(t)."""
        index = layer_index(t, self.layer_duration, self.num_layers)

        def at(w):
            return w if index is None else w[index]

        if self.gain is not None:
            u = u * at(self.gain)[None, :]
        if self.shift is not None:
            u = u + at(self.shift)[None, :]
        return u

    def __call__(self, t, x: Float[Array, "n D"]) -> Float[Array, "n D"]:
        return self.affine(t, self.normalize(x))

    def check_state(self, x) -> None:
        if self.dim is not None and x.shape[-1] != self.dim:
            raise ValueError(
                f"`x0` has dimension d={x.shape[-1]} but the LayerNorm's gain and shift have "
                f"D={self.dim}; pass tokens of shape (n, {self.dim})."
            )


_UNKNOWN = object()


def _static_jumps(part):
    """The layer boundaries of `part` (numpy, or None for none) from its static layer layout,
    or `_UNKNOWN` when it has jumps that are not known statically. Wrappers (`field`, `norm`,
    `parts`, `attention`/`feed_forward`) are looked through."""
    if hasattr(part, "layer_duration"):  # a field or LayerNorm with its own layer axis
        duration, count = part.layer_duration, getattr(part, "num_layers", None)
        if duration is None:
            return None if part.jump_times() is None else _UNKNOWN
        if count is None:
            return _UNKNOWN
        return None if count == 1 else duration * np.arange(1, count, dtype=float)
    inner = [getattr(part, name, None) for name in ("field", "norm", "attention", "feed_forward")]
    inner += list(getattr(part, "parts", ()) or ())
    inner = [p for p in inner if hasattr(p, "jump_times")]
    if not inner:
        return None if part.jump_times() is None else _UNKNOWN
    found = [_static_jumps(p) for p in inner]
    if any(f is _UNKNOWN for f in found):
        return _UNKNOWN
    found = [f for f in found if f is not None]
    return np.unique(np.concatenate(found)) if found else None


def merged_jump_times(*parts) -> Float[Array, " jumps"] | None:
    """The union of the jump times of `parts` (fields or `LayerNorm`s), sorted, each once
    where the layer layouts are static (concatenated and sorted otherwise)."""
    jumps = [part.jump_times() for part in parts]
    present = [(part, j) for part, j in zip(parts, jumps, strict=True) if j is not None]
    if not present:
        return None
    if len(present) == 1:
        return present[0][1]
    static = [_static_jumps(part) for part, _ in present]
    if all(s is not _UNKNOWN and s is not None for s in static):
        return jnp.asarray(np.unique(np.concatenate(static)), dtype=float)
    return jnp.sort(jnp.concatenate([j for _, j in present]))


class PostLN(AbstractSphereField):
    """The Post-LN sublayer of a real model, x ← LN(x + A(x)), with a general `LayerNorm`, as a
    field on the unit sphere: its step of size h,

        θ ← N(√D·θ + h·[(G(√D θ) − √D θ) + A(G(√D θ))]) / √D,

    is the real sublayer at h = 1 (with ε), where θ = u/√D is the normalised state N(z)/√D,
    G(u) = γ ⊙ u + β is the affine part of the LayerNorm *through which the state is read*
    (the one that closed the previous sublayer; `norm`'s gain and shift) and N its
    normalisation (`norm`'s ε and centring). The real hidden state is G(√D θ). As h → 0 the
    steps converge to the flow θ̇ = P^⊥_θ drift(θ), drift = C[(G(√Dθ) − √Dθ) + A(G(√Dθ))]/√D
    with C the centring (`norm.centre`): the state stays in the centred unit sphere (ε, of
    relative size ε/|θ|² per step, is kept by the steps and dropped by the flow).

    **Arguments:**
    - `field`: a sphere field whose `drift` is the branch A, evaluated **in the units of the
      hidden states** (the read G(√D θ), of norm ≈ √D): e.g. `SelfAttention` with a real
      model's W_Q, W_K, biases and V_h = W_O^h W_V^h, β = 1/√k.
    - `norm`: the `LayerNorm` (γ, β of the read; ε and centring of the closing normalisation;
      per-layer γ, β with `layer_duration`).

    With γ = 1, β = 0, ε = 0 and `centre=False` this is GLPR's Post-LN layer
    θ ← normalize(θ + h·A(√Dθ)/√D) (`TransformerBlock` of the mapped fields).
    """

    field: AbstractSphereField
    norm: LayerNorm

    def __check_init__(self):
        if not isinstance(self.field, AbstractSphereField):
            raise ValueError(
                "`PostLN(field, norm)` wraps a sphere field whose `drift` is the branch, e.g. "
                f"PostLN(SelfAttention(...), LayerNorm(...)); got {type(self.field).__name__}."
            )
        if not isinstance(self.norm, LayerNorm):
            raise ValueError(
                f"`norm` must be a LayerNorm(gain, shift, eps, centre), got {self.norm!r}."
            )

    @property
    def dim(self) -> int | None:
        return getattr(self.field, "dim", None) or self.norm.dim

    def read(self, t, x: Particles) -> Particles:
        """G(√D θ): the state in the units of the hidden states."""
        return self.norm.affine(t, jnp.sqrt(jnp.asarray(x.shape[-1], x.dtype)) * x)

    def _increment(self, t, x: Particles, args) -> Particles:
        """(G(√Dθ) − √Dθ) + A(G(√Dθ)), in the units of the hidden states."""
        scale = jnp.sqrt(jnp.asarray(x.shape[-1], x.dtype))
        read = self.read(t, x)
        return (read - scale * x) + self.field.drift(t, read, args)

    def drift(self, t, x: Particles, args: PyTree = None) -> Particles:
        scale = jnp.sqrt(jnp.asarray(x.shape[-1], x.dtype))
        a = self._increment(t, x, args) / scale
        if self.norm.centre:
            a = a - jnp.mean(a, axis=-1, keepdims=True)
        return a

    def residual_layer(self, t, x: Particles, h, args: PyTree = None) -> Particles:
        scale = jnp.sqrt(jnp.asarray(x.shape[-1], x.dtype))
        return self.norm.normalize(scale * x + h * self._increment(t, x, args)) / scale

    def jump_times(self) -> Float[Array, " jumps"] | None:
        return merged_jump_times(self.field, self.norm)

    def check_state(self, x) -> None:
        self.field.check_state(x)
        self.norm.check_state(x)
