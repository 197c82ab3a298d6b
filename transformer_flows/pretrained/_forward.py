"""Our JAX forward of the real models (eval mode: dropout is the identity), in the weight layout
of `_checkpoint`. One token sequence x of shape (n, D); padded batches are mapped over it,
with `key_mask` (n,) marking the real tokens: padded keys get no attention weight."""

import math

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int


def gelu_erf(z):
    """GELU with the normal CDF, z·Φ(z) (BERT's `gelu`)."""
    return jax.nn.gelu(z, approximate=False)


def gelu_tanh(z):
    """GELU's tanh form 0.5z(1 + tanh(√(2/π)(z + 0.044715z³))) (`gelu_new`, GPT-2, ALBERT)."""
    return jax.nn.gelu(z, approximate=True)


def quick_gelu(z):
    """z·sigmoid(1.702z) (`quick_gelu`)."""
    return z * jax.nn.sigmoid(1.702 * z)


# transformers' activation names (ACT2FN) and ours: module-level functions, so fields built
# with them are hashable and recompile only when the activation changes.
ACTIVATIONS = {
    "gelu": gelu_erf,
    "gelu_new": gelu_tanh,
    "gelu_pytorch_tanh": gelu_tanh,
    "gelu_fast": gelu_tanh,
    "quick_gelu": quick_gelu,
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "tanh": jnp.tanh,
}


def activation(name: str):
    if name not in ACTIVATIONS:
        raise ValueError(
            f"The checkpoint's activation {name!r} is not supported; supported: "
            f"{sorted(ACTIVATIONS)}."
        )
    return ACTIVATIONS[name]


def layer_norm(x: Float[Array, "n D"], g, b, eps: float) -> Float[Array, "n D"]:
    """LayerNorm over the last axis: γ ⊙ (x − mean)/√(var + ε) + β (biased variance)."""
    mean = jnp.mean(x, axis=-1, keepdims=True)
    centred = x - mean
    var = jnp.mean(centred * centred, axis=-1, keepdims=True)
    return centred * jax.lax.rsqrt(var + eps) * g[None] + b[None]


def embed(embeddings: dict, token_ids: Int[Array, " n"], settings: dict) -> Float[Array, "n D"]:
    """The input of the first layer (transformers' hidden_states[0])."""
    n = token_ids.shape[0]
    x = embeddings["word"][token_ids] + embeddings["position"][:n]
    if "type" in embeddings:  # token type 0 for a single sequence
        x = x + embeddings["type"][0][None]
    if "ln_g" in embeddings:
        x = layer_norm(x, embeddings["ln_g"], embeddings["ln_b"], settings["eps"])
    if "proj_w" in embeddings:  # ALBERT: E -> D
        x = x @ embeddings["proj_w"].T + embeddings["proj_b"][None]
    return x


def attention(
    layer: dict, x: Float[Array, "n D"], scale, causal: bool, key_mask=None
) -> Float[Array, "n D"]:
    """Multi-head softmax attention with biases and the output projection, as in the models:
    Σ_h W_O^h Σ_j softmax_j(scale·<q_i^h, k_j^h>) v_j^h + b_O, the sum over the keys j that
    `key_mask` (n,) keeps (all when None): a padded key has weight exactly 0."""
    q = jnp.einsum("hkd,nd->hnk", layer["wq"], x) + layer["bq"][:, None, :]
    k = jnp.einsum("hkd,nd->hnk", layer["wk"], x) + layer["bk"][:, None, :]
    v = jnp.einsum("hkd,nd->hnk", layer["wv"], x) + layer["bv"][:, None, :]
    scores = jnp.einsum("hik,hjk->hij", q, k) * scale
    if causal:
        n = x.shape[0]
        allowed = np.tril(np.ones((n, n), dtype=bool))
        scores = jnp.where(allowed, scores, jnp.finfo(scores.dtype).min)
    if key_mask is not None:
        scores = jnp.where(key_mask[None, None, :], scores, jnp.finfo(scores.dtype).min)
    weights = jax.nn.softmax(scores, axis=-1)
    context = jnp.einsum("hij,hjk->hik", weights, v)
    return jnp.einsum("hdk,hik->id", layer["wo"], context) + layer["bo"][None]


def feed_forward(layer: dict, y: Float[Array, "n D"], sigma) -> Float[Array, "n D"]:
    """W2 σ(W1 y + b1) + b2, token by token."""
    return sigma(y @ layer["w1"].T + layer["b1"][None]) @ layer["w2"].T + layer["b2"][None]


def block(
    layer: dict, x: Float[Array, "n D"], scale, settings: dict, key_mask=None
) -> Float[Array, "n D"]:
    """One real layer: Post-LN (BERT, ALBERT) y = LN1(x + Attn x), x' = LN2(y + FF y);
    Pre-LN (GPT-2) y = x + Attn(LN1 x), x' = y + FF(LN2 y)."""
    eps, causal = settings["eps"], settings["causal"]
    sigma = activation(settings["activation"])
    if settings["placement"] == "post":
        y = layer_norm(
            x + attention(layer, x, scale, causal, key_mask), layer["ln1_g"], layer["ln1_b"], eps
        )
        return layer_norm(y + feed_forward(layer, y, sigma), layer["ln2_g"], layer["ln2_b"], eps)
    y = x + attention(
        layer, layer_norm(x, layer["ln1_g"], layer["ln1_b"], eps), scale, causal, key_mask
    )
    return y + feed_forward(layer, layer_norm(y, layer["ln2_g"], layer["ln2_b"], eps), sigma)


def attention_scale(settings: dict, layer_number) -> Float[Array, ""] | float:
    """The factor of the scores of layer `layer_number` (0-based): 1/√k, and 1/(l+1) more for
    GPT-2's `scale_attn_by_inverse_layer_idx`."""
    heads = settings["num_heads"]
    d_model = settings["d_model"]
    scale = 1.0 / math.sqrt(d_model // heads) if settings["scale_attention"] else 1.0
    if settings["scale_by_layer"]:
        return scale / (jnp.asarray(layer_number) + 1).astype(jnp.float32)
    return scale


def stored_layers(settings: dict, num_layers: int) -> np.ndarray:
    """The stored layer acting as layer i = 0..num_layers-1: i itself, or for ALBERT its group
    int(i / (L/G)) (transformers' formula), the shared layer beyond the trained depth."""
    depth, groups = settings["num_layers"], settings["groups"]
    if groups == 1:
        return np.zeros(num_layers, dtype=np.int32)
    return np.asarray([int(i / (depth / groups)) for i in range(num_layers)], dtype=np.int32)


def hidden_states(
    embeddings: dict,
    layers: dict,
    settings: dict,
    token_ids: Int[Array, " n"],
    num_layers: int,
    final_norm: bool,
    key_mask=None,
) -> Float[Array, "layers_plus_1 n D"]:
    """Embeddings output, then every layer's output (the final LayerNorm of GPT-2 applied to
    the last when `final_norm` and num_layers is the trained depth, as transformers does).
    `key_mask` (n,): the real tokens of a right-padded sequence (None: all); the real tokens'
    states then equal those of the unpadded sequence (their positions are the same)."""
    x0 = embed(embeddings, token_ids, settings)
    index = stored_layers(settings, num_layers)

    def step(x, item):
        number, stored = item
        layer = jax.tree.map(lambda w: w[stored], layers)
        x = block(layer, x, attention_scale(settings, number), settings, key_mask)
        return x, x

    numbers = np.arange(num_layers, dtype=np.int32)
    _, xs = jax.lax.scan(step, x0, (numbers, index))
    states = jnp.concatenate([x0[None], xs], axis=0)
    if final_norm and "final_g" in embeddings and num_layers == settings["num_layers"]:
        last = layer_norm(states[-1], embeddings["final_g"], embeddings["final_b"], settings["eps"])
        states = states.at[-1].set(last)
    return states
