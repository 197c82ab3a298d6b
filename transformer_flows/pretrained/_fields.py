"""The map of a checkpoint onto our fields (docs/pretrained.md, "The mapping").

LayerNorm is modelled as x ↦ r·x/|x| with r = √D: what LayerNorm does to a centred vector
when its gain is 1, its shift 0 and ε = 0. Our sphere states θ are the real states divided by
r, and the real scale is folded into the weights, so that β = 1/√k (k = D/H) as in the models:

- Post-LN (BERT, ALBERT): the real layer LN(x + Attn x) with x = rθ is r·normalize(θ +
  Σ_h Σ_j softmax_j(β<Q_h θ_i, K_h θ_j>) V_h θ_j) with Q_h = r W_Q^h, K_h = r W_K^h and
  V_h = W_O^h W_V^h (the output projection folded into V); the feed-forward LN(y + FF y) is
  r·normalize(θ + w σ(aθ + b)) with a = r W1, b = b1, w = W2/r.
- Pre-LN (GPT-2): the state is the residual stream x itself; LN x = rθ with θ = x/|x| (what
  `tf.PreLN` reads), so Q_h = r W_Q^h, K_h = r W_K^h, V_h = r W_O^h W_V^h, a = r W1, b = b1,
  w = W2; the causal mask is `causal=True`.

Dropped (approximations, measured in `approximation_errors`): LayerNorm's centring, gain and
shift and ε; the query bias; the value and attention-output biases; the feed-forward output
bias. Exact: the key bias (a per-query constant in the scores, removed by the softmax), the
feed-forward inner bias (`FeedForward`'s b), dropout (eval mode), position and token-type
embeddings (part of the start x0), the activation (the model's own function).
"""

import math

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PyTree

from .._custom_types import Particles
from .._field._base import AbstractEuclideanField
from .._field._feed_forward import FeedForward, TransformerBlock
from .._field._placements import PreLN
from .._field._self_attention import SelfAttention
from . import _forward, _llama


class SequentialBlock(AbstractEuclideanField):
    """Euclidean fields applied one after the other in the discrete layer and summed in the
    continuous limit: the Pre-LN Transformer block of GPT-2,
    `SequentialBlock((PreLN(attention), PreLN(feed_forward)))`, whose layer is
        y = x + h·A(LN x),   x' = y + h·F(LN y),
    (`TransformerBlock`'s Lie–Trotter composition, for states in R^d) and whose h → 0 limit
    is ẋ = A(θ) + F(θ). `PreLN(TransformerBlock(attention, feed_forward))` has the same limit
    but the parallel layer x' = x + h(A(LN x) + F(LN x)).
    """

    parts: tuple[AbstractEuclideanField, ...]

    def __check_init__(self):
        if not isinstance(self.parts, tuple) or not self.parts:
            raise ValueError(f"`parts` must be a non-empty tuple of fields, got {self.parts!r}.")
        for part in self.parts:
            if not isinstance(part, AbstractEuclideanField):
                raise ValueError(
                    f"`parts` must be Euclidean fields such as PreLN(SelfAttention(...)), got "
                    f"{type(part).__name__}."
                )

    def __call__(self, t, x: Particles, args: PyTree = None) -> Particles:
        velocities = [part(t, x, args) for part in self.parts]
        return sum(velocities[1:], start=velocities[0])

    def residual_layer(self, t, x: Particles, h, args: PyTree = None) -> Particles:
        for part in self.parts:
            x = part.residual_layer(t, x, h, args)
        return x

    def jump_times(self) -> Float[Array, " jumps"] | None:
        for part in self.parts:
            jumps = part.jump_times()
            if jumps is not None:
                return jumps
        return None

    def check_state(self, x) -> None:
        for part in self.parts:
            part.check_state(x)


def radius(model) -> float:
    """r = √D: the norm of LayerNorm's output for a centred input (gain 1, shift 0, ε = 0)."""
    return math.sqrt(model.d_model)


def _weights(model, num_layers: int) -> tuple[dict, float | None]:
    """The mapped weights with a leading layer axis (or none: ALBERT's one shared layer) and
    the layer duration."""
    settings = model.settings
    layers = model.layers
    if model.extends_beyond_depth:
        chosen, duration = {k: v[0] for k, v in layers.items()}, None
    elif model.family == "albert":  # several groups: group g acts on [g·L/G, (g+1)·L/G)
        chosen, duration = layers, model.num_layers / settings["groups"]
    else:
        chosen, duration = {k: v[:num_layers] for k, v in layers.items()}, 1.0
    r = radius(model)
    pre = settings["placement"] == "pre"
    Q, K = r * chosen["wq"], r * chosen["wk"]
    if settings["scale_by_layer"]:  # GPT-2's 1/(l+1) on the scores of layer l
        factors = 1.0 / jnp.arange(1, Q.shape[0] + 1, dtype=Q.dtype)
        Q = Q * factors[:, None, None, None]
    V = jnp.einsum("...hdk,...hke->...hde", chosen["wo"], chosen["wv"])
    mapped = {
        "Q": Q,
        "K": K,
        "V": r * V if pre else V,
        "a": r * chosen["w1"],
        "b": chosen["b1"],
        "w": chosen["w2"] if pre else chosen["w2"] / r,
    }
    return mapped, duration


def layer_fields(model, num_layers: int):
    """The field whose layers carry the checkpoint's weights (see the module docstring)."""
    if model.family == "llama":  # its exact fields (RMSNorm, rotary, SwiGLU): _llama
        return _llama.layer_fields(model, num_layers)
    if num_layers < 1:
        raise ValueError(f"`num_layers` must be >= 1 for fields, got {num_layers}.")
    settings = model.settings
    w, duration = _weights(model, num_layers)
    beta = 1.0 / math.sqrt(model.head_dim) if settings["scale_attention"] else 1.0
    attention = SelfAttention(
        beta=jnp.asarray(beta, dtype=w["Q"].dtype),
        Q=w["Q"],
        K=w["K"],
        V=w["V"],
        layer_duration=duration,
        causal=model.causal,
    )
    feed_forward = FeedForward(
        w["w"],
        w["a"],
        w["b"],
        activation=_forward.activation(settings["activation"]),
        layer_duration=duration,
    )
    if settings["placement"] == "pre":
        return SequentialBlock((PreLN(attention), PreLN(feed_forward)))
    return TransformerBlock(attention, feed_forward)


def start(model, x0: Float[Array, "n D"]) -> Float[Array, "n D"]:
    """The state our fields start from: the real embeddings output (Pre-LN), or its direction
    (Post-LN, on the unit sphere; exact when |x0_i| = r, as after a LayerNorm)."""
    if model.settings["placement"] == "pre":
        return x0
    return x0 / jnp.linalg.norm(x0, axis=-1, keepdims=True)


def to_model_units(model, states: Array) -> Array:
    """Our states in the units of the real hidden states: r·θ for Post-LN, as they are for
    Pre-LN."""
    if model.settings["placement"] == "pre":
        return states
    return radius(model) * states


def mapped_final_norm(model, x: Array) -> Array:
    """GPT-2's final LayerNorm as the map models it: r·x/|x| (LLaMA: its final RMSNorm)."""
    if model.family == "llama":
        return _llama.final_rms_norm(model.embeddings, model.settings, x)
    return radius(model) * x / jnp.linalg.norm(x, axis=-1, keepdims=True)


def discrete_map(model, x0, num_layers: int, final_norm: bool):
    """States of the discrete layer map (each layer the field's `residual_layer` with h = 1)."""
    x = start(model, x0)
    if num_layers == 0:
        return to_model_units(model, x)[None]
    field = layer_fields(model, num_layers)

    def layer(x, t):
        x = field.residual_layer(t, x, 1.0)
        return x, x

    _, xs = jax.lax.scan(layer, x, jnp.arange(num_layers, dtype=x.dtype))
    states = to_model_units(model, jnp.concatenate([x[None], xs]))
    if final_norm and "final_g" in model.embeddings and num_layers == model.num_layers:
        states = states.at[-1].set(mapped_final_norm(model, states[-1]))
    return states
