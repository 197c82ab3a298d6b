"""LLaMA: our JAX forward of the real layers, and the same layers as the library's fields.

Real layer (transformers' `LlamaDecoderLayer`, eval mode), x the residual stream:
    y = x + Attn_rope(RMSNorm₁ x),   x' = y + W_down(silu(W_gate RMSNorm₂ y) ⊙ W_up RMSNorm₂ y),
with RMSNorm(x) = g ⊙ x/√(mean x² + ε), rotary positions 0..n−1 on queries and keys, causal
softmax with scale 1/√k, grouped-query heads (query head h uses key/value head h // (H/H_kv)).

As fields: `SequentialBlock((PreRMSNorm(RotarySelfAttention(...)), PreRMSNorm(
GatedFeedForward(...))))` with the gains folded into the weights that read the normalised
state (exact), ε kept, the output projection folded into V (V_h = W_O^h W_V^{kv(h)}), so its
discrete layer with h = 1 is the real layer: nothing is dropped.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from .._field._gated_feed_forward import GatedFeedForward
from .._field._rms_norm import PreRMSNorm
from .._field._rotary import RotarySelfAttention, apply_rotary
from . import _forward
from ._sequential import SequentialBlock


def rms_norm(x: Float[Array, "*batch D"], g, eps: float) -> Float[Array, "*batch D"]:
    """g ⊙ x/√(mean_c x_c² + ε) over the last axis."""
    gain = g.reshape((1,) * (x.ndim - 1) + g.shape)
    return x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + eps) * gain


def _expand_heads(w: Array, heads: int, axis: int) -> Array:
    """Repeat each key/value head for the query heads of its group (transformers' repeat_kv)."""
    return jnp.repeat(w, heads // w.shape[axis], axis=axis)


def block(
    layer: dict, x: Float[Array, "n D"], settings: dict, key_mask=None
) -> Float[Array, "n D"]:
    """One real LLaMA layer (module docstring). `key_mask` (n,): the real tokens of a
    right-padded sequence (None: all); padded keys get no attention weight, and the real
    tokens keep their positions 0..n_real−1, so their states are those of the unpadded
    sequence. Every query keeps key 0 (a real token), so no row of scores is all −∞."""
    eps, base, heads = settings["eps"], settings["rope_theta"], settings["num_heads"]
    n = x.shape[0]
    positions = jnp.arange(n, dtype=x.dtype)
    h = rms_norm(x, layer["ln1_g"], eps)
    q = jnp.einsum("hkd,nd->hnk", layer["wq"], h)
    k = jnp.einsum("hkd,nd->hnk", _expand_heads(layer["wk"], heads, 0), h)
    v = jnp.einsum("hkd,nd->hnk", _expand_heads(layer["wv"], heads, 0), h)
    q, k = apply_rotary(q, positions, base), apply_rotary(k, positions, base)
    scores = jnp.einsum("hik,hjk->hij", q, k) / math.sqrt(q.shape[-1])
    allowed = np.tril(np.ones((1, n, n), dtype=bool))
    if key_mask is not None:
        allowed = allowed & key_mask[None, None, :]
    scores = jnp.where(allowed, scores, -jnp.inf)
    context = jnp.einsum("hij,hjk->hik", jax.nn.softmax(scores, axis=-1), v)
    y = x + jnp.einsum("hdk,hik->id", layer["wo"], context)
    z = rms_norm(y, layer["ln2_g"], eps)
    sigma = _forward.activation(settings["activation"])
    gated = sigma(z @ layer["w_gate"].T) * (z @ layer["w_up"].T)
    return y + gated @ layer["w_down"].T


def hidden_states(
    embeddings: dict,
    layers: dict,
    settings: dict,
    ids: Int[Array, " n"],
    num_layers: int,
    final_norm: bool,
    key_mask=None,
) -> Float[Array, "layers_plus_1 n D"]:
    """Embeddings, then each layer's output; the last through the final RMSNorm when
    `final_norm` and num_layers is the trained depth (transformers' convention). `key_mask`
    as in `block`."""
    x0 = embeddings["word"][ids]
    chosen = {name: w[:num_layers] for name, w in layers.items()}

    def step(x, layer):
        x = block(layer, x, settings, key_mask)
        return x, x

    if num_layers == 0:
        states = x0[None]
    else:
        _, xs = jax.lax.scan(step, x0, chosen)
        states = jnp.concatenate([x0[None], xs], axis=0)
    if final_norm and num_layers == settings["num_layers"]:
        states = states.at[-1].set(final_rms_norm(embeddings, settings, states[-1]))
    return states


def final_rms_norm(embeddings: dict, settings: dict, x: Array) -> Array:
    return rms_norm(x, embeddings["final_g"].astype(x.dtype), settings["eps"])


def layer_fields(model, num_layers: int):
    """The exact fields of LLaMA's first `num_layers` layers (module docstring); layer l acts on
    [l, l+1)."""
    if num_layers < 1:
        raise ValueError(f"`num_layers` must be >= 1 for fields, got {num_layers}.")
    settings = model.settings
    w = {name: value[:num_layers] for name, value in model.layers.items()}
    heads = settings["num_heads"]
    g1, g2 = w["ln1_g"][:, None, None, :], w["ln2_g"][:, None, :]  # fold: W diag(g)
    wv = _expand_heads(w["wv"], heads, 1)
    attention = RotarySelfAttention(
        jnp.asarray(1.0 / math.sqrt(w["wq"].shape[2]), dtype=w["wq"].dtype),
        Q=w["wq"] * g1,
        K=_expand_heads(w["wk"], heads, 1) * g1,
        V=jnp.einsum("lhdk,lhke->lhde", w["wo"], wv) * g1,
        base=settings["rope_theta"],
        layer_duration=1.0,
        causal=True,
    )
    feed_forward = GatedFeedForward(
        w["w_down"],
        w["w_gate"] * g2,
        w["w_up"] * g2,
        activation=_forward.activation(settings["activation"]),
        layer_duration=1.0,
    )
    eps = settings["eps"]
    return SequentialBlock((PreRMSNorm(attention, eps=eps), PreRMSNorm(feed_forward, eps=eps)))
