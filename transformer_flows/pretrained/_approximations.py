"""What the map onto our fields drops, and how much each dropped piece costs on real activations.

`idealized(model, keep)` returns the model with every approximation removed except those in
`keep`: on `idealized(model)` the discrete map of our fields equals the real layers to float32
rounding (tests/test_pretrained.py checks it, also against transformers). Switching one
approximation back on (`keep=(name,)`) and comparing the discrete map with the real forward of
that model measures that approximation alone (`approximation_errors`).
"""

import dataclasses

import jax.numpy as jnp
import numpy as np

from ._families import LAYOUT_FAMILY

# name: (families it applies to, what it is). "exact" ones are kept by the map: switching them
# on must leave the gap at rounding level.
APPROXIMATIONS = {
    "layer_norm_affine": (
        ("bert", "albert", "gpt2"),
        "LayerNorm gain γ and shift β (all LayerNorms) are not modelled",
    ),
    "layer_norm_centring": (
        ("bert", "albert", "gpt2"),
        "LayerNorm subtracts the mean over the D coordinates; x/|x| does not (outputs into "
        "the residual stream and embeddings not centred)",
    ),
    "layer_norm_eps": (("bert", "albert", "gpt2"), "LayerNorm's ε in √(var + ε) is dropped"),
    "query_bias": (("bert", "albert", "gpt2"), "the query bias b_Q is dropped"),
    "value_output_bias": (
        ("bert", "albert", "gpt2"),
        "the value and attention-output biases (a constant W_O b_V + b_O added to every token) "
        "are dropped",
    ),
    "feed_forward_output_bias": (
        ("bert", "albert", "gpt2"),
        "the feed-forward output bias b2 is dropped",
    ),
    "embedding_projection": (
        ("albert",),
        "ALBERT's projection E → D of the embeddings gives tokens of norm ≠ √D; the map starts "
        "from their directions",
    ),
}

EXACT = {
    "key_bias": "the key bias b_K (a per-query constant in the scores; softmax removes it)",
    "feed_forward_inner_bias": "the feed-forward inner bias b1 (FeedForward's b)",
}


def applicable(model) -> list[str]:
    """The approximations (then the exact pieces) that exist in `model`'s family."""
    family = LAYOUT_FAMILY.get(model.family, model.family)  # RoBERTa, DistilBERT: BERT's
    names = [name for name, (families, _) in APPROXIMATIONS.items() if family in families]
    return names + list(EXACT)


def _centre(w, axis):
    return w - w.mean(axis=axis, keepdims=True)


def idealized(model, keep=()):
    """`model` with the approximations of the map removed, except those named in `keep`
    (names from `APPROXIMATIONS` and `EXACT`): LayerNorm γ = 1, β = 0, ε = 0; biases zero;
    every output into the residual stream centred; ALBERT's projection √(D/E) times the
    isometry (polar factor of its centred projection) so that |x0_i| = √D."""
    if model.family == "llama":
        raise ValueError(
            "LLaMA's map onto our fields drops nothing (PreRMSNorm with gain and ε, rotary "
            "attention, SwiGLU: docs/pretrained.md, 'Families'), so there is nothing to "
            "idealise; use the model as loaded."
        )
    unknown = sorted(set(keep) - set(APPROXIMATIONS) - set(EXACT))
    if unknown:
        raise ValueError(
            f"`keep` names unknown approximations {unknown}; choose among "
            f"{sorted(APPROXIMATIONS) + sorted(EXACT)}."
        )
    keep = set(keep)
    emb = {k: np.array(v) for k, v in model.embeddings.items()}
    layers = {k: np.array(v) for k, v in model.layers.items()}
    settings = model.settings
    if "layer_norm_affine" not in keep:
        for store in (emb, layers):
            for name in store:
                if name.endswith("_g"):
                    store[name] = np.ones_like(store[name])
                elif name.endswith("_b") and name != "proj_b":
                    store[name] = np.zeros_like(store[name])
    zeroed = {
        "query_bias": ("bq",),
        "value_output_bias": ("bv", "bo"),
        "feed_forward_output_bias": ("b2",),
        "key_bias": ("bk",),
        "feed_forward_inner_bias": ("b1",),
    }
    for name, weights in zeroed.items():
        if name not in keep:
            for weight in weights:
                layers[weight] = np.zeros_like(layers[weight])
    if "layer_norm_eps" not in keep:
        settings = settings | {"eps": 0.0}
    if "proj_w" in emb and "embedding_projection" not in keep:
        # The polar factor U of the centred projection (nearest isometry), scaled by √(D/E).
        d, e = emb["proj_w"].shape
        u, _, vt = np.linalg.svd(_centre(emb["proj_w"].astype(np.float64), 0), full_matrices=False)
        emb["proj_w"] = (np.sqrt(d / e) * (u @ vt)).astype(np.float32)
        emb["proj_b"] = np.zeros_like(emb["proj_b"])
    if "layer_norm_centring" not in keep:
        layers["wo"] = _centre(layers["wo"], 2)  # (L, H, D, k): over D
        layers["bo"] = _centre(layers["bo"], 1)
        layers["w2"] = _centre(layers["w2"], 1)  # (L, D, m)
        layers["b2"] = _centre(layers["b2"], 1)
        if model.family == "gpt2":
            emb["word"] = _centre(emb["word"], 1)
            emb["position"] = _centre(emb["position"], 1)
        if "proj_w" in emb:
            emb["proj_w"] = _centre(emb["proj_w"], 0)
            emb["proj_b"] = _centre(emb["proj_b"], 0)
    return dataclasses.replace(
        model,
        embeddings={k: jnp.asarray(v) for k, v in emb.items()},
        layers={k: jnp.asarray(v) for k, v in layers.items()},
        settings_items=tuple(sorted(settings.items())),
    )


def relative_errors(states, reference) -> np.ndarray:
    """|states_l − reference_l|_F / |reference_l|_F per layer l (float64)."""
    states = np.asarray(states, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    return np.linalg.norm(states - reference, axis=(-2, -1)) / np.linalg.norm(
        reference, axis=(-2, -1)
    )


def approximation_errors(model, token_ids, *, num_layers=None) -> dict[str, np.ndarray]:
    """Relative error per layer, |map_l − real_l|/|real_l| (Frobenius over tokens and
    coordinates; index 0 the start), of the discrete map against the real forward:

    - "none": on `idealized(model)` (every approximation off: rounding only);
    - each name of `applicable(model)`: on `idealized(model, keep=(name,))`, that one
      approximation switched on alone (for the `EXACT` names: rounding only);
    - "all": on `model` as loaded.

    GPT-2 is compared on the residual stream (no final LayerNorm)."""
    errors = {}
    variants = {"none": idealized(model)}
    variants |= {name: idealized(model, keep=(name,)) for name in applicable(model)}
    variants["all"] = model
    for name, variant in variants.items():
        real = variant.hidden_states(token_ids, num_layers=num_layers, final_norm=False)
        mapped = variant.discrete_map_states(token_ids, num_layers=num_layers, final_norm=False)
        errors[name] = relative_errors(mapped, real)
    return errors


def three_way_errors(model, token_ids, *, num_layers=None, **flow_options) -> dict:
    """The real layers, the discrete map and the flow at the integer times t = 0..layers,
    compared pairwise: relative errors per layer "map_vs_real", "flow_vs_real",
    "flow_vs_map" (GPT-2 on the residual stream, no final LayerNorm)."""
    depth = model.check_num_layers(num_layers)
    real = model.hidden_states(token_ids, num_layers=depth, final_norm=False)
    mapped = model.discrete_map_states(token_ids, num_layers=depth, final_norm=False)
    times = np.arange(depth + 1, dtype=np.float32)
    flow = model.flow_states(token_ids, times, num_layers=depth, final_norm=False, **flow_options)
    return {
        "map_vs_real": relative_errors(mapped, real),
        "flow_vs_real": relative_errors(flow, real),
        "flow_vs_map": relative_errors(flow, mapped),
    }
