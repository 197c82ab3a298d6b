"""The map of a checkpoint onto our fields (docs/pretrained.md, "The mapping" and "The faithful
fields").

Two maps. The **faithful fields** (`faithful_fields`, `faithful=True` in the model's methods)
are the exact trained layer: a general `LayerNorm` (centring, γ, β, ε) as the Post-LN
normalisation (`PostLN`, states θ = N(z)/√D on the unit sphere, the hidden state the read
γ ⊙ √Dθ + β) or the Pre-LN one (`PreLN(..., norm=LayerNorm(...))`, γ and β folded into the
weights and biases, exactly), attention with query, key, value and output biases, feed-forward
biases; their discrete map is the real forward to float32 rounding. Each piece is a switch
(`faithful` a set of names from `APPROXIMATIONS` and `EXACT`): switched off, it takes GLPR's
form, and with every switch off the faithful builder gives the GLPR map below (tested).

The **GLPR map** (`layer_fields`, the default): LayerNorm is modelled as x ↦ r·x/|x| with
r = √D: what LayerNorm does to a centred vector when its gain is 1, its shift 0 and ε = 0.
Our sphere states θ are the real states divided by r, and the real scale is folded into the
weights, so that β = 1/√k (k = D/H) as in the models:

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
from collections.abc import Collection

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from .._field._feed_forward import FeedForward, TransformerBlock
from .._field._layer_norm import LayerNorm, PostLN
from .._field._placements import PreLN
from .._field._self_attention import SelfAttention
from .._sphere import normalize
from . import _forward, _llama
from ._pieces import APPROXIMATIONS, EXACT
from ._sequential import SequentialBlock


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


def layer_fields(model, num_layers: int, key_mask=None):
    """The field whose layers carry the checkpoint's weights (see the module docstring);
    `key_mask` (n,): the real tokens of a padded sequence."""
    if model.family == "llama":  # its exact fields (RMSNorm, rotary, SwiGLU): _llama
        if key_mask is not None:
            raise ValueError(
                "`key_mask` is not supported for LLaMA's fields yet: flow one unpadded "
                "sequence at a time (its forward `hidden_states` takes padded batches)."
            )
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
        key_mask=key_mask,
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


def discrete_map(model, x0, num_layers: int, final_norm: bool, key_mask=None):
    """States of the discrete layer map (each layer the field's `residual_layer` with h = 1)."""
    x = start(model, x0)
    if num_layers == 0:
        return to_model_units(model, x)[None]
    field = layer_fields(model, num_layers, key_mask)

    def layer(x, t):
        x = field.residual_layer(t, x, 1.0)
        return x, x

    _, xs = jax.lax.scan(layer, x, jnp.arange(num_layers, dtype=x.dtype))
    states = to_model_units(model, jnp.concatenate([x[None], xs]))
    if final_norm and "final_g" in model.embeddings and num_layers == model.num_layers:
        states = states.at[-1].set(mapped_final_norm(model, states[-1]))
    return states


# --- The faithful fields -------------------------------------------------------------------


def pieces() -> tuple[str, ...]:
    """Every switch of the faithful builder: the approximations and the exact pieces."""
    return tuple(APPROXIMATIONS) + tuple(EXACT)


def resolve_faithful(faithful) -> frozenset[str] | None:
    """`faithful`: False (the GLPR map: None here), True (every piece kept), or a collection of
    names from `APPROXIMATIONS` (those pieces kept, the others in GLPR's form). The `EXACT`
    pieces (key bias, feed-forward inner bias), which GLPR's map keeps too, are always kept, so
    that `faithful=()` is GLPR's map itself."""
    if faithful is False or faithful is None:
        return None
    if faithful is True:
        return frozenset(pieces())
    if isinstance(faithful, str) or not isinstance(faithful, Collection):
        raise ValueError(
            f"`faithful` must be True, False or a collection of piece names, got {faithful!r}; "
            f"names: {sorted(pieces())}."
        )
    unknown = sorted(set(faithful) - set(pieces()))
    if unknown:
        raise ValueError(
            f"`faithful` names unknown pieces {unknown}; choose among {sorted(pieces())}."
        )
    return frozenset(faithful) | frozenset(EXACT)


def _per_layer(model, num_layers: int) -> np.ndarray:
    """The stored layer acting as layer l = 0..num_layers-1 (ALBERT: its group)."""
    return _forward.stored_layers(model.settings, num_layers)


def _chosen(model, num_layers: int) -> tuple[dict, float | None]:
    """The layer weights as the fields carry them (as `_weights`): one shared layer constant
    in time, ALBERT's groups with duration L/G, or one layer each."""
    layers = model.layers
    if model.extends_beyond_depth:
        return {k: v[0] for k, v in layers.items()}, None
    if model.family == "albert":
        return layers, model.num_layers / model.settings["groups"]
    return {k: v[:num_layers] for k, v in layers.items()}, 1.0


def _ones_zeros(model, dtype):
    return jnp.ones(model.d_model, dtype), jnp.zeros(model.d_model, dtype)


def read_affines(model, num_layers: int, keep: frozenset) -> tuple[Array, Array] | None:
    """Post-LN: the gain and shift through which the state entering layer l is read, for
    l = 0..num_layers ((num_layers + 1, D) each): the embedding LayerNorm's (BERT) or none
    (ALBERT, whose projection follows it) at l = 0, then the second LayerNorm of layer l − 1.
    None when the affine parameters are switched off."""
    if "layer_norm_affine" not in keep:
        return None
    dtype = model.layers["ln2_g"].dtype
    stored = _per_layer(model, num_layers)
    if model.family == "bert":
        first = model.embeddings["ln_g"], model.embeddings["ln_b"]
    else:
        first = _ones_zeros(model, dtype)
    gains = jnp.concatenate([first[0][None], model.layers["ln2_g"][stored]])
    shifts = jnp.concatenate([first[1][None], model.layers["ln2_b"][stored]])
    return gains, shifts


def _layer_norm(model, keep, gain=None, shift=None, layered=False) -> LayerNorm:
    eps = float(model.settings["eps"]) if "layer_norm_eps" in keep else 0.0
    return LayerNorm(
        gain,
        shift,
        eps=eps,
        centre="layer_norm_centring" in keep,
        layer_duration=1.0 if layered else None,
    )


def faithful_fields(model, num_layers: int, keep: frozenset, key_mask=None):
    """The fields of the real layers with the pieces in `keep` (docs/pretrained.md, "The
    faithful fields"); `key_mask` (n,): the real tokens of a padded sequence."""
    if num_layers < 1:
        raise ValueError(f"`num_layers` must be >= 1 for fields, got {num_layers}.")
    settings = model.settings
    sigma = _forward.activation(settings["activation"])
    beta = 1.0 / math.sqrt(model.head_dim) if settings["scale_attention"] else 1.0
    if settings["placement"] == "pre":
        return _pre_ln_fields(model, num_layers, keep, key_mask, beta, sigma)
    w, duration = _chosen(model, num_layers)
    dtype = w["wq"].dtype
    out_bias = None
    if "value_output_bias" in keep:
        out_bias = jnp.einsum("...hdk,...hk->...d", w["wo"], w["bv"]) + w["bo"]
    attention = SelfAttention(
        beta=jnp.asarray(beta, dtype=dtype),
        Q=w["wq"],
        K=w["wk"],
        V=jnp.einsum("...hdk,...hke->...hde", w["wo"], w["wv"]),
        q_bias=w["bq"] if "query_bias" in keep else None,
        k_bias=w["bk"] if "key_bias" in keep else None,
        out_bias=out_bias,
        layer_duration=duration,
        key_mask=key_mask,
    )
    feed_forward = FeedForward(
        w["w2"],
        w["w1"],
        w["b1"] if "feed_forward_inner_bias" in keep else None,
        activation=sigma,
        layer_duration=duration,
        out_bias=w["b2"] if "feed_forward_output_bias" in keep else None,
    )
    reads = read_affines(model, num_layers, keep)
    if reads is None:
        attention_norm = feed_forward_norm = _layer_norm(model, keep)
    else:
        stored = _per_layer(model, num_layers)
        attention_norm = _layer_norm(model, keep, reads[0][:-1], reads[1][:-1], layered=True)
        feed_forward_norm = _layer_norm(
            model, keep, model.layers["ln1_g"][stored], model.layers["ln1_b"][stored], True
        )
    return TransformerBlock(
        PostLN(attention, attention_norm), PostLN(feed_forward, feed_forward_norm)
    )


def _pre_ln_fields(model, num_layers, keep, key_mask, beta, sigma):
    """GPT-2: `SequentialBlock((PreLN(attention, norm), PreLN(feed_forward, norm)))` with the
    pre-norms' γ folded into the weights they feed and β into the biases (exact: the norm then
    only centres and divides, LayerNorm(ε))."""
    w = {k: v[:num_layers] for k, v in model.layers.items()}
    dtype = w["wq"].dtype
    affine = "layer_norm_affine" in keep
    ones = jnp.ones_like(w["ln1_g"])
    g1, b1n = (w["ln1_g"], w["ln1_b"]) if affine else (ones, None)
    g2, b2n = (w["ln2_g"], w["ln2_b"]) if affine else (ones, None)
    factor = jnp.ones(num_layers, dtype)
    if model.settings["scale_by_layer"]:  # GPT-2's 1/(l+1) on the scores of layer l
        factor = 1.0 / jnp.arange(1, num_layers + 1, dtype=dtype)

    def folded(weight, bias, switch, scale):
        """Per head: W diag(γ1), and the bias W β1 + b (the bias if `switch`)."""
        matrix = weight * g1[:, None, None, :] * scale[:, None, None, None]
        parts = []
        if affine:
            parts.append(jnp.einsum("lhkd,ld->lhk", weight, b1n))
        if switch:
            parts.append(bias)
        vector = None if not parts else sum(parts[1:], start=parts[0]) * scale[:, None, None]
        return matrix, vector

    Q, q_bias = folded(w["wq"], w["bq"], "query_bias" in keep, factor)
    K, k_bias = folded(w["wk"], w["bk"], "key_bias" in keep, jnp.ones_like(factor))
    V = jnp.einsum("lhdk,lhke->lhde", w["wo"], w["wv"] * g1[:, None, None, :])
    out = []
    if affine:
        out.append(jnp.einsum("lhdk,lhke,le->ld", w["wo"], w["wv"], b1n))
    if "value_output_bias" in keep:
        out.append(jnp.einsum("lhdk,lhk->ld", w["wo"], w["bv"]) + w["bo"])
    attention = SelfAttention(
        beta=jnp.asarray(beta, dtype=dtype),
        Q=Q,
        K=K,
        V=V,
        q_bias=q_bias,
        k_bias=k_bias,
        out_bias=sum(out[1:], start=out[0]) if out else None,
        layer_duration=1.0,
        causal=model.causal,
        key_mask=key_mask,
    )
    inner = []
    if affine:
        inner.append(jnp.einsum("lmd,ld->lm", w["w1"], b2n))
    if "feed_forward_inner_bias" in keep:
        inner.append(w["b1"])
    feed_forward = FeedForward(
        w["w2"],
        w["w1"] * g2[:, None, :],
        sum(inner[1:], start=inner[0]) if inner else None,
        activation=sigma,
        layer_duration=1.0,
        out_bias=w["b2"] if "feed_forward_output_bias" in keep else None,
    )
    norm = _layer_norm(model, keep)
    return SequentialBlock((PreLN(attention, norm), PreLN(feed_forward, norm)))


def faithful_start(model, ids, keep: frozenset, *, flow: bool) -> Float[Array, "n D"]:
    """The state the faithful fields start from (docs/pretrained.md, "The faithful fields"):
    Pre-LN the embeddings output x0; Post-LN θ0 = N(e)/√D with e the embedding sum before its
    LayerNorm (BERT, affine kept: read through that LayerNorm's γ, β it is x0 exactly), x0/√D
    (ALBERT with its projection kept; the first layer's normalisation then acts on x0 itself;
    the flow, the h → 0 limit, starts from N(x0)/√D), or GLPR's x0/|x0| otherwise."""
    x0 = _forward.embed(model.embeddings, ids, model.settings)
    if model.settings["placement"] == "pre":
        return x0
    scale = jnp.sqrt(jnp.asarray(model.d_model, x0.dtype))
    if model.family == "bert" and "layer_norm_affine" in keep:
        emb = model.embeddings
        total = emb["word"][ids] + emb["position"][: ids.shape[0]] + emb["type"][0][None]
        theta = LayerNorm(eps=float(model.settings["eps"])).normalize(total) / scale
        return normalize(theta) if flow else theta
    if model.family == "albert" and "embedding_projection" in keep:
        if flow:
            return normalize(_layer_norm(model, keep).normalize(x0))
        return x0 / scale
    return normalize(x0)


def faithful_readout(model, states, times, keep: frozenset, num_layers: int, final_norm: bool):
    """Faithful states in the units of the hidden states: Post-LN G(√Dθ) with G the read
    affine of the layer in progress at each time (the LayerNorm that closed the last completed
    layer); Pre-LN as they are, with the final LayerNorm (as kept) at t = L when `final_norm`."""
    times = jnp.asarray(times)
    if model.settings["placement"] == "pre":
        if final_norm and "final_g" in model.embeddings and num_layers == model.num_layers:
            affine = "layer_norm_affine" in keep
            emb = model.embeddings
            final = _layer_norm(
                model, keep, emb["final_g"] if affine else None, emb["final_b"] if affine else None
            )
            at_end = times == num_layers
            states = jnp.where(
                at_end[:, None, None], jax.vmap(lambda x: final(0, x))(states), states
            )
        return states
    scale = jnp.sqrt(jnp.asarray(model.d_model, states.dtype))
    states = scale * states
    reads = read_affines(model, num_layers, keep)
    if reads is None:
        return states
    index = jnp.clip(jnp.floor(times).astype(jnp.int32), 0, num_layers)
    return states * reads[0][index][:, None, :] + reads[1][index][:, None, :]


def faithful_trajectory(model, ids, num_layers: int, keep: frozenset, key_mask=None, substeps=1):
    """The faithful fields' own states (Post-LN: θ on the unit sphere; Pre-LN: x) at
    t = 0..num_layers of the discrete map, each layer `substeps` residual steps of
    h = 1/substeps (one step: the real layer)."""
    x = faithful_start(model, ids, keep, flow=False)
    if num_layers == 0:
        return x[None]
    field = faithful_fields(model, num_layers, keep, key_mask)
    h = 1.0 / substeps

    def layer(x, t):
        def step(x, s):
            return field.residual_layer(t + s * h, x, h), None

        x, _ = jax.lax.scan(step, x, jnp.arange(substeps, dtype=x.dtype))
        return x, x

    _, xs = jax.lax.scan(layer, x, jnp.arange(num_layers, dtype=x.dtype))
    return jnp.concatenate([x[None], xs])


def faithful_map(
    model, ids, num_layers: int, final_norm: bool, keep: frozenset, key_mask=None, substeps=1
):
    """The faithful discrete map (`faithful_trajectory`) in the units of the hidden states."""
    states = faithful_trajectory(model, ids, num_layers, keep, key_mask, substeps)
    times = jnp.arange(num_layers + 1, dtype=states.dtype)
    return faithful_readout(model, states, times, keep, num_layers, final_norm)
