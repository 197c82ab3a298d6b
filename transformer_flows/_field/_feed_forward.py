"""The feed-forward field w σ(a x + b) (GLPR (2.2)/(2.8)) and the Transformer block: attention
plus feed-forward summed inside the projection in continuous time, composed (Lie–Trotter) in
the discrete layers."""

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PyTree

from .._custom_types import Particles
from .._validation import as_float_array, check_finite, optional_float_array
from ._base import AbstractSphereField, check_points
from ._layers import check_layer_duration, layer_index, layer_jump_times


def _identity(z):
    return z


# The activations a config may name (the callable itself is accepted from Python).
ACTIVATIONS: dict[str, Callable] = {
    "relu": jax.nn.relu,
    "gelu": jax.nn.gelu,
    "silu": jax.nn.silu,
    "tanh": jnp.tanh,
    "sigmoid": jax.nn.sigmoid,
    "identity": _identity,
}


def _required_array(name: str):
    def convert(value):
        if value is None:
            raise ValueError(f"`{name}` is required (an array), got None.")
        return check_finite(as_float_array(value, name), name)

    return convert


def check_activation(activation) -> None:
    """Refuse an `activation` that is neither a name of `ACTIVATIONS` nor a callable."""
    if isinstance(activation, str):
        if activation not in ACTIVATIONS:
            raise ValueError(
                f"`activation` {activation!r} is not a known activation; choose among "
                f"{sorted(ACTIVATIONS)} or pass a callable."
            )
    elif not callable(activation):
        raise ValueError(
            f"`activation` must be a name among {sorted(ACTIVATIONS)} or a callable, got "
            f"{activation!r}."
        )


def activation_function(activation: str | Callable) -> Callable:
    """σ of an `activation` checked by `check_activation`: the named one, or the callable."""
    return ACTIVATIONS[activation] if isinstance(activation, str) else activation


class AbstractFeedForward(AbstractSphereField):
    """Shared by `FeedForward` and `GatedFeedForward`: token-wise terms whose output weights
    `w` are (d, m) (with `layer_duration`, (L, d, m): layer l acts on
    [l·layer_duration, (l+1)·layer_duration)) and whose hidden units go through σ
    (`activation`)."""

    w: eqx.AbstractVar[Array]
    activation: eqx.AbstractVar[str | Callable]
    layer_duration: eqx.AbstractVar[float | None]

    @property
    def sigma(self) -> Callable:
        """The activation function σ."""
        return activation_function(self.activation)

    @property
    def num_layers(self) -> int | None:
        return None if self.layer_duration is None else self.w.shape[0]

    @property
    def dim(self) -> int:
        """The token dimension d."""
        return self.w.shape[-2]

    def jump_times(self) -> Float[Array, " jumps"] | None:
        return layer_jump_times(self.layer_duration, self.num_layers)

    def check_state(self, x) -> None:
        check_points(x, type(self).__name__)
        if x.shape[1] != self.dim:
            raise ValueError(
                f"`x0` has dimension d={x.shape[1]} but the feed-forward weights act on "
                f"d={self.dim} (w is (d, m) = {self.w.shape[-2:]}); pass tokens of shape "
                f"(n, {self.dim})."
            )


class FeedForward(AbstractFeedForward):
    """The feed-forward term of GLPR (2.8) as a field on (S^{d-1})^n, token by token:
    ẋ_i = P^⊥_{x_i}( w(t) σ(a(t) x_i + b(t)) + c(t) ).

    **Arguments:**
    - `w`: (d, m) output weights; `a`: (m, d) input weights; `b`: (m,) bias, or None (zero).
      m is the hidden width (GLPR take m = d; practitioners' MLPs use m = 4d). With
      `layer_duration` set, each carries a leading layer axis L: w (L, d, m), a (L, m, d),
      b (L, m), layer l acting on [l·layer_duration, (l+1)·layer_duration) (as `SelfAttention`).
    - `out_bias`: c, (d,) (or (L, d)), the output bias of a real model's feed-forward, or None
      (GLPR's term has none).
    - `activation`: σ, applied componentwise: a name among `ACTIVATIONS` ("relu", "gelu",
      "silu", "tanh", "sigmoid", "identity"; a name keeps configs and saved models
      serialisable) or any callable R^m → R^m (static: a new callable recompiles).
    - `layer_duration`: see above; None for weights constant in time.

    Tokens do not interact through this term: each follows its own ODE on the sphere.
    """

    w: Array = eqx.field(converter=_required_array("w"))
    a: Array = eqx.field(converter=_required_array("a"))
    b: Array | None = eqx.field(default=None, converter=optional_float_array("b"))
    activation: str | Callable = eqx.field(default="relu", static=True, kw_only=True)
    layer_duration: float | None = eqx.field(default=None, static=True, kw_only=True)
    out_bias: Array | None = eqx.field(
        default=None, converter=optional_float_array("out_bias"), kw_only=True
    )

    def __check_init__(self):
        check_activation(self.activation)
        _check_feed_forward_weights(self.w, self.a, self.b, self.layer_duration)
        if self.out_bias is not None:
            expected = self.w.shape[:-1]
            if self.out_bias.shape != expected:
                raise ValueError(
                    f"`out_bias` must have shape {expected} (one entry per output coordinate"
                    f"{', per layer' if self.layer_duration is not None else ''}), got "
                    f"{self.out_bias.shape}."
                )

    @property
    def width(self) -> int:
        """The hidden width m."""
        return self.w.shape[-1]

    def weights_at(self, t) -> tuple[Array, Array, Array | None]:
        """(w, a, b) acting at time t."""
        index = layer_index(t, self.layer_duration, self.num_layers)
        if index is None:
            return self.w, self.a, self.b
        return self.w[index], self.a[index], None if self.b is None else self.b[index]

    def out_bias_at(self, t) -> Array | None:
        """c acting at time t (None: zero)."""
        index = layer_index(t, self.layer_duration, self.num_layers)
        if index is None or self.out_bias is None:
            return self.out_bias
        return self.out_bias[index]

    def drift(self, t, x: Particles, args: PyTree = None) -> Particles:
        w, a, b = self.weights_at(t)
        pre = x @ a.T  # (n, m)
        if b is not None:
            pre = pre + b[None, :]
        out = self.sigma(pre) @ w.T
        c = self.out_bias_at(t)
        return out if c is None else out + c[None, :]


class TransformerBlock(AbstractSphereField):
    """Attention plus feed-forward, GLPR (2.8): ẋ_i = P^⊥_{x_i}(A_i(x) + F(x_i)), with A the
    attention term and F the feed-forward term, **summed inside the projection** (`drift` is
    the sum of the parts' drifts).

    The discrete layer (`residual_layer`, stepped by `ResidualLayers`) is the **Lie–Trotter
    composition** practical Transformers use: the attention part's layer, then the
    feed-forward part's layer on its output, each the Post-LN x ← LN(x + h·drift(x)):
        y = LN(x + h A(x)),   x' = LN(y + h F(y)).
    Its h → 0 limit is the summed field, at first order in h. (`NormalizedEuler` instead
    steps the summed drift in one Post-LN step: the same limit, also first order.)

    **Arguments:**
    - `attention`: a sphere field (`SelfAttention`, `UnnormalizedSelfAttention`, ...).
    - `feed_forward`: a sphere field (`FeedForward`, or any other).

    Both may carry per-layer weights; when both do, their layers must coincide (same
    `layer_duration` and number of layers), as in a Transformer whose layer l holds both.
    """

    attention: AbstractSphereField
    feed_forward: AbstractSphereField

    def __check_init__(self):
        for name in ("attention", "feed_forward"):
            part = getattr(self, name)
            if not isinstance(part, AbstractSphereField):
                raise ValueError(
                    f"`{name}` must be a sphere field (e.g. SelfAttention, FeedForward), got "
                    f"{type(part).__name__}. A fit model such as LowRankAttention becomes its "
                    "field with `tf.as_field(model)`."
                )
        dims = {
            name: getattr(part, "dim", None)
            for name, part in (("attention", self.attention), ("feed_forward", self.feed_forward))
        }
        if None not in dims.values() and len(set(dims.values())) > 1:
            raise ValueError(
                f"`attention` and `feed_forward` act on different token dimensions {dims}; "
                "give both weights for the same d."
            )
        layers = {
            name: (getattr(part, "layer_duration", None), getattr(part, "num_layers", None))
            for name, part in (("attention", self.attention), ("feed_forward", self.feed_forward))
        }
        if all(duration is not None for duration, _ in layers.values()) and (
            len(set(layers.values())) > 1
        ):
            shown = {k: f"{n} layers of duration {d}" for k, (d, n) in layers.items()}
            raise ValueError(
                f"Mismatched layers {shown}: in a block layer l holds both parts, so give "
                "`attention` and `feed_forward` the same number of layers and the same "
                "`layer_duration` (or give one of them no layer axis, constant in time)."
            )

    @property
    def dim(self) -> int | None:
        """The token dimension d fixed by the weights (None if neither part fixes it)."""
        for part in (self.attention, self.feed_forward):
            d = getattr(part, "dim", None)
            if d is not None:
                return d
        return None

    @property
    def beta(self):
        """β of the attention part (an AttributeError if it has none)."""
        return self.attention.beta

    def jump_times(self) -> Float[Array, " jumps"] | None:
        # Both layered means the same layers (checked at construction).
        jumps = self.attention.jump_times()
        return self.feed_forward.jump_times() if jumps is None else jumps

    def check_state(self, x) -> None:
        self.attention.check_state(x)
        self.feed_forward.check_state(x)

    def drift(self, t, x: Particles, args: PyTree = None) -> Particles:
        return self.attention.drift(t, x, args) + self.feed_forward.drift(t, x, args)

    def residual_layer(self, t, x: Particles, h, args: PyTree = None) -> Particles:
        y = self.attention.residual_layer(t, x, h, args)
        return self.feed_forward.residual_layer(t, y, h, args)


def _check_feed_forward_weights(w, a, b, layer_duration) -> None:
    check_layer_duration(layer_duration)
    layered = layer_duration is not None
    lead = "L, " if layered else ""
    base = 3 if layered else 2
    expected = {"w": f"({lead}d, m)", "a": f"({lead}m, d)", "b": f"({lead}m,)"}
    given = {"w": w, "a": a} | ({} if b is None else {"b": b})
    for name, array in given.items():
        ndim = base - 1 if name == "b" else base
        if array.ndim != ndim:
            hint = (
                " For per-layer weights pass `layer_duration=`."
                if not layered and array.ndim == ndim + 1
                else ""
            )
            raise ValueError(
                f"`{name}` must have shape {expected[name]}, got shape {array.shape}.{hint}"
            )
        if 0 in array.shape:
            raise ValueError(
                f"`{name}` has an empty axis (shape {array.shape}): give the width m, the "
                "dimension d and the number of layers L each >= 1."
            )
    if w.shape[-1] != a.shape[-2] or w.shape[-2] != a.shape[-1]:
        raise ValueError(
            f"`w` {w.shape} and `a` {a.shape} do not fit: w must be {expected['w']} and a "
            f"{expected['a']} with the same d and hidden width m (w = aᵀ-shaped)."
        )
    if b is not None and b.shape[-1] != a.shape[-2]:
        raise ValueError(
            f"`b` {b.shape} must have one entry per hidden unit, m = {a.shape[-2]} (the rows "
            f"of `a` {a.shape})."
        )
    if layered:
        counts = {name: array.shape[0] for name, array in given.items()}
        if len(set(counts.values())) > 1:
            raise ValueError(f"Mismatched layer counts {counts}: give w, a and b the same L.")
