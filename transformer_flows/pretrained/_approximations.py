"""What the map onto our fields drops, and how much each dropped piece costs on real activations.

Two ways to switch a piece, with the same names (`APPROXIMATIONS`, `EXACT`):

- in the **weights**: `idealized(model, keep)` returns the model with every approximation
  removed except those in `keep` (γ = 1, β = 0, biases 0, outputs centred, ...): on
  `idealized(model)` GLPR's map equals the real layers to float32 rounding, and
  `idealized(model, keep=<all>)` is the model itself. `approximation_errors` switches one
  approximation back on in the idealized model and compares GLPR's map with that model's
  forward.
- in the **fields**: `faithful=<names>` in the model's methods keeps those pieces in the
  faithful fields and puts the others in GLPR's form: `faithful=True` is the real model
  (to rounding), `faithful=()` GLPR's map. `idealization_errors` applies one idealisation
  alone to the real model (`faithful` = every piece but that one) and compares with the real
  forward.

Every comparison gives two numbers per layer: the relative error |a − b|_F/|b|_F, which mixes
radius and direction, and the direction error √(mean_i |θ^a_i − θ^b_i|²), θ = x/|x|
(`direction_errors`; 0 for the same directions, √2 for orthogonal ones, 2 for opposite).
`continuum_errors` measures how far the layers are from their continuous limit.
"""

import dataclasses

import jax.numpy as jnp
import numpy as np

from ._families import LAYOUT_FAMILY
from ._pieces import APPROXIMATIONS as APPROXIMATIONS, EXACT as EXACT


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


def direction_errors(states, reference) -> np.ndarray:
    """√(mean_i |θ_i − θ'_i|²) per layer l, θ_i = x_i/|x_i| of `states` and θ'_i of
    `reference` (float64): how far the token directions are apart, whatever the radii. In
    [0, 2]; for a small angle α between every pair, ≈ α."""
    states = np.asarray(states, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    theta = states / np.linalg.norm(states, axis=-1, keepdims=True)
    other = reference / np.linalg.norm(reference, axis=-1, keepdims=True)
    return np.sqrt(np.mean(np.sum((theta - other) ** 2, axis=-1), axis=-1))


def compare(states, reference) -> dict[str, np.ndarray]:
    """{"relative": `relative_errors`, "direction": `direction_errors`}, per layer."""
    return {
        "relative": relative_errors(states, reference),
        "direction": direction_errors(states, reference),
    }


def approximation_errors(model, token_ids, *, num_layers=None) -> dict[str, dict]:
    """Errors per layer of GLPR's discrete map against the real forward (index 0 the start),
    each {"relative": |map_l − real_l|_F/|real_l|_F, "direction": `direction_errors`}:

    - "none": on `idealized(model)` (every approximation off: rounding only);
    - each name of `applicable(model)`: on `idealized(model, keep=(name,))`, that one
      approximation switched on alone (for the `EXACT` names: rounding only);
    - "all": on `model` as loaded.

    GPT-2 is compared on the residual stream (no final LayerNorm). `idealization_errors`
    measures the other way round: each idealisation alone, on the real model."""
    errors = {}
    variants = {"none": idealized(model)}
    variants |= {name: idealized(model, keep=(name,)) for name in applicable(model)}
    variants["all"] = model
    for name, variant in variants.items():
        real = variant.hidden_states(token_ids, num_layers=num_layers, final_norm=False)
        mapped = variant.discrete_map_states(token_ids, num_layers=num_layers, final_norm=False)
        errors[name] = compare(mapped, real)
    return errors


def idealization_errors(model, token_ids, *, num_layers=None) -> dict[str, dict]:
    """Errors per layer (as `approximation_errors`: "relative" and "direction", index 0 the
    start) against the real forward of `model` of its faithful discrete map with idealisations
    switched in the fields (docs/pretrained.md, "The faithful fields"):

    - "none": `faithful=True`, every piece kept (float32 rounding);
    - each approximation of `applicable(model)`: that one idealisation alone, every other
      piece kept (`faithful` = all but that name);
    - "all": every idealisation at once, `faithful=False`: GLPR's map.

    GPT-2 on the residual stream (no final LayerNorm)."""
    depth = model.check_num_layers(num_layers)
    names = [name for name in applicable(model) if name in APPROXIMATIONS]
    real = model.hidden_states(token_ids, num_layers=depth, final_norm=False)
    rows = {"none": True}
    rows |= {name: tuple(n for n in names if n != name) for name in names}
    rows["all"] = False
    errors = {}
    for row, faithful in rows.items():
        states = model.discrete_map_states(
            token_ids, num_layers=depth, final_norm=False, faithful=faithful
        )
        errors[row] = compare(states, real)
    return errors


def three_way_errors(
    model, token_ids, *, num_layers=None, faithful=False, **flow_options
) -> dict[str, dict]:
    """The real layers, the discrete map and the flow at the integer times t = 0..layers,
    compared pairwise: errors per layer ("relative" and "direction") "map_vs_real",
    "flow_vs_real", "flow_vs_map" (GPT-2 on the residual stream, no final LayerNorm).
    `faithful`: which fields (as `layer_fields`); `faithful=True` has map = real."""
    depth = model.check_num_layers(num_layers)
    real = model.hidden_states(token_ids, num_layers=depth, final_norm=False)
    mapped = model.discrete_map_states(
        token_ids, num_layers=depth, final_norm=False, faithful=faithful
    )
    times = np.arange(depth + 1, dtype=np.float32)
    flow = model.flow_states(
        token_ids, times, num_layers=depth, final_norm=False, faithful=faithful, **flow_options
    )
    return {
        "map_vs_real": compare(mapped, real),
        "flow_vs_real": compare(flow, real),
        "flow_vs_map": compare(flow, mapped),
    }


def convergence_order(steps, errors) -> np.ndarray:
    """The fitted order p of errors ≈ C·h^p: the least-squares slope of log(error) against
    log(h), h = 1/k for the sub-step counts `steps` (k), per trailing entry of `errors`
    (shape (len(steps), ...)); NaN where an error is 0."""
    h = 1.0 / np.asarray(steps, dtype=np.float64)
    errors = np.asarray(errors, dtype=np.float64)
    positive = np.all(errors > 0, axis=0)
    logs = np.log(np.where(positive, errors, 1.0))
    x = np.log(h) - np.mean(np.log(h))
    slope = np.tensordot(x, logs - np.mean(logs, axis=0), axes=(0, 0)) / np.sum(x * x)
    return np.where(positive, slope, np.nan)


def continuum_errors(
    model,
    token_ids,
    *,
    substeps=(1, 2, 4, 8, 16),
    num_layers=None,
    faithful=True,
    local: bool = False,
    key_mask=None,
    **flow_options,
) -> dict:
    """How far the layers are from their continuous limit: the discrete map with each layer
    sub-stepped into k residual steps of h = 1/k of its field (k = 1: the layer itself)
    against the flow of the same fields (the limit k → ∞; solved by `tf.solve` with
    `flow_options`, e.g. rtol = atol = 1e-7), at t = 0..layers.

    `local=False`: the whole stack from the start (`discrete_map_states(..., substeps=k)`
    against `flow_states`; errors accumulate over the layers). `local=True`: each layer on its
    own, from the state the real model gives it (the faithful map's, k = 1): entry l + 1 is
    layer l's k steps against its flow over [l, l + 1] (entry 0 is 0).

    Returns {"substeps": (K,) ints, "relative"/"direction": (K, layers + 1) errors (in the
    units of the hidden states), "order": {"relative"/"direction": (layers + 1,) fitted
    orders p of error ≈ C h^p, NaN at t = 0}}. GPT-2 on the residual stream. For ALBERT with
    its projection kept, the flow starts from N(x0) (the limit of the first step), so t = 0
    differs in the global comparison."""
    depth = model.check_num_layers(num_layers)
    steps = [int(k) for k in substeps]
    faithful = faithful or ()
    if local:
        rows = _local_continuum(model, token_ids, depth, steps, faithful, key_mask, flow_options)
    else:
        rows = _global_continuum(model, token_ids, depth, steps, faithful, key_mask, flow_options)
    result = {"substeps": np.asarray(steps)}
    result |= {name: np.stack(values) for name, values in rows.items()}
    orders = {name: convergence_order(steps, result[name]) for name in rows}
    result["order"] = {
        name: np.concatenate([[np.nan], order[1:]]) for name, order in orders.items()
    }
    return result


def _real_tokens(states, key_mask):
    return np.asarray(states) if key_mask is None else np.asarray(states)[:, np.asarray(key_mask)]


def _global_continuum(model, token_ids, depth, steps, faithful, key_mask, flow_options):
    times = np.arange(depth + 1, dtype=np.float32)
    options = {"num_layers": depth, "final_norm": False, "faithful": faithful}
    flow = model.flow_states(token_ids, times, key_mask=key_mask, **options, **flow_options)
    rows = {"relative": [], "direction": []}
    for k in steps:
        states = model.discrete_map_states(token_ids, key_mask=key_mask, substeps=k, **options)
        for name, values in compare(
            _real_tokens(states, key_mask), _real_tokens(flow, key_mask)
        ).items():
            rows[name].append(values)
    return rows


def _local_continuum(model, token_ids, depth, steps, faithful, key_mask, flow_options):
    import jax
    import jax.numpy as jnp

    from .._solve import solve
    from .._sphere import normalize
    from . import _fields

    ids = model.check_token_ids(token_ids)
    keep = _fields.resolve_faithful(faithful)
    field = model.layer_fields(num_layers=depth, faithful=faithful, key_mask=key_mask)
    exact = _fields.faithful_trajectory(model, ids, depth, keep, key_mask)
    sphere = model.settings["placement"] == "post"
    starts = [exact[layer] for layer in range(depth)]
    starts[0] = _fields.faithful_start(model, ids, keep, flow=True)
    flows = []
    for layer in range(depth):
        x = normalize(starts[layer]) if sphere else starts[layer]
        ts = jnp.asarray([layer, layer + 1], dtype=x.dtype)
        flows.append(solve(field, x, ts, **flow_options).xs[-1])
    times = jnp.arange(depth + 1, dtype=exact.dtype)

    def units(states):
        states = jnp.concatenate([exact[:1], jnp.stack(states)])
        out = _fields.faithful_readout(model, states, times, keep, depth, False)
        return _real_tokens(out, key_mask)

    flow = units(flows)

    @jax.jit
    def sub_stepped(x, t, h, k_steps):
        def step(x, s):
            return field.residual_layer(t + s * h, x, h), None

        return jax.lax.scan(step, x, jnp.arange(k_steps.shape[0], dtype=x.dtype))[0]

    rows = {"relative": [], "direction": []}
    for k in steps:
        layers = [
            sub_stepped(
                exact[layer], exact.dtype.type(layer), exact.dtype.type(1 / k), jnp.zeros(k)
            )
            for layer in range(depth)
        ]
        for name, values in compare(units(layers), flow).items():
            rows[name].append(values)
    return rows
